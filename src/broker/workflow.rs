//! Workflows through a broker: the same typed [`Signature`]s, chains,
//! [`Group`]s and chords as on a pool — built from a client's jobs
//! ([`RemoteJob::sig`], [`Client::group`], `Step` for a [`RemoteJob`]) —
//! whose steps run on whatever hosts take them.
//!
//! The cut: the typed builders make the same erased tree (`canvas/node.rs`)
//! whatever runs it; a step built from a [`RemoteJob`] is a `Spec` that
//! carries a [`RemoteStep`] (its registered name and options). A workflow
//! knows where it goes by its home (`canvas/launch.rs`: a pool, or
//! [`Remote`], which [`Client`] implements here), and this file's
//! coordinator walks the tree as the pool's (`canvas/flow.rs`) does —
//! flattened into parts, each with its parent, moved by the outcomes of
//! its jobs — but sends each step as a broker job.
//!
//! What it promises, as a pool's workflows do:
//!
//! - **Types line up or it does not compile** (the builders are the same).
//! - **The workflow's handle resolves exactly once**: the last step's
//!   result, the first failure (a chain names its step; a fail-fast group
//!   names every failed member and keeps the others' results), or
//!   `Cancelled`. A chord's body is sent once, after every member, and
//!   never after a fail-fast member failed.
//! - **Checked at submission**: every step must be a registered job of a
//!   client (a step of a pool's job, an unregistered function, or a
//!   `starmap`/`chunks` group of a pool's job fails the workflow at once
//!   with a typed error, before anything is sent), and the client's codec
//!   must be bincode (groups are assembled in its layout).
//! - **No job waits for another, and bytes pass through**: the
//!   coordinator lives in the submitting process and sends a step when the
//!   one before resolved; a step's result goes on as the host encoded it.
//!
//! What differs from a pool, and why:
//!
//! - **The coordinator lives in the submitting process.** It is driven by
//!   the client's results thread: a step's result arrives in the client's
//!   reply stream, its slot's finisher posts it here, and the next step
//!   is handed to the client's writer (a channel send, never a wait). If
//!   the submitting process dies mid-workflow, the steps already queued
//!   run (at least once, as any broker job) and their results are kept by
//!   id, but nothing sends the next step: the workflow stops there.
//!   Celery carries the rest of a chain inside each message instead, so a
//!   chain survives its submitter — at the price of messages that grow
//!   with the workflow (celery PR #10171: a chain of chords needed a
//!   120 MB message), chord bodies fired by polling (`chord_unlock`) and
//!   nothing that knows the whole workflow's state; here no message holds
//!   more than one step, and the handle knows everything.
//! - **Cancelling** resolves the handle `Cancelled`, sends nothing more,
//!   and revokes the steps sent and not over (`Client::revoke` with
//!   `terminate`: a queued step never runs, a running one's worker is
//!   killed, as a pool's workflow does).
//! - **Callbacks** on a workflow, a group or a step's own `RemoteJob` run
//!   on the client's callback thread (`callbacks.rs`), as a job's do.
//! - **`detach`** keeps the workflow's result by id in Redis (`res:<id>`,
//!   `P` while it runs), written by the submitting process when the
//!   workflow resolves, so [`Client::status`] and [`Client::take_result`]
//!   work from any process — once the submitter has written it.

use super::callbacks::RemoteCallbacks;
use super::client::{Client, Inner};
use super::job::{RemoteJob, Target as JobTarget};
use super::message::{Envelope, Opts};
use super::results;
use super::writer::{OutJob, Start};
use crate::batch::JobId;
use crate::batch::progress::Progress;
use crate::batch::slot::Slot;
use crate::canvas::assemble::Assembly;
use crate::canvas::flow::{into_record, item_of, record_of, unit_item};
use crate::canvas::launch::{Home, Remote, Target};
use crate::canvas::node::{Arg, ChainErrors, Kind, Leaf, Member, Node, Policy, Shape};
use crate::canvas::sealed::Sealed;
use crate::canvas::{Group, IntoWorkflow, Signature, Step};
use crate::client::handle::Tracker;
use crate::error::JobError;
use crate::options::callbacks::JobCallbacks;
use crate::options::signature::{CoreOptions, Expiry, Spec};
use crate::transport::codec::Codec;
use crate::transport::wire;
use crate::worker::call::Call;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Bytes of an item's length prefix.
const LEN: usize = 4;

