//! map / imap / imap_unordered results, laziness, and many threads on one pool.

mod common;

use forkpool::{JobError, Pool};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = Pool::new(2).unwrap();
    let got = pool.map(square, 0..100_000u64).unwrap();
    let want: Vec<u64> = (0..100_000u64).map(|x| x * x).collect();
    assert_eq!(got, want);
}

#[test]
fn map_of_nothing_is_empty() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = pool.map(square, Vec::<u64>::new()).unwrap();
    assert!(got.is_empty());
    // An iterator of unknown length works too.
    let odd = pool
        .map(square, (0..1000u64).filter(|x| x % 2 == 1))
        .unwrap();
    assert_eq!(odd.len(), 500);
    assert_eq!(odd[1], 9);
}

/// An iterator whose size hint claims far more items than it has.
struct Liar(std::ops::Range<u64>);

impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[test]
fn map_trusts_no_size_hint_and_fills_large_buffers() {
    let pool = Pool::new(2).unwrap();
    // A hint of usize::MAX items must not make `map` reserve that much.
    assert_eq!(pool.map(square, Liar(0..10)).unwrap()[9], 81);
    // A result buffer large enough to be backed by huge pages (8 MB).
    let n = 1_000_000u64;
    let got = pool.map(square, 0..n).unwrap();
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().enumerate().all(|(i, &v)| v == (i as u64).pow(2)));
}

#[test]
fn map_with_chunk_size_one_and_strings() {
    fn shout(s: String) -> String {
        s.to_uppercase()
    }
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
    let got = pool.map(shout, words.clone()).unwrap();
    assert_eq!(
        got,
        words.iter().map(|w| w.to_uppercase()).collect::<Vec<_>>()
    );
}

#[test]
fn imap_is_ordered_and_imap_unordered_has_everything() {
    fn jitter(x: u64) -> u64 {
        std::thread::sleep(std::time::Duration::from_micros((x * 7919) % 500));
        x
    }
    let pool = Pool::new(2).unwrap();
    let ordered: Vec<u64> = pool.imap(jitter, 0..200u64).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..200).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(jitter, 0..200u64)
        .map(Result::unwrap)
        .collect();
    unordered.sort();
    assert_eq!(unordered, (0..200).collect::<Vec<_>>());
}

#[test]
fn imap_over_an_endless_input_pulls_lazily() {
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = pool.imap(square, endless);
    for i in 0..5_000u64 {
        assert_eq!(it.next(), Some(Ok(i * i)));
    }
    let n = pulled.load(Ordering::Relaxed);
    // At most a window (4096 items) runs ahead of what was consumed.
    assert!(
        (5_000..=5_000 + 4_096).contains(&n),
        "pulled {n} items for 5000 results"
    );
    drop(it);
    // The pool is still fine after the iterator is dropped mid-stream.
    assert_eq!(pool.apply(square, 12), Ok(144));
}

#[test]
fn eight_threads_share_one_pool() {
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let pool = &pool;
            s.spawn(move || {
                let base = t * 1_000_000;
                let handles: Vec<_> = (0..10_000u64)
                    .map(|i| pool.submit(square, base + i))
                    .collect();
                for (i, h) in handles.into_iter().enumerate() {
                    let x = base + i as u64;
                    assert_eq!(h.get(), Ok(x * x));
                }
            });
        }
    });
    let stats = pool.stats();
    assert_eq!(stats.submitted, 80_000);
    assert_eq!(stats.completed, 80_000);
}

#[test]
fn closed_pool_refuses_work() {
    let pool = Pool::new(1).unwrap();
    pool.close();
    assert_eq!(pool.apply(square, 2), Err(JobError::PoolClosed));
    assert!(matches!(
        pool.map(square, 0..3u64),
        Err(forkpool::Error::PoolClosed)
    ));
    let mut it = pool.imap(square, 0..3u64);
    assert_eq!(it.next(), Some(Err(JobError::PoolClosed)));
    assert_eq!(it.next(), None);
    pool.join().unwrap();
}

