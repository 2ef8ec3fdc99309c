//! The arguments of a group's batched members: kept as the caller gave
//! them and encoded as their batches are sent ([`Typed`]), or already
//! encoded ([`Encoded`]).
//!
//! `map` encodes an item just before its batch goes out, so the workers
//! start on the first batch while the caller encodes the next. A group
//! built by `starmap` or `chunks` does the same when it is submitted: its
//! arguments stay typed until then. Encoding runs the user's `Serialize`
//! code, so it happens only on the submitting caller's thread: arguments
//! that are not sent at submission — a group that is a later step of a
//! chain, or members whose job retries and may need an argument again —
//! are encoded at submission into an [`Encoded`] buffer, which the
//! coordinator later copies from on any thread.
//!
//! An argument that cannot be encoded, or is larger than the pool's
//! message cap, is reported where the writing stops; its member fails
//! alone, as a `map` item does.

use crate::error::JobError;
use crate::transport::codec::Codec;
use crate::transport::wire;
use serde::Serialize;
use std::sync::Mutex;

/// Arguments of jobs of one spec, by index.
pub(crate) trait Args: Send + Sync {
    /// Appends arguments from `from` on to `out`, each as one `[len][bytes]`
    /// item: at most `max` of them, and no more once `out` holds `bytes`
    /// (at least one is appended if possible). It stops before an argument
    /// that cannot be sent. Returns how many it appended and, if it stopped
    /// at one that cannot be sent, why (`out` then holds nothing of it).
    fn write(&self, from: u32, max: u32, bytes: usize, cap: u64, out: &mut Vec<u8>) -> Written;

    /// Whether writing runs the user's code (then only the submitting
    /// caller's thread may do it).
    fn is_typed(&self) -> bool;
}

/// What [`Args::write`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// Arguments appended.
    pub(crate) count: u32,
    /// The argument after them cannot be sent: why.
    pub(crate) refused: Option<JobError>,
}

/// Arguments as the caller gave them, encoded when written.
///
/// Behind a mutex so that a group holding them is `Send` and `Sync`
/// whatever the argument type; it is taken once per batch.
pub(crate) struct Typed<A> {
    args: Mutex<Vec<A>>,
}

impl<A> Typed<A> {
    pub(crate) fn new(args: Vec<A>) -> Typed<A> {
        Typed {
            args: Mutex::new(args),
        }
    }
}

impl<A: Serialize + Send> Args for Typed<A> {
    fn write(&self, from: u32, max: u32, bytes: usize, cap: u64, out: &mut Vec<u8>) -> Written {
        let args = self.args.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for arg in args.iter().skip(from as usize).take(max as usize) {
            if count > 0 && out.len() >= bytes {
                break;
            }
            let refused = match wire::push_item(out, |v| Codec::Bincode.encode_into(v, arg)) {
                Ok(len) if len as u64 <= cap => None,
                Ok(len) => {
                    out.truncate(out.len() - len - 4);
                    Some(JobError::TooLarge {
                        size: len as u64,
                        limit: cap,
                    })
                }
                Err(e) => Some(JobError::Codec(format!("argument: {e}"))),
            };
            if let Some(error) = refused {
                return Written {
                    count,
                    refused: Some(error),
                };
            }
            count += 1;
        }
        Written {
            count,
            refused: None,
        }
    }

    fn is_typed(&self) -> bool {
        true
    }
}

/// Arguments already encoded: one buffer of `[len][bytes]` items, and for
/// each argument where its item ends — or why it cannot be sent.
pub(crate) struct Encoded {
    items: Vec<u8>,
    entries: Vec<Entry>,
}

enum Entry {
    /// The argument's item ends here in `items` (and starts where the one
    /// before it ended).
    End(usize),
    /// The argument cannot be sent; it takes no bytes.
    Refused(JobError),
}

