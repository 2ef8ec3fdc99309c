//! The worker connection against an in-process region, the test playing
//! the worker.
//!
//! Each test makes a [`Conn`] with a small ring, maps the same memory a
//! second time and builds the worker's ends of the rings on it, exactly as
//! `worker/run.rs` does; then it plays the worker by hand — reads frames,
//! starts items, takes cancel slots, commits records — and checks what the
//! conn delivers to each batch's sink, what it counts, what it charges and
//! what it hands back. No process is forked and no signal is sent: the conn
//! never learns a pid, so its kills only set a flag, and a worker "dies"
//! when the test sets its exit status.
//!
//! Covered: answers delivered in order and once; the death rule of
//! `death.rs` (answers delivered, the running item charged, the rest
//! requeued, a lying position clamped, a violator's good records salvaged);
//! time-limit and cancel kills charged once, with a late answer swallowed;
//! a queued job withdrawn through its cancel slot; frames larger than the
//! ring streamed, with the exit frame after them; a batch without room
//! handed back whole.

use super::{Conn, Ctx, ExitRequest, WorkerFds};
use crate::batch::slot::Slot;
use crate::batch::{Batch, JobId, JobOpts, Outcome, Sink};
use crate::control::events::Bus;
use crate::error::{ExitStatus, JobError};
use crate::metrics::stats::{Counters, Stats};
use crate::metrics::tally::Tallies;
use crate::sys::clock::{self, StepClock};
use crate::sys::prefault::Prefault;
use crate::transport::ring::{Consumer, Producer};
use crate::transport::shm::Region;
use crate::transport::status::{Claimed, ItemState, StatusPage};
use crate::transport::wire::{self, BATCH_HEADER, BatchHeader, HEADER, Tag};
use crate::worker::call::Call;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ring size: small, so that a frame can outgrow it.
const RING: usize = 64 * 1024;
/// Cap on one record's body.
const CAP: u64 = 1 << 20;
/// Raw wait status of a process killed by SIGKILL.
const KILLED: ExitStatus = ExitStatus(libc::SIGKILL);
/// Raw wait status of a process that exited with code 1.
const EXIT_1: ExitStatus = ExitStatus(1 << 8);

/// One item's outcome as its sink saw it.
type Answer = Result<(Tag, Vec<u8>), JobError>;

fn ok(body: &[u8]) -> Answer {
    Ok((Tag::Ok, body.to_vec()))
}

fn crashed(status: ExitStatus) -> Answer {
    Err(ExitStatus::crashed(Some(status)))
}

/// What the supervisor shares with a conn, owned by the test.
struct Env {
    counters: Counters,
    done_jobs: Vec<JobId>,
    returned: Vec<Batch>,
    prefault: Prefault,
    tallies: Tallies,
    clock: StepClock,
    events: Bus,
}

impl Env {
    fn new() -> Env {
        Env {
            counters: Counters::default(),
            done_jobs: Vec::new(),
            returned: Vec::new(),
            prefault: Prefault::new(),
            tallies: Tallies::new(1),
            clock: StepClock::default(),
            events: Bus::default(),
        }
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            counters: &self.counters,
            done_jobs: &mut self.done_jobs,
            spares: self.prefault.spares(),
            returned: &mut self.returned,
            tallies: &mut self.tallies,
            clock: &mut self.clock,
            events: &self.events,
        }
    }

    fn stats(&self) -> Stats {
        self.counters.snapshot()
    }
}

/// A call to a sink, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    /// `deliver` with records, one `(tag, body)` per item.
    Records(Vec<(Tag, Vec<u8>)>),
    /// `deliver` with a failure of `count` items.
    Failed(u32, JobError),
    /// `fail_now`: resolved ahead of the worker's answer.
    Early(JobError),
}

