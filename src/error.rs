//! Errors: [`JobError`] for one job, [`Error`] for a pool-level call.
//!
//! A job's failure never becomes a pool failure: every way a job can go wrong
//! (its function panicked, its worker died, it ran past its time limit, its
//! bytes could not be encoded) is a [`JobError`] value delivered for that job
//! alone. [`Error`] is for the calls that act on the pool as a whole —
//! building it, shutting it down, or a `map` that reports its lowest failing
//! item.
//!
//! A workflow (a chain, a group, a chord) fails with the same type: a
//! chain names the step that failed ([`JobError::StepFailed`]), a group or
//! a chord every member that failed ([`JobError::MembersFailed`], with a
//! [`GroupFailure`]). Errors are serde types, so a chord's body can receive
//! its members' errors.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::time::Duration;

/// Why one job did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum JobError {
    /// The job's function panicked. The worker caught the panic and lives on.
    /// `message` is the panic payload followed by where it happened.
    #[error("job panicked: {message}")]
    Panicked {
        /// The panic message and its location (`"boom (at src/main.rs:3:5)"`).
        message: String,
    },
    /// The worker process running the job died: it was killed by `signal`,
    /// or exited on its own with `exit_code`. Both are `None` only when the
    /// exit status could not be learned.
    #[error("worker crashed while running the job ({})", crash_cause(*signal, *exit_code))]
    Crashed {
        /// The signal that killed the worker, if it was killed by one.
        signal: Option<i32>,
        /// The worker's exit code, if it exited by itself.
        exit_code: Option<i32>,
    },
    /// The job ran past its hard time limit; its worker was killed and replaced.
    #[error("job ran past its time limit of {limit:?}")]
    TimedOut {
        /// The hard limit that was exceeded.
        limit: Duration,
    },
    /// The job was cancelled (by [`JobHandle::cancel`](crate::JobHandle::cancel)
    /// or because the pool was terminated) before it produced a result.
    #[error("job was cancelled")]
    Cancelled,
    /// The job was revoked ([`Pool::revoke`](crate::Pool::revoke)) before
    /// it produced a result: it never ran, or its worker was terminated.
    #[error("job was revoked")]
    Revoked,
    /// The argument or the result could not be (de)serialized.
    #[error("could not encode or decode the job's data: {0}")]
    Codec(String),
    /// The pool was closed before the job was submitted.
    #[error("the pool is closed and accepts no new jobs")]
    PoolClosed,
    /// An argument or result is larger than the pool's message size cap
    /// ([`PoolBuilder::max_message_size`](crate::PoolBuilder::max_message_size)).
    #[error("message of {size} bytes exceeds the cap of {limit} bytes")]
    TooLarge {
        /// The size of the message that was refused, in bytes.
        size: u64,
        /// The cap in force, in bytes.
        limit: u64,
    },
    /// The job had not started when its expiry time passed
    /// ([`Job::expires`](crate::Job::expires)), so it never ran.
    #[error("job expired before it started")]
    Expired,
    /// The job's options cannot work together (a per-job soft time limit
    /// above its hard limit, say); the job was not run.
    #[error("invalid job options: {message}")]
    InvalidOptions {
        /// What is wrong with the options.
        message: String,
    },
    /// The job named a queue the pool does not have
    /// ([`Job::queue`](crate::Job::queue)); it was not run.
    #[error("the pool has no queue called {queue:?}")]
    NoSuchQueue {
        /// The name the job gave.
        queue: String,
    },
    /// No worker could be started to run the job: the initializer panicked
    /// or the worker could not be forked, several times in a row.
    #[error("no worker could be started: {message}")]
    WorkerStart {
        /// What went wrong when starting the last worker.
        message: String,
    },
    /// A step of a chain failed, so the steps after it never ran. `step`
    /// counts from 0 (a group or a chord in a chain is one step); `error`
    /// is that step's own failure.
    #[error("step {step} of the chain failed: {error}")]
    StepFailed {
        /// Which step failed, from 0.
        step: usize,
        /// Why it failed.
        error: Box<JobError>,
    },
    /// Members of a group failed (or of a chord, whose body then never
    /// ran): the failure names each of them, and keeps what the others
    /// produced.
    #[error("{0}")]
    MembersFailed(Box<GroupFailure>),
    /// A job sent through a broker was set aside in its dead-letter stream
    /// instead of running (again): it was delivered as many times as the
    /// broker allows and never finished, or a worker host could not run
    /// it (an unknown job name, a type fingerprint or codec it does not
    /// have, a malformed message). `reason` says which.
    #[error("job was dead-lettered: {reason}")]
    DeadLettered {
        /// Why, as the worker host that set it aside wrote it.
        reason: String,
    },
    /// The broker could not take the job or report its result (Redis
    /// refused the submission, or the client was dropped before the
    /// result arrived: the job may still run, and its result can be
    /// looked up by id).
    #[error("broker: {message}")]
    Broker {
        /// What went wrong.
        message: String,
    },
}

