//! Job names: the functions a program registers with
//! [`register!`](crate::register), collected at link time, and the checks
//! run on them before a broker client or a worker host starts.
//!
//! A function pointer means nothing on another host, or in another run of
//! the same binary. A job that crosses hosts is identified by a stable name
//! instead: `register!` puts a [`Registration`] in a link-time collection
//! (`inventory`: each registration is a static the linker gathers, so
//! registrations in any module, or any crate linked in, are found without
//! a list to maintain). The first use builds the registry from it:
//!
//! - by name, for a worker host: name → the `Call` that runs the function
//!   with a given codec (built in this process, so its addresses are
//!   valid in its forks), its type fingerprint, and whether it is fallible;
//! - by function type, for a client: `client.submit(resize, x)` finds the
//!   name of `resize` from its type (`TypeId` of the fn item, which two
//!   functions never share — unlike addresses, which the linker may merge).
//!
//! [`check`] (which [`Client`](super::Client) and [`Host`](super::Host) run
//! at start-up) refuses two registrations of one name, one function
//! registered under two names, and a job whose argument or result does not
//! round-trip through the codec in use (`shapes.rs`). Local pools never
//! look here: they run any function without registration.

use super::shapes;
use crate::transport::codec::Codec;
use crate::worker::call::{Call, Func};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// One registered job, as [`register!`](crate::register) leaves it for
/// the linker to collect. Not built by hand.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    name: &'static str,
    make: fn(&'static str) -> Entry,
    file: &'static str,
    line: u32,
}

inventory::collect!(Registration);

/// Checks, at compile time, that `f` is a fn item or a closure that
/// captures nothing: the registry keeps only its type.
const fn fn_item<F: Copy>(f: F) {
    assert!(
        std::mem::size_of::<F>() == 0,
        "register! takes a fn item (or a closure that captures nothing)"
    );
    let _ = f;
}

impl Registration {
    /// A job `fn(A) -> R` registered as `name`.
    pub const fn plain<F, A, R>(name: &'static str, f: F, file: &'static str, line: u32) -> Self
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        fn_item(f);
        Registration {
            name,
            make: Entry::plain::<F, A, R>,
            file,
            line,
        }
    }

    /// A fallible job `fn(A) -> Result<T, E>` registered as `name`: its
    /// `Err` is a failure (retried by `RetryOn::ERROR`, counted errored).
    pub const fn fallible<F, A, T, E>(
        name: &'static str,
        f: F,
        file: &'static str,
        line: u32,
    ) -> Self
    where
        F: Fn(A) -> Result<T, E> + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        fn_item(f);
        Registration {
            name,
            make: Entry::fallible::<F, A, T, E>,
            file,
            line,
        }
    }
}

/// A registered job, as the registry keeps it.
pub(crate) struct Entry {
    pub name: &'static str,
    /// The fn item's type: how a client finds the name.
    pub function: TypeId,
    pub fallible: bool,
    pub argument: &'static str,
    pub result: &'static str,
    /// Builds the `Call` that runs the function with a codec (`true`:
    /// its value dropped in the worker).
    pub call: fn(Codec, bool) -> Call,
    /// Computes the job's type fingerprint (`shapes.rs`); see
    /// [`Entry::fingerprint`], which keeps it.
    fingerprint_of: fn() -> u64,
    fingerprint: OnceLock<u64>,
    /// Whether the fingerprint covers both types' shapes (not only a name).
    pub traced: fn() -> bool,
    /// Checks that the argument and result round-trip through a codec.
    pub round_trip: fn(Codec) -> Result<(), String>,
    /// Where it was registered.
    pub file: &'static str,
    pub line: u32,
}

impl Entry {
    fn plain<F, A, R>(name: &'static str) -> Entry
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Entry {
            name,
            function: TypeId::of::<F>(),
            fallible: false,
            argument: std::any::type_name::<A>(),
            result: std::any::type_name::<R>(),
            call: |codec, ignoring| {
                let f = Func::<A, R>::of_type::<F>();
                if ignoring {
                    Call::ignoring(f.ptr, codec)
                } else {
                    Call::new(f.ptr, codec)
                }
            },
            fingerprint_of: shapes::job_fingerprint::<A, R>,
            fingerprint: OnceLock::new(),
            traced: || shapes::shape::<A>().traced && shapes::shape::<R>().traced,
            round_trip: |codec| {
                shapes::round_trip::<A>(codec)?;
                shapes::round_trip::<R>(codec)
            },
            file: "",
            line: 0,
        }
    }

