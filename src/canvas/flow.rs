//! The coordinator: one submitted workflow, moved from step to step by the
//! outcomes of its jobs.
//!
//! A [`Flow`] holds the workflow's parts as a flat list (a chain's steps, a
//! group's members, each with its parent) and reacts to [`Event`]s: a
//! single job resolved (its slot's finisher posts it), or a delivery of a
//! group's batched members came in (their
//! [`ChunkSink`](crate::canvas::segment::ChunkSink) posts it). Each event
//! is applied under the flow's lock — state changes, and jobs handed
//! to the supervisor's command queue, which never blocks — and what may run
//! user code or take other locks (resolving a slot, cancelling a job,
//! callbacks, dropping a batch the supervisor refused) runs after the lock
//! is released. A chain's next step is therefore submitted by whichever
//! thread resolved the step before it, during that resolution: usually the
//! supervisor's, or a caller helping it. No worker ever waits for another
//! job, and no thread waits for a workflow's progress but the caller who
//! asked for its result.
//!
//! Promises:
//! - **The workflow's slot resolves exactly once**: with the last step's
//!   result, with the first failure (a chain names its step, a fail-fast
//!   group every failed member), or `Cancelled`. Every step that was sent
//!   resolves (the core guarantees it), and every part finishes when its
//!   last step or member does; a part whose job resolved `Cancelled` (the
//!   pool was terminated) cancels the whole workflow.
//! - **Nothing starts once it is over**: cancelled, or failed. Single jobs
//!   still out are cancelled (withdrawn, or their worker killed); batches
//!   of members not yet handed to a worker are declined; no later step is
//!   sent.
//! - **Every job is counted once**: submitted when sent; then completed,
//!   failed or cancelled by whoever resolves it (the supervisor, a refusal
//!   here, or a cancellation here of a job the supervisor will drop
//!   unseen). Steps never sent are not counted.
//! - **Results pass as bytes**: a step's result, as the worker encoded it,
//!   becomes the next step's argument; a group's result is assembled from
//!   its members' (`assemble.rs`).
//!
//! Locks: the flow's lock is never held while a slot's lock is taken, and
//! an event posted from inside a slot's finisher (under that slot's lock)
//! only ever takes the flow's lock and, after releasing it, the locks of
//! other slots — the cancelling of slots is done by one thread for all of
//! them at once, so two threads never wait for each other's slots. Events
//! a thread causes while it applies one (a job it sent came back at once)
//! wait in a queue of that thread's ([`post`]), so applying never recurses.

use crate::batch::gate::Ticket;
use crate::batch::outcome;
use crate::batch::progress::Progress;
use crate::batch::slot::Slot;
use crate::batch::{Batch, JobOpts, Outcome};
use crate::canvas::assemble::Assembly;
use crate::canvas::node::{Arg, ChainErrors, Node};
pub(crate) use crate::canvas::parts::NodeId;
use crate::canvas::parts::{Builder, Part, PartKind, Phase, first_jobs};
use crate::canvas::segment::{Segment, Sending};
use crate::client::handle::Tracker;
use crate::client::shared::Feed;
use crate::error::JobError;
use crate::options::callbacks::{JobCallbacks, Task};
use crate::options::retry::{self, RetryOn, RetrySink};
use crate::options::signature::Spec;
use crate::supervisor::Command;
use crate::transport::wire::{self, Tag};
use crossbeam_channel::{Receiver, Sender};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Stands for "the part itself" where a group member's index is expected.
const WHOLE: u32 = u32::MAX;

/// Bytes of an item's length prefix.
const LEN: usize = 4;

/// What happened to a workflow.
pub(crate) enum Event {
    /// Start it, with the queue places its first jobs may take.
    /// `attended`: the submitting caller waits for the workflow at once and
    /// drives the supervisor itself meanwhile, so the supervisor thread
    /// need not be woken for the first jobs (see `Workflow::apply`).
    Start {
        ticket: Option<Ticket>,
        attended: bool,
    },
    /// A single job resolved: a step (`member` is [`WHOLE`]) or the retry
    /// of a batched member of group `node`. `outcome` is as its slot got it.
    Job {
        node: NodeId,
        member: u32,
        outcome: Result<Vec<u8>, JobError>,
    },
    /// Member `index` of group `node`, batched, was refused before it was
    /// sent (its argument cannot be sent); it was counted.
    Refused {
        node: NodeId,
        index: u32,
        error: JobError,
    },
    /// Batched members of group `node` resolved, from member `base` on.
    Chunk {
        node: NodeId,
        segment: u32,
        base: u32,
        outcome: Outcome,
    },
}

