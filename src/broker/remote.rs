//! What a broker job's [`JobHandle`](crate::JobHandle) asks of its client:
//! cancelling (a revoke with `terminate`) and progress (read from Redis).
//!
//! A handle does not keep its client alive: it holds the client weakly,
//! and once the client is gone `cancel` says false and `progress` `None`
//! (the handle itself resolves with `JobError::Broker` then).

use super::client::{Client, Inner};
use super::revoke::Revocation;
use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::batch::slot::Slot;
use crate::client::handle::Tracker;
use std::sync::{Arc, Weak};

pub(crate) struct Remote {
    pub client: Weak<Inner>,
    pub slot: Arc<Slot>,
}

impl Remote {
    fn client(&self) -> Option<Client> {
        self.client.upgrade().map(|inner| Client { inner })
    }
}

impl Tracker for Remote {
    fn progress(&self) -> Progress {
        self.reported().unwrap_or(Progress { done: 0, total: 0 })
    }

    /// Revokes the job with `terminate`, after making sure the client's
    /// writer has put it in Redis (else the revoke would not find it).
    /// True when the handle resolves `Revoked` because of it.
    fn cancel(&self) -> bool {
        if self.slot.is_ready() {
            return false;
        }
        let Some(client) = self.client() else {
            return false;
        };
        if client.flush().is_err() {
            return false;
        }
        match client.revoke_here(self.slot.id, true) {
            // Ended by the revoke itself, whoever resolves the handle.
            Ok((Revocation::BeforeStart(_), _)) => true,
            Ok((Revocation::Held { .. }, resolved)) => resolved,
            _ => false,
        }
    }

    fn reported(&self) -> Option<Progress> {
        if self.slot.is_ready() {
            return None;
        }
        self.client()?
            .progress(JobId(self.slot.id.0))
            .ok()
            .flatten()
    }
}