impl Encoded {
    /// An empty buffer.
    pub(crate) fn new() -> Encoded {
        Encoded {
            items: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Adds one argument: its encoded item, or why it cannot be sent.
    pub(crate) fn push(&mut self, item: Result<&[u8], JobError>) {
        let entry = match item {
            Ok(item) => {
                self.items.extend_from_slice(item);
                Entry::End(self.items.len())
            }
            Err(e) => Entry::Refused(e),
        };
        self.entries.push(entry);
    }

    /// `args[from..from + count]`, encoded now.
    pub(crate) fn encode(args: &dyn Args, from: u32, count: u32, cap: u64) -> Encoded {
        let mut out = Encoded::new();
        let end = from + count;
        let mut at = from;
        while at < end {
            let before = out.items.len();
            let w = args.write(at, 1, usize::MAX, cap, &mut out.items);
            match (w.count, w.refused) {
                (1, _) => out.entries.push(Entry::End(out.items.len())),
                (_, Some(e)) => out.push(Err(e)),
                _ => {
                    out.items.truncate(before);
                    out.push(Err(JobError::Codec("argument missing".into())));
                }
            }
            at += 1;
        }
        out
    }

    /// Where argument `i`'s item starts.
    fn start(&self, i: usize) -> usize {
        self.entries[..i]
            .iter()
            .rev()
            .find_map(|e| match e {
                Entry::End(end) => Some(*end),
                Entry::Refused(_) => None,
            })
            .unwrap_or(0)
    }
}

impl Args for Encoded {
    fn write(&self, from: u32, max: u32, bytes: usize, _cap: u64, out: &mut Vec<u8>) -> Written {
        let from = from as usize;
        let start = self.start(from);
        let mut end = start;
        let mut count = 0;
        for entry in self.entries.iter().skip(from).take(max as usize) {
            if count > 0 && out.len() + (end - start) >= bytes {
                break;
            }
            match entry {
                Entry::End(e) => {
                    end = *e;
                    count += 1;
                }
                Entry::Refused(error) => {
                    out.extend_from_slice(&self.items[start..end]);
                    return Written {
                        count,
                        refused: Some(error.clone()),
                    };
                }
            }
        }
        // The run's items are contiguous: one copy.
        out.extend_from_slice(&self.items[start..end]);
        Written {
            count,
            refused: None,
        }
    }

    fn is_typed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(out: &[u8]) -> Vec<u32> {
        wire::Items::new(out)
            .map(|i| Codec::Bincode.decode::<u32>(i).unwrap())
            .collect()
    }

    /// Writing stops at the count, at the byte budget (after at least one
    /// argument), and before an argument that is over the cap — typed or
    /// encoded alike.
    #[test]
    fn writes_stop_where_they_must() {
        let typed = Typed::new(vec![1u32, 2, 3, 4, 5]);
        let mut out = Vec::new();
        assert_eq!(typed.write(1, 2, usize::MAX, 100, &mut out).count, 2);
        assert_eq!(items(&out), [2, 3]);
        out.clear();
        assert_eq!(
            typed.write(0, 10, 1, 100, &mut out).count,
            1,
            "the byte budget"
        );
        out.clear();
        let w = typed.write(3, 10, usize::MAX, 2, &mut out);
        assert_eq!(w.count, 0);
        assert_eq!(w.refused, Some(JobError::TooLarge { size: 4, limit: 2 }));
        assert!(out.is_empty(), "nothing of a refused argument is left");

        let mut enc = Encoded::encode(&typed, 0, 5, 100);
        enc.push(Err(JobError::Expired));
        enc.push(Ok(&[4, 0, 0, 0, 9, 0, 0, 0]));
        let mut out = Vec::new();
        let w = enc.write(2, 10, usize::MAX, 0, &mut out);
        assert_eq!((w.count, w.refused), (3, Some(JobError::Expired)));
        assert_eq!(items(&out), [3, 4, 5]);
        out.clear();
        assert_eq!(enc.write(6, 10, usize::MAX, 0, &mut out).count, 1);
        assert_eq!(items(&out), [9]);
        out.clear();
        let w = enc.write(5, 1, usize::MAX, 0, &mut out);
        assert_eq!((w.count, w.refused), (0, Some(JobError::Expired)));
        assert!(out.is_empty());
        assert_eq!(enc.write(1, 1, usize::MAX, 0, &mut out).count, 1);
        assert_eq!(items(&out), [2]);
    }
}
