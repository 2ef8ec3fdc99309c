//! Submitting what the canvas builds, on the caller's thread: a workflow
//! becomes a [`Flow`] with a slot of its own, a lone signature a job.
//!
//! A workflow's slot is the one its [`JobHandle`] waits on (or the result
//! store keeps, for a detached workflow); the workflow's own callbacks are
//! its finisher, as a job's are. The workflow's first jobs take places in
//! the bounded queue like any submission (waiting here if it is full); the
//! jobs its coordinator sends later take none, as retries do: they are
//! sent from the supervisor's thread, which must never wait.

use crate::batch::slot::{Finisher, Slot};
use crate::batch::{Batch, JobId};
use crate::canvas::flow::Flow;
use crate::canvas::node::{Arg, Leaf, Node};
use crate::client::handle::JobHandle;
use crate::client::shared::Shared;
use crate::error::JobError;
use crate::options::Layers;
use crate::options::callbacks;
use crate::options::results::Store;
use crate::transport::codec::Codec;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The pool a workflow is submitted to: its core and its options' state.
#[derive(Clone)]
pub(crate) struct Home {
    pub(crate) shared: Arc<Shared>,
    pub(crate) layers: Arc<Layers>,
}

/// Where a submission's outcome goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// To a [`JobHandle`].
    Handle,
    /// To the pool's result store, by id.
    Store,
    /// Nowhere (fire and forget).
    Nowhere,
}

impl Home {
    pub(crate) fn new(shared: &Arc<Shared>, layers: &Arc<Layers>) -> Home {
        Home {
            shared: shared.clone(),
            layers: layers.clone(),
        }
    }

    /// What keeps a submission's outcome for `target`.
    fn keep(&self, id: JobId, target: Target) -> Finisher {
        match target {
            Target::Handle => Box::new(|outcome| outcome),
            Target::Store => Box::new(Store::finisher(&self.layers.store, id)),
            // Nobody will read it.
            Target::Nowhere => Box::new(|_| Err(JobError::Cancelled)),
        }
    }

    /// Submits workflow `node`; returns its slot and its coordinator.
    /// `attended`: the caller waits for it at once (see `apply`).
    pub(crate) fn submit(
        &self,
        node: &Node,
        target: Target,
        attended: bool,
    ) -> (Arc<Slot>, Arc<Flow>) {
        let (shared, layers) = (&self.shared, &self.layers);
        let root = Arc::new(Slot::new(shared.next_job_id()));
        let runner = if node.has_callbacks() {
            layers.callbacks.sender()
        } else {
            None
        };
        let own = node.callbacks.clone().unwrap_or_default();
        let own_runner = if own.is_empty() { None } else { runner.clone() };
        let keep = self.keep(root.id, target);
        root.set_finisher(callbacks::finisher(own, own_runner, keep));
        let (flow, first_jobs) = Flow::new(shared.feed(), runner, root.clone(), node);
        if target == Target::Store {
            layers.store.insert_workflow(root.clone(), flow.clone());
        }
        if shared.is_closed() {
            root.resolve(Err(JobError::PoolClosed));
            return (root, flow);
        }
        if let Some(error) = self.codec_refused() {
            root.resolve(Err(error));
            return (root, flow);
        }
        node.for_each_spec(&mut |spec| {
            if let Some(limit) = spec.rate_limit {
                layers.rates.set(spec.call.func, Some(limit));
            }
        });
        match shared.admit(first_jobs) {
            Ok(ticket) => flow.start(ticket, attended),
            Err(_) => {
                root.resolve(Err(JobError::PoolClosed));
            }
        }
        (root, flow)
    }

    /// Why this pool cannot run workflows, if it cannot: they assemble
    /// values from their parts' encodings in bincode's layout (see
    /// `transport/codec.rs`), so a pool with another codec refuses them.
    fn codec_refused(&self) -> Option<JobError> {
        let codec = self.shared.codec;
        (codec != Codec::Bincode).then(|| JobError::InvalidOptions {
            message: format!(
                "workflows and signatures need the bincode codec; this pool uses {}",
                codec.name()
            ),
        })
    }

    /// Submits workflow `node` for a handle.
    pub(crate) fn handle<R: DeserializeOwned>(&self, node: &Node) -> JobHandle<R> {
        let (slot, flow) = self.submit(node, Target::Handle, false);
        JobHandle::tracked(slot, Arc::downgrade(&self.shared), flow)
    }

    /// Runs workflow `node` and waits for it, this thread driving the
    /// supervisor from the start — the supervisor thread is not woken for
    /// the first jobs, as with `Pool::apply` and `Pool::map` — and handing
    /// over when it leaves (the rule of `supervisor/drive.rs`).
    pub(crate) fn apply<R: DeserializeOwned>(&self, node: &Node) -> Result<R, JobError> {
        let (slot, flow) = self.submit(node, Target::Handle, true);
        let handle = JobHandle::<R>::tracked(slot, Arc::downgrade(&self.shared), flow);
        let result = handle.get();
        self.shared.driver.hand_over();
        result
    }

    /// Submits a lone signature as the job it is (a handle's `progress`
    /// and `attempts` are then the job's own). `quiet`: the caller helps
    /// right away (`Signature::apply`).
    pub(crate) fn submit_job(&self, leaf: &Leaf, target: Target, quiet: bool) -> Arc<Slot> {
        let (shared, layers) = (&self.shared, &self.layers);
        let spec = &leaf.spec;
        let slot = Arc::new(Slot::new(shared.next_job_id()));
        let runner = if spec.callbacks.is_empty() {
            None
        } else {
            layers.callbacks.sender()
        };
        let feed = shared.feed();
        slot.set_finisher(spec.finisher(
            &feed,
            slot.id,
            runner.as_ref(),
            self.keep(slot.id, target),
        ));
        if target == Target::Store {
            layers.store.insert(slot.clone());
        }
        if shared.is_closed() {
            slot.resolve(Err(JobError::PoolClosed));
            return slot;
        }
        if let Some(error) = self.codec_refused() {
            slot.resolve(Err(error));
            return slot;
        }
        let item = match &leaf.arg {
            Arg::Bound(arg) => (**arg).clone(),
            Arg::Previous => Err(JobError::Codec("a signature without its argument".into())),
        };
        let prepared =
            item.and_then(|item| Ok((spec.core.resolve(&shared.config, spec.call.func)?, item)));
        let (opts, item) = match prepared {
            Ok(p) => p,
            Err(error) => {
                shared.refuse(&slot, error);
                return slot;
            }
        };
        if let Some(limit) = spec.rate_limit {
            layers.rates.set(spec.call.func, Some(limit));
        }
        let sink = spec.sink(&feed, &slot, &item, opts);
        let mut batch = Batch::new(spec.call, item, 1, 0, sink, opts, Some(slot.id));
        batch.name = spec.name;
        shared.submit(batch, quiet);
        slot
    }
}