/// What runs after the flow's lock is released.
enum Later {
    /// Send a segment's batches.
    Send(Sending),
    /// A batch the supervisor could not take: dropping it resolves it.
    Drop(Batch),
    /// Resolve a slot (a refused job, or the workflow's own).
    Resolve(Arc<Slot>, Result<Vec<u8>, JobError>),
    /// Cancel a job that was sent.
    Cancel(Arc<Slot>),
    /// Tell callbacks an outcome.
    Notify(JobCallbacks, Result<Vec<u8>, JobError>),
}

/// What is left to do while an event is applied.
enum Work {
    /// Start a part; a step after the first gets the previous result.
    Start(NodeId, Option<Vec<u8>>),
    /// A part resolved: its result as an item, or its failure.
    Finish(NodeId, Result<Vec<u8>, JobError>),
}

struct State {
    parts: Vec<Part>,
    finished: bool,
    /// Single jobs sent and not yet resolved, by part and member.
    running: HashMap<(NodeId, u32), Arc<Slot>>,
}

/// One submitted workflow.
pub(crate) struct Flow {
    feed: Feed,
    /// The pool's callback thread (none once the pool was joined).
    runner: Option<Sender<Task>>,
    /// The workflow's own slot, which its handle (or the result store)
    /// reads.
    root: Arc<Slot>,
    total: u64,
    done: AtomicU64,
    /// Set once it is over (finished or cancelled): batches not yet handed
    /// to a worker are declined. Read without the lock.
    over: AtomicBool,
    state: Mutex<State>,
}

impl Flow {
    /// A flow for `node`, whose outcome goes to `root`; and how many jobs
    /// it sends when it starts (for the bounded queue).
    pub(crate) fn new(
        feed: Feed,
        runner: Option<Sender<Task>>,
        root: Arc<Slot>,
        node: &Node,
    ) -> (Arc<Flow>, u64) {
        let mut builder = Builder {
            parts: Vec::new(),
            cap: feed.config.max_message_size,
        };
        builder.build(node, None, true);
        let mut parts = builder.parts;
        // The workflow's own callbacks are its slot's (see `launch.rs`).
        parts[0].callbacks = None;
        let first = first_jobs(&parts, 0);
        let flow = Flow {
            feed,
            runner,
            root,
            total: node.steps(),
            done: AtomicU64::new(0),
            over: AtomicBool::new(false),
            state: Mutex::new(State {
                parts,
                finished: false,
                running: HashMap::new(),
            }),
        };
        (Arc::new(flow), first)
    }

    /// Starts the workflow; its first jobs take their queue places from
    /// `ticket`. `attended`: see [`Event::Start`].
    pub(crate) fn start(self: &Arc<Self>, ticket: Option<Ticket>, attended: bool) {
        post(self, Event::Start { ticket, attended });
    }

    /// Whether the workflow is over (finished or cancelled).
    pub(crate) fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one event, then does what it left to do.
    fn handle(self: &Arc<Self>, event: Event) {
        let mut later = Vec::new();
        let (sent, attended) = {
            let mut state = self.lock();
            let mut run = Run {
                flow: self,
                st: &mut state,
                later: &mut later,
                work: VecDeque::new(),
                ticket: None,
                sent: false,
                starting: false,
                attended: false,
            };
            run.apply(event);
            (run.sent, run.attended)
        };
        if sent && !attended {
            self.feed.hand_over();
        }
        for l in later {
            match l {
                Later::Send(sending) => sending.run(self),
                other => self.perform(other),
            }
        }
    }

    /// Does one thing an event left to do (all but sending, which needs the
    /// flow's `Arc`).
    fn perform(&self, later: Later) {
        match later {
            Later::Send(_) => debug_assert!(false, "sent by `handle`"),
            Later::Drop(batch) => drop(batch),
            Later::Resolve(slot, outcome) => {
                slot.resolve(outcome);
            }
            Later::Cancel(slot) => {
                self.cancel_job(&slot);
            }
            Later::Notify(callbacks, outcome) => callbacks.notify(&outcome, self.runner.as_ref()),
        }
    }

