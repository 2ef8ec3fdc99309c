//! A logger that keeps what the library logs (target `forkpool...`), for
//! the tests that check what is reported.

use std::sync::Mutex;

/// Keeps every record the library logs: its level and its text.
pub struct Kept(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Kept {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("forkpool") {
            let line = (record.level(), record.args().to_string());
            self.0.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

static KEPT: Kept = Kept(Mutex::new(Vec::new()));

/// Makes [`KEPT`] this process's logger, every level on (once per test
/// binary: a second call panics).
pub fn keep() {
    log::set_logger(&KEPT).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
}

/// Whether a record of `level` containing `text` was logged.
pub fn logged(level: log::Level, text: &str) -> bool {
    KEPT.0
        .lock()
        .unwrap()
        .iter()
        .any(|(l, s)| *l == level && s.contains(text))
}

/// Everything logged so far, for a failing assertion's message.
pub fn all() -> Vec<(log::Level, String)> {
    KEPT.0.lock().unwrap().clone()
}
