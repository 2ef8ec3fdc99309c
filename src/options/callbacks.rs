//! Success and error callbacks: the pool's callback thread, and the typed
//! [`Failure`] an error callback of a fallible job receives.
//!
//! A job's callbacks run once, when its outcome is final (after its
//! retries), in the caller's process, on a thread the pool owns
//! (`forkpool-callbacks`, started on first use). The supervisor only hands
//! them over — it copies the result bytes and queues a task — so a slow
//! callback never delays dispatch; callbacks run one at a time, in the
//! order jobs finished. A callback that panics is reported on stderr and
//! the thread goes on with the next.
//!
//! The thread holds nothing of the pool. [`Pool::join`](crate::Pool::join)
//! waits for the callbacks queued so far; dropping the pool does not (they
//! still run). A job resolved after that thread has ended (submitted to a
//! joined pool, say) runs its callback on the thread that resolved it.

use crate::batch::outcome;
use crate::batch::slot::Finisher;
use crate::error::JobError;
use crate::transport::wire::{self, Tag};
use crossbeam_channel::Sender;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

/// Why a fallible job ([`Pool::try_job`](crate::Pool::try_job)) failed, as
/// its error callback sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// The job ran and returned `Err(e)` (after any retries).
    Err(E),
    /// The job produced no result: it panicked, crashed, timed out, was
    /// cancelled or expired, ...
    Job(JobError),
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Err(e) => write!(f, "job returned an error: {e}"),
            Failure::Job(e) => e.fmt(f),
        }
    }
}

/// A unit of work for the callback thread.
pub(crate) type Task = Box<dyn FnOnce() + Send>;

/// A success callback, erased: it decodes the body of the job's `Ok`
/// record and calls the user's closure; `Err` if the body did not decode
/// (then the error callback runs instead).
pub(crate) type OnSuccess = Arc<dyn Fn(&[u8]) -> Result<(), JobError> + Send + Sync>;

/// An error callback, erased: it decodes what it needs and calls the
/// user's closure.
pub(crate) type OnError = Arc<dyn Fn(RawFailure) + Send + Sync>;

/// A final failure before decoding.
pub(crate) enum RawFailure {
    /// Body of an `Err` record of a fallible job (its encoded `Result`).
    Returned(Vec<u8>),
    /// The job produced no result.
    Job(JobError),
}

/// A job's callbacks, ready to be told its outcome.
#[derive(Clone, Default)]
pub(crate) struct JobCallbacks {
    pub on_success: Option<OnSuccess>,
    pub on_error: Option<OnError>,
}

impl JobCallbacks {
    pub(crate) fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_error.is_none()
    }

    /// Queues the callback that `outcome` calls for, on `runner` (or runs
    /// it here if there is no runner).
    pub(crate) fn notify(self, outcome: &Result<Vec<u8>, JobError>, runner: Option<&Sender<Task>>) {
        let JobCallbacks {
            on_success,
            on_error,
        } = self;
        let failure = match outcome {
            Err(e) => RawFailure::Job(e.clone()),
            Ok(buf) => match wire::records(buf).next() {
                None => RawFailure::Job(JobError::Codec("empty result record".into())),
                Some(rec) if rec.tag == Tag::Ok => {
                    let body = rec.body.to_vec();
                    let task: Task = Box::new(move || {
                        if let Some(cb) = on_success
                            && let Err(e) = cb(&body)
                            && let Some(cb) = on_error
                        {
                            cb(RawFailure::Job(e));
                        }
                    });
                    return post(runner, task);
                }
                Some(rec) if rec.tag == Tag::Err => RawFailure::Returned(rec.body.to_vec()),
                Some(rec) => RawFailure::Job(
                    outcome::outcome(rec)
                        .err()
                        .unwrap_or_else(|| JobError::Codec("unexpected record".into())),
                ),
            },
        };
        if let Some(cb) = on_error {
            post(runner, Box::new(move || cb(failure)));
        }
    }
}

/// Hands `task` to the callback thread, or runs it here if there is none.
pub(crate) fn post(runner: Option<&Sender<Task>>, task: Task) {
    match runner {
        Some(tx) => {
            if let Err(e) = tx.send(task) {
                run(e.into_inner());
            }
        }
        None => run(task),
    }
}

/// Runs one callback; a panic is reported, not propagated.
fn run(task: Task) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(task)) {
        let msg = crate::worker::panic::payload_text(payload.as_ref());
        log::error!("a job callback panicked: {msg}");
    }
}