    /// Cancels one job that was sent, as its handle would: unstarted, the
    /// supervisor will drop it unseen (counted here); started, the
    /// supervisor withdraws it or kills its worker (and counts it). Returns
    /// where the supervisor's answer will come, if it was asked; nothing
    /// here waits for it, since this may run on the supervisor's thread.
    fn cancel_job(&self, slot: &Slot) -> Option<Receiver<bool>> {
        let submitter = &self.feed.submitter;
        if slot.cancel_pending() {
            self.feed.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            let _ = submitter.send(Command::Discard(slot.id));
            None
        } else if slot.is_dispatched() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let _ = submitter.send(Command::Cancel { id: slot.id, reply });
            Some(answer)
        } else {
            None
        }
    }
}

impl Tracker for Flow {
    fn progress(&self) -> Progress {
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
        }
    }

    /// Called by the workflow's handle, on the caller's thread: like a
    /// job's handle, it returns once every single job still out is
    /// withdrawn or its worker killed, and the batched members workers
    /// hold are recalled (the supervisor's answers), so that none of them
    /// starts afterwards.
    fn cancel(&self) -> bool {
        let mut later = Vec::new();
        {
            let mut state = self.lock();
            if state.finished {
                return false;
            }
            shut(self, &mut state, &mut later);
        }
        let mut answers = Vec::new();
        for l in later {
            match l {
                Later::Cancel(slot) => answers.extend(self.cancel_job(&slot)),
                other => self.perform(other),
            }
        }
        // Members sent in batches (`segment.rs`) that a worker holds but has
        // not started: their sinks decline them now, and the workers hand
        // them back unrun.
        let (reply, recalled) = crossbeam_channel::bounded(1);
        let _ = self
            .feed
            .submitter
            .send(Command::RecallDeclined(Some(reply)));
        // An error means the supervisor is gone: nothing runs then.
        for answer in answers {
            let _ = answer.recv();
        }
        let _ = recalled.recv();
        true
    }
}

/// Ends the workflow as cancelled: cancels every job still out, tells the
/// callbacks of every part under way, and resolves the workflow.
fn shut(flow: &Flow, st: &mut State, later: &mut Vec<Later>) {
    st.finished = true;
    flow.over.store(true, Ordering::Release);
    later.extend(st.running.drain().map(|(_, slot)| Later::Cancel(slot)));
    for part in &mut st.parts {
        if part.phase == Phase::Running
            && let Some(callbacks) = part.callbacks.take()
        {
            later.push(Later::Notify(callbacks, Err(JobError::Cancelled)));
        }
    }
    later.push(Later::Resolve(flow.root.clone(), Err(JobError::Cancelled)));
}

/// One event being applied, under the flow's lock.
struct Run<'a> {
    flow: &'a Arc<Flow>,
    st: &'a mut State,
    later: &'a mut Vec<Later>,
    work: VecDeque<Work>,
    /// Queue places for the jobs the start sends.
    ticket: Option<Ticket>,
    /// Jobs were sent (quietly: see `Feed::send_quiet`).
    sent: bool,
    /// The event is the workflow's start, on the submitting caller's
    /// thread.
    starting: bool,
    /// ... by a caller who waits for the workflow at once.
    attended: bool,
}

