//! The Lua scripts: every step that must be atomic in Redis.
//!
//! Each one does what would otherwise be a read-then-write race between
//! hosts. Scripts run atomically, but a script that fails half-way keeps
//! its earlier writes; so every command that can fail on data a script
//! does not control (a key of the wrong type, a missing group) is a
//! `pcall`, checked, never a `call` that would stop the script between
//! two writes.
//!
//! Clocks: the scripts read `TIME`, Redis's clock, so that due times and
//! rate limits are on one clock for every host. Times in microseconds are
//! written with `string.format('%.0f', …)`: Lua's own conversion keeps 14
//! digits, and a time in µs has 16.
//!
//! `Scripts` holds each script's SHA-1; a connection loads them all when it
//! is made (and again on `NOSCRIPT`, after a `SCRIPT FLUSH`), and calls
//! them with `EVALSHA`.

use std::sync::OnceLock;

/// A script and its SHA-1.
#[derive(Debug)]
pub(crate) struct Script {
    pub source: &'static str,
    pub sha: String,
}

/// Every script the broker runs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub delay: Script,
    pub promote: Script,
    pub renew: Script,
    pub reclaim: Script,
    pub finish: Script,
    pub dead: Script,
    pub rate: Script,
}

impl Scripts {
    pub(crate) fn get() -> &'static Scripts {
        static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
        SCRIPTS.get_or_init(|| {
            let s = |source: &'static str| Script {
                source,
                sha: redis::Script::new(source).get_hash().to_string(),
            };
            Scripts {
                delay: s(DELAY),
                promote: s(PROMOTE),
                renew: s(RENEW),
                reclaim: s(RECLAIM),
                finish: s(FINISH),
                dead: s(DEAD),
                rate: s(RATE),
            }
        })
    }

    pub(crate) fn all(&self) -> [&Script; 7] {
        [
            &self.delay,
            &self.promote,
            &self.renew,
            &self.reclaim,
            &self.finish,
            &self.dead,
            &self.rate,
        ]
    }
}

/// The milliseconds of Redis's clock, in every script that needs them.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME')\n\
         local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// Whether the pending entry `entry` of `stream` is held by `me` at its
/// `deliveries`th delivery: the ownership check before every ack, renewal
/// and re-queue. A late host (its lease expired, the entry taken by
/// another) fails it and changes nothing.
macro_rules! owns {
    () => {
        "local function owns(stream, group, entry, me, deliveries)\n\
           local p = redis.pcall('XPENDING', stream, group, entry, entry, 1)\n\
           if type(p) ~= 'table' or p.err or #p ~= 1 then return false end\n\
           if p[1][2] ~= me then return false end\n\
           return deliveries == nil or tonumber(p[1][4]) == deliveries\n\
         end\n"
    };
}

/// A job submitted with a countdown or an ETA: its fields wait in a hash,
/// its id in the delayed set, scored by its due time (Redis's clock plus
/// the countdown, or the ETA as given).
///
/// KEYS: delayed, job:<id>. ARGV: id, countdown ms (or ''), eta ms (or
/// ''), target stream, then the field pairs.
const DELAY: &str = concat!(
    now_ms!(),
    r#"
local due
if ARGV[2] ~= '' then due = now + tonumber(ARGV[2]) else due = tonumber(ARGV[3]) end
local h = {'_s', ARGV[4]}
for i = 5, #ARGV do h[#h + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(h))
redis.call('ZADD', KEYS[1], due, ARGV[1])
return due
"#
);

/// Ends a job revoked before it ran (`revoke.rs`): stores `value` (the
/// `Revoked` failure) as its result for its expiry unless it ignores its
/// result, and tells the client waiting for it, if its options (`opt`, the
/// JSON of `message.rs`) name one within this broker's keys. Options that
/// do not decode end it silently: nobody can be told.
macro_rules! settle_revoked {
    () => {
        "local function settle_revoked(base, id, opt, value, attempt)\n\
           local ok, o = pcall(cjson.decode, opt or '')\n\
           if not ok or type(o) ~= 'table' then return end\n\
           local ttl = tonumber(o['result_ttl_ms']) or 0\n\
           if o['ignore_result'] ~= true and ttl >= 1 then\n\
             redis.call('SET', base .. 'res:' .. id, value, 'PX', math.floor(ttl))\n\
           end\n\
           local reply = o['reply']\n\
           if type(reply) == 'string' and string.sub(reply, 1, #base) == base\n\
              and redis.call('EXISTS', reply) == 1 then\n\
             redis.pcall('XADD', reply, 'MAXLEN', '~', 1000000, '*',\n\
               'id', id, 'v', value, 'a', attempt or '1')\n\
           end\n\
         end\n"
    };
}
pub(crate) use settle_revoked;