/// The members of a group (or a chord) that failed, and the results of
/// those that did not: what [`JobError::MembersFailed`] carries.
///
/// Every member ran (or was tried) to its end: the group waits for all of
/// them before it fails. [`failed`](Self::failed) names the failures by
/// member index; [`succeeded`](Self::succeeded) and
/// [`result`](Self::result) decode the other members' results.
///
/// ```
/// use forkpool::{JobError, Pool};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn check(x: u32) -> u32 {
///     assert!(x != 2, "no twos");
///     x * 10
/// }
/// let pool = Pool::new(2)?;
/// let group = pool.group((0..4).map(|x| pool.job(check).sig(x)));
/// match group.submit().get() {
///     Err(JobError::MembersFailed(f)) => {
///         assert_eq!((f.members(), f.failed().len()), (4, 1));
///         assert_eq!(f.failed()[0].0, 2);
///         assert_eq!(f.succeeded::<u32>()?, [(0, 0), (1, 10), (3, 30)]);
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFailure {
    members: usize,
    failed: Vec<(usize, JobError)>,
    /// Members that succeeded: their index, and where their encoded result
    /// ends in `values` (it starts where the previous one ends).
    succeeded: Vec<(usize, usize)>,
    values: Vec<u8>,
}

impl GroupFailure {
    /// A failure of a group of `members`, in which those in `failed`
    /// failed (by index, in increasing order).
    pub(crate) fn new(members: usize, failed: Vec<(usize, JobError)>) -> GroupFailure {
        GroupFailure {
            members,
            failed,
            succeeded: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Records that member `index` succeeded with the encoded result
    /// `value` (indices in increasing order).
    pub(crate) fn push_success(&mut self, index: usize, value: &[u8]) {
        self.values.extend_from_slice(value);
        self.succeeded.push((index, self.values.len()));
    }

    /// The members that succeeded, by index, with their encoded results.
    pub(crate) fn encoded_successes(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let mut start = 0;
        self.succeeded.iter().map(move |&(index, end)| {
            let value = &self.values[start..end];
            start = end;
            (index, value)
        })
    }

    /// How many members the group has.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The members that failed: their index in the group, and why, in
    /// increasing order of index.
    pub fn failed(&self) -> &[(usize, JobError)] {
        &self.failed
    }

    /// The indices of the members that succeeded, in increasing order.
    pub fn succeeded_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.succeeded.iter().map(|&(index, _)| index)
    }
}

impl fmt::Display for GroupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 3;
        write!(
            f,
            "{} of {} members failed: ",
            self.failed.len(),
            self.members
        )?;
        for (i, (index, error)) in self.failed.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "member {index}: {error}")?;
        }
        if self.failed.len() > SHOWN {
            write!(f, "; and {} more", self.failed.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl fmt::Debug for GroupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupFailure")
            .field("members", &self.members)
            .field("failed", &self.failed)
            .field("succeeded", &self.succeeded.len())
            .finish()
    }
}

fn crash_cause(signal: Option<i32>, exit_code: Option<i32>) -> String {
    match (signal, exit_code) {
        (Some(sig), _) => format!("killed by signal {sig} ({})", signal_name(sig)),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "exit status unknown".to_string(),
    }
}

/// The conventional name of a signal number, for messages.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

/// Why [`Pool::try_submit`](crate::Pool::try_submit) did not take a job.
/// Either way the argument comes back, untouched.
#[derive(Clone, PartialEq, Eq)]
pub enum TrySubmitError<A> {
    /// [`queue_capacity`](crate::PoolBuilder::queue_capacity) jobs are
    /// already waiting for a worker.
    Full(A),
    /// The pool is closed (or terminated) and accepts no new jobs.
    Closed(A),
}

impl<A> TrySubmitError<A> {
    /// The argument that was not submitted.
    pub fn into_inner(self) -> A {
        match self {
            TrySubmitError::Full(a) | TrySubmitError::Closed(a) => a,
        }
    }
}

impl<A> fmt::Debug for TrySubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("Full(..)"),
            TrySubmitError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl<A> fmt::Display for TrySubmitError<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySubmitError::Full(_) => "the pool's job queue is full",
            TrySubmitError::Closed(_) => "the pool is closed and accepts no new jobs",
        })
    }
}

impl<A> std::error::Error for TrySubmitError<A> {}

/// A pool-level failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call the pool needed failed (creating the fork server,
    /// a pipe, shared memory, ...).
    #[error("pool I/O error: {0}")]
    Io(#[from] io::Error),
    /// A job of a [`Pool::map`](crate::Pool::map) failed; `index` is the
    /// lowest failing position in the input.
    #[error("item {index} failed: {error}")]
    Job {
        /// Position of the failing item in the input.
        index: usize,
        /// Why it failed.
        error: JobError,
    },
    /// The builder was given settings that cannot work together.
    #[error("invalid pool configuration: {0}")]
    InvalidConfig(String),
    /// The pool was closed: it accepts no new work.
    #[error("the pool is closed and accepts no new jobs")]
    PoolClosed,
    /// A call named a queue the pool does not have
    /// ([`Pool::queue`](crate::Pool::queue)).
    #[error("the pool has no queue called {0:?}")]
    NoSuchQueue(String),
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(io::Error::from(e))
    }
}

/// A wait status as the kernel reports it, decoded into the two halves of
/// [`JobError::Crashed`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitStatus(pub i32);

impl ExitStatus {
    pub(crate) fn signal(self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }
    pub(crate) fn code(self) -> Option<i32> {
        libc::WIFEXITED(self.0).then(|| libc::WEXITSTATUS(self.0))
    }
    pub(crate) fn crashed(status: Option<Self>) -> JobError {
        JobError::Crashed {
            signal: status.and_then(Self::signal),
            exit_code: status.and_then(Self::code),
        }
    }
}

impl fmt::Debug for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExitStatus({})", crash_cause(self.signal(), self.code()))
    }
}