impl Run<'_> {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Start { ticket, attended } => {
                self.ticket = ticket;
                self.starting = true;
                self.attended = attended;
                self.work.push_back(Work::Start(0, None));
            }
            Event::Job {
                node,
                member,
                outcome,
            } => {
                self.st.running.remove(&(node, member));
                if self.st.finished {
                    return;
                }
                let result = item_of(outcome);
                self.flow.done.fetch_add(1, Ordering::Relaxed);
                if member == WHOLE {
                    self.work.push_back(Work::Finish(node, result));
                } else {
                    self.member_done(node, member, result);
                }
            }
            Event::Refused { node, index, error } => {
                if !self.st.finished {
                    self.refused(node, index, error);
                }
            }
            Event::Chunk {
                node,
                segment,
                base,
                outcome,
            } => {
                if !self.st.finished {
                    self.chunk(node, segment, base, outcome);
                }
            }
        }
        while let Some(work) = self.work.pop_front() {
            if self.st.finished {
                break;
            }
            match work {
                Work::Start(id, input) => self.start(id, input),
                Work::Finish(id, result) => self.finish(id, result),
            }
        }
        self.ticket = None;
        if self.st.finished {
            // Nothing will be asked of the parts again: free them now, not
            // when the last handle goes.
            self.st.parts = Vec::new();
        }
    }

    fn start(&mut self, id: NodeId, input: Option<Vec<u8>>) {
        let part = &mut self.st.parts[id as usize];
        part.phase = Phase::Running;
        match &part.kind {
            PartKind::Step { spec, arg } => {
                let spec = spec.clone();
                let item = match arg {
                    Arg::Bound(arg) => (**arg).clone(),
                    Arg::Previous => input.ok_or_else(|| {
                        JobError::Codec("a step that takes a result came first".into())
                    }),
                };
                self.launch(id, WHOLE, &spec, item);
            }
            PartKind::Chain { steps, .. } => match steps.first() {
                Some(&first) => self.work.push_back(Work::Start(first, None)),
                None => self.work.push_back(Work::Finish(id, Ok(unit_item()))),
            },
            PartKind::Group {
                nodes, segments, ..
            } => {
                for &n in nodes {
                    self.work.push_back(Work::Start(n, None));
                }
                for s in 0..segments.len() {
                    self.launch_segment(id, s as u32);
                }
                self.check_group(id);
            }
        }
    }

    /// Sends one job of `spec` with argument `item` (or refuses it), whose
    /// outcome comes back as an [`Event::Job`] for `(node, member)`.
    fn launch(
        &mut self,
        node: NodeId,
        member: u32,
        spec: &Arc<Spec>,
        item: Result<Vec<u8>, JobError>,
    ) {
        let feed = &self.flow.feed;
        let slot = Arc::new(Slot::new(feed.next_job_id()));
        let flow = self.flow.clone();
        let keep = Box::new(move |outcome| {
            post(
                &flow,
                Event::Job {
                    node,
                    member,
                    outcome,
                },
            );
            // The outcome went on to the workflow; nobody reads this slot.
            Err(JobError::Cancelled)
        });
        slot.set_finisher(spec.finisher(feed, slot.id, self.flow.runner.as_ref(), keep));
        let cap = feed.config.max_message_size;
        let prepared = item.and_then(|item| {
            let size = (item.len() - LEN.min(item.len())) as u64;
            if size > cap {
                return Err(JobError::TooLarge { size, limit: cap });
            }
            Ok((spec.core.resolve(&feed.config, spec.call.func)?, item))
        });
        let (opts, item) = match prepared {
            Ok(p) => p,
            Err(error) => {
                // Refused before it reached the supervisor, as `Shared::refuse`.
                feed.counters.submitted.fetch_add(1, Ordering::Relaxed);
                feed.counters.count_error(&error, 1);
                self.later.push(Later::Resolve(slot, Err(error)));
                return;
            }
        };
        let sink = spec.sink(feed, &slot, &item, opts);
        let mut batch = Batch::new(spec.call, item, 1, 0, sink, opts, Some(slot.id));
        batch.name = spec.name;
        batch.ticket = self.places(1);
        match feed.send_quiet(batch) {
            Ok(()) => {
                self.sent = true;
                self.st.running.insert((node, member), slot);
            }
            Err(batch) => self.later.push(Later::Drop(batch)),
        }
    }

    /// Sends the batches of segment `s` of group `node` — after the lock is
    /// released (see [`Sending`]) — or refuses them all if the job's
    /// options cannot work.
    fn launch_segment(&mut self, node: NodeId, s: u32) {
        let flow = self.flow;
        let feed = &flow.feed;
        let by_caller = self.starting;
        let seg = self.segment(node, s);
        let opts = match seg.spec.core.resolve(&feed.config, seg.spec.call.func) {
            Ok(opts) => opts,
            Err(error) => {
                let (first, count) = (seg.first, seg.count);
                let callbacks = seg.spec.callbacks.clone();
                let n = u64::from(count);
                feed.counters.submitted.fetch_add(n, Ordering::Relaxed);
                feed.counters.count_error(&error, n);
                flow.done.fetch_add(n, Ordering::Relaxed);
                if !callbacks.is_empty() {
                    for _ in 0..count {
                        self.later
                            .push(Later::Notify(callbacks.clone(), Err(error.clone())));
                    }
                }
                if let Some(a) = self.assembly(node) {
                    a.accept_failed(first, count, error, Vec::new());
                }
                return;
            }
        };
        seg.opts = opts;
        if opts.not_before.is_some() {
            // Members with a start time go as single jobs (see `segment.rs`).
            let cap = feed.config.max_message_size;
            let (spec, first, count) = (seg.spec.clone(), seg.first, seg.count);
            for index in first..first + count {
                let item = self.segment(node, s).item(index, cap);
                self.launch(node, index, &spec, item);
            }
            return;
        }
        let mut sending = Sending {
            node,
            segment: s,
            spec: seg.spec.clone(),
            args: seg.args.clone(),
            from: seg.from,
            first: seg.first,
            count: seg.count,
            whole: seg.whole,
            opts,
            ticket: None,
            by_caller,
            attended: self.attended,
        };
        sending.ticket = self.places(u64::from(sending.count)).map(|t| *t);
        self.later.push(Later::Send(sending));
    }

    /// The assembly of group `node`, while it is under way.
    fn assembly(&mut self, node: NodeId) -> Option<&mut Assembly> {
        match &mut self.st.parts[node as usize].kind {
            PartKind::Group { assembly, .. } => assembly.as_mut(),
            _ => None,
        }
    }

    /// Batched member `index` of group `node` was refused before it was
    /// sent.
    fn refused(&mut self, node: NodeId, index: u32, error: JobError) {
        self.flow.done.fetch_add(1, Ordering::Relaxed);
        let PartKind::Group { segments, .. } = &self.st.parts[node as usize].kind else {
            unreachable!("members belong to groups");
        };
        let seg = segments
            .iter()
            .find(|s| (s.first..s.first + s.count).contains(&index));
        if let Some(seg) = seg
            && !seg.spec.callbacks.is_empty()
        {
            let callbacks = seg.spec.callbacks.clone();
            self.later
                .push(Later::Notify(callbacks, Err(error.clone())));
        }
        self.member_done(node, index, Err(error));
    }

    /// Queue places for `n` jobs the start sends, from its ticket.
    fn places(&mut self, n: u64) -> Option<Box<Ticket>> {
        self.ticket.as_mut().map(|t| Box::new(t.split(n)))
    }

    /// A delivery of batched members of group `node`: retries the failures
    /// the job's policy retries, tells callbacks, and hands the rest to the
    /// group's assembly.
    fn chunk(&mut self, node: NodeId, s: u32, base: u32, outcome: Outcome) {
        let flow = self.flow;
        let count = match &outcome {
            Outcome::Records { count, .. } | Outcome::Failed { count, .. } => *count,
        };
        if let Outcome::Failed {
            error: JobError::Cancelled,
            ..
        } = &outcome
        {
            // The pool was terminated under the workflow. (Batched members
            // are never withdrawn one by one, so no record says `Skipped`.)
            return shut(flow, self.st, self.later);
        }
        let spec = self.segment(node, s).spec.clone();
        // Failures the job's policy retries become single jobs of their own,
        // which take their members' places; every other member's outcome is
        // final, and told to the job's callbacks.
        let mut retried = Vec::new();
        let retrying = spec.retry.as_ref().is_some_and(|p| p.max_retries() > 0);
        if retrying || !spec.callbacks.is_empty() {
            for (index, single) in singles(base, &outcome) {
                let failure = retry::classify(&single);
                let policy = spec.retry.as_ref().filter(|_| retrying);
                if let (Some(failure), Some(policy)) = (failure, policy)
                    && policy.retries(failure)
                {
                    let cap = flow.feed.config.max_message_size;
                    let seg = self.segment(node, s);
                    let (item, opts) = (seg.item(index, cap), seg.opts);
                    if let Ok(item) = item
                        && let Some(slot) = self.retry(node, index, &spec, item, opts, failure)
                    {
                        self.st.running.insert((node, index), slot);
                        retried.push(index);
                        continue;
                    }
                }
                if !spec.callbacks.is_empty() {
                    let outcome = match single {
                        Outcome::Records { buf, .. } => Ok(buf),
                        Outcome::Failed { error, .. } => Err(error),
                    };
                    self.later
                        .push(Later::Notify(spec.callbacks.clone(), outcome));
                }
            }
        }
        // A member being retried is done when its retry is.
        let done = count - retried.len() as u32;
        flow.done.fetch_add(u64::from(done), Ordering::Relaxed);
        let PartKind::Group { assembly, .. } = &mut self.st.parts[node as usize].kind else {
            unreachable!("segments belong to groups");
        };
        if let Some(a) = assembly {
            match outcome {
                Outcome::Records { count, buf } => {
                    a.accept_records(base, buf, count, retried, spec.unit.clone())
                }
                Outcome::Failed { count, error } => a.accept_failed(base, count, error, retried),
            }
        }
        self.check_group(node);
    }

    /// Segment `s` of group `node`.
    fn segment(&mut self, node: NodeId, s: u32) -> &mut Segment {
        let PartKind::Group { segments, .. } = &mut self.st.parts[node as usize].kind else {
            unreachable!("segments belong to groups");
        };
        &mut segments[s as usize]
    }

    /// Tries again a batched member whose first attempt failed with
    /// `failure`, as a single job of its own with a fresh slot; its final
    /// outcome comes back as an [`Event::Job`] for the member. `None` if
    /// the policy makes no retry after all (the failure stands).
    fn retry(
        &mut self,
        node: NodeId,
        member: u32,
        spec: &Arc<Spec>,
        item: Vec<u8>,
        opts: JobOpts,
        failure: RetryOn,
    ) -> Option<Arc<Slot>> {
        let policy = spec.retry.clone()?;
        let feed = &self.flow.feed;
        let slot = Arc::new(Slot::new(feed.next_job_id()));
        let flow = self.flow.clone();
        let keep = Box::new(move |outcome| {
            post(
                &flow,
                Event::Job {
                    node,
                    member,
                    outcome,
                },
            );
            Err(JobError::Cancelled)
        });
        slot.set_finisher(spec.finisher(feed, slot.id, self.flow.runner.as_ref(), keep));
        let sink = RetrySink::new(
            feed,
            slot.clone(),
            policy,
            (spec.call, spec.name),
            item,
            opts,
        );
        // The new slot was never claimed: as far as the retry is concerned
        // this is its first attempt's failure, and it counts the retry.
        sink.try_again(failure).then_some(slot)
    }

    /// Member `index` of group `node` resolved on its own.
    fn member_done(&mut self, node: NodeId, index: u32, result: Result<Vec<u8>, JobError>) {
        if result == Err(JobError::Cancelled) {
            return shut(self.flow, self.st, self.later);
        }
        let PartKind::Group { assembly, .. } = &mut self.st.parts[node as usize].kind else {
            unreachable!("members belong to groups");
        };
        if let Some(a) = assembly {
            a.accept(index, result);
        }
        self.check_group(node);
    }

    /// Finishes group `node` if every member is in.
    fn check_group(&mut self, node: NodeId) {
        let PartKind::Group { assembly, .. } = &mut self.st.parts[node as usize].kind else {
            return;
        };
        if assembly.as_ref().is_some_and(Assembly::is_complete) {
            let result = assembly.take().expect("checked").finish();
            self.work.push_back(Work::Finish(node, result));
        }
    }

    fn finish(&mut self, id: NodeId, result: Result<Vec<u8>, JobError>) {
        if result == Err(JobError::Cancelled) {
            // A job of it was cancelled under it: the pool was terminated.
            return shut(self.flow, self.st, self.later);
        }
        let part = &mut self.st.parts[id as usize];
        part.phase = Phase::Done;
        if let Some(callbacks) = part.callbacks.take() {
            self.later
                .push(Later::Notify(callbacks, record_of(&result)));
        }
        let Some((parent, place)) = part.parent else {
            self.st.finished = true;
            self.flow.over.store(true, Ordering::Release);
            let root = self.flow.root.clone();
            self.later.push(Later::Resolve(root, into_record(result)));
            return;
        };
        match &self.st.parts[parent as usize].kind {
            PartKind::Chain { steps, errors } => match result {
                Err(error) => {
                    let error = match errors {
                        ChainErrors::Numbered => JobError::StepFailed {
                            step: place as usize,
                            error: Box::new(error),
                        },
                        ChainErrors::AsIs => error,
                    };
                    self.work.push_back(Work::Finish(parent, Err(error)));
                }
                Ok(item) => match steps.get(place as usize + 1) {
                    Some(&next) => self.work.push_back(Work::Start(next, Some(item))),
                    None => self.work.push_back(Work::Finish(parent, Ok(item))),
                },
            },
            PartKind::Group { .. } => self.member_done(parent, place, result),
            PartKind::Step { .. } => unreachable!("a step has no parts"),
        }
    }
}

