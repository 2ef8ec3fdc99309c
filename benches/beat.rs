//! How close to its slot a periodic job starts.
//!
//! `cargo bench --bench beat -- --secs 300` runs, on one pool of 2
//! workers, a 1 s interval schedule and a cron schedule that fires every
//! second (`* * * * * *`), for that long, and prints for each the lateness
//! of every run's *start in the worker* after its slot — the scheduler's
//! wake-up, the submission and the dispatch together — as p50, p99 and
//! max, and any run that started before its slot (there must be none).
//! For the cron schedule it also prints when the scheduler *fired* each
//! slot (its clock reading after waking, `ScheduleInfo::last_run`, polled
//! every 20 ms), which tells the scheduler's part from the dispatch's.
//!
//! Run `k` (from 0) belongs to slot `k`: the runs of a schedule start one
//! at a time, in order, and the schedule counts no skip or miss (printed
//! at the end). The cron schedule's slots are whole seconds of the wall
//! clock, from the first `next_run` it showed; the interval's are
//! `anchor + (k + 1) s` on `CLOCK_BOOTTIME`, which the job reads too, with
//! `anchor` read just before the schedule was made (so a lateness is
//! overstated by at most the few microseconds `Pool::schedule` takes,
//! printed below). A run that started before its slot would show as a
//! negative lateness, and is counted.

use forkpool::{Pool, Schedule};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// `CLOCK_BOOTTIME`, the scheduler's monotonic clock, in ns.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Both clocks, read by the job as it starts.
fn stamp(_: ()) -> (u64, u128) {
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (boottime_ns(), wall)
}

fn report(name: &str, mut late_us: Vec<i64>) {
    late_us.sort_unstable();
    let n = late_us.len();
    if n == 0 {
        println!("{name}: no runs");
        return;
    }
    let pct = |p: f64| late_us[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
    let early = late_us.iter().filter(|&&l| l < 0).count();
    println!(
        "{name}: {n}, after the slot p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         within 20 ms: {:.1}%; early: {early}",
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        late_us[n - 1] as f64 / 1000.0,
        100.0 * late_us.iter().filter(|&&l| l <= 20_000).count() as f64 / n as f64,
    );
}

fn main() {
    let mut secs = 60u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--secs" {
            secs = args.next().and_then(|s| s.parse().ok()).expect("--secs N");
        }
    }
    let pool = Pool::new(2).unwrap();
    let (tx_every, rx_every) = mpsc::channel();
    let (tx_cron, rx_cron) = mpsc::channel();
    let every_job = pool.job(stamp).on_success(move |s: &(u64, u128)| {
        let _ = tx_every.send(*s);
    });
    let cron_job = pool.job(stamp).on_success(move |s: &(u64, u128)| {
        let _ = tx_cron.send(*s);
    });
    // The cron schedule first: it starts the scheduler's thread, so the
    // interval's anchor is read around a quick call.
    let cron = pool
        .schedule(Schedule::cron("* * * * * *", "UTC").unwrap(), cron_job, ())
        .unwrap();
    let first_cron_slot = pool.schedule_info(cron).unwrap().next_run.unwrap();
    let first_cron_slot = first_cron_slot
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let before = boottime_ns();
    pool.schedule(Schedule::every(Duration::from_secs(1)), every_job, ())
        .unwrap();
    let anchor_uncertainty = boottime_ns() - before;
    println!(
        "1 s interval and per-second cron schedules for {secs} s on 2 workers \
         (interval anchor read within {:.1} µs)",
        anchor_uncertainty as f64 / 1000.0
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let mut fired: Vec<SystemTime> = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(last) = pool.schedule_info(cron).and_then(|i| i.last_run)
            && fired.last() != Some(&last)
        {
            fired.push(last);
        }
    }
    let stats = pool.schedules();
    pool.join().unwrap();

    const SEC: i128 = 1_000_000_000;
    let every: Vec<i64> = rx_every
        .try_iter()
        .enumerate()
        .map(|(k, (boot, _))| {
            let slot = before as i128 + (k as i128 + 1) * SEC;
            ((boot as i128 - slot) / 1000) as i64
        })
        .collect();
    let cron: Vec<i64> = rx_cron
        .try_iter()
        .enumerate()
        .map(|(k, (_, wall))| {
            let slot = first_cron_slot + k as i128 * SEC;
            ((wall as i128 - slot) / 1000) as i64
        })
        .collect();
    report("interval 1 s, runs started  ", every);
    report("cron every second, started ", cron);
    let fired: Vec<i64> = fired
        .iter()
        .map(|t| {
            let ns = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
            ((ns % 1_000_000_000) / 1000) as i64
        })
        .collect();
    report("cron every second, fired   ", fired);
    for s in stats {
        println!(
            "{}: runs {}, skips {}, misses {}, refused {}",
            s.timing, s.runs, s.skips, s.misses, s.refused
        );
    }
}