    fn fallible<F, A, T, E>(name: &'static str) -> Entry
    where
        F: Fn(A) -> Result<T, E> + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        Entry {
            name,
            function: TypeId::of::<F>(),
            fallible: true,
            argument: std::any::type_name::<A>(),
            result: std::any::type_name::<Result<T, E>>(),
            call: |codec, ignoring| {
                let f = Func::<A, Result<T, E>>::of_type::<F>();
                if ignoring {
                    Call::fallible_ignoring(f.ptr, codec)
                } else {
                    Call::fallible(f.ptr, codec)
                }
            },
            fingerprint_of: shapes::job_fingerprint::<A, Result<T, E>>,
            fingerprint: OnceLock::new(),
            traced: || shapes::shape::<A>().traced && shapes::shape::<Result<T, E>>().traced,
            round_trip: |codec| {
                shapes::round_trip::<A>(codec)?;
                shapes::round_trip::<Result<T, E>>(codec)
            },
            file: "",
            line: 0,
        }
    }
}

impl Entry {
    /// The job's type fingerprint, computed once.
    pub(crate) fn fingerprint(&self) -> u64 {
        *self.fingerprint.get_or_init(self.fingerprint_of)
    }
}

/// Every registration of the program, by name and by function.
pub(crate) struct Registry {
    entries: Vec<Entry>,
    by_name: HashMap<&'static str, usize>,
    by_function: HashMap<TypeId, usize>,
    /// Names given twice, functions registered twice: found once, reported
    /// by every [`check`].
    problems: Vec<Problem>,
}

/// The registry, built on first use.
pub(crate) fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut regs: Vec<&Registration> = inventory::iter::<Registration>().collect();
        regs.sort_by_key(|r| (r.name, r.file, r.line));
        Registry::build(regs.into_iter().map(|r| {
            let mut e = (r.make)(r.name);
            e.file = r.file;
            e.line = r.line;
            e
        }))
    })
}

impl Registry {
    fn build(all: impl Iterator<Item = Entry>) -> Registry {
        let mut reg = Registry {
            entries: Vec::new(),
            by_name: HashMap::new(),
            by_function: HashMap::new(),
            problems: Vec::new(),
        };
        for e in all {
            if let Some(&i) = reg.by_name.get(e.name) {
                let first = &reg.entries[i];
                reg.problems.push(Problem::DuplicateName {
                    name: e.name.to_string(),
                    first: format!("{}:{}", first.file, first.line),
                    second: format!("{}:{}", e.file, e.line),
                });
                continue;
            }
            if let Some(&i) = reg.by_function.get(&e.function) {
                reg.problems.push(Problem::RegisteredTwice {
                    first: reg.entries[i].name.to_string(),
                    second: e.name.to_string(),
                });
                continue;
            }
            let i = reg.entries.len();
            reg.by_name.insert(e.name, i);
            reg.by_function.insert(e.function, i);
            reg.entries.push(e);
        }
        reg
    }

    /// The job registered as `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The registration of the function whose type is `function`.
    pub(crate) fn by_function(&self, function: TypeId) -> Option<&Entry> {
        self.by_function.get(&function).map(|&i| &self.entries[i])
    }

    /// Every problem with the registrations, and every job whose types do
    /// not round-trip through `codec`.
    fn problems(&self, codec: Codec) -> Vec<Problem> {
        let mut all = self.problems.clone();
        for e in &self.entries {
            if let Err(message) = (e.round_trip)(codec) {
                all.push(Problem::Codec {
                    name: e.name.to_string(),
                    codec,
                    message,
                });
            }
        }
        all
    }
}

