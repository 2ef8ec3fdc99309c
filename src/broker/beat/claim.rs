//! Claiming a slot in Redis: the scripts `PEEK` (a schedule's newest
//! claimed slot, and whether its newest run is unfinished) and `FIRE` (a
//! compare-and-set on that slot that queues the slot's runs in the same
//! script), and the calls that run them. See the module doc of
//! `beat/mod.rs` for why a claim is a compare-and-set and not a lease.

use super::entry::Ctx;
use crate::broker::BrokerError;
use crate::broker::message::Envelope;
use crate::broker::writer::Start;

/// Reads a schedule's state. KEYS: beat:<name>. ARGV: key base. Returns
/// {last ('' if none), 1 if its newest run is unfinished else 0}.
const PEEK: &str = r#"
local last = redis.call('HGET', KEYS[1], 'last') or ''
local job = redis.call('HGET', KEYS[1], 'job')
local running = 0
if job then
  local v = redis.call('GET', ARGV[1] .. 'res:' .. job)
  if v and string.sub(v, 1, 1) == 'P' then running = 1 end
end
return {last, running}
"#;

/// Claims slot ARGV[3] and queues its runs, if `last` is still ARGV[2]
/// (and, with ARGV[4] = '1', the newest run is finished). Each run is
/// queued as the client's writer would (its stream and consumer group
/// made if new, its priority level recorded, or into the delayed set),
/// with its result key marked `P`.
///
/// KEYS: beat:<name>, delayed. ARGV: key base, expected last ('' none),
/// new last, forbid (1/0), number of runs, then per run: id, stream,
/// queue, priority, countdown ms ('' none), eta ms ('' none), result ttl
/// ms, and the seven field values. Returns {1, last} when claimed, {0,
/// last} when `last` was not as expected, {2, last} when a run is
/// unfinished.
const FIRE: &str = r#"
local B = ARGV[1]
local last = redis.call('HGET', KEYS[1], 'last') or ''
if last ~= ARGV[2] then return {0, last} end
if ARGV[4] == '1' then
  local job = redis.call('HGET', KEYS[1], 'job')
  if job then
    local v = redis.call('GET', B .. 'res:' .. job)
    if v and string.sub(v, 1, 1) == 'P' then return {2, last} end
  end
end
redis.call('HSET', KEYS[1], 'last', ARGV[3])
local FIELDS = {'id', 'job', 'codec', 'fp', 'try', 'opt', 'arg'}
local a = 6
for r = 1, tonumber(ARGV[5]) do
  local id, stream, queue, prio = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local countdown, eta, ttl = ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6])
  local f = {}
  for i = 1, 7 do f[#f + 1] = FIELDS[i]; f[#f + 1] = ARGV[a + 6 + i] end
  redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
  redis.pcall('ZADD', B .. 'prios:' .. queue, prio, prio)
  redis.call('SET', B .. 'res:' .. id, 'P', 'PX', math.max(ttl, 1))
  if countdown == '' and eta == '' then
    local ok = redis.pcall('XADD', stream, '*', unpack(f))
    if type(ok) == 'table' and ok.err then
      redis.call('SET', B .. 'res:' .. id, 'E' .. cjson.encode({Broker = {message =
        'Redis refused the scheduled run: ' .. ok.err}}), 'PX', math.max(ttl, 1))
    end
  else
    local due
    if countdown ~= '' then
      local t = redis.call('TIME')
      due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(countdown)
    else
      due = tonumber(eta)
    end
    local k = B .. 'job:' .. id
    redis.call('DEL', k)
    redis.call('HSET', k, '_s', stream, unpack(f))
    redis.call('ZADD', KEYS[2], due, id)
  end
  redis.call('HSET', KEYS[1], 'job', id)
  a = a + 14
end
return {1, ARGV[3]}
"#;

/// A claim's answer.
pub(super) enum Claim {
    Claimed,
    /// `last` was not what was read: now it is this.
    Moved(Option<u64>),
    /// The newest run is unfinished (asked with `forbid`).
    Busy,
}

/// A run about to be queued.
pub(super) struct Run {
    pub(super) id: u64,
    pub(super) slot: u64,
    pub(super) start: Start,
    pub(super) env: Envelope,
}

fn parse_last(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// `PEEK`: the newest slot claimed, and whether the newest run is
/// unfinished.
pub(super) fn peek(cx: &mut Ctx<'_>, key: &str) -> Result<(Option<u64>, bool), BrokerError> {
    let base = cx.inner.keys.base().to_string();
    let script = redis::Script::new(PEEK);
    let (last, busy): (String, i64) = cx
        .conn
        .run_once(|con| script.key(key).arg(&base).invoke(con))?;
    Ok((parse_last(&last), busy == 1))
}

/// `FIRE`: claims `slot` (if `last` is still `expect`) and queues `runs`.
pub(super) fn fire(
    cx: &mut Ctx<'_>,
    key: &str,
    expect: Option<u64>,
    slot: u64,
    forbid: bool,
    runs: &[Run],
) -> Result<Claim, BrokerError> {
    let keys = &cx.inner.keys;
    let script = redis::Script::new(FIRE);
    let mut inv = script.prepare_invoke();
    inv.key(key)
        .key(keys.delayed())
        .arg(keys.base())
        .arg(expect.map(|l| l.to_string()).unwrap_or_default())
        .arg(slot)
        .arg(if forbid { "1" } else { "0" })
        .arg(runs.len());
    for run in runs {
        let o = &run.env.opts;
        let (countdown, eta) = match run.start {
            Start::Now => (String::new(), String::new()),
            Start::Countdown(ms) => (ms.to_string(), String::new()),
            Start::Eta(at) => (String::new(), at.to_string()),
        };
        inv.arg(run.id)
            .arg(keys.stream(&o.queue, o.priority))
            .arg(&o.queue)
            .arg(o.priority)
            .arg(countdown)
            .arg(eta)
            .arg(o.result_ttl_ms);
        for field in run.env.fields() {
            inv.arg(field);
        }
    }
    let (code, last): (i64, String) = cx.conn.run_once(|con| inv.invoke(con))?;
    Ok(match code {
        1 => Claim::Claimed,
        2 => Claim::Busy,
        _ => Claim::Moved(parse_last(&last)),
    })
}
