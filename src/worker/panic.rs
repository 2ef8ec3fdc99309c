//! A job's panic, caught in the worker and sent back as text.
//!
//! A panic inside user code (a job, the initializer) is caught with
//! `catch_unwind`; the panic hook installed here records its message and
//! location for the worker to send as the item's `Panic` record, instead
//! of printing it. On any other thread the hook defers to the one it
//! replaced, so the caller's own panics print as before.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// True while this thread runs user code whose panics we report.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// The last panic message the hook captured on this thread.
    static PANIC_TEXT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic's message: its `&str` or `String` payload, or a word that
/// says it had neither (for every place that catches a panic).
pub(crate) fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Makes panics inside jobs be captured (message and location) instead of
/// printed: the caller receives them as `JobError::Panicked`.
///
/// The hook is installed once, in the caller, before the first fork server
/// is forked, and workers inherit it with the rest of the memory image. It
/// wraps whatever hook was there: on a thread that is not running a job —
/// every thread of the caller — it defers to it, so the caller's panics
/// print as before. Installing it in a worker instead would take std's hook
/// lock after a fork, which another caller thread, caught mid-panic at that
/// moment, may hold forever in the copy.
pub(crate) fn capture_job_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_JOB.get() {
                return previous(info);
            }
            let msg = payload_text(info.payload());
            let text = match info.location() {
                Some(l) => format!("{msg} (at {}:{}:{})", l.file(), l.line(), l.column()),
                None => msg,
            };
            PANIC_TEXT.set(Some(text));
        }));
    });
}

/// Runs `f` as user code: a panic comes back as its message.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    IN_JOB.set(true);
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    IN_JOB.set(false);
    r.map_err(|payload| {
        let text = PANIC_TEXT.take().unwrap_or_else(|| payload_text(&*payload));
        // Dropping a payload runs user code too.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        text
    })
}
