//! A running workflow's parts: the flat list its coordinator (`flow.rs`)
//! keeps — a chain's steps, a group's members, each with its parent — and
//! how a built tree (`node.rs`) becomes it.
//!
//! Building is done on the submitting caller's thread, and is where the
//! tree's groups are laid out: consecutive members that are jobs of one
//! spec with bound arguments become one segment sent in batches
//! (`segment.rs`); other members are parts of their own. Arguments the
//! caller's thread must encode (typed arguments not sent at submission, or
//! that a retry may need again: see `args.rs`) are encoded here.

use crate::batch::JobOpts;
use crate::canvas::args::{Args, Encoded};
use crate::canvas::assemble::Assembly;
use crate::canvas::node::{Arg, ChainErrors, Items, Kind, Member, Node};
use crate::canvas::segment::Segment;
use crate::options::callbacks::JobCallbacks;
use crate::options::signature::Spec;
use std::sync::Arc;

/// A part's index in its flow.
pub(crate) type NodeId = u32;

/// Where a part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Not started (a chain's later step, before the one before it ends).
    Waiting,
    /// Started, not resolved: its callbacks are told if the workflow is
    /// cancelled.
    Running,
    /// Resolved.
    Done,
}

/// One part of a running workflow.
pub(super) struct Part {
    /// Its parent, and its place there (a step's number, a member's index).
    pub(super) parent: Option<(NodeId, u32)>,
    pub(super) kind: PartKind,
    pub(super) callbacks: Option<JobCallbacks>,
    pub(super) phase: Phase,
}

/// What a part is.
pub(super) enum PartKind {
    /// One job: its spec, and where its argument comes from.
    Step { spec: Arc<Spec>, arg: Arg },
    /// Parts one after another.
    Chain {
        steps: Vec<NodeId>,
        errors: ChainErrors,
    },
    /// Members side by side.
    Group {
        /// Members that are parts of their own.
        nodes: Vec<NodeId>,
        /// Members that travel in batches.
        segments: Vec<Segment>,
        /// The group's result in the making; taken when every member is in.
        assembly: Option<Assembly>,
    },
}

/// Turns a built workflow into a flow's parts.
pub(super) struct Builder {
    pub(super) parts: Vec<Part>,
    /// The pool's message cap, for arguments encoded here.
    pub(super) cap: u64,
}

impl Builder {
    /// Adds the parts of `node`, under `parent`; returns its id. `first`:
    /// the part starts with the workflow, on the submitting caller's
    /// thread (its typed arguments may wait until then to be encoded).
    pub(super) fn build(
        &mut self,
        node: &Node,
        parent: Option<(NodeId, u32)>,
        first: bool,
    ) -> NodeId {
        let id = self.parts.len() as NodeId;
        self.parts.push(Part {
            parent,
            kind: PartKind::Chain {
                steps: Vec::new(),
                errors: ChainErrors::AsIs,
            },
            callbacks: node.callbacks.clone(),
            phase: Phase::Waiting,
        });
        let kind = match &node.kind {
            Kind::Step(leaf) => PartKind::Step {
                spec: leaf.spec.clone(),
                arg: leaf.arg.clone(),
            },
            Kind::Chain { steps, errors } => PartKind::Chain {
                steps: steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.build(s, Some((id, i as u32)), first && i == 0))
                    .collect(),
                errors: *errors,
            },
            Kind::Group {
                members,
                shape,
                policy,
            } => {
                let mut group = GroupBuilder::default();
                for member in members {
                    match member {
                        Member::Items(items) => {
                            group.flush(self, id, first);
                            let seg = self.segment(items, group.index, first);
                            group.segments.push(seg);
                            group.index += items.count;
                        }
                        Member::Node(n) => group.push(self, id, n, first),
                    }
                }
                group.flush(self, id, first);
                let assembly = Assembly::new(*shape, *policy, group.index);
                PartKind::Group {
                    nodes: group.nodes,
                    segments: group.segments,
                    assembly: Some(assembly),
                }
            }
        };
        self.parts[id as usize].kind = kind;
        id
    }

    /// The segment of `items`, whose first member is member `index` of its
    /// group. Its arguments stay typed only if the caller's thread sends
    /// them in batches when the workflow starts and no retry may need one
    /// again; otherwise they are encoded now, on that thread.
    fn segment(&self, items: &Items, index: u32, first: bool) -> Segment {
        let spec = &items.spec;
        let retries = spec.retry.as_ref().is_some_and(|p| p.max_retries() > 0);
        // Members with a start time go as single jobs, each with its own
        // argument (see `segment.rs`).
        let singles = spec.core.has_start();
        let (args, from) = if items.args.is_typed() && (!first || retries || singles) {
            let encoded = Encoded::encode(&*items.args, items.from, items.count, self.cap);
            (Arc::new(encoded) as Arc<dyn Args>, 0)
        } else {
            (items.args.clone(), items.from)
        };
        Segment {
            spec: items.spec.clone(),
            first: index,
            count: items.count,
            args,
            from,
            whole: items.whole,
            opts: JobOpts::default(),
        }
    }
}

