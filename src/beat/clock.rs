//! The scheduler's clocks: a small [`Clock`] trait, the real one the
//! scheduler's thread uses ([`RealClock`]), and a fake one for the tests
//! of the pure policies (`FakeClock`, test builds only).
//!
//! Two clocks, because slots live on two:
//!
//! - **The wall clock** (`CLOCK_REALTIME`): a cron slot is a time of day
//!   in a zone, so it is a wall-clock instant. The wall clock can jump
//!   either way (an administrator, NTP stepping, a VM restored).
//! - **The monotonic clock**: interval slots. It is `CLOCK_BOOTTIME`,
//!   which never jumps and, unlike `CLOCK_MONOTONIC`, keeps counting
//!   while the machine sleeps — so slots that fall in a suspend are seen
//!   as missed when it resumes, and the missed-slot policy decides.
//!
//! What [`RealClock::sleep_until`] promises: it returns once the earlier
//! of the two deadlines has passed on its own clock, when the wall clock
//! is set (a jump), or when [`Bell::ring`] is called — and it may return
//! early for other reasons (a signal). It never promises the deadline has
//! passed: the caller reads the clocks again after waking and decides
//! from them, which is what makes a slot never fire early. The waits are
//! kernel timers on absolute deadlines (`timerfd` with
//! `TFD_TIMER_ABSTIME`): a wall deadline fires at that wall time even if
//! the clock jumps meanwhile (and `TFD_TIMER_CANCEL_ON_SET` wakes the
//! sleeper on a jump), a monotonic one right after a resume. Nothing
//! polls: a scheduler with nothing due sleeps in one `poll(2)`.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Both clocks read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    /// The wall clock.
    pub(crate) wall: SystemTime,
    /// The monotonic clock, from an arbitrary origin.
    pub(crate) mono: Duration,
}

/// When a sleeper wants to wake: the earlier of a wall-clock time and a
/// monotonic-clock time (either may be absent; both absent: until rung).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Deadline {
    pub(crate) wall: Option<SystemTime>,
    pub(crate) mono: Option<Duration>,
}

impl Deadline {
    /// The earlier deadline on each clock.
    pub(crate) fn earliest(self, other: Deadline) -> Deadline {
        fn min<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Deadline {
            wall: min(self.wall, other.wall),
            mono: min(self.mono, other.mono),
        }
    }
}

/// What the scheduler asks of time.
pub(crate) trait Clock {
    /// The wall clock (may jump either way).
    fn now_wall(&self) -> SystemTime;
    /// The monotonic clock (never goes back; counts a suspend).
    fn now_monotonic(&self) -> Duration;
    /// Sleeps until `deadline` — or less: the caller reads the clocks
    /// again and never trusts that the deadline has passed.
    fn sleep_until(&self, deadline: Deadline);

    /// Both clocks.
    fn now(&self) -> Now {
        Now {
            wall: self.now_wall(),
            mono: self.now_monotonic(),
        }
    }
}

/// Wakes a [`RealClock`] sleeper: an eventfd, so a ring before the sleep
/// is not lost.
#[derive(Debug)]
pub(crate) struct Bell(EventFd);

impl Bell {
    fn new() -> io::Result<Bell> {
        Ok(Bell(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?))
    }

    /// Wakes the sleeper (or makes its next sleep return at once). Cheap
    /// (one `write`), never blocks: run-finished notices call it from the
    /// supervisor's thread.
    pub(crate) fn ring(&self) {
        let _ = self.0.write(1);
    }
}

/// The clocks of the machine, and a sleep on kernel timers.
#[derive(Debug)]
pub(crate) struct RealClock {
    /// An absolute `CLOCK_REALTIME` timer, cancelled when the clock is set.
    wall_timer: TimerFd,
    /// An absolute `CLOCK_BOOTTIME` timer.
    mono_timer: TimerFd,
    bell: std::sync::Arc<Bell>,
}