/// What a step of a client's job keeps (in its `Spec`): its registered
/// name, type fingerprint and options, taken when the step was built.
pub(super) struct RemoteStep {
    /// The registered name, or why there is none.
    name: Result<String, String>,
    fingerprint: u64,
    /// The job's options for a run whose result comes back to this
    /// client, or why they cannot work.
    opts: Result<(Opts, Start), JobError>,
    expiry: Option<Expiry>,
    /// The job's own `on_success` / `on_error`, told each run's outcome on
    /// the client's callback thread, as for a job submitted alone.
    callbacks: RemoteCallbacks,
}

/// The function a broker step's `Spec` names for the pool's sake. Never
/// called: a pool refuses a step that carries a [`RemoteStep`]
/// (`canvas/launch.rs`) before anything is sent.
fn runs_on_hosts(_: ()) {}

impl<A, R> RemoteJob<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    /// This job as a workflow's step: a `Spec` carrying what the broker
    /// needs.
    fn remote_spec(&self) -> Spec {
        let (name, fingerprint, expiry) = self.parts();
        let step = RemoteStep {
            name,
            fingerprint,
            opts: self.opts(JobTarget::Handle),
            expiry,
            callbacks: self.callbacks.clone(),
        };
        Spec {
            call: Call::new(runs_on_hosts as fn(()), Codec::Bincode),
            name: "a broker's job",
            core: CoreOptions::default(),
            retry: None,
            rate_limit: None,
            callbacks: JobCallbacks::default(),
            unit: None,
            remote: Some(Arc::new(step)),
        }
    }

    /// This job bound to `arg`: a [`Signature`] to submit through the
    /// broker, alone or as a step of a workflow (every option of the job
    /// applies to each run). Workflows through a broker use the bincode
    /// codec: see [`Client::group`].
    ///
    /// ```no_run
    /// fn parse(text: String) -> u64 { text.trim().parse().unwrap() }
    /// fn double(x: u64) -> u64 { 2 * x }
    /// forkpool::register!(parse);
    /// forkpool::register!(double);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let chain = client.job(parse).sig(" 21 ".into()).then(client.job(double));
    /// assert_eq!(chain.submit().get(), Ok(42));   // two steps, on any hosts
    /// # Ok(()) }
    /// ```
    pub fn sig(&self, arg: A) -> Signature<R> {
        let mut item = Vec::new();
        let encoded = wire::push_item(&mut item, |v| Codec::Bincode.encode_into(v, &arg))
            .map(|_| item)
            .map_err(|e| JobError::Codec(format!("argument: {e}")));
        Signature::from_parts(
            self.client().home(),
            Leaf {
                spec: Arc::new(self.remote_spec()),
                arg: Arg::Bound(Arc::new(encoded)),
            },
        )
    }
}

impl<A, R> Sealed for RemoteJob<A, R> {}

/// A client's job after a part that gives `A`: it receives that result.
impl<A, R> Step<A> for RemoteJob<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: DeserializeOwned + Send + 'static,
{
    type Output = R;
    fn into_node(self) -> Node {
        Node::step(Arc::new(self.remote_spec()), Arg::Previous)
    }
}

impl Client {
    /// Where this client's workflows go.
    fn home(&self) -> Home {
        Home::Remote(Arc::new(self.clone()))
    }