/// Echoes a payload, except that a payload starting with 7 kills its worker.
fn echo_or_die(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    if b.first() == Some(&7) {
        std::process::abort();
    }
    b
}

#[test]
fn map_of_big_items_survives_a_crash() {
    // Items of 1 MiB: map hands their ring copies to the supervisor thread.
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let make = |i: u8| serde_bytes::ByteBuf::from(vec![i; 1 << 20]);
    let ok = pool.map(echo_or_die, (0..6).map(make)).unwrap();
    assert!(
        ok.iter()
            .enumerate()
            .all(|(i, b)| b.len() == 1 << 20 && b[0] == i as u8)
    );
    let got: Vec<_> = pool.imap(echo_or_die, (0..12).map(make)).collect();
    for (i, r) in got.iter().enumerate() {
        match r {
            Err(JobError::Crashed { .. }) if i == 7 => {}
            Ok(b) if i != 7 => assert!(b.len() == 1 << 20 && b[(i * 977) % (1 << 20)] == i as u8),
            other => panic!("item {i}: {:?}", other.as_ref().map(|b| b.len())),
        }
    }
    match pool.map(echo_or_die, (0..12).map(make)) {
        Err(forkpool::Error::Job {
            index: 7,
            error: JobError::Crashed { .. },
        }) => {}
        other => panic!("{:?}", other.map(|v| v.len())),
    }
}

/// Echoes a payload.
fn echo(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    b
}

#[test]
fn map_of_big_then_small_items_finishes() {
    // The first item is big (its ring copies go to the supervisor thread),
    // the rest small (the caller drives them): the caller must still leave
    // the supervisor thread able to collect the small ones' answers.
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..20 {
            let items = (0..300).map(|i| {
                let n = if i == 0 { 1 << 20 } else { 8 };
                serde_bytes::ByteBuf::from(vec![round as u8; n])
            });
            let out = pool.map(echo, items).unwrap();
            assert_eq!(out.len(), 300);
            assert_eq!(out[0].len(), 1 << 20);
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("a map of big then small items hung");
}

/// Echoes a big string.
fn echo_text(s: String) -> String {
    s
}

#[test]
fn big_byte_strings_and_strings_come_back_whole() {
    // Results of 256 KiB and more are decoded into buffers faulted in ahead
    // of need; sizes that change from item to item change the stock's size
    // class. Every byte must still come back as sent.
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let sizes = [
        1 << 20,
        1 << 20,
        300 << 10,
        (1 << 20) + 1,
        5 << 20,
        1 << 20,
        256 << 10,
    ];
    let make = |(i, &n): (usize, &usize)| {
        serde_bytes::ByteBuf::from((0..n).map(|j| (i * 7 + j * 13) as u8).collect::<Vec<u8>>())
    };
    for _ in 0..3 {
        let want: Vec<_> = sizes.iter().enumerate().map(make).collect();
        let got = pool.map(echo, sizes.iter().enumerate().map(make)).unwrap();
        assert!(got == want, "a big byte string came back changed");
        let streamed: Vec<_> = pool
            .imap(echo, sizes.iter().enumerate().map(make))
            .map(Result::unwrap)
            .collect();
        assert!(streamed == want);
    }
    let text: String = "forkpool ".repeat(100_000);
    assert_eq!(pool.apply(echo_text, text.clone()).unwrap(), text);
    assert_eq!(pool.apply(echo_text, text.clone()).unwrap(), text);
}

/// Echoes a payload slowly.
fn slow_echo(b: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    std::thread::sleep(std::time::Duration::from_millis(50));
    b
}

#[test]
fn map_reads_big_inputs_only_as_fast_as_workers_take_them() {
    // 40 items of 1 MiB, 50 ms each on 2 workers: about a second of work.
    // map keeps a few MiB of arguments in flight, so the 40th item is read
    // only once most of the others are done; reading the whole input up
    // front (40 MiB held at once) would take a few milliseconds.
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let start = std::time::Instant::now();
    let pulled = std::cell::Cell::new(None);
    let items = (0..40u8).map(|i| {
        if i == 39 {
            pulled.set(Some(start.elapsed()));
        }
        serde_bytes::ByteBuf::from(vec![i; 1 << 20])
    });
    let out = pool.map(slow_echo, items).unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, b)| b.len() == 1 << 20 && b[0] == i as u8)
    );
    let at = pulled.get().unwrap();
    assert!(
        at >= std::time::Duration::from_millis(300),
        "the last item was read {at:?} after the start: the input ran ahead"
    );
}