impl RealClock {
    /// Three descriptors, all close-on-exec.
    pub(crate) fn new() -> io::Result<RealClock> {
        let flags = TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK;
        Ok(RealClock {
            wall_timer: TimerFd::new(ClockId::CLOCK_REALTIME, flags)?,
            mono_timer: TimerFd::new(ClockId::CLOCK_BOOTTIME, flags)?,
            bell: std::sync::Arc::new(Bell::new()?),
        })
    }

    /// What wakes this clock's sleeper.
    pub(crate) fn bell(&self) -> &std::sync::Arc<Bell> {
        &self.bell
    }

    /// Arms `timer` at the absolute time `at` (`None`: disarms it).
    fn arm(timer: &TimerFd, at: Option<Duration>, flags: TimerSetTimeFlags) {
        let armed = match at {
            // A zero expiry would disarm the timer: the earliest is 1 ns.
            Some(at) => timer.set(
                Expiration::OneShot(TimeSpec::from_duration(at.max(Duration::from_nanos(1)))),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME | flags,
            ),
            None => timer.unset(),
        };
        debug_assert!(armed.is_ok(), "timerfd_settime: {armed:?}");
    }

    /// Empties a nonblocking descriptor's counter (a timer's expirations,
    /// the bell's rings); `EAGAIN` or `ECANCELED` mean nothing to do.
    fn drain(fd: impl AsFd) {
        let _ = nix::unistd::read(fd, &mut [0u8; 8]);
    }
}

impl Clock for RealClock {
    fn now_wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn now_monotonic(&self) -> Duration {
        // Only an unknown clock id fails: CLOCK_BOOTTIME is in Linux since
        // 2.6.39, and forkpool needs 5.3 (pidfds).
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .expect("CLOCK_BOOTTIME is there on every Linux forkpool runs on");
        Duration::from(ts)
    }

