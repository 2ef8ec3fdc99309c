//! The calling convention between the caller and a worker: a job's
//! function as two code addresses, and the monomorphised shims a worker
//! calls to run a batch of it.
//!
//! # How a function crosses into a worker
//!
//! Every worker is a fork of the same program image, so a function pointer
//! taken in the caller is valid in every worker. A job carries two addresses:
//! the user's `fn(A) -> R`, and a batch shim (`batch::<A, R>`), monomorphised
//! for the argument and result types, that decodes each `A`, calls the
//! function and encodes each `R`. The worker calls the shim with the
//! function's address and the batch; no registration and no macro is
//! needed. Addresses are only meaningful among forks of one process image:
//! a job that crosses to another host needs a name instead.
//!
//! The caller builds a [`Call`] (with one of its constructors, which pair
//! each function with the shim of its own types and of the pool's codec:
//! one shim per format, so the per-item loop never branches on it); the
//! worker turns it back into a shim with [`Call::shim`]. This file belongs to the worker side:
//! it knows nothing of pools, handles or the supervisor.

use super::batch_run::{BatchRun, Release};
use super::out::Out;
use crate::transport::codec::{Bincode, Codec, Format};
use crate::transport::wire::Tag;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The shim a worker calls to run a batch: it loops over the items through
/// [`BatchRun::drive`], with the job's own decode, call and encode inlined
/// in the loop (a shim per argument and result type, so no indirect call
/// per item). Panics propagate to the worker's catch, which resumes the
/// batch after the item that panicked.
pub(crate) type RawCall = unsafe fn(func: usize, run: &mut BatchRun<'_, '_>);

/// A job's function as the pool takes it from the user — a fn item or a
/// closure that captures nothing (zero-sized), or a fn pointer — as a plain
/// fn pointer, with its name from the type system (`std::any::type_name`:
/// `my_crate::resize` for a fn item; only the signature for a fn pointer,
/// which names no function).
///
/// A closure that captures a value cannot cross into a worker (the value
/// would have to be there too): it is refused at compile time, or — if it
/// is exactly as big as a fn pointer — when it is submitted.
#[derive(Debug)]
pub(crate) struct Func<A, R> {
    /// Calls the function; its address is the function's identity in the
    /// pool (rate limits and routes are keyed by it).
    pub ptr: fn(A) -> R,
    /// The function's name.
    pub name: &'static str,
}

/// Why a function was refused.
const NOT_A_JOB: &str = "forkpool runs fn items, fn pointers and closures that capture \
                         nothing: a worker is a fork, and a captured value would have to be \
                         there too";

impl<A: 'static, R: 'static> Func<A, R> {
    /// The function `f`.
    pub(crate) fn of<F>(f: F) -> Func<A, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
    {
        const {
            let size = std::mem::size_of::<F>();
            assert!(
                size == 0 || size == std::mem::size_of::<fn(A) -> R>(),
                "{}",
                NOT_A_JOB
            );
        };
        let name = std::any::type_name::<F>();
        if std::mem::size_of::<F>() == 0 {
            return Func {
                ptr: call_zero_sized::<F, A, R>,
                name,
            };
        }
        assert!(
            std::any::TypeId::of::<F>() == std::any::TypeId::of::<fn(A) -> R>(),
            "{NOT_A_JOB} ({name})"
        );
        // SAFETY: `F` is `fn(A) -> R` itself (the same `TypeId`).
        let ptr = unsafe { std::mem::transmute_copy::<F, fn(A) -> R>(&f) };
        Func { ptr, name }
    }
}

#[cfg(feature = "redis")]
impl<A: 'static, R: 'static> Func<A, R> {
    /// The zero-sized function type `F` (a fn item or a closure that
    /// captures nothing), without a value of it: for a job registered by
    /// name, whose value is never at hand where its `Call` is built.
    pub(crate) fn of_type<F>() -> Func<A, R>
    where
        F: Fn(A) -> R + Copy + Send + 'static,
    {
        const {
            assert!(std::mem::size_of::<F>() == 0, "{}", NOT_A_JOB);
        };
        Func {
            ptr: call_zero_sized::<F, A, R>,
            name: std::any::type_name::<F>(),
        }
    }
}