/// Moves due jobs from the delayed set to their streams, at most ARGV[2]
/// of them. A job whose stream cannot take it (a key of another type) goes
/// to the dead-letter stream instead, so it is not tried again for ever. A
/// job revoked meanwhile (`rv:<id>`: a retry queued as the revoke came, a
/// countdown submitted after it) is not queued: it ends `Revoked` here.
///
/// KEYS: delayed, dead. ARGV: key base (`{prefix}:`), most to move, the
/// stored `Revoked` failure. Returns {moved, next due ms or -1, now ms}.
const PROMOTE: &str = concat!(
    now_ms!(),
    settle_revoked!(),
    r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local k = ARGV[1] .. 'job:' .. id
  local h = redis.call('HGETALL', k)
  local stream = nil
  local f = {}
  local opt, try = nil, nil
  for i = 1, #h, 2 do
    if h[i] == '_s' then stream = h[i + 1] else f[#f + 1] = h[i]; f[#f + 1] = h[i + 1] end
    if h[i] == 'opt' then opt = h[i + 1] elseif h[i] == 'try' then try = h[i + 1] end
  end
  if redis.call('EXISTS', ARGV[1] .. 'rv:' .. id) == 1 then
    settle_revoked(ARGV[1], id, opt, ARGV[3], try)
  elseif stream and #f > 0 then
    local ok = redis.pcall('XADD', stream, '*', unpack(f))
    if type(ok) == 'table' and ok.err then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'reason',
        'could not be queued when due: ' .. ok.err, 'stream', stream, unpack(f))
    end
  end
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[1], id)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due = -1
if #nxt > 0 then due = tonumber(nxt[2]) end
return {#ids, due, now}
"#
);

/// Renews the leases of entries `me` holds (resets their idle time without
/// counting a delivery), after checking each is still `me`'s.
///
/// KEYS: stream. ARGV: group, me, entry ids... Returns the ids that are no
/// longer `me`'s.
const RENEW: &str = concat!(
    owns!(),
    r#"
local lost = {}
for i = 3, #ARGV do
  if owns(KEYS[1], ARGV[1], ARGV[i], ARGV[2], nil) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#
);