/// A registered job, as [`registered`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredJob {
    /// The name jobs of it travel under.
    pub name: &'static str,
    /// The argument's type, as `std::any::type_name` spells it.
    pub argument: &'static str,
    /// The result's type (`Result<T, E>` for a fallible job).
    pub result: &'static str,
    /// Registered with `register!(fallible ...)`.
    pub fallible: bool,
    /// The type fingerprint its messages carry.
    pub fingerprint: u64,
    /// Whether the fingerprint describes the argument's and the result's
    /// shapes (field names and types); `false` when a type could not be
    /// traced (a custom `Deserialize`) and is fingerprinted by its name.
    pub shape_checked: bool,
    /// Where `register!` was written (`file:line`).
    pub location: String,
}

/// Every job this program registered with [`register!`](crate::register),
/// by name (a name registered twice is listed once: [`check`] reports it).
///
/// ```standalone_crate
/// fn thumbnail(px: u32) -> u32 { px / 2 }
/// forkpool::register!(thumbnail as "images.thumbnail");
///
/// let jobs = forkpool::broker::registered();
/// let job = jobs.iter().find(|j| j.name == "images.thumbnail").unwrap();
/// assert_eq!((job.argument, job.result, job.fallible), ("u32", "u32", false));
/// ```
pub fn registered() -> Vec<RegisteredJob> {
    registry()
        .entries
        .iter()
        .map(|e| RegisteredJob {
            name: e.name,
            argument: e.argument,
            result: e.result,
            fallible: e.fallible,
            fingerprint: e.fingerprint(),
            shape_checked: (e.traced)(),
            location: format!("{}:{}", e.file, e.line),
        })
        .collect()
}

/// Checks this program's registrations, as a broker client and a worker
/// host do when they start: no name given twice, no function registered
/// under two names, and every job's argument and result round-trip
/// through `codec`.
///
/// ```standalone_crate
/// # fn main() -> Result<(), forkpool::broker::RegistryError> {
/// fn double(x: u64) -> u64 { 2 * x }
/// forkpool::register!(double);
/// forkpool::broker::check(forkpool::Codec::Bincode)?;
/// # Ok(()) }
/// ```
pub fn check(codec: Codec) -> Result<(), RegistryError> {
    let problems = registry().problems(codec);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RegistryError { problems })
    }
}

/// One thing wrong with the registered jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// Two registrations give the same name.
    DuplicateName {
        /// The name.
        name: String,
        /// Where the first is (`file:line`).
        first: String,
        /// Where the second is.
        second: String,
    },
    /// One function is registered under two names: a client could not
    /// tell which to send.
    RegisteredTwice {
        /// The name kept.
        first: String,
        /// The name refused.
        second: String,
    },
    /// A job's argument or result does not round-trip through the codec.
    Codec {
        /// The job.
        name: String,
        /// The codec.
        codec: Codec,
        /// What went wrong.
        message: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DuplicateName {
                name,
                first,
                second,
            } => write!(
                f,
                "job name {name:?} is registered twice ({first} and {second})"
            ),
            Problem::RegisteredTwice { first, second } => write!(
                f,
                "one function is registered as {first:?} and as {second:?}"
            ),
            Problem::Codec {
                name,
                codec,
                message,
            } => write!(f, "job {name:?} cannot travel as {codec}: {message}"),
        }
    }
}

/// What [`check`] found wrong with the registered jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registered jobs: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(x: u32) -> u32 {
        x + 1
    }
    fn two(x: u32) -> u32 {
        x + 2
    }

    fn entry<F, A, R>(name: &'static str, _: F) -> Entry
    where
        F: Fn(A) -> R + Copy + Send + 'static,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Entry::plain::<F, A, R>(name)
    }

    #[test]
    fn duplicates_are_found_and_the_first_is_kept() {
        let reg = Registry::build([entry("a", one), entry("a", two), entry("b", one)].into_iter());
        assert_eq!(reg.problems.len(), 2, "{:?}", reg.problems);
        assert!(matches!(&reg.problems[0], Problem::DuplicateName { name, .. } if name == "a"));
        assert!(
            matches!(&reg.problems[1], Problem::RegisteredTwice { first, second }
            if first == "a" && second == "b")
        );
        assert!(reg.by_name("a").is_some() && reg.by_name("b").is_none());
    }
}