/// The members a delivery resolves, one outcome each, for retries and
/// callbacks.
fn singles(base: u32, outcome: &Outcome) -> Vec<(u32, Outcome)> {
    match outcome {
        Outcome::Records { buf, .. } => wire::records(buf)
            .enumerate()
            .map(|(i, rec)| {
                let mut one = wire::header(rec.tag, rec.body.len() as u32).to_vec();
                one.extend_from_slice(rec.body);
                (base + i as u32, Outcome::Records { count: 1, buf: one })
            })
            .collect(),
        Outcome::Failed { count, error } => (0..*count)
            .map(|i| {
                let one = Outcome::Failed {
                    count: 1,
                    error: error.clone(),
                };
                (base + i, one)
            })
            .collect(),
    }
}

/// A job's outcome as a workflow value: its result as an item (a fallible
/// job's `Err` is a value too), or its failure.
fn item_of(outcome: Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> {
    let mut buf = outcome?;
    let Some(rec) = wire::records(&buf).next() else {
        return Err(JobError::Codec("empty result record".into()));
    };
    let (tag, size) = (rec.tag, wire::HEADER + rec.body.len());
    outcome::outcome(rec)?;
    debug_assert!(matches!(tag, Tag::Ok | Tag::Err));
    // `[len][tag][body]` becomes `[len][body]`.
    buf.truncate(size);
    buf.remove(LEN);
    Ok(buf)
}

/// A workflow value as a job's record, for a handle: in place, the tag
/// byte inserted after the length (a big group's result is not copied).
fn into_record(result: Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> {
    let mut item = result?;
    item.insert(LEN, Tag::Ok as u8);
    Ok(item)
}

/// A copy of a workflow value as a job's record, for callbacks.
fn record_of(result: &Result<Vec<u8>, JobError>) -> Result<Vec<u8>, JobError> {
    let item = result.as_ref().map_err(Clone::clone)?;
    let mut rec = Vec::with_capacity(item.len() + 1);
    rec.extend_from_slice(&item[..LEN]);
    rec.push(Tag::Ok as u8);
    rec.extend_from_slice(&item[LEN..]);
    Ok(rec)
}

/// The item of `()`: an empty chain's result.
fn unit_item() -> Vec<u8> {
    vec![0; LEN]
}

/// Events waiting for the thread that caused them, in order.
type Queue = VecDeque<(Arc<Flow>, Event)>;

thread_local! {
    /// Events this thread caused while applying another; `None` while it
    /// applies none.
    static QUEUE: RefCell<Option<Queue>> = const { RefCell::new(None) };
}

/// Applies `event` to `flow` on this thread — unless this thread is
/// applying an event already (the event was caused by it: a job it sent
/// came back at once), in which case it is queued and applied right after.
pub(crate) fn post(flow: &Arc<Flow>, event: Event) {
    let first = QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        match &mut *q {
            Some(queue) => {
                queue.push_back((flow.clone(), event));
                None
            }
            None => {
                *q = Some(VecDeque::new());
                Some(event)
            }
        }
    });
    let Some(event) = first else { return };
    /// Ends this thread's turn even if applying panics (the supervisor
    /// catches its panics), dropping what it had queued.
    struct Turn;
    impl Drop for Turn {
        fn drop(&mut self) {
            QUEUE.with(|q| q.borrow_mut().take());
        }
    }
    let _turn = Turn;
    flow.handle(event);
    take_queued();
}

/// Applies the events this thread queued while it applies another. A long
/// action of that other event — sending a big group's batches, stepping
/// the supervisor between them — calls it as it goes, so that answers are
/// taken in as they come, as `map` takes them, rather than all at its end.
pub(crate) fn take_queued() {
    while let Some((flow, event)) =
        QUEUE.with(|q| q.borrow_mut().as_mut().and_then(VecDeque::pop_front))
    {
        flow.handle(event);
    }
}