    /// The members side by side, their results in order: a [`Group`] to
    /// submit through the broker or to finish with a chord body
    /// ([`Group::chord`]), as [`Pool::group`](crate::Pool::group) makes
    /// one for a pool. Members are signatures of this client's jobs
    /// ([`RemoteJob::sig`]) and workflows made of them, nested as deep as
    /// you like; each member's steps run on whatever hosts take them.
    ///
    /// ```no_run
    /// fn count(text: String) -> usize { text.split_whitespace().count() }
    /// fn total(counts: Vec<usize>) -> usize { counts.iter().sum() }
    /// forkpool::register!(count);
    /// forkpool::register!(total);
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = forkpool::broker::Broker::new("redis://127.0.0.1/")?.client()?;
    /// let texts = ["a b c", "d e", "f"];
    /// let chord = client
    ///     .group(texts.iter().map(|t| client.job(count).sig(t.to_string())))
    ///     .chord(client.job(total));          // runs once, after every member
    /// assert_eq!(chord.submit().get(), Ok(6));
    /// # Ok(()) }
    /// ```
    pub fn group<W: IntoWorkflow>(&self, members: impl IntoIterator<Item = W>) -> Group<W::Output> {
        Group::of(self.home(), members)
    }
}

impl Remote for Client {
    fn submit(&self, node: &Node, target: Target) -> (Arc<Slot>, Arc<dyn Tracker>) {
        let inner = &self.inner;
        let id = inner.next_id();
        let root = Arc::new(Slot::new(JobId(*id.as_ref().unwrap_or(&0))));
        crate::batch::Sink::claim(&*root);
        match target {
            Target::Handle => {}
            Target::Nowhere => root.set_finisher(Box::new(|_| Err(JobError::Cancelled))),
            Target::Store => {
                let client = Arc::downgrade(inner);
                let id = root.id.0;
                root.set_finisher(Box::new(move |outcome| {
                    if let Some(inner) = client.upgrade() {
                        let value = match &outcome {
                            Ok(record) => results::from_record(record),
                            Err(e) => results::from_error(e),
                        };
                        keep(&inner, id, Some(&value));
                    }
                    outcome
                }));
            }
        }
        let mut parts = Vec::new();
        let built = build(node, None, &mut parts);
        let flow = Arc::new(Flow {
            client: Arc::downgrade(inner),
            root: root.clone(),
            total: node.steps(),
            done: AtomicU64::new(0),
            state: Mutex::new(State {
                parts,
                finished: false,
                sent: Sent::default(),
            }),
        });
        let refused = match (id, built) {
            (Err(e), _) => Some(JobError::Broker {
                message: format!("no job id: {e}"),
            }),
            (_, Err(e)) => Some(e),
            _ if inner.broker.codec != Codec::Bincode => Some(JobError::InvalidOptions {
                message: format!(
                    "workflows need the bincode codec; this broker uses {}",
                    inner.broker.codec.name()
                ),
            }),
            (Ok(id), _) if target == Target::Store && !keep(inner, id, None) => {
                Some(JobError::Broker {
                    message: "Redis did not take the workflow's pending mark".into(),
                })
            }
            _ => None,
        };
        match refused {
            Some(error) => {
                flow.lock().finished = true;
                root.resolve(Err(error));
            }
            None => flow.handle(Event::Start),
        }
        (root, flow)
    }
}

/// Writes a detached workflow's result key: `value` (a stored result), or
/// `P` while it runs, for the broker's `result_expires`. False if Redis
/// could not be reached. Runs on the thread that resolves the workflow
/// (the client's results thread, usually): one command, bounded by the
/// broker's timeout.
fn keep(inner: &Inner, id: u64, value: Option<&[u8]>) -> bool {
    let key = inner.keys.result(id);
    let ttl = super::client::ttl_ms(inner.broker.result_expires);
    let value = value.unwrap_or(b"P");
    inner
        .control
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .run_once(|con| {
            redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .arg("PX")
                .arg(ttl)
                .exec(con)
        })
        .is_ok()
}

