//! The Redis keys of one broker: every name in one place.
//!
//! Every key starts with the broker's prefix in braces — `{forkpool}:…` by
//! default — a Redis Cluster hash tag, so that all keys of one broker hash
//! to one slot and the Lua scripts, which touch several keys at once, stay
//! valid there. Two brokers with different prefixes share nothing.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `q:<queue>:<priority>` | stream | jobs ready to run, read through the consumer group `workers` |
//! | `prios:<queue>` | sorted set | the priority levels a queue has seen (member and score: the level) |
//! | `delayed` | sorted set | job ids by due time (ms): countdowns, ETAs, retry back-offs, rate-limited jobs |
//! | `job:<id>` | hash | a delayed job's fields, and `_s`, the stream it goes to |
//! | `res:<id>` | string | a finished job's result, with its expiry |
//! | `reply:<client>` | stream | results for the handles of one client |
//! | `dead` | stream | dead letters, with their reason |
//! | `rl:<job name>` | string | the global rate limiter of a job name |
//! | `ids` | string | the counter job ids are taken from |
//! | `rv:<id>` | string | a revoke of job `id` (`1`, or `t` to terminate), kept for the result expiry (`revoke.rs`) |
//! | `revokes` | stream | every revoke, in order: what hosts read to learn them (`revoke.rs`) |
//! | `pg:<id>` | string | the latest progress of running job `id`, `done/total` (`progress.rs`) |
//! | `host:<consumer>` | string | a live host's snapshot, JSON, expiring unless refreshed (`inspect.rs`) |

use super::BrokerError;

/// The consumer group every stream is read through.
pub(crate) const GROUP: &str = "workers";

/// A queue name: what a stream key may hold.
pub(crate) fn check_queue(name: &str) -> Result<(), BrokerError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::Config(format!(
            "queue name {name:?}: 1 to 200 characters, no spaces, control characters or braces"
        )))
    }
}

/// The keys of one broker.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{prefix}:`
    base: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{{{prefix}}}:"),
        }
    }

    /// `{prefix}:` — what the scripts prepend to build `job:` and `res:`
    /// keys from ids.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn stream(&self, queue: &str, priority: i32) -> String {
        format!("{}q:{queue}:{priority}", self.base)
    }

    pub(crate) fn priorities(&self, queue: &str) -> String {
        format!("{}prios:{queue}", self.base)
    }

    pub(crate) fn delayed(&self) -> String {
        format!("{}delayed", self.base)
    }

    pub(crate) fn job(&self, id: u64) -> String {
        format!("{}job:{id}", self.base)
    }

    pub(crate) fn result(&self, id: u64) -> String {
        format!("{}res:{id}", self.base)
    }

    pub(crate) fn reply(&self, client: &str) -> String {
        format!("{}reply:{client}", self.base)
    }

    pub(crate) fn dead(&self) -> String {
        format!("{}dead", self.base)
    }

    pub(crate) fn rate(&self, job: &str) -> String {
        format!("{}rl:{job}", self.base)
    }

    pub(crate) fn ids(&self) -> String {
        format!("{}ids", self.base)
    }

    pub(crate) fn revoked(&self, id: u64) -> String {
        format!("{}rv:{id}", self.base)
    }

    pub(crate) fn revokes(&self) -> String {
        format!("{}revokes", self.base)
    }

    pub(crate) fn progress(&self, id: u64) -> String {
        format!("{}pg:{id}", self.base)
    }

    pub(crate) fn host(&self, consumer: &str) -> String {
        format!("{}host:{consumer}", self.base)
    }

    /// The pattern of every `prios:<queue>` key: how the queues in use are
    /// found (`SCAN`).
    pub(crate) fn priorities_pattern(&self) -> String {
        format!("{}prios:*", self.base)
    }

    /// The pattern of every `host:<consumer>` key.
    pub(crate) fn hosts_pattern(&self) -> String {
        format!("{}host:*", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("app");
        assert_eq!(k.stream("default", -2), "{app}:q:default:-2");
        assert_eq!(k.result(7), "{app}:res:7");
        assert_eq!(k.job(7), format!("{}job:7", k.base()));
        for key in [
            k.delayed(),
            k.dead(),
            k.ids(),
            k.reply("h:1:x"),
            k.rate("a.b"),
        ] {
            assert!(key.starts_with("{app}:"), "{key}");
        }
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(check_queue("reports.monthly").is_ok());
        for bad in ["", "a b", "x{y}", "tab\t", &"q".repeat(201)] {
            assert!(check_queue(bad).is_err(), "{bad:?}");
        }
    }
}
