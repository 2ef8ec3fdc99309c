//! The one place that knows how values become bytes.
//!
//! Everything that crosses a process boundary — job arguments, results,
//! fallible jobs' errors — goes through [`encode_into`] and [`decode`]. The
//! format today is bincode 1.3 with fixed-width integers: a `u64` is a plain
//! 8-byte copy, which is the cheapest encoding for the small numeric items
//! that dominate `map` workloads. Swapping in another serde format (postcard,
//! say) means changing this file only.
//!
//! Decoding is defensive: a hostile or truncated input yields an error, never
//! a panic, and bincode's collection decoding never pre-allocates more than a
//! bounded amount for a claimed length.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
    out: W,
    value: &T,
) -> Result<(), String> {
    options()
        .serialize_into(out, value)
        .map_err(|e| format!("encode {}: {e}", std::any::type_name::<T>()))
}

/// Decodes one `T` that spans all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    options()
        .deserialize(bytes)
        .map_err(|e| format!("decode {}: {e}", std::any::type_name::<T>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &(7u64, "seven".to_string())).unwrap();
        let back: (u64, String) = decode(&buf).unwrap();
        assert_eq!(back, (7, "seven".to_string()));
        assert!(decode::<(u64, String)>(&buf[..buf.len() - 1]).is_err());
        assert!(decode::<u32>(&buf).is_err(), "trailing bytes are an error");
        // A claimed length of 2^60 elements must fail, not allocate.
        let huge = (1u64 << 60).to_le_bytes();
        assert!(decode::<Vec<u64>>(&huge).is_err());
    }
}