/// Flattens `node` into `parts` (its parent given); its part's number.
/// Refuses, before anything is sent, a step that is not a registered job
/// of a client.
fn build(
    node: &Node,
    parent: Option<(usize, u32)>,
    parts: &mut Vec<Part>,
) -> Result<usize, JobError> {
    let id = parts.len();
    parts.push(Part {
        kind: PartKind::Chain {
            steps: Vec::new(),
            errors: ChainErrors::AsIs,
        },
        parent,
        callbacks: node.callbacks.clone(),
    });
    let kind = match &node.kind {
        Kind::Step(leaf) => PartKind::Step {
            step: remote_step(&leaf.spec)?,
            arg: leaf.arg.clone(),
        },
        Kind::Chain { steps, errors } => {
            let mut ids = Vec::with_capacity(steps.len());
            for (i, s) in steps.iter().enumerate() {
                ids.push(build(s, Some((id, i as u32)), parts)?);
            }
            PartKind::Chain {
                steps: ids,
                errors: *errors,
            }
        }
        Kind::Group {
            members,
            shape,
            policy,
        } => {
            let mut ids = Vec::with_capacity(members.len());
            for (i, m) in members.iter().enumerate() {
                match m {
                    Member::Node(n) => ids.push(build(n, Some((id, i as u32)), parts)?),
                    Member::Items(_) => {
                        return Err(JobError::InvalidOptions {
                            message: "a starmap or chunks group of a pool's job cannot run \
                                      through a broker: make its members with RemoteJob::sig"
                                .into(),
                        });
                    }
                }
            }
            PartKind::Group {
                members: ids,
                shape: *shape,
                policy: *policy,
                assembly: None,
            }
        }
    };
    parts[id].kind = kind;
    Ok(id)
}

/// The broker step a spec carries, or why it has none.
fn remote_step(spec: &Spec) -> Result<Arc<RemoteStep>, JobError> {
    let step = spec
        .remote
        .clone()
        .and_then(|r| r.downcast::<RemoteStep>().ok())
        .ok_or_else(|| JobError::InvalidOptions {
            message: format!(
                "step {} is a pool's job (Pool::job): a workflow through a broker takes jobs \
                 of Client::job",
                spec.name
            ),
        })?;
    if let Err(why) = &step.name {
        return Err(JobError::Broker {
            message: why.clone(),
        });
    }
    if let Err(e) = &step.opts {
        return Err(e.clone());
    }
    Ok(step)
}

/// One part of a running workflow.
struct Part {
    kind: PartKind,
    parent: Option<(usize, u32)>,
    /// Told once when the part resolves (a workflow's or group's own).
    callbacks: Option<JobCallbacks>,
}

enum PartKind {
    Step {
        step: Arc<RemoteStep>,
        arg: Arg,
    },
    Chain {
        steps: Vec<usize>,
        errors: ChainErrors,
    },
    Group {
        members: Vec<usize>,
        shape: Shape,
        policy: Policy,
        /// The members' results as they come in; `None` before the group
        /// starts and once it is finished.
        assembly: Option<Assembly>,
    },
}

struct State {
    parts: Vec<Part>,
    finished: bool,
    /// The steps sent, not all of them over: what `cancel` revokes.
    sent: Sent,
}

/// The slots of the steps a workflow sent, pruned of those over as it
/// grows (amortized: a group of 10,000 members is pruned a few times, not
/// per member).
#[derive(Default)]
struct Sent {
    slots: Vec<Arc<Slot>>,
    prune_at: usize,
}

impl Sent {
    fn push(&mut self, slot: Arc<Slot>) {
        if self.slots.len() >= self.prune_at {
            self.slots.retain(|s| !s.is_ready());
            self.prune_at = (2 * self.slots.len()).max(64);
        }
        self.slots.push(slot);
    }

    /// The steps not over yet.
    fn take_unfinished(&mut self) -> Vec<Arc<Slot>> {
        let mut slots = std::mem::take(&mut self.slots);
        slots.retain(|s| !s.is_ready());
        slots
    }
}

/// One workflow submitted through a broker: its coordinator.
struct Flow {
    /// Weak: a step's slot (in the client's pending table) holds the
    /// flow, which must not keep the client alive.
    client: Weak<Inner>,
    root: Arc<Slot>,
    total: u64,
    done: AtomicU64,
    state: Mutex<State>,
}

/// What moves a workflow.
enum Event {
    Start,
    /// Step `part` resolved.
    Job {
        part: usize,
        outcome: Result<Vec<u8>, JobError>,
    },
}

