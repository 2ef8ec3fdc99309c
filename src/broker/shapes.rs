//! What a job's argument and result types look like to serde: a
//! fingerprint that two programs agree on exactly when their types have
//! the same shape, and a round trip of sample values through a codec.
//!
//! Both come from tracing the type's `Deserialize` (and `Serialize`) with
//! `serde-reflection`: it yields a description of every container the type
//! contains — struct and field names, enum variants, primitive types — and
//! sample values that cover every enum variant.
//!
//! - **Fingerprint**: FNV-1a (64 bits) over that description. A host built
//!   from code whose `Order` gained a field, or whose `u32` became a `u64`,
//!   computes another fingerprint and refuses the job (dead-lettered with
//!   the reason) instead of decoding garbage. A type the tracer cannot
//!   describe (a custom `Deserialize` that validates, say) is fingerprinted
//!   by its type name (`std::any::type_name`), which catches renames but
//!   not changed fields; [`Shape::traced`] says which it was.
//! - **Round trip**: each sample is encoded, decoded and encoded again with
//!   the codec; the two encodings must be equal. This catches, before any
//!   job runs, types a codec cannot carry: maps with non-string keys in
//!   JSON, `#[serde(untagged)]` or `flatten` (which need
//!   `deserialize_any`) in bincode and postcard. It cannot catch what its
//!   samples do not show: the tracer samples an `Option` as `Some`, so a
//!   `skip_serializing_if = "Option::is_none"` field, which breaks bincode
//!   and postcard only when it is `None`, passes.

use crate::transport::codec::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_reflection::{Samples, Tracer, TracerConfig};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// One type as serde sees it.
pub(crate) struct Shape {
    /// FNV-1a of the description (or of the type name, untraced).
    pub fingerprint: u64,
    /// Whether the tracer described the type (else: fingerprint by name).
    pub traced: bool,
    /// Why tracing failed, if it did (kept for tests and debugging).
    #[cfg_attr(not(test), allow(dead_code))]
    pub trace_error: Option<String>,
}

/// FNV-1a, 64 bits: stable across builds, platforms and compilers.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Traces `T`: its description and sample values.
fn trace<T: DeserializeOwned>() -> Result<(String, Vec<T>), serde_reflection::Error> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let samples = Samples::new();
    let (format, values) = tracer.trace_type::<T>(&samples)?;
    let registry = tracer.registry()?;
    Ok((format!("{format:?} {registry:?}"), values))
}

/// The shape of `T`, computed once per type and kept.
pub(crate) fn shape<T: DeserializeOwned + 'static>() -> &'static Shape {
    static SHAPES: OnceLock<Mutex<HashMap<TypeId, &'static Shape>>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(Default::default);
    if let Some(s) = shapes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&TypeId::of::<T>())
    {
        return s;
    }
    let shape = match trace::<T>() {
        Ok((description, _)) => Shape {
            fingerprint: fnv1a(description.as_bytes()),
            traced: true,
            trace_error: None,
        },
        Err(e) => Shape {
            fingerprint: fnv1a(std::any::type_name::<T>().as_bytes()),
            traced: false,
            trace_error: Some(e.to_string()),
        },
    };
    let shape: &'static Shape = Box::leak(Box::new(shape));
    shapes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(TypeId::of::<T>())
        .or_insert(shape)
}

/// The fingerprint of a job with argument `A` and result `R`: what a
/// broker message carries, and what a host compares with its own.
pub(crate) fn job_fingerprint<A, R>() -> u64
where
    A: DeserializeOwned + 'static,
    R: DeserializeOwned + 'static,
{
    let a = shape::<A>().fingerprint.to_le_bytes();
    let r = shape::<R>().fingerprint.to_le_bytes();
    fnv1a(&[&b"forkpool job v1:"[..], &a, &r].concat())
}

/// Checks that `codec` carries `T`: every traced sample encodes, decodes
/// and encodes again to the same bytes. A type the tracer cannot sample
/// is not checked (`Ok`), except for the one failure that is the codec's:
/// a `Deserialize` that needs `deserialize_any`, which a codec that is not
/// self-describing cannot serve.
pub(crate) fn round_trip<T>(codec: Codec) -> Result<(), String>
where
    T: Serialize + DeserializeOwned + 'static,
{
    let samples = match trace::<T>() {
        Ok((_, samples)) => samples,
        Err(serde_reflection::Error::NotSupported(what))
            if what.contains("deserialize_any") && !codec.is_self_describing() =>
        {
            return Err(format!(
                "{} needs a self-describing codec (its Deserialize calls deserialize_any: an \
                 untagged enum, a flattened struct...), and {codec} is not",
                std::any::type_name::<T>()
            ));
        }
        Err(_) => return Ok(()),
    };
    for sample in &samples {
        let mut first = Vec::new();
        codec.encode_into(&mut first, sample)?;
        let back: T = codec.decode(&first)?;
        let mut second = Vec::new();
        codec.encode_into(&mut second, &back)?;
        if first != second {
            return Err(format!(
                "{} does not round-trip through {codec}: a value came back different",
                std::any::type_name::<T>()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct V1 {
        id: u32,
        name: String,
    }

    mod v2 {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct V1 {
            pub id: u64,
            pub name: String,
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(u32),
        Text(String),
    }

    #[derive(Serialize, Deserialize)]
    struct Skips {
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    #[test]
    fn fingerprints_follow_the_shape_not_the_path() {
        assert!(shape::<V1>().traced);
        assert_ne!(shape::<V1>().fingerprint, shape::<v2::V1>().fingerprint);
        assert_eq!(shape::<V1>().fingerprint, shape::<V1>().fingerprint);
        assert_ne!(job_fingerprint::<u32, u64>(), job_fingerprint::<u64, u32>());
        assert_eq!(job_fingerprint::<u32, u64>(), job_fingerprint::<u32, u64>());
        // The value is fixed: another build must compute the same.
        assert_eq!(fnv1a(b"forkpool"), 0xa6f6_fb2d_a133_d427);
    }

    #[test]
    fn untraceable_types_fall_back_to_their_name() {
        let s = shape::<Loose>();
        assert!(!s.traced);
        assert!(
            s.trace_error
                .as_deref()
                .unwrap()
                .contains("deserialize_any")
        );
        assert_eq!(
            s.fingerprint,
            fnv1a(std::any::type_name::<Loose>().as_bytes())
        );
    }

    #[test]
    fn round_trips_catch_what_a_codec_cannot_carry() {
        assert_eq!(round_trip::<V1>(Codec::Bincode), Ok(()));
        assert_eq!(
            round_trip::<(u64, Vec<String>, Option<bool>)>(Codec::Bincode),
            Ok(())
        );
        let e = round_trip::<Loose>(Codec::Bincode).unwrap_err();
        assert!(e.contains("self-describing"), "{e}");
        // Sampled as `Some`, a field skipped when `None` passes: a known
        // blind spot (see the module doc).
        assert!(round_trip::<Skips>(Codec::Bincode).is_ok());
        #[cfg(feature = "json")]
        {
            assert_eq!(round_trip::<Loose>(Codec::Json), Ok(()));
            assert_eq!(round_trip::<Skips>(Codec::Json), Ok(()));
            let keyed = round_trip::<std::collections::BTreeMap<(u8, u8), u8>>(Codec::Json);
            assert!(keyed.is_err(), "JSON keys must be strings");
        }
    }
}
