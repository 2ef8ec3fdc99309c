//! Success and error callbacks of a [`RemoteJob`]: run in the submitting
//! process when the job's outcome arrives from a host.
//!
//! A job with callbacks travels as a job someone waits for — its entry
//! names the client's reply stream, and the client tracks it like a
//! handle's, whether it was submitted, detached or spawned — so its
//! outcome reaches the client's listener thread (`listener.rs`). The
//! callbacks are the job slot's finisher: they are told the outcome once,
//! when the slot resolves (a result, a failure, a revoke, a dead letter,
//! or `JobError::Broker` when the client is dropped first). The listener
//! only hands them over: they run on the client's callback thread
//! (`forkpool-callbacks`, the local pool's runner from `options/callbacks.rs`,
//! started on first use), one at a time, in the order outcomes arrived. A
//! callback that panics is logged (`log::error!`), and the thread goes on;
//! the listener never runs user code. Dropping the client waits for the
//! callbacks queued so far and joins the thread.
//!
//! One difference from a local [`Job`](crate::Job): a fallible job's own
//! `Err(e)` is a value here (the handle of a [`Client::try_job`](super::Client::try_job)
//! gives `Ok(Err(e))`), so `on_success` sees it as `&Err(e)`; `on_error` is
//! told when a job produced no value at all.

use super::job::RemoteJob;
use crate::batch::slot::Finisher;
use crate::error::JobError;
use crate::options::callbacks::{Task, post};
use crate::transport::codec::Codec;
use crate::transport::wire::{self, Tag};
use crossbeam_channel::Sender;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A success callback, erased: decodes a value's body and calls the user's
/// closure; `Err` if the body does not decode (then `on_error` is told).
pub(crate) type OnValue = Arc<dyn Fn(&[u8]) -> Result<(), JobError> + Send + Sync>;
/// An error callback.
pub(crate) type OnFailure = Arc<dyn Fn(&JobError) + Send + Sync>;

/// A remote job's callbacks.
#[derive(Clone, Default)]
pub(crate) struct RemoteCallbacks {
    pub on_success: Option<OnValue>,
    pub on_error: Option<OnFailure>,
}

impl RemoteCallbacks {
    pub(crate) fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_error.is_none()
    }

    /// The slot finisher that tells the callbacks the outcome (on
    /// `runner`, or here if there is none) and passes it on unchanged.
    pub(crate) fn finisher(self, runner: Option<Sender<Task>>) -> Finisher {
        Box::new(move |outcome| {
            self.notify(&outcome, runner.as_ref());
            outcome
        })
    }

    fn notify(&self, outcome: &Result<Vec<u8>, JobError>, runner: Option<&Sender<Task>>) {
        let error = match outcome {
            Err(e) => e.clone(),
            Ok(buf) => match wire::records(buf).next() {
                Some(rec) if matches!(rec.tag, Tag::Ok | Tag::Err) => {
                    let body = rec.body.to_vec();
                    let (ok, err) = (self.on_success.clone(), self.on_error.clone());
                    let task: Task = Box::new(move || {
                        if let Some(cb) = ok
                            && let Err(e) = cb(&body)
                            && let Some(cb) = err
                        {
                            cb(&e);
                        }
                    });
                    return post(runner, task);
                }
                Some(rec) => crate::batch::outcome::outcome(rec)
                    .err()
                    .unwrap_or_else(|| JobError::Codec("unexpected record".into())),
                None => JobError::Codec("empty result record".into()),
            },
        };
        if let Some(cb) = self.on_error.clone() {
            post(runner, Box::new(move || cb(&error)));
        }
    }
}

impl<A, R> RemoteJob<A, R>
where
    A: Serialize + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// Calls `f` with the job's value when it succeeds, once, after any
    /// retries — in this process, on the client's callback thread, whether
    /// the job was submitted, detached or spawned. For a fallible job
    /// ([`Client::try_job`](super::Client::try_job)) the value is its
    /// `Result`, its own `Err` included. Replaces an earlier success
    /// callback; set it after [`ignore_result`](Self::ignore_result) (which
    /// drops it: there is no value then).
    ///
    /// ```no_run
    /// fn square(x: u64) -> u64 { x * x }
    /// forkpool::register!(square);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// client.job(square).on_success(move |v: &u64| tx.send(*v).unwrap()).spawn(7);
    /// assert_eq!(rx.recv()?, 49);
    /// # Ok(()) }
    /// ```
    pub fn on_success(mut self, f: impl Fn(&R) + Send + Sync + 'static) -> Self {
        let codec: Codec = self.client.inner.broker.codec;
        self.callbacks.on_success = Some(Arc::new(move |body: &[u8]| {
            let value: R = codec
                .decode(body)
                .map_err(|e| JobError::Codec(format!("result: {e}")))?;
            f(&value);
            Ok(())
        }));
        self
    }

    /// Calls `f` with the error when the job produced no value — it
    /// panicked, crashed, timed out, expired, was revoked or
    /// dead-lettered, or its result could not be read — once, after any
    /// retries, on the client's callback thread. If the client is dropped
    /// before the outcome arrives, `f` is told `JobError::Broker`.
    /// Replaces an earlier error callback.
    ///
    /// ```no_run
    /// use forkpool::JobError;
    /// fn boom(_: ()) -> u32 { panic!("boom") }
    /// forkpool::register!(boom);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// client.job(boom).on_error(move |e: &JobError| tx.send(e.clone()).unwrap()).spawn(());
    /// assert!(matches!(rx.recv()?, JobError::Panicked { .. }));
    /// # Ok(()) }
    /// ```
    pub fn on_error(mut self, f: impl Fn(&JobError) + Send + Sync + 'static) -> Self {
        self.callbacks.on_error = Some(Arc::new(f));
        self
    }
}