/// A sink that records every call it gets, so a test sees exactly what
/// was delivered, and how many times. For a single cancellable job it
/// also forwards to a real [`Slot`] and counts the calls that resolved it.
struct Recorder {
    log: Mutex<Vec<(u64, Got)>>,
    slot: Option<Slot>,
    resolutions: AtomicU32,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            log: Mutex::new(Vec::new()),
            slot: None,
            resolutions: AtomicU32::new(0),
        })
    }

    fn job(id: JobId) -> Arc<Recorder> {
        Arc::new(Recorder {
            log: Mutex::new(Vec::new()),
            slot: Some(Slot::new(id)),
            resolutions: AtomicU32::new(0),
        })
    }

    fn log(&self) -> Vec<(u64, Got)> {
        self.log.lock().unwrap().clone()
    }

    /// What was delivered, one entry per item (`fail_now` calls aside).
    fn items(&self) -> Vec<(u64, Answer)> {
        let mut out = Vec::new();
        for (base, got) in self.log() {
            match got {
                Got::Records(recs) => {
                    for (i, (tag, body)) in recs.into_iter().enumerate() {
                        out.push((base + i as u64, Ok((tag, body))));
                    }
                }
                Got::Failed(count, error) => {
                    for i in 0..count {
                        out.push((base + u64::from(i), Err(error.clone())));
                    }
                }
                Got::Early(_) => {}
            }
        }
        out
    }

    /// The job's outcome, as its handle would take it.
    fn outcome(&self) -> Result<Vec<u8>, JobError> {
        let slot = self.slot.as_ref().expect("a job's recorder");
        assert!(slot.is_ready(), "the job is resolved");
        slot.take()
    }

    /// Runs `f` on the slot, counting it if it resolved the slot.
    fn track(&self, slot: &Slot, f: impl FnOnce()) {
        let before = slot.is_ready();
        f();
        if !before && slot.is_ready() {
            self.resolutions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn resolutions(&self) -> u32 {
        self.resolutions.load(Ordering::Relaxed)
    }
}

impl Sink for Recorder {
    fn deliver(&self, base: u64, outcome: Outcome) {
        let got = match &outcome {
            Outcome::Records { count, buf } => {
                let recs: Vec<_> = wire::records(buf)
                    .map(|r| (r.tag, r.body.to_vec()))
                    .collect();
                assert_eq!(recs.len(), *count as usize, "records and their count agree");
                Got::Records(recs)
            }
            Outcome::Failed { count, error } => Got::Failed(*count, error.clone()),
        };
        self.log.lock().unwrap().push((base, got));
        if let Some(slot) = &self.slot {
            self.track(slot, || slot.deliver(base, outcome));
        }
    }

    fn fail_now(&self, error: JobError) -> bool {
        self.log
            .lock()
            .unwrap()
            .push((u64::MAX, Got::Early(error.clone())));
        let Some(slot) = &self.slot else { return false };
        let mut resolved = false;
        self.track(slot, || resolved = slot.fail_now(error));
        resolved
    }
}

/// Items `[len: u32][bytes]` as the pool's front encodes them.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut items = Vec::new();
    for a in args {
        wire::push_item(&mut items, |v| {
            v.extend_from_slice(a);
            Ok(())
        })
        .unwrap();
    }
    items
}

fn batch(
    args: &[&[u8]],
    base: u64,
    sink: &Arc<Recorder>,
    opts: JobOpts,
    job: Option<JobId>,
) -> Batch {
    let sink: Arc<dyn Sink> = sink.clone();
    Batch::new(
        Call {
            trampoline: 0,
            func: 0,
        },
        encode(args),
        args.len() as u32,
        base,
        sink,
        opts,
        job,
    )
}

fn timed(limit: Duration) -> JobOpts {
    JobOpts {
        time_limit: Some(limit),
        ..JobOpts::default()
    }
}

/// Sends a batch that must fit, and publishes it.
fn send(conn: &mut Conn, batch: Batch) {
    assert!(
        conn.try_send(batch, clock::precise_ns()).is_ok(),
        "the batch fits"
    );
    conn.publish(0);
}

/// A batch frame as the worker read it.
#[derive(Debug)]
struct Frame {
    head: BatchHeader,
    items: Vec<Vec<u8>>,
}

/// The worker's side, played by the test: its ends of the rings, on its
/// own mapping of the conn's memory.
struct TestWorker {
    inbox: Consumer,
    outbox: Producer,
    /// The next `seq0` a batch must carry, as a real worker checks.
    next_seq: u64,
    /// Keeps the worker's ends of the doorbells open.
    _fds: WorkerFds,
    /// Last: the rings point into it.
    region: Region,
}

impl TestWorker {
    fn new(fds: WorkerFds) -> TestWorker {
        let region = Region::map(fds.shm.as_raw_fd(), RING).unwrap();
        let page = region.page();
        // SAFETY: the region is owned by the test worker and outlives both
        // ends; the test is the only consumer of the inbox and the only
        // producer to the outbox, as a worker is.
        let (inbox, outbox) = unsafe {
            (
                Consumer::new(&page.to_worker, region.ring_data(true), RING),
                Producer::new(&page.to_supervisor, region.ring_data(false), RING),
            )
        };
        TestWorker {
            inbox,
            outbox,
            next_seq: 0,
            _fds: fds,
            region,
        }
    }

    fn page(&self) -> &StatusPage {
        self.region.page()
    }

    /// Bytes published to the inbox and not yet read.
    fn unread(&mut self) -> usize {
        self.inbox.available().unwrap()
    }