/// A group's members being laid out: parts, and runs of bound jobs of one
/// spec that become segments.
#[derive(Default)]
struct GroupBuilder<'n> {
    nodes: Vec<NodeId>,
    segments: Vec<Segment>,
    /// Members so far.
    index: u32,
    /// The current run of bound jobs of one spec.
    run: Vec<&'n Node>,
}

impl<'n> GroupBuilder<'n> {
    /// Adds member `n`: to the current run if it is a bound job of its
    /// spec, else as a part of its own.
    fn push(&mut self, b: &mut Builder, group: NodeId, n: &'n Node, first: bool) {
        match (bound(n), self.run.first().and_then(|f| bound(f))) {
            (Some((spec, _)), Some((run_spec, _))) if *spec == *run_spec => self.run.push(n),
            (Some(_), _) => {
                self.flush(b, group, first);
                self.run.push(n);
            }
            (None, _) => {
                self.flush(b, group, first);
                let id = b.build(n, Some((group, self.index)), first);
                self.nodes.push(id);
                self.index += 1;
            }
        }
    }

    /// Ends the current run: a single job alone, a segment if several.
    fn flush(&mut self, b: &mut Builder, group: NodeId, first: bool) {
        match self.run.len() {
            0 => {}
            1 => {
                let id = b.build(self.run[0], Some((group, self.index)), first);
                self.nodes.push(id);
                self.index += 1;
            }
            n => {
                let spec = bound(self.run[0]).expect("runs hold bound jobs").0.clone();
                let mut args = Encoded::new();
                for node in &self.run {
                    args.push(Ok(bound(node).expect("runs hold bound jobs").1));
                }
                self.segments.push(Segment {
                    spec,
                    first: self.index,
                    count: n as u32,
                    args: Arc::new(args),
                    from: 0,
                    whole: false,
                    opts: JobOpts::default(),
                });
                self.index += n as u32;
            }
        }
        self.run.clear();
    }
}

/// The spec and encoded argument of a step whose argument is bound and
/// encoded, with no callbacks of its own as a part: one that may travel in
/// a batch with others.
fn bound(n: &Node) -> Option<(&Arc<Spec>, &[u8])> {
    match (&n.kind, &n.callbacks) {
        (Kind::Step(leaf), None) => match &leaf.arg {
            Arg::Bound(arg) => arg
                .as_ref()
                .as_ref()
                .ok()
                .map(|item| (&leaf.spec, &item[..])),
            Arg::Previous => None,
        },
        _ => None,
    }
}

/// How many jobs part `id` sends when it starts.
pub(super) fn first_jobs(parts: &[Part], id: NodeId) -> u64 {
    match &parts[id as usize].kind {
        PartKind::Step { .. } => 1,
        PartKind::Chain { steps, .. } => steps.first().map_or(0, |&s| first_jobs(parts, s)),
        PartKind::Group {
            nodes, segments, ..
        } => {
            let batched: u64 = segments.iter().map(|s| u64::from(s.count)).sum();
            batched + nodes.iter().map(|&n| first_jobs(parts, n)).sum::<u64>()
        }
    }
}