/// What an event leaves to do once the flow's lock is released.
enum Later {
    /// Send step `part` with its argument (an item), or fail it.
    Launch(usize, Arc<RemoteStep>, Result<Vec<u8>, JobError>),
    Resolve(Result<Vec<u8>, JobError>),
    Notify(JobCallbacks, Result<Vec<u8>, JobError>),
}

enum Work {
    Start(usize, Option<Vec<u8>>),
    Finish(usize, Result<Vec<u8>, JobError>),
}

impl Flow {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `event` under the lock, then does what it left to do.
    fn handle(self: &Arc<Self>, event: Event) {
        let mut later = Vec::new();
        {
            let mut st = self.lock();
            if st.finished {
                return;
            }
            let mut work = VecDeque::new();
            match event {
                Event::Start => work.push_back(Work::Start(0, None)),
                Event::Job { part, outcome } => {
                    self.done.fetch_add(1, Ordering::Relaxed);
                    work.push_back(Work::Finish(part, item_of(outcome)));
                }
            }
            while let Some(w) = work.pop_front() {
                if st.finished {
                    break;
                }
                match w {
                    Work::Start(id, input) => start(&mut st, id, input, &mut work, &mut later),
                    Work::Finish(id, result) => finish(&mut st, id, result, &mut work, &mut later),
                }
            }
            if st.finished {
                st.parts = Vec::new();
            }
        }
        for l in later {
            match l {
                Later::Launch(part, step, item) => self.launch(part, &step, item),
                Later::Resolve(outcome) => {
                    self.root.resolve(outcome);
                }
                Later::Notify(callbacks, outcome) => {
                    // On the client's callback thread, never the results
                    // thread (here, if the client is gone).
                    let runner = self.client.upgrade().and_then(|i| i.callbacks.sender());
                    callbacks.notify(&outcome, runner.as_ref());
                }
            }
        }
    }

    /// Sends step `part` as a broker job whose result comes back to this
    /// client; its outcome moves the workflow on.
    fn launch(self: &Arc<Self>, part: usize, step: &RemoteStep, item: Result<Vec<u8>, JobError>) {
        let fail = |flow: &Arc<Flow>, error: JobError| {
            flow.handle(Event::Job {
                part,
                outcome: Err(error),
            });
        };
        let Some(inner) = self.client.upgrade() else {
            return fail(
                self,
                JobError::Broker {
                    message: "the client was dropped before this step was sent".into(),
                },
            );
        };
        let sent = (|| {
            let item = item?;
            let id = inner.next_id().map_err(|e| JobError::Broker {
                message: format!("no job id: {e}"),
            })?;
            let (mut opts, start) = step.opts.clone()?;
            if let Some(Expiry::After(d)) = step.expiry {
                opts.expires_at_ms = Some(super::unix_ms().saturating_add(d.as_millis() as u64));
            }
            let env = Envelope {
                id,
                job: step
                    .name
                    .clone()
                    .map_err(|message| JobError::Broker { message })?,
                codec: Codec::Bincode,
                fingerprint: step.fingerprint,
                attempt: 1,
                opts,
                arg: item.get(LEN..).unwrap_or_default().to_vec(),
            };
            let fields = env.fields_within(inner.broker.max_message_size)?;
            Ok((id, env, fields, start))
        })();
        let (id, env, fields, start) = match sent {
            Ok(x) => x,
            Err(error) => return fail(self, error),
        };
        let slot = Arc::new(Slot::new(JobId(id)));
        crate::batch::Sink::claim(&*slot);
        let flow = self.clone();
        let callbacks = (!step.callbacks.is_empty())
            .then(|| (step.callbacks.clone(), inner.callbacks.sender()));
        slot.set_finisher(Box::new(move |outcome| {
            if let Some((callbacks, runner)) = callbacks {
                callbacks.notify(&outcome, runner.as_ref());
            }
            flow.handle(Event::Job { part, outcome });
            // The outcome went on to the workflow; nobody reads this slot.
            Err(JobError::Cancelled)
        }));
        {
            // Under the lock `cancel` takes: a step sent after the
            // workflow ended is not sent; one sent before is revoked.
            let mut st = self.lock();
            if st.finished {
                return;
            }
            st.sent.push(slot.clone());
        }
        inner.wait_for(&slot);
        let job = OutJob {
            slot: Some(slot.clone()),
            ..OutJob::new(&env, fields, start)
        };
        inner.send_job(job, &slot);
    }
}