/// Calls the zero-sized function `F` — in a worker, where no value of it
/// was ever sent: one is made out of nothing.
fn call_zero_sized<F, A, R>(arg: A) -> R
where
    F: Fn(A) -> R + Copy + Send + 'static,
{
    // SAFETY: `Func::of` only takes this address for a zero-sized `F` (a
    // compile-time check). On stable Rust only fn items and closures
    // implement `Fn`, and a zero-sized closure captures only zero-sized
    // values: such a type has exactly one value and no invariant, so
    // reading it from a dangling, aligned pointer (a read of zero bytes)
    // produces that value.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    f(arg)
}

/// The batch shim `$shim` (a generic fn path whose last generic parameter
/// is left off) instantiated for the format of `$codec`.
macro_rules! per_format {
    ($codec:expr, $shim:ident::<$($t:ty),*>) => {
        match $codec {
            Codec::Bincode => $shim::<$($t,)* Bincode>,
            #[cfg(feature = "postcard")]
            Codec::Postcard => $shim::<$($t,)* crate::transport::codec::Postcard>,
            #[cfg(feature = "json")]
            Codec::Json => $shim::<$($t,)* crate::transport::codec::Json>,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => $shim::<$($t,)* crate::transport::codec::MessagePack>,
        }
    };
}

/// A job's function as two addresses valid in every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub trampoline: usize,
    pub func: usize,
}

impl Call {
    pub(crate) fn new<A, R>(f: fn(A) -> R, codec: Codec) -> Call
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        let shim: RawCall = per_format!(codec, batch::<A, R>);
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// Turns the trampoline address back into a callable shim.
    ///
    /// # Safety
    /// `trampoline` must be the address taken by [`Call::new`] in this
    /// program image (a worker is a fork of it, so the caller's addresses
    /// hold there too).
    pub(crate) unsafe fn shim(trampoline: usize) -> RawCall {
        // SAFETY: per the contract, this is a RawCall's own address.
        unsafe { std::mem::transmute::<usize, RawCall>(trampoline) }
    }
}

/// One item of a plain job: decode, call, encode.
///
/// # Safety
/// `func` must be the address of an `fn(A) -> R`, as stored by [`Call::new`]
/// next to this very instantiation.
#[inline(always)]
unsafe fn trampoline<A, R, C: Format>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: Call::new stores `f as usize` beside `trampoline::<A, R>`, so
    // `func` is a valid `fn(A) -> R` of the same image.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let Some(arg) = decode_arg::<A, C>(arg, out, decoded) else {
        return Tag::Codec;
    };
    encode_outcome::<_, C>(out, &f(arg), Tag::Ok)
}

