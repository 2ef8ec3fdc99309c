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
//! bounded amount for a claimed length. On the caller's side,
//! [`decode_with`] takes the buffers of big byte strings from the pool's
//! stocks of faulted-in memory (`prefault.rs`), once their claimed length
//! was checked against the bytes actually there.
//!
//! Workflows (`canvas/`) build values from other values' encodings without
//! decoding them — a chord's `Vec<R>` from its members' results, a group's
//! tuple — and the layout that takes belongs to the format, so it is here
//! too: [`seq_len`], [`RESULT_OK`] and [`RESULT_ERR`]; a tuple is its
//! fields' encodings one after another.

use bincode::Options;

use crate::sys::prefault::Spares;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[inline]
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Appends the encoding of `value` to `out`.
#[inline]
pub(crate) fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
    out: W,
    value: &T,
) -> Result<(), String> {
    // Driven here rather than through `Options::serialize_into`, for the
    // same reason as in `decode`.
    value
        .serialize(&mut bincode::Serializer::new(out, options()))
        .map_err(|e| encode_failed(std::any::type_name::<T>(), &e))
}

/// The message for a failed encode, out of line (see `decode_failed`).
#[cold]
#[inline(never)]
fn encode_failed(type_name: &str, e: &dyn std::fmt::Display) -> String {
    format!("encode {type_name}: {e}")
}

/// Decodes one `T` that spans all of `bytes`. Always inlined: it runs once
/// per item in the workers' and the caller's loops.
#[inline(always)]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_with(bytes, None)
}

/// [`decode`], taking the buffers of big byte strings from `spares` when it
/// has them (the caller's side: see `prefault.rs`).
#[inline(always)]
pub(crate) fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    spares: Option<&Spares>,
) -> Result<T, String> {
    // The deserializer is driven here rather than through
    // `Options::deserialize`, whose wrapper the compiler would not inline
    // into a job's per-item loop; the trailing-bytes check is ours then.
    let mut input = Slice {
        rest: bytes,
        spares,
    };
    let value = T::deserialize(&mut bincode::Deserializer::with_bincode_read(
        &mut input,
        options(),
    ));
    match value {
        Ok(v) if input.rest.is_empty() => Ok(v),
        Ok(_) => Err(decode_failed(
            std::any::type_name::<T>(),
            &format_args!("{} bytes left over after the value", input.rest.len()),
        )),
        Err(e) => Err(decode_failed(std::any::type_name::<T>(), &e)),
    }
}

/// The message for a failed decode, out of line: `decode` sits in per-item
/// loops and should stay small.
#[cold]
#[inline(never)]
fn decode_failed(type_name: &str, e: &dyn std::fmt::Display) -> String {
    format!("decode {type_name}: {e}")
}