/// The pool's callback thread.
#[derive(Default)]
pub(crate) struct Callbacks {
    state: Mutex<Runner>,
}

#[derive(Default)]
enum Runner {
    #[default]
    NotStarted,
    Running {
        tx: Sender<Task>,
        thread: JoinHandle<()>,
    },
    /// Joined: callbacks run on the thread that resolves their job.
    Finished,
}

impl Callbacks {
    /// A sender to the callback thread, starting it on first use. `None`
    /// once the pool was joined (or if the thread could not start).
    pub(crate) fn sender(&self) -> Option<Sender<Task>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Runner::NotStarted = *state {
            let (tx, rx) = crossbeam_channel::unbounded::<Task>();
            let spawned = thread::Builder::new()
                .name("forkpool-callbacks".into())
                .spawn(move || {
                    for task in rx {
                        run(task);
                    }
                });
            *state = match spawned {
                Ok(thread) => Runner::Running { tx, thread },
                Err(_) => Runner::Finished,
            };
        }
        match &*state {
            Runner::Running { tx, .. } => Some(tx.clone()),
            _ => None,
        }
    }

    /// Waits for every callback queued so far (the pool is done: no more
    /// are coming from the supervisor). Called from a callback itself, it
    /// does not wait for itself.
    pub(crate) fn finish(&self) {
        let old = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *state, Runner::Finished)
        };
        if let Runner::Running { tx, thread } = old {
            drop(tx);
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// A finisher that runs `callbacks`, then hands the outcome to `next`.
pub(crate) fn finisher(
    callbacks: JobCallbacks,
    runner: Option<Sender<Task>>,
    next: impl FnOnce(Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> + Send + 'static,
) -> Finisher {
    Box::new(move |outcome| {
        if !callbacks.is_empty() {
            callbacks.notify(&outcome, runner.as_ref());
        }
        next(outcome)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn ok_record(body: &[u8]) -> Vec<u8> {
        let mut v = wire::header(Tag::Ok, body.len() as u32).to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn exactly_one_callback_runs_on_the_callback_thread() {
        let runner = Callbacks::default();
        let (tx, rx) = mpsc::channel();
        let (tx2, tx3) = (tx.clone(), tx.clone());
        let cbs = JobCallbacks {
            on_success: Some(Arc::new(move |body: &[u8]| {
                let name = thread::current().name().map(String::from);
                tx2.send(format!("ok {body:?} on {name:?}")).unwrap();
                Ok(())
            })),
            on_error: Some(Arc::new(move |f| {
                let what = match f {
                    RawFailure::Job(e) => e.to_string(),
                    RawFailure::Returned(b) => format!("returned {b:?}"),
                };
                tx3.send(format!("error {what}")).unwrap();
            })),
        };
        let sender = runner.sender();
        assert!(sender.is_some());
        cbs.clone().notify(&Ok(ok_record(&[7])), sender.as_ref());
        cbs.clone()
            .notify(&Err(JobError::Cancelled), sender.as_ref());
        let mut err = wire::header(Tag::Err, 1).to_vec();
        err.push(9);
        cbs.notify(&Ok(err), sender.as_ref());
        drop(sender);
        runner.finish();
        drop(tx);
        let got: Vec<String> = rx.iter().collect();
        assert_eq!(
            got,
            [
                "ok [7] on Some(\"forkpool-callbacks\")",
                "error job was cancelled",
                "error returned [9]",
            ]
        );
        assert!(runner.sender().is_none(), "no new thread after finish");
    }

    #[test]
    fn a_success_that_cannot_decode_becomes_an_error_and_panics_are_contained() {
        let (tx, rx) = mpsc::channel();
        let cbs = JobCallbacks {
            on_success: Some(Arc::new(|_: &[u8]| panic!("callback bug"))),
            on_error: None,
        };
        cbs.notify(&Ok(ok_record(&[])), None); // runs here; the panic is reported
        let cbs = JobCallbacks {
            on_success: Some(Arc::new(|_: &[u8]| Err(JobError::Codec("bad".into())))),
            on_error: Some(Arc::new(move |f| {
                if let RawFailure::Job(e) = f {
                    tx.send(e).unwrap();
                }
            })),
        };
        cbs.notify(&Ok(ok_record(&[1])), None);
        assert_eq!(rx.try_recv(), Ok(JobError::Codec("bad".into())));
    }
}