    /// Reads `n` bytes of the inbox and consumes them.
    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0; n];
        self.inbox.copy_out(0, &mut bytes);
        let _ = self.inbox.consume(n);
        bytes
    }

    /// Reads and consumes one whole frame: a batch, or `None` for `Exit`.
    fn recv(&mut self) -> Option<Frame> {
        assert!(self.unread() >= HEADER, "a frame is waiting");
        let mut head = [0; HEADER];
        self.inbox.copy_out(0, &mut head);
        let (len, tag) = wire::split_header(head);
        if tag == Tag::Exit as u8 {
            assert_eq!(len, 0);
            self.read(HEADER);
            return None;
        }
        assert_eq!(tag, Tag::Batch as u8);
        let total = HEADER + len as usize;
        assert!(self.unread() >= total, "the whole frame is published");
        let frame = self.read(total);
        Some(self.decode(&frame[HEADER..]))
    }

    /// Reads and consumes one whole batch frame.
    fn recv_batch(&mut self) -> Frame {
        self.recv().expect("a batch frame")
    }

    /// Decodes a batch body, checking it as a worker does.
    fn decode(&mut self, body: &[u8]) -> Frame {
        let head = BatchHeader::decode(body).expect("a batch header");
        assert_eq!(head.seq0, self.next_seq, "batches are numbered in order");
        self.next_seq += u64::from(head.count);
        let mut it = wire::Items::new(&body[BATCH_HEADER..]);
        let items: Vec<Vec<u8>> = it.by_ref().map(<[u8]>::to_vec).collect();
        assert!(it.rest().is_empty(), "nothing after the items");
        assert_eq!(items.len(), head.count as usize);
        Frame { head, items }
    }

    fn start(&self, seq: u64) {
        self.page().worker.current.start(seq);
    }

    fn finish(&self, seq: u64) -> Result<(), Claimed> {
        self.page().worker.current.finish(seq)
    }

    fn mark_done(&self, seq: u64) {
        self.page().worker.current.mark_done(seq);
    }

    /// Takes a cancellable job's slot before running it.
    fn take(&self, frame: &Frame) -> bool {
        self.page().cancel[frame.head.cancel_slot as usize].take(frame.head.job_id)
    }

    /// Writes bytes to the outbox and commits them (visible to a reader
    /// that looks, as a worker's record is before the item is marked done).
    fn put(&mut self, head: &[u8], body: &[u8]) {
        assert!(self.outbox.try_put(head, body), "room in the outbox");
        self.outbox.commit();
    }

    /// Writes and commits one record.
    fn answer(&mut self, tag: Tag, body: &[u8]) {
        self.put(&wire::header(tag, body.len() as u32), body);
    }

    /// Runs item `seq` to its end: started, answered, marked done.
    fn run(&mut self, seq: u64, tag: Tag, body: &[u8]) {
        self.start(seq);
        self.answer(tag, body);
        self.mark_done(seq);
    }

    fn publish(&mut self) {
        let _ = self.outbox.publish();
    }
}

fn setup() -> (Conn, TestWorker) {
    let (conn, fds) = Conn::new(1, 0, RING, CAP, None).unwrap();
    (conn, TestWorker::new(fds))
}

#[test]
fn answers_are_delivered_in_order_once_and_batches_leave_the_books() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let (a, b) = (Recorder::new(), Recorder::new());
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"a0", b"a1", b"a2"], 10, &a, opts, None));
    send(&mut conn, batch(&[b"b0", b"b1"], 0, &b, opts, None));
    assert!(conn.busy());
    assert_eq!((conn.inflight_batches(), conn.inflight_items()), (2, 5));

    let fa = w.recv_batch();
    let fb = w.recv_batch();
    assert_eq!((fa.head.seq0, fa.head.count, fa.head.flags), (0, 3, 0));
    assert_eq!(fa.items, [b"a0".to_vec(), b"a1".to_vec(), b"a2".to_vec()]);
    assert_eq!((fb.head.seq0, fb.head.count), (3, 2));
    assert_eq!(w.unread(), 0);

    // One answer, alone: delivered, and the batch stays for the rest.
    w.run(0, Tag::Ok, b"A0");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(a.items(), [(10, ok(b"A0"))]);
    assert_eq!((conn.inflight_batches(), conn.inflight_items()), (2, 4));

    // The rest at once, across the two batches, a panic among them.
    w.run(1, Tag::Panic, b"boom");
    w.run(2, Tag::Ok, b"A2");
    w.run(3, Tag::Ok, b"B0");
    w.run(4, Tag::Ok, b"B1");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    conn.pump_rx(&mut env.ctx());
    let panic = Ok((Tag::Panic, b"boom".to_vec()));
    assert_eq!(a.items(), [(10, ok(b"A0")), (11, panic), (12, ok(b"A2"))]);
    assert_eq!(b.items(), [(0, ok(b"B0")), (1, ok(b"B1"))]);

    assert!(!conn.busy());
    assert_eq!((conn.inflight_batches(), conn.inflight_items()), (0, 0));
    assert!(conn.violation().is_none());
    let s = env.stats();
    assert_eq!((s.completed, s.panicked, s.failed, s.crashed), (4, 1, 1, 0));
    assert!(env.done_jobs.is_empty(), "no cancellable job was sent");
}