/// The encoding of a sequence's length (`Vec<T>`, `[T]`, ...), which the
/// encodings of its `n` elements follow: a fixed-width `u64`.
#[inline]
pub(crate) fn seq_len(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

/// What precedes the encoding of `v` in that of `Ok(v)`: the variant
/// index `0` of `Result`, a fixed-width `u32`.
pub(crate) const RESULT_OK: [u8; 4] = 0u32.to_le_bytes();

/// What precedes the encoding of `e` in that of `Err(e)`: variant `1`.
pub(crate) const RESULT_ERR: [u8; 4] = 1u32.to_le_bytes();

/// A byte slice being decoded: bincode's own slice reader, whose position
/// (to check for trailing bytes) stays readable after decoding, and which
/// may draw owned byte strings' buffers from a stock.
struct Slice<'a, 's> {
    rest: &'a [u8],
    spares: Option<&'s Spares>,
}

impl<'a> Slice<'a, '_> {
    #[inline(always)]
    fn take(&mut self, n: usize) -> bincode::Result<&'a [u8]> {
        if n > self.rest.len() {
            return Err(Box::new(bincode::ErrorKind::Io(
                std::io::ErrorKind::UnexpectedEof.into(),
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
}

impl std::io::Read for Slice<'_, '_> {
    #[inline(always)]
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.read_exact(out).map(|()| out.len())
    }

    #[inline(always)]
    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let head = self
            .take(out.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(head);
        Ok(())
    }
}

impl<'a> bincode::BincodeRead<'a> for &mut Slice<'a, '_> {
    #[inline(always)]
    fn forward_read_str<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        match std::str::from_utf8(self.take(length)?) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(e) => Err(Box::new(bincode::ErrorKind::InvalidUtf8Encoding(e))),
        }
    }

    #[inline(always)]
    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        let bytes = self.take(length)?;
        if let Some(mut buf) = self.spares.and_then(|s| s.take(length)) {
            buf.extend_from_slice(bytes);
            return Ok(buf);
        }
        Ok(bytes.to_vec())
    }

    #[inline(always)]
    fn forward_read_bytes<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(self.take(length)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::prefault::Prefault;

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

    /// Big byte strings and strings take their buffers from the stock once
    /// it has them, and come out equal; a claimed length past the input
    /// fails before the stock is asked.
    #[test]
    fn big_strings_are_decoded_into_stocked_buffers() {
        let owner = Prefault::new();
        let spares = owner.spares();
        let bytes: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
        let text = "é".repeat(300 << 10);
        let mut buf = Vec::new();
        encode_into(
            &mut buf,
            &(serde_bytes::ByteBuf::from(bytes.clone()), &text),
        )
        .unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spares.hits() < 4 && std::time::Instant::now() < end {
            let (b, t): (serde_bytes::ByteBuf, String) = decode_with(&buf, Some(spares)).unwrap();
            assert!(*b == bytes && t == text);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(spares.hits() >= 4, "the stock never served");
        let claims_more = [&(u64::MAX / 2).to_le_bytes()[..], &[0; 300 << 10]].concat();
        assert!(decode_with::<serde_bytes::ByteBuf>(&claims_more, Some(spares)).is_err());
    }

    /// Values assembled from their parts' encodings decode as the
    /// compound value: a `Vec`, a `Vec` of `Result`s, a tuple.
    #[test]
    fn compound_values_assemble_from_their_parts() {
        fn enc<T: Serialize>(v: &T) -> Vec<u8> {
            let mut out = Vec::new();
            encode_into(&mut out, v).unwrap();
            out
        }
        let words = ["alpha".to_string(), String::new(), "γ".to_string()];
        let mut seq = seq_len(words.len() as u64).to_vec();
        for w in &words {
            seq.extend(enc(w));
        }
        assert_eq!(decode::<Vec<String>>(&seq).unwrap(), words);
        assert_eq!(decode::<Vec<u64>>(&seq_len(0)).unwrap(), Vec::<u64>::new());

        let mut results = seq_len(2).to_vec();
        results.extend(RESULT_OK);
        results.extend(enc(&7u32));
        results.extend(RESULT_ERR);
        results.extend(enc(&"bad".to_string()));
        let back: Vec<Result<u32, String>> = decode(&results).unwrap();
        assert_eq!(back, [Ok(7), Err("bad".to_string())]);

        let mut tuple = enc(&3u8);
        tuple.extend(enc(&"x".to_string()));
        tuple.extend(enc(&vec![1u16, 2]));
        let back: (u8, String, Vec<u16>) = decode(&tuple).unwrap();
        assert_eq!(back, (3, "x".to_string(), vec![1, 2]));
    }

    #[test]
    fn strings_and_bytes_go_through_the_slice_reader() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &("héllo", vec![1u8, 2, 3])).unwrap();
        let back: (String, Vec<u8>) = decode(&buf).unwrap();
        assert_eq!(back, ("héllo".to_string(), vec![1, 2, 3]));
        // A string whose bytes are not UTF-8.
        let mut bad = 2u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        let e = decode::<String>(&bad).unwrap_err();
        assert!(e.contains("String"), "{e}");
        // Trailing bytes are named.
        let mut long = Vec::new();
        encode_into(&mut long, &5u32).unwrap();
        long.push(0);
        let e = decode::<u32>(&long).unwrap_err();
        assert!(e.contains("1 bytes left over"), "{e}");
        // A string claiming more bytes than there are.
        let short = 100u64.to_le_bytes();
        assert!(decode::<String>(&short).is_err());
    }
}