/// Takes over entries whose lease expired (idle at least ARGV[3] ms), at
/// most ARGV[4] of them, scanning the whole pending list. Each comes with
/// its delivery count, this delivery included: the host dead-letters those
/// over the cap.
///
/// KEYS: stream. ARGV: group, me, min idle ms, most. Returns
/// {{id, fields, deliveries}, ...}.
const RECLAIM: &str = r#"
local out = {}
local want = tonumber(ARGV[4])
local cursor = '0-0'
repeat
  local r = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
    'COUNT', want - #out)
  if type(r) ~= 'table' or r.err then return out end
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if type(e) == 'table' and e[2] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
      local n = 0
      if #p == 1 then n = p[1][4] end
      out[#out + 1] = {e[1], e[2], n}
    end
  end
until cursor == '0-0' or #out >= want
return out
"#;

/// Settles a batch of jobs a host ran, each after the ownership check:
/// `done` acknowledges and deletes the entry, stores the result for its
/// expiry and notifies the waiting client; `again` acknowledges and
/// deletes it and queues its fields anew — at once on its stream, or after
/// a delay through the delayed set (a retry, a job handed back, a job its
/// rate limit holds back).
///
/// KEYS: delayed, then per job: stream, res:<id>, reply stream (or any
/// key, unused). ARGV: group, me, key base, then per job: kind, entry id,
/// deliveries, job id, attempts, and for `done` value, ttl ms, notify
/// (1/0), for `again` delay ms and the seven fields. Returns 1 per job
/// settled, 0 per job no longer this host's (its result dropped).
const FINISH: &str = concat!(
    owns!(),
    r#"
local G, ME, BASE = ARGV[1], ARGV[2], ARGV[3]
local FIELDS = {'id', 'job', 'codec', 'fp', 'try', 'opt', 'arg'}
local out = {}
local n = (#KEYS - 1) / 3
local a = 4
local now = nil
for j = 0, n - 1 do
  local stream, res, reply = KEYS[2 + 3 * j], KEYS[3 + 3 * j], KEYS[4 + 3 * j]
  local kind, entry, id = ARGV[a], ARGV[a + 1], ARGV[a + 3]
  local mine = owns(stream, G, entry, ME, tonumber(ARGV[a + 2]))
  if mine then
    redis.call('XACK', stream, G, entry)
    redis.call('XDEL', stream, entry)
  end
  if kind == 'done' then
    if mine then
      local ttl = tonumber(ARGV[a + 6])
      if ttl > 0 then redis.call('SET', res, ARGV[a + 5], 'PX', ttl) end
      if ARGV[a + 7] == '1' and redis.call('EXISTS', reply) == 1 then
        redis.pcall('XADD', reply, 'MAXLEN', '~', 1000000, '*',
          'id', id, 'v', ARGV[a + 5], 'a', ARGV[a + 4])
      end
    end
    a = a + 8
  else
    if mine then
      local f = {}
      for i = 1, 7 do f[#f + 1] = FIELDS[i]; f[#f + 1] = ARGV[a + 5 + i] end
      local delay = tonumber(ARGV[a + 5])
      if delay <= 0 then
        redis.call('XADD', stream, '*', unpack(f))
      else
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end
        local k = BASE .. 'job:' .. id
        local ok = redis.pcall('HSET', k, '_s', stream, unpack(f))
        if type(ok) == 'table' and ok.err then
          redis.call('XADD', stream, '*', unpack(f))
        else
          redis.call('ZADD', KEYS[1], now + delay, id)
        end
      end
    end
    a = a + 13
  end
  out[#out + 1] = mine and 1 or 0
end
return out
"#
);

/// Moves one entry to the dead-letter stream, with its reason and its
/// original fields (prefixed `f:`), after the ownership check; stores the
/// failure as the job's result and tells the waiting client, if the entry
/// said who that is.
///
/// KEYS: stream, dead, res:<id> (or any key), reply (or any key). ARGV:
/// group, me, entry id, deliveries, reason, value, ttl ms, notify (1/0),
/// job id, dead stream length cap, then the original field pairs.
const DEAD: &str = concat!(
    owns!(),
    r#"
if not owns(KEYS[1], ARGV[1], ARGV[3], ARGV[2], tonumber(ARGV[4])) then return 0 end
local d = {'reason', ARGV[5], 'stream', KEYS[1], 'entry', ARGV[3], 'deliveries', ARGV[4],
  'host', ARGV[2]}
for i = 11, #ARGV, 2 do d[#d + 1] = 'f:' .. ARGV[i]; d[#d + 1] = ARGV[i + 1] or '' end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[10]), '*', unpack(d))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
local ttl = tonumber(ARGV[7])
if ttl > 0 then redis.call('SET', KEYS[3], ARGV[6], 'PX', ttl) end
if ARGV[8] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', 1000000, '*', 'id', ARGV[9], 'v', ARGV[6], 'a', '1')
end
return 1
"#
);

/// One global rate limiter (GCRA without burst): a start is allowed when
/// the last allowed one is at least the interval ago, by Redis's clock.
/// Returns 0 (start now, and the slot is taken) or the milliseconds to
/// wait before asking again.
///
/// KEYS: rl:<name>. ARGV: interval µs.
const RATE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local iv = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat <= now then
  redis.call('SET', KEYS[1], string.format('%.0f', now + iv), 'PX', math.ceil(iv / 1000) + 1000)
  return 0
end
return math.ceil((tat - now) / 1000)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_a_distinct_hash() {
        let s = Scripts::get();
        let mut shas: Vec<&str> = s.all().iter().map(|s| s.sha.as_str()).collect();
        shas.sort();
        shas.dedup();
        assert_eq!(shas.len(), 7);
        assert!(s.finish.source.contains("local function owns"));
        assert!(s.promote.source.contains("redis.call('TIME')"));
    }
}