/// Answers are pulled straight behind their batch's earlier answers; what
/// follows a batch's run — a record cut between two pulls, a control
/// record, the next batch's answers — goes through the reader, and every
/// answer still arrives once, whole and in order.
#[test]
fn answers_cut_between_pulls_or_mixed_with_control_records_arrive_whole() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let (a, b) = (Recorder::new(), Recorder::new());
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"a0", b"a1", b"a2"], 0, &a, opts, None));
    send(&mut conn, batch(&[b"b0", b"b1"], 0, &b, opts, None));
    w.recv_batch();
    w.recv_batch();
    // Item 0 whole, then item 1's header and half its body.
    w.run(0, Tag::Ok, b"first");
    w.start(1);
    let body = b"second answer";
    w.put(&wire::header(Tag::Ok, body.len() as u32), &body[..6]);
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"first"))]);
    // The rest of item 1, a control record, item 2, and batch b's first.
    w.put(&body[6..], &[]);
    w.mark_done(1);
    w.answer(Tag::Retire, &7u64.to_le_bytes());
    w.run(2, Tag::Ok, b"third");
    w.run(3, Tag::Ok, b"B0");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(
        a.items(),
        [(0, ok(b"first")), (1, ok(body)), (2, ok(b"third"))]
    );
    assert_eq!(b.items(), [(0, ok(b"B0"))]);
    w.run(4, Tag::Ok, b"B1");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(b.items(), [(0, ok(b"B0")), (1, ok(b"B1"))]);
    assert!(conn.violation().is_none());
    assert!(!conn.busy());
    assert_eq!(env.stats().completed, 5);
}

#[test]
fn a_dead_workers_answers_are_delivered_its_item_charged_the_rest_requeued() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let (a, b) = (Recorder::new(), Recorder::new());
    let opts = JobOpts::default();
    let args: [&[u8]; 5] = [b"a0", b"a1", b"a2", b"a3", b"a4"];
    send(&mut conn, batch(&args, 100, &a, opts, None));
    send(&mut conn, batch(&[b"b0", b"b1"], 7, &b, opts, None));
    w.recv_batch();
    w.recv_batch();

    w.run(0, Tag::Ok, b"r0");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    w.run(1, Tag::Ok, b"r1"); // committed, never published
    w.start(2); // running when the worker dies
    conn.status = Some(KILLED);
    assert!(conn.finished());

    let mut requeue = conn.finalize(&mut env.ctx());
    assert_eq!(
        a.items(),
        [(100, ok(b"r0")), (101, ok(b"r1")), (102, crashed(KILLED))]
    );
    assert_eq!(
        crashed(KILLED),
        Err(JobError::Crashed {
            signal: Some(libc::SIGKILL),
            exit_code: None
        })
    );
    assert!(b.items().is_empty());
    assert_eq!(requeue.len(), 2);
    assert_eq!(requeue[0].count(), 2);
    assert_eq!(requeue[0].items(), encode(&[b"a3", b"a4"]));
    assert_eq!(requeue[1].count(), 2);
    assert_eq!(requeue[1].items(), encode(&[b"b0", b"b1"]));
    assert!(!conn.busy());
    let s = env.stats();
    assert_eq!(
        (s.completed, s.crashed, s.failed, s.cancelled),
        (2, 1, 1, 0)
    );

    // Each requeued batch starts where it stands: dropped, it resolves
    // its own items, from its own base.
    drop(requeue);
    let cancelled = || Err(JobError::Cancelled);
    assert_eq!(a.items()[3..], [(103, cancelled()), (104, cancelled())]);
    assert_eq!(b.items(), [(7, cancelled()), (8, cancelled())]);
}