#[test]
fn imap_of_big_items_pulls_within_a_byte_window() {
    // Items of 1 MiB: imap's window of items (64 here) would hold 64 MiB
    // of arguments; the byte window keeps it to a few MiB per worker.
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let pulled = std::cell::Cell::new(0u32);
    let items = (0..200u32).map(|i| {
        pulled.set(i + 1);
        serde_bytes::ByteBuf::from(vec![i as u8; 1 << 20])
    });
    let mut results = pool.imap(echo, items);
    assert_eq!(results.next().unwrap().unwrap()[0], 0);
    let ahead = pulled.get();
    assert!(ahead <= 16, "{ahead} items of 1 MiB pulled for one result");
    assert_eq!(results.count(), 199);
}

fn nap(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(20));
    x
}

#[test]
fn dropping_an_imap_takes_back_the_items_workers_have_not_started() {
    let pool = Pool::builder().workers(2).chunk_size(8).build().unwrap();
    let mut it = pool.imap(nap, 0..10_000u64);
    assert_eq!(it.next(), Some(Ok(0)));
    let pulled_at_drop = pool.stats().submitted;
    drop(it);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let settled = |s: &forkpool::Stats| s.submitted == s.completed + s.failed + s.cancelled;
    while !settled(&pool.stats()) {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let s = pool.stats();
    // Ran: what finished before the drop, plus at most the item each
    // worker was on; the rest of the batches they held came back unrun.
    assert!(
        s.completed <= 8 + 2 + 2,
        "{} of the {pulled_at_drop} items sent ran after the drop: {s:?}",
        s.completed
    );
    assert_eq!(s.failed, 0, "{s:?}");
}

/// When the job ran, on the monotonic clock every process shares.
fn ran_at(_: u64) -> u64 {
    common::monotonic_ns()
}

/// `map` steps the supervisor only every few batches of one item; the
/// ones it sent between steps must not wait for the input's next item.
#[test]
fn items_sent_before_the_input_stalls_run_during_the_stall() {
    let pool = Pool::builder().workers(2).chunk_size(1).build().unwrap();
    let stalled_at = Arc::new(AtomicU64::new(0));
    let mark = stalled_at.clone();
    let mut n = 0u64;
    let input = std::iter::from_fn(move || {
        n += 1;
        // Items come slowly enough for the supervisor thread to fall
        // asleep between them, then stop coming for three seconds.
        std::thread::sleep(std::time::Duration::from_millis(30));
        if n == 4 {
            mark.store(common::monotonic_ns(), Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_secs(3));
        }
        (n <= 6).then_some(n)
    });
    let times = pool.map(ran_at, input).unwrap();
    let stall = stalled_at.load(Ordering::SeqCst);
    assert_eq!(times.len(), 6);
    for (i, &t) in times[..3].iter().enumerate() {
        // Within a second of the stall's start (seconds of slack on a
        // loaded machine), not after its three seconds.
        assert!(
            t < stall + 1_500_000_000,
            "item {i} ran {} ms after the input stalled",
            (t.saturating_sub(stall)) / 1_000_000
        );
    }
}