impl Call {
    /// A job whose result is dropped in the worker: its `Ok` record holds `()`.
    pub(crate) fn ignoring<A, R>(f: fn(A) -> R, codec: Codec) -> Call
    where
        A: DeserializeOwned,
    {
        let shim: RawCall = per_format!(codec, batch_ignoring::<A, R>);
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// A fallible job: the whole `Result` is encoded, and an `Err` is
    /// recorded under [`Tag::Err`] so the supervisor sees a failure.
    pub(crate) fn fallible<A, T, E>(f: fn(A) -> Result<T, E>, codec: Codec) -> Call
    where
        A: DeserializeOwned,
        T: Serialize,
        E: Serialize,
    {
        let shim: RawCall = per_format!(codec, batch_fallible::<A, T, E>);
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }

    /// A fallible job whose `Ok` value is dropped in the worker: it sends
    /// back `Ok(())`, or its error.
    pub(crate) fn fallible_ignoring<A, T, E>(f: fn(A) -> Result<T, E>, codec: Codec) -> Call
    where
        A: DeserializeOwned,
        E: Serialize,
    {
        let shim: RawCall = per_format!(codec, batch_fallible_ignoring::<A, T, E>);
        Call {
            trampoline: shim as usize,
            func: f as usize,
        }
    }
}

/// Decodes a job's argument, then tells the worker its bytes are free; or
/// writes why it could not into `out`.
#[inline(always)]
fn decode_arg<A: DeserializeOwned, C: Format>(
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Option<A> {
    let arg = C::decode::<A>(arg);
    decoded.done();
    match arg {
        Ok(a) => Some(a),
        Err(e) => {
            out.write_bytes(format!("argument: {e}").as_bytes());
            None
        }
    }
}

/// Encodes a job's outcome into `out` under `tag`, or a codec error.
#[inline(always)]
fn encode_outcome<T: Serialize + ?Sized, C: Format>(out: &mut Out<'_>, value: &T, tag: Tag) -> Tag {
    if let Err(e) = C::encode_into(&mut *out, value) {
        out.clear();
        out.write_bytes(format!("result: {e}").as_bytes());
        return Tag::Codec;
    }
    tag
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> R` stored by [`Call::ignoring`].
#[inline(always)]
unsafe fn trampoline_ignoring<A, R, C: Format>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
{
    // SAFETY: Call::ignoring stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let Some(arg) = decode_arg::<A, C>(arg, out, decoded) else {
        return Tag::Codec;
    };
    drop(f(arg));
    // `()`: no bytes in bincode and postcard, `null` in JSON.
    encode_outcome::<_, C>(out, &(), Tag::Ok)
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> Result<T, E>` stored by
/// [`Call::fallible`].
#[inline(always)]
unsafe fn trampoline_fallible<A, T, E, C: Format>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    T: Serialize,
    E: Serialize,
{
    // SAFETY: Call::fallible stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> Result<T, E>>(func) };
    let Some(arg) = decode_arg::<A, C>(arg, out, decoded) else {
        return Tag::Codec;
    };
    let result = f(arg);
    let tag = if result.is_ok() { Tag::Ok } else { Tag::Err };
    encode_outcome::<_, C>(out, &result, tag)
}

/// # Safety
/// As [`trampoline`]: `func` is the `fn(A) -> Result<T, E>` stored by
/// [`Call::fallible_ignoring`].
#[inline(always)]
unsafe fn trampoline_fallible_ignoring<A, T, E, C: Format>(
    func: usize,
    arg: &[u8],
    out: &mut Out<'_>,
    decoded: &mut Release<'_>,
) -> Tag
where
    A: DeserializeOwned,
    E: Serialize,
{
    // SAFETY: Call::fallible_ignoring stores `f as usize` beside this instantiation.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> Result<T, E>>(func) };
    let Some(arg) = decode_arg::<A, C>(arg, out, decoded) else {
        return Tag::Codec;
    };
    match f(arg) {
        Ok(value) => {
            drop(value);
            encode_outcome::<_, C>(out, &Ok::<(), E>(()), Tag::Ok)
        }
        Err(e) => encode_outcome::<_, C>(out, &Err::<(), E>(e), Tag::Err),
    }
}

/// The batch shims: a whole batch with one item function inlined.
///
/// # Safety (all four)
/// `func` is the function address stored beside this instantiation by the
/// matching `Call` constructor, so the item function's contract holds.
unsafe fn batch<A: DeserializeOwned, R: Serialize, C: Format>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe { trampoline::<A, R, C>(func, arg, out, decoded) })
}

unsafe fn batch_ignoring<A: DeserializeOwned, R, C: Format>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe {
        trampoline_ignoring::<A, R, C>(func, arg, out, decoded)
    })
}

unsafe fn batch_fallible<A: DeserializeOwned, T: Serialize, E: Serialize, C: Format>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe {
        trampoline_fallible::<A, T, E, C>(func, arg, out, decoded)
    })
}

unsafe fn batch_fallible_ignoring<A: DeserializeOwned, T, E: Serialize, C: Format>(
    func: usize,
    run: &mut BatchRun<'_, '_>,
) {
    // SAFETY: see above.
    run.drive(|arg, out, decoded| unsafe {
        trampoline_fallible_ignoring::<A, T, E, C>(func, arg, out, decoded)
    })
}