#[test]
fn a_worker_that_dies_between_items_is_charged_nothing() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    send(
        &mut conn,
        batch(&[b"a0", b"a1"], 0, &a, timed(Duration::from_secs(60)), None),
    );

    // Died before it started anything: everything goes back.
    {
        let (mut idle, _fds) = Conn::new(2, 0, RING, CAP, None).unwrap();
        let c = Recorder::new();
        send(&mut idle, batch(&[b"c0"], 0, &c, JobOpts::default(), None));
        idle.status = Some(EXIT_1);
        let requeue = idle.finalize(&mut env.ctx());
        assert_eq!(requeue.len(), 1);
        assert_eq!(requeue[0].count(), 1);
        assert!(c.items().is_empty());
    }

    w.recv_batch();
    w.start(0);
    w.answer(Tag::Ok, b"r0");
    assert_eq!(w.finish(0), Ok(()));
    conn.status = Some(EXIT_1);
    let requeue = conn.finalize(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"r0"))]);
    assert_eq!(requeue.len(), 1);
    assert_eq!(requeue[0].count(), 1);
    let s = env.stats();
    assert_eq!((s.completed, s.crashed, s.failed), (1, 0, 0));
}

#[test]
fn a_timed_out_item_is_charged_once_and_its_late_answer_swallowed() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    let limit = Duration::from_millis(1);
    send(
        &mut conn,
        batch(&[b"a0", b"a1", b"a2"], 0, &a, timed(limit), None),
    );
    let f = w.recv_batch();
    assert_eq!(f.head.flags, wire::FLAG_TIMED | wire::FLAG_KILLABLE);

    w.start(0);
    w.answer(Tag::Ok, b"r0");
    assert_eq!(w.finish(0), Ok(()));
    let now = clock::coarse_ns();
    let status = &w.page().worker;
    status
        .started_ns
        .store(now.saturating_sub(1_000_000_000), Ordering::Relaxed);
    w.start(1);
    conn.check_deadlines(now);
    let kill = conn.book.kill.as_ref().expect("a kill over item 1");
    assert_eq!((kill.seq, &kill.reason), (1, &JobError::TimedOut { limit }));
    assert_eq!(w.page().worker.current.load().state(), ItemState::Kill);
    assert!(conn.ended_on_purpose());
    assert_eq!(conn.check_deadlines(now), None, "no second kill");

    // The worker's record is committed before it loses the race.
    w.answer(Tag::Ok, b"late");
    assert_eq!(w.finish(1), Err(Claimed));
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"r0"))]);
    assert!(conn.violation().is_none(), "a late answer is no violation");

    conn.status = Some(KILLED);
    let requeue = conn.finalize(&mut env.ctx());
    assert_eq!(
        a.items(),
        [(0, ok(b"r0")), (1, Err(JobError::TimedOut { limit }))]
    );
    assert_eq!(requeue.len(), 1);
    assert_eq!(requeue[0].count(), 1);
    let s = env.stats();
    assert_eq!(
        (s.completed, s.timed_out, s.failed, s.crashed, s.cancelled),
        (1, 1, 1, 0, 0)
    );
}

#[test]
fn cancelling_a_running_job_kills_over_it_and_charges_it_once() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let id = JobId(7);
    let (job, p) = (Recorder::job(id), Recorder::new());
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"j"], 0, &job, opts, Some(id)));
    send(&mut conn, batch(&[b"p0", b"p1"], 0, &p, opts, None));
    let fj = w.recv_batch();
    w.recv_batch();
    assert_eq!(
        fj.head.flags,
        wire::FLAG_KILLABLE | wire::FLAG_CANCELLABLE,
        "no time limit, but killable"
    );
    assert_eq!(fj.head.job_id, 7);

    w.start(0);
    assert!(w.take(&fj));
    assert!(conn.cancel(id, &mut env.ctx()));
    assert_eq!(w.page().worker.current.load().state(), ItemState::Kill);
    assert_eq!(env.stats().cancelled, 1);
    assert!(!conn.cancel(id, &mut env.ctx()), "cancelled already");
    assert_eq!(env.stats().cancelled, 1);

    // Its answer comes anyway, and is dropped.
    w.answer(Tag::Ok, b"late");
    assert_eq!(w.finish(0), Err(Claimed));
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert!(conn.violation().is_none());

    conn.status = Some(KILLED);
    let mut requeue = conn.finalize(&mut env.ctx());
    assert_eq!(job.log(), [(u64::MAX, Got::Early(JobError::Cancelled))]);
    assert_eq!(job.resolutions(), 1);
    assert_eq!(job.outcome(), Err(JobError::Cancelled));
    assert_eq!(requeue.len(), 1, "the next batch never started");
    assert_eq!(requeue[0].items(), encode(&[b"p0", b"p1"]));
    assert!(p.log().is_empty());
    let s = env.stats();
    assert_eq!((s.cancelled, s.failed, s.crashed), (1, 0, 0));
    assert_eq!(env.done_jobs, [id]);
    assert_eq!(conn.book.cancel_used, 0);
}

