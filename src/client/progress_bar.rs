//! The progress bar of `map`, `imap` and `imap_unordered`: items done, rate
//! and time left, drawn on stderr.
//!
//! Shown only when the pool asks for it
//! ([`PoolBuilder::progress_bar`](crate::PoolBuilder::progress_bar)), stderr
//! is a terminal, and the `progress-bar` cargo feature (on by default, it
//! brings in `indicatif`) is enabled; otherwise a [`Bar`] is an empty value
//! whose methods do nothing. The bar is updated by the thread that collects
//! the results, never by the supervisor, and redraws at most a few times a
//! second however fast items finish.

#[cfg(feature = "progress-bar")]
mod imp {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    use std::time::Duration;

    /// A progress bar over a known or unknown number of items.
    pub(crate) struct Bar(Option<ProgressBar>);

    impl Bar {
        /// A bar over `len` items (`None`: not known), if `show` and stderr
        /// is a terminal.
        pub(crate) fn new(show: bool, len: Option<u64>) -> Bar {
            if !show || !std::io::stderr().is_terminal() {
                return Bar(None);
            }
            Bar::with_target(len, ProgressDrawTarget::stderr_with_hz(10))
        }

        pub(crate) fn with_target(len: Option<u64>, target: ProgressDrawTarget) -> Bar {
            let template = match len {
                Some(_) => {
                    "{spinner} {wide_bar} {human_pos}/{human_len} items · {per_sec} · {elapsed} elapsed · ETA {eta}"
                }
                None => "{spinner} {human_pos} items · {per_sec} · {elapsed} elapsed",
            };
            let bar = ProgressBar::with_draw_target(len, target);
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            Bar(Some(bar))
        }

        /// `n` more items are done.
        pub(crate) fn inc(&self, n: u64) {
            if let Some(b) = &self.0 {
                b.inc(n);
            }
        }

        /// `n` items are done in all.
        pub(crate) fn set(&self, n: u64) {
            if let Some(b) = &self.0 {
                b.set_position(n);
            }
        }

        /// Every item is done: the bar stays, complete.
        pub(crate) fn finish(&self) {
            if let Some(b) = &self.0
                && !b.is_finished()
            {
                b.finish();
            }
        }

        #[cfg(test)]
        pub(crate) fn position(&self) -> Option<u64> {
            self.0.as_ref().map(|b| b.position())
        }
    }

    impl Drop for Bar {
        fn drop(&mut self) {
            // Dropped unfinished (an imap left early): leave it as it is.
            if let Some(b) = &self.0
                && !b.is_finished()
            {
                b.abandon();
            }
        }
    }
}

#[cfg(not(feature = "progress-bar"))]
mod imp {
    /// Without the `progress-bar` feature: no bar.
    pub(crate) struct Bar;

    impl Bar {
        pub(crate) fn new(_show: bool, _len: Option<u64>) -> Bar {
            Bar
        }
        pub(crate) fn inc(&self, _n: u64) {}
        pub(crate) fn set(&self, _n: u64) {}
        pub(crate) fn finish(&self) {}
    }
}

pub(crate) use imp::Bar;

#[cfg(all(test, feature = "progress-bar"))]
mod tests {
    use super::*;
    use indicatif::ProgressDrawTarget;

    #[test]
    fn counts_items_and_stays_off_when_not_asked_or_not_a_terminal() {
        let bar = Bar::with_target(Some(10), ProgressDrawTarget::hidden());
        bar.inc(3);
        bar.inc(4);
        assert_eq!(bar.position(), Some(7));
        bar.set(10);
        bar.finish();
        assert_eq!(bar.position(), Some(10));
        assert_eq!(Bar::new(false, Some(10)).position(), None);
        // Under `cargo test` stderr is captured, not a terminal.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert_eq!(Bar::new(true, None).position(), None);
        }
    }
}