impl Tracker for Flow {
    fn progress(&self) -> Progress {
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: self.total,
        }
    }

    /// Sends nothing more, revokes the steps sent and not over (with
    /// `terminate`, as a pool's workflow kills its running step), and
    /// resolves the workflow `Cancelled`.
    fn cancel(&self) -> bool {
        let out = {
            let mut st = self.lock();
            if st.finished {
                return false;
            }
            st.finished = true;
            st.parts = Vec::new();
            st.sent.take_unfinished()
        };
        self.root.resolve(Err(JobError::Cancelled));
        if let (false, Some(inner)) = (out.is_empty(), self.client.upgrade()) {
            let client = Client { inner };
            // A step still in the writer is put in Redis first; one whose
            // launch is under way has its id, and a revoke of an id given
            // out holds for when the job arrives (hosts check before
            // running). Their outcomes reach a finished flow: ignored.
            let _ = client.flush();
            for slot in out {
                let _ = client.revoke_here(slot.id, true);
            }
        }
        true
    }
}

/// Starts part `id`; a chain's step after the first gets `input`.
fn start(
    st: &mut State,
    id: usize,
    input: Option<Vec<u8>>,
    work: &mut VecDeque<Work>,
    later: &mut Vec<Later>,
) {
    match &mut st.parts[id].kind {
        PartKind::Step { step, arg } => {
            let item = match arg {
                Arg::Bound(arg) => (**arg).clone(),
                Arg::Previous => input
                    .ok_or_else(|| JobError::Codec("a step that takes a result came first".into())),
            };
            later.push(Later::Launch(id, step.clone(), item));
        }
        PartKind::Chain { steps, .. } => match steps.first() {
            Some(&first) => work.push_back(Work::Start(first, None)),
            None => work.push_back(Work::Finish(id, Ok(unit_item()))),
        },
        PartKind::Group {
            members,
            shape,
            policy,
            assembly,
        } => {
            *assembly = Some(Assembly::new(*shape, *policy, members.len() as u32));
            for &m in members.iter() {
                work.push_back(Work::Start(m, None));
            }
            check_group(st, id, work);
        }
    }
}

/// Finishes group `id` if every member is in.
fn check_group(st: &mut State, id: usize, work: &mut VecDeque<Work>) {
    if let PartKind::Group { assembly, .. } = &mut st.parts[id].kind
        && assembly.as_ref().is_some_and(Assembly::is_complete)
    {
        let result = assembly.take().expect("checked").finish();
        work.push_back(Work::Finish(id, result));
    }
}

/// Part `id` resolved with `result` (an item, or its failure).
fn finish(
    st: &mut State,
    id: usize,
    result: Result<Vec<u8>, JobError>,
    work: &mut VecDeque<Work>,
    later: &mut Vec<Later>,
) {
    let part = &mut st.parts[id];
    if let Some(callbacks) = part.callbacks.take() {
        later.push(Later::Notify(callbacks, record_of(&result)));
    }
    let Some((parent, place)) = part.parent else {
        st.finished = true;
        later.push(Later::Resolve(into_record(result)));
        return;
    };
    match &mut st.parts[parent].kind {
        PartKind::Chain { steps, errors } => match result {
            Err(error) => {
                let error = match errors {
                    ChainErrors::Numbered => JobError::StepFailed {
                        step: place as usize,
                        error: Box::new(error),
                    },
                    ChainErrors::AsIs => error,
                };
                work.push_back(Work::Finish(parent, Err(error)));
            }
            Ok(item) => match steps.get(place as usize + 1) {
                Some(&next) => work.push_back(Work::Start(next, Some(item))),
                None => work.push_back(Work::Finish(parent, Ok(item))),
            },
        },
        PartKind::Group { assembly, .. } => {
            if let Some(a) = assembly {
                a.accept(place, result);
            }
            check_group(st, parent, work);
        }
        PartKind::Step { .. } => unreachable!("a step has no parts"),
    }
}