#[test]
fn a_queued_job_is_withdrawn_through_its_cancel_slot() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let id = JobId(9);
    let (p, job) = (Recorder::new(), Recorder::job(id));
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"p0"], 0, &p, opts, None));
    send(&mut conn, batch(&[b"j"], 0, &job, opts, Some(id)));
    w.recv_batch();
    let fj = w.recv_batch();

    w.start(0);
    assert!(conn.cancel(id, &mut env.ctx()), "still queued: withdrawn");
    assert_eq!(job.resolutions(), 1);
    assert_eq!(env.stats().cancelled, 1);
    assert_eq!(
        w.page().worker.current.load().state(),
        ItemState::Running,
        "the running item is not killed"
    );
    assert!(conn.book.kill.is_none());
    w.answer(Tag::Ok, b"r0");
    w.mark_done(0);

    // The worker reaches it, cannot take it, and skips it.
    w.start(1);
    assert!(!w.take(&fj));
    w.answer(Tag::Skipped, b"");
    assert_eq!(w.finish(1), Ok(()));
    w.publish();
    conn.pump_rx(&mut env.ctx());

    assert_eq!(p.items(), [(0, ok(b"r0"))]);
    assert_eq!(job.resolutions(), 1, "the skip resolves nothing");
    assert_eq!(job.outcome(), Err(JobError::Cancelled));
    let s = env.stats();
    assert_eq!((s.cancelled, s.completed, s.failed), (1, 1, 0));
    assert!(conn.violation().is_none());
    assert!(!conn.busy());
    assert_eq!(conn.book.cancel_used, 0, "its cancel slot is free again");
    assert_eq!(env.done_jobs, [id]);
    assert!(!conn.cancel(id, &mut env.ctx()), "no longer here");
}

#[test]
fn a_withdrawn_job_is_not_requeued_when_its_worker_dies() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let id = JobId(11);
    let (p, job) = (Recorder::new(), Recorder::job(id));
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"p0", b"p1"], 0, &p, opts, None));
    send(&mut conn, batch(&[b"j"], 0, &job, opts, Some(id)));
    w.recv_batch();
    w.recv_batch();

    w.start(0);
    assert!(conn.cancel(id, &mut env.ctx()));
    conn.status = Some(KILLED);
    let mut requeue = conn.finalize(&mut env.ctx());
    assert_eq!(p.items(), [(0, crashed(KILLED))]);
    assert_eq!(requeue.len(), 1, "only the plain batch's rest");
    assert_eq!(requeue[0].items(), encode(&[b"p1"]));
    assert_eq!(job.resolutions(), 1);
    assert_eq!(job.outcome(), Err(JobError::Cancelled));
    let s = env.stats();
    assert_eq!((s.cancelled, s.crashed, s.failed), (1, 1, 1));
    assert_eq!(env.done_jobs, [id]);
}

#[test]
fn a_position_beyond_what_was_sent_charges_at_most_what_was_sent() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    send(
        &mut conn,
        batch(
            &[b"a0", b"a1"],
            0,
            &a,
            timed(Duration::from_millis(1)),
            None,
        ),
    );
    w.recv_batch();
    w.start(0);
    w.answer(Tag::Ok, b"r0");
    assert_eq!(w.finish(0), Ok(()));

    // It claims an item it was never sent, running for ages.
    w.page().worker.started_ns.store(0, Ordering::Relaxed);
    w.start(100);
    conn.check_deadlines(clock::coarse_ns());
    assert!(conn.book.kill.is_none(), "no kill over an item never sent");
    assert_eq!(w.page().worker.current.load().running(), Some(100));
    w.mark_done(100);

    conn.status = Some(KILLED);
    let requeue = conn.finalize(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"r0")), (1, crashed(KILLED))]);
    assert!(requeue.is_empty());
    let s = env.stats();
    assert_eq!((s.completed, s.crashed, s.failed), (1, 1, 1));
}

#[test]
fn a_violators_committed_records_are_salvaged_and_the_culprit_charged() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    let args: [&[u8]; 4] = [b"a0", b"a1", b"a2", b"a3"];
    send(&mut conn, batch(&args, 0, &a, JobOpts::default(), None));
    w.recv_batch();
    w.run(0, Tag::Ok, b"r0");
    w.run(1, Tag::Ok, b"r1");
    w.start(2);
    w.put(&[1, 0, 0, 0, 0x7f], b"?"); // no such tag
    w.publish();
    conn.pump_rx(&mut env.ctx());
    let why = conn.violation().expect("caught").to_string();
    assert!(why.contains("unknown frame tag"), "{why}");

    // It is not believed any more: what it writes next is not even read.
    w.answer(Tag::Ok, b"r2");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(w.outbox.free().unwrap(), RING - (HEADER + 2), "left unread");

    conn.status = Some(EXIT_1);
    let mut requeue = conn.finalize(&mut env.ctx());
    assert_eq!(
        a.items(),
        [(0, ok(b"r0")), (1, ok(b"r1")), (2, crashed(EXIT_1))]
    );
    assert_eq!(
        crashed(EXIT_1),
        Err(JobError::Crashed {
            signal: None,
            exit_code: Some(1)
        })
    );
    assert_eq!(requeue.len(), 1);
    assert_eq!(requeue[0].items(), encode(&[b"a3"]));
    let s = env.stats();
    assert_eq!((s.completed, s.crashed, s.failed), (2, 1, 1));
}