    fn sleep_until(&self, deadline: Deadline) {
        let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::arm(
            &self.wall_timer,
            deadline.wall.map(since_epoch),
            TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
        );
        Self::arm(&self.mono_timer, deadline.mono, TimerSetTimeFlags::empty());
        let mut fds = [
            PollFd::new(self.bell.0.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.wall_timer.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.mono_timer.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // Never seen (ENOMEM): do not spin on it.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        Self::drain(&self.bell.0);
        Self::drain(&self.wall_timer);
        Self::drain(&self.mono_timer);
    }
}

#[cfg(test)]
pub(crate) use fake::FakeClock;

#[cfg(test)]
mod fake {
    use super::{Clock, Deadline};
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    /// A clock the test moves: `sleep_until` jumps time to the deadline,
    /// or — with jitter — to a random moment around it, early or late, as
    /// a real timer (or a spurious wake-up) might. The wall clock can be
    /// set apart from the monotonic one (a jump).
    #[derive(Debug)]
    pub(crate) struct FakeClock {
        state: Mutex<State>,
    }

    #[derive(Debug)]
    struct State {
        wall: SystemTime,
        mono: Duration,
        /// Wake up to this much before a deadline.
        early: Duration,
        /// Wake up to this much after a deadline.
        late: Duration,
        rng: u64,
        /// How many sleeps woke before their deadline.
        early_wakes: u64,
    }

    impl FakeClock {
        /// A clock that reads `wall`, and 1000 s on the monotonic clock.
        pub(crate) fn at(wall: SystemTime) -> FakeClock {
            FakeClock {
                state: Mutex::new(State {
                    wall,
                    mono: Duration::from_secs(1000),
                    early: Duration::ZERO,
                    late: Duration::ZERO,
                    rng: 0x2545_f491_4f6c_dd1d,
                    early_wakes: 0,
                }),
            }
        }

        /// Wakes from `sleep_until` anywhere from `early` before its
        /// deadline to `late` after it, at random (seeded: reproducible).
        pub(crate) fn jitter(self, early: Duration, late: Duration, seed: u64) -> FakeClock {
            {
                let mut s = self.state.lock().unwrap();
                s.early = early;
                s.late = late;
                s.rng ^= seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            }
            self
        }

        /// Time passes on both clocks (a stall, or a suspend: the
        /// monotonic clock counts it).
        pub(crate) fn advance(&self, d: Duration) {
            let mut s = self.state.lock().unwrap();
            s.wall += d;
            s.mono += d;
        }

        /// The wall clock is set to `wall` (a jump); the monotonic clock
        /// does not move.
        pub(crate) fn set_wall(&self, wall: SystemTime) {
            self.state.lock().unwrap().wall = wall;
        }

        pub(crate) fn early_wakes(&self) -> u64 {
            self.state.lock().unwrap().early_wakes
        }
    }

    impl State {
        /// xorshift64*: spread, reproducible.
        fn random(&mut self) -> u64 {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn random_below(&mut self, d: Duration) -> Duration {
            let ns = d.as_nanos() as u64;
            if ns == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.random() % (ns + 1))
            }
        }
    }

    impl Clock for FakeClock {
        fn now_wall(&self) -> SystemTime {
            self.state.lock().unwrap().wall
        }

        fn now_monotonic(&self) -> Duration {
            self.state.lock().unwrap().mono
        }

        fn sleep_until(&self, deadline: Deadline) {
            let mut s = self.state.lock().unwrap();
            let to_wall = deadline
                .wall
                .map(|w| w.duration_since(s.wall).unwrap_or_default());
            let to_mono = deadline.mono.map(|m| m.saturating_sub(s.mono));
            let Some(wait) = [to_wall, to_mono].into_iter().flatten().min() else {
                panic!("a fake clock cannot sleep for ever: nothing would wake it");
            };
            // Half the wakes are early, half late.
            let slept = if s.random() & 1 == 0 {
                let most = s.early;
                let early = s.random_below(most);
                if !early.is_zero() && early <= wait {
                    s.early_wakes += 1;
                }
                wait.saturating_sub(early)
            } else {
                let most = s.late;
                let late = s.random_below(most);
                wait + late
            };
            s.wall += slept;
            s.mono += slept;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_real_clock_sleeps_until_the_earlier_deadline_and_a_ring_wakes_it() {
        let clock = RealClock::new().unwrap();
        let start = Instant::now();
        let mono = clock.now_monotonic() + Duration::from_millis(30);
        let wall = SystemTime::now() + Duration::from_secs(60);
        clock.sleep_until(Deadline {
            wall: Some(wall),
            mono: Some(mono),
        });
        assert!(clock.now_monotonic() >= mono, "woke before the deadline");
        assert!(start.elapsed() < Duration::from_secs(30));

        let start = Instant::now();
        let wall = SystemTime::now() + Duration::from_millis(30);
        clock.sleep_until(Deadline {
            wall: Some(wall),
            mono: None,
        });
        assert!(SystemTime::now() >= wall);
        assert!(start.elapsed() < Duration::from_secs(30));

        // A ring before the sleep is kept: the sleep returns at once.
        clock.bell().ring();
        let start = Instant::now();
        clock.sleep_until(Deadline::default());
        assert!(start.elapsed() < Duration::from_secs(5));
        // ... and consumed: a deadline in the past returns at once too.
        clock.sleep_until(Deadline {
            wall: None,
            mono: Some(Duration::from_nanos(1)),
        });
    }

    #[test]
    fn the_fake_clock_wakes_around_its_deadline() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = FakeClock::at(t0).jitter(Duration::from_millis(5), Duration::from_millis(5), 7);
        for _ in 0..100 {
            let target = clock.now_monotonic() + Duration::from_millis(100);
            clock.sleep_until(Deadline {
                wall: None,
                mono: Some(target),
            });
            let off = clock.now_monotonic().abs_diff(target);
            assert!(off <= Duration::from_millis(5));
        }
        assert!(clock.early_wakes() > 10, "the jitter wakes early too");
    }
}