#[test]
fn an_answer_with_nothing_in_flight_is_a_violation() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    send(&mut conn, batch(&[b"a0"], 0, &a, JobOpts::default(), None));
    w.recv_batch();
    w.run(0, Tag::Ok, b"r0");
    w.answer(Tag::Ok, b"one too many");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    let why = conn.violation().expect("caught").to_string();
    assert!(why.contains("no job in flight"), "{why}");
    assert_eq!(a.items(), [(0, ok(b"r0"))]);

    conn.status = Some(KILLED);
    let requeue = conn.finalize(&mut env.ctx());
    assert!(requeue.is_empty());
    assert_eq!(a.items(), [(0, ok(b"r0"))], "nothing twice");
    let s = env.stats();
    assert_eq!((s.completed, s.crashed, s.failed), (1, 0, 0));
}

#[test]
fn a_frame_larger_than_the_ring_streams_and_the_exit_frame_waits() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    let big: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    let args: [&[u8]; 2] = [&big, b"small"];
    let items = encode(&args);
    let total = HEADER + BATCH_HEADER + items.len();
    assert!(total > 2 * RING);
    send(&mut conn, batch(&args, 0, &a, JobOpts::default(), None));
    assert!(conn.streaming.is_some());
    assert!(!conn.accepts(false), "nothing else goes while it streams");
    assert_eq!(w.unread(), RING, "a ring's worth at first");

    // The worker takes what is published; the conn writes more as room
    // appears. An exit asked for with room in the ring waits for the rest.
    let mut frame = w.read(RING);
    let mut pieces = 1;
    conn.request_exit();
    conn.publish(0);
    assert_eq!(conn.exit, ExitRequest::Wanted);
    while frame.len() < total {
        let n = w.unread().min(total - frame.len());
        assert!(n > 0, "the conn wrote more after the worker made room");
        frame.extend(w.read(n));
        pieces += 1;
        conn.pump_tx();
        conn.publish(0);
        if conn.streaming.is_some() {
            assert_eq!(conn.exit, ExitRequest::Wanted, "not while it streams");
        }
    }
    assert!(pieces >= 3, "{pieces} pieces");
    assert!(conn.streaming.is_none());
    assert_eq!(conn.exit, ExitRequest::Sent);

    // Exactly the frame, byte for byte, and the exit frame after it.
    let head: [u8; HEADER] = frame[..HEADER].try_into().unwrap();
    assert_eq!(
        wire::split_header(head),
        ((BATCH_HEADER + items.len()) as u32, Tag::Batch as u8)
    );
    let f = w.decode(&frame[HEADER..]);
    assert_eq!((f.head.seq0, f.head.count, f.head.job_id), (0, 2, 0));
    assert_eq!(&frame[HEADER + BATCH_HEADER..], &items[..]);
    assert_eq!(f.items, [big.clone(), b"small".to_vec()]);
    assert!(w.recv().is_none(), "the exit frame");
    assert_eq!(w.unread(), 0);

    w.run(0, Tag::Ok, b"R0");
    w.run(1, Tag::Ok, b"R1");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"R0")), (1, ok(b"R1"))]);
    assert!(!conn.busy());
}

#[test]
fn a_batch_without_room_is_handed_back_whole() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let (a, b) = (Recorder::new(), Recorder::new());
    let opts = JobOpts::default();
    let a0 = vec![1u8; 40_000];
    send(&mut conn, batch(&[&a0[..]], 0, &a, opts, None));

    // Fits the ring, not the room left in it.
    let id = JobId(3);
    let job = Recorder::job(id);
    let j = vec![2u8; 30_000];
    let Err(mut back) = conn.try_send(batch(&[&j[..]], 5, &job, opts, Some(id)), 0) else {
        panic!("sent without room");
    };
    assert_eq!(back.count(), 1);
    assert_eq!(back.items(), encode(&[&j[..]]));
    assert_eq!(back.job, Some(id));
    assert_eq!((conn.inflight_batches(), conn.inflight_items()), (1, 1));
    assert_eq!(conn.book.cancel_used, 0, "no cancel slot taken");
    assert!(job.log().is_empty());

    // Once the worker made room, it goes, numbered right after the first.
    w.recv_batch();
    send(&mut conn, back);
    let fj = w.recv_batch();
    assert_eq!((fj.head.seq0, fj.head.job_id), (1, 3));
    assert_eq!(fj.items, [j]);

    // Larger than the ring: refused while not even its head fits.
    let fill = vec![3u8; RING - (HEADER + BATCH_HEADER + 4) - 20];
    send(&mut conn, batch(&[&fill[..]], 0, &b, opts, None));
    let huge = vec![4u8; 2 * RING];
    let Err(mut back) = conn.try_send(batch(&[&huge[..]], 0, &b, opts, None), 0) else {
        panic!("sent without room for its head");
    };
    assert_eq!(back.items(), encode(&[&huge[..]]));
    assert_eq!(conn.inflight_batches(), 3);

    w.start(0);
    w.answer(Tag::Ok, b"r0");
    w.start(1);
    assert!(w.take(&fj));
    w.answer(Tag::Ok, b"rj");
    w.publish();
    conn.pump_rx(&mut env.ctx());
    assert_eq!(a.items(), [(0, ok(b"r0"))]);
    assert_eq!(job.items(), [(5, ok(b"rj"))]);
}

// Three bugs these tests found (each failed before its fix): a violation
// first seen while closing the books left the answers gathered before it
// undelivered, so an answered item was charged and the culprit requeued;
// a withdrawn job whose worker died before skipping it was counted
// cancelled and crashed; and terminating counted a withdrawn job as
// cancelled a second time.

#[test]
fn a_violation_first_seen_when_closing_the_books_follows_the_same_rule() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let a = Recorder::new();
    let args: [&[u8]; 4] = [b"a0", b"a1", b"a2", b"a3"];
    send(&mut conn, batch(&args, 0, &a, JobOpts::default(), None));
    w.recv_batch();
    w.run(0, Tag::Ok, b"r0");
    w.run(1, Tag::Ok, b"r1");
    w.start(2);
    w.put(&[1, 0, 0, 0, 0x7f], b"?"); // no such tag
    // Dead before the conn read any of it.
    conn.status = Some(EXIT_1);
    let mut requeue = conn.finalize(&mut env.ctx());
    assert!(conn.violation().is_some());
    assert_eq!(
        a.items(),
        [(0, ok(b"r0")), (1, ok(b"r1")), (2, crashed(EXIT_1))]
    );
    assert_eq!(requeue.len(), 1);
    assert_eq!(requeue[0].items(), encode(&[b"a3"]));
    let s = env.stats();
    assert_eq!((s.completed, s.crashed, s.failed), (2, 1, 1));
}

#[test]
fn a_withdrawn_job_whose_worker_dies_before_skipping_it_is_counted_once() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let id = JobId(9);
    let (p, job) = (Recorder::new(), Recorder::job(id));
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"p0"], 0, &p, opts, None));
    send(&mut conn, batch(&[b"j"], 0, &job, opts, Some(id)));
    w.recv_batch();
    let fj = w.recv_batch();
    w.run(0, Tag::Ok, b"r0");
    assert!(conn.cancel(id, &mut env.ctx()));
    // It reaches the job, cannot take it, and dies before its skip.
    w.start(1);
    assert!(!w.take(&fj));
    conn.status = Some(KILLED);
    let requeue = conn.finalize(&mut env.ctx());
    assert!(requeue.is_empty());
    assert_eq!(job.outcome(), Err(JobError::Cancelled));
    let s = env.stats();
    assert_eq!(
        (s.completed, s.cancelled, s.crashed, s.failed),
        (1, 1, 0, 0),
        "one job completed, one cancelled: nothing else"
    );
}

#[test]
fn abandoning_counts_a_withdrawn_job_once() {
    let mut env = Env::new();
    let (mut conn, mut w) = setup();
    let id = JobId(9);
    let (p, job) = (Recorder::new(), Recorder::job(id));
    let opts = JobOpts::default();
    send(&mut conn, batch(&[b"p0"], 0, &p, opts, None));
    send(&mut conn, batch(&[b"j"], 0, &job, opts, Some(id)));
    w.recv_batch();
    w.recv_batch();
    w.start(0);
    assert!(conn.cancel(id, &mut env.ctx()));
    assert_eq!(env.stats().cancelled, 1);
    // The pool terminates before the worker reaches the job.
    conn.abandon(&mut env.ctx());
    drop(conn);
    assert_eq!(job.outcome(), Err(JobError::Cancelled));
    assert_eq!(p.items(), [(0, Err(JobError::Cancelled))]);
    assert_eq!(env.stats().cancelled, 2, "two jobs, each cancelled once");
}
