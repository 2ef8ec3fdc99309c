//! The one place that knows how values become bytes.
//!
//! Everything that crosses a process boundary — job arguments, results,
//! fallible jobs' errors — goes through a [`Codec`], chosen per pool
//! (`PoolBuilder::codec`) and per broker: bincode 1.3 with fixed-width
//! integers by default (a `u64` is a plain 8-byte copy, the cheapest
//! encoding for the small numeric items that dominate `map` workloads);
//! postcard, JSON (`serde_json`) and MessagePack (`rmp-serde`) behind the
//! cargo features `postcard`, `json` and `msgpack`.
//!
//! Two ways in, one per side:
//! - The caller's side holds a `Codec` value and calls its methods, which
//!   `match` once per value (a predictable branch; with no extra feature
//!   the enum has one variant and the match is free).
//! - A worker runs a shim monomorphised for one [`Format`] (the zero-sized
//!   `Bincode`, `Postcard`, `Json`, `MessagePack`), picked when the job's
//!   `Call` is built: its per-item loop has that format's decode and
//!   encode inlined, and never branches on the codec.
//!
//! Decoding is defensive: a hostile or truncated input yields an error,
//! never a panic, and no decoder pre-allocates more than a bounded amount
//! for a claimed length. Every format rejects bytes left over after the
//! value. On the caller's side, [`Codec::decode_with`] takes the buffers of
//! big byte strings from the pool's stocks of faulted-in memory
//! (`prefault.rs`), once their claimed length was checked against the bytes
//! actually there (bincode only: the other formats decode as they do).
//!
//! Workflows (`canvas/`) build values from other values' encodings without
//! decoding them — a chord's `Vec<R>` from its members' results, a group's
//! tuple — and the layout that takes belongs to the format, so it is here
//! too: [`seq_len`], [`RESULT_OK`] and [`RESULT_ERR`]; a tuple is its
//! fields' encodings one after another. That layout is bincode's: a pool
//! with another codec refuses workflows.

use bincode::Options;

use crate::sys::prefault::Spares;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// How a pool (or a broker) turns arguments and results into bytes.
///
/// [`Bincode`](Codec::Bincode) (version 1.3, fixed-width integers) is the
/// default and the fastest between forks of one program. The others are
/// compiled in with a cargo feature each: `postcard` (compact, with a
/// stable, documented format), `json` (`serde_json`: readable in
/// `redis-cli`, usable from other languages) and `msgpack` (`rmp-serde`,
/// structs as maps: usable from other languages, more compact than JSON).
///
/// ```
/// use forkpool::Codec;
/// assert_eq!(Codec::default(), Codec::Bincode);
/// assert_eq!("bincode".parse::<Codec>(), Ok(Codec::Bincode));
/// assert_eq!(Codec::Bincode.name(), "bincode");
/// assert!(Codec::available().contains(&Codec::Bincode));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 1.3, fixed-width integers, trailing bytes rejected.
    #[default]
    Bincode,
    /// postcard 1 (varint integers): compact, a stable wire format.
    #[cfg(feature = "postcard")]
    Postcard,
    /// JSON (`serde_json`): readable, and usable from other languages.
    #[cfg(feature = "json")]
    Json,
    /// MessagePack (`rmp-serde`), with structs as maps.
    #[cfg(feature = "msgpack")]
    MessagePack,
}

/// A codec name that is not one of [`Codec::available`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCodec(pub String);

impl fmt::Display for UnknownCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Codec::available().iter().map(|c| c.name()).collect();
        write!(
            f,
            "unknown codec {:?} (this build has: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownCodec {}

impl std::str::FromStr for Codec {
    type Err = UnknownCodec;
    fn from_str(name: &str) -> Result<Codec, UnknownCodec> {
        Codec::available()
            .iter()
            .copied()
            .find(|c| c.name() == name)
            .ok_or_else(|| UnknownCodec(name.to_string()))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Codec {
    /// Every codec this build has (its cargo features decide).
    pub fn available() -> &'static [Codec] {
        &[
            Codec::Bincode,
            #[cfg(feature = "postcard")]
            Codec::Postcard,
            #[cfg(feature = "json")]
            Codec::Json,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack,
        ]
    }

    /// The codec's name: `bincode`, `postcard`, `json` or `msgpack` (what
    /// a broker message carries, and what [`str::parse`] takes).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            #[cfg(feature = "postcard")]
            Codec::Postcard => "postcard",
            #[cfg(feature = "json")]
            Codec::Json => "json",
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => "msgpack",
        }
    }

    /// Whether a value's bytes say what it is (field names, types), so
    /// that types whose `Deserialize` needs `deserialize_any` (untagged
    /// enums, flattened structs) work with it.
    pub fn is_self_describing(self) -> bool {
        match self {
            Codec::Bincode => false,
            #[cfg(feature = "postcard")]
            Codec::Postcard => false,
            #[cfg(feature = "json")]
            Codec::Json => true,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => true,
        }
    }

    /// Appends the encoding of `value` to `out`.
    #[inline]
    pub(crate) fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        self,
        out: W,
        value: &T,
    ) -> Result<(), String> {
        match self {
            Codec::Bincode => Bincode::encode_into(out, value),
            #[cfg(feature = "postcard")]
            Codec::Postcard => Postcard::encode_into(out, value),
            #[cfg(feature = "json")]
            Codec::Json => Json::encode_into(out, value),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => MessagePack::encode_into(out, value),
        }
    }

    /// Decodes one `T` that spans all of `bytes`.
    #[inline(always)]
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        self.decode_with(bytes, None)
    }

    /// [`decode`](Self::decode), taking the buffers of big byte strings
    /// from `spares` when it has them (bincode only; see `prefault.rs`).
    #[inline(always)]
    pub(crate) fn decode_with<T: DeserializeOwned>(
        self,
        bytes: &[u8],
        spares: Option<&Spares>,
    ) -> Result<T, String> {
        match self {
            Codec::Bincode => Bincode::decode_with(bytes, spares),
            #[cfg(feature = "postcard")]
            Codec::Postcard => Postcard::decode(bytes),
            #[cfg(feature = "json")]
            Codec::Json => Json::decode(bytes),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => MessagePack::decode(bytes),
        }
    }
}

/// One serializer, as a type: what a worker's shim is monomorphised for.
pub(crate) trait Format {
    /// Appends the encoding of `value` to `out`.
    fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        out: W,
        value: &T,
    ) -> Result<(), String>;

    /// Decodes one `T` that spans all of `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// bincode 1.3, fixed-width integers: the default.
#[derive(Debug)]
pub(crate) struct Bincode;

#[inline]
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

impl Format for Bincode {
    #[inline]
    fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        out: W,
        value: &T,
    ) -> Result<(), String> {
        // Driven here rather than through `Options::serialize_into`, for
        // the same reason as in `decode_with`.
        value
            .serialize(&mut bincode::Serializer::new(out, options()))
            .map_err(|e| encode_failed(std::any::type_name::<T>(), &e))
    }

    /// Always inlined: it runs once per item in the workers' and the
    /// caller's loops.
    #[inline(always)]
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        Bincode::decode_with(bytes, None)
    }
}

impl Bincode {
    /// [`Format::decode`], drawing big byte strings' buffers from `spares`.
    #[inline(always)]
    pub(crate) fn decode_with<T: DeserializeOwned>(
        bytes: &[u8],
        spares: Option<&Spares>,
    ) -> Result<T, String> {
        // The deserializer is driven here rather than through
        // `Options::deserialize`, whose wrapper the compiler would not
        // inline into a job's per-item loop; the trailing-bytes check is
        // ours then.
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
            Ok(_) => Err(left_over::<T>(input.rest.len())),
            Err(e) => Err(decode_failed(std::any::type_name::<T>(), &e)),
        }
    }
}

/// postcard 1, with its standard-library writer.
#[cfg(feature = "postcard")]
#[derive(Debug)]
pub(crate) struct Postcard;

#[cfg(feature = "postcard")]
impl Format for Postcard {
    #[inline]
    fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        out: W,
        value: &T,
    ) -> Result<(), String> {
        postcard::to_io(value, out)
            .map(|_| ())
            .map_err(|e| encode_failed(std::any::type_name::<T>(), &e))
    }

    #[inline]
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        match postcard::take_from_bytes::<T>(bytes) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(left_over::<T>(rest.len())),
            Err(e) => Err(decode_failed(std::any::type_name::<T>(), &e)),
        }
    }
}

/// JSON, compact.
#[cfg(feature = "json")]
#[derive(Debug)]
pub(crate) struct Json;

#[cfg(feature = "json")]
impl Format for Json {
    #[inline]
    fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        out: W,
        value: &T,
    ) -> Result<(), String> {
        serde_json::to_writer(out, value).map_err(|e| encode_failed(std::any::type_name::<T>(), &e))
    }

    #[inline]
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        // `from_slice` fails on anything but whitespace after the value.
        serde_json::from_slice(bytes).map_err(|e| decode_failed(std::any::type_name::<T>(), &e))
    }
}

/// MessagePack, structs as maps (field names included, as other
/// languages' MessagePack libraries expect).
#[cfg(feature = "msgpack")]
#[derive(Debug)]
pub(crate) struct MessagePack;

#[cfg(feature = "msgpack")]
impl Format for MessagePack {
    #[inline]
    fn encode_into<W: std::io::Write, T: Serialize + ?Sized>(
        mut out: W,
        value: &T,
    ) -> Result<(), String> {
        rmp_serde::encode::write_named(&mut out, value)
            .map_err(|e| encode_failed(std::any::type_name::<T>(), &e))
    }

    #[inline]
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let mut input = bytes;
        let mut de = rmp_serde::Deserializer::new(&mut input);
        let value = T::deserialize(&mut de);
        drop(de);
        match value {
            Ok(v) if input.is_empty() => Ok(v),
            Ok(_) => Err(left_over::<T>(input.len())),
            Err(e) => Err(decode_failed(std::any::type_name::<T>(), &e)),
        }
    }
}

/// The message for a failed encode, out of line (see `decode_failed`).
#[cold]
#[inline(never)]
fn encode_failed(type_name: &str, e: &dyn std::fmt::Display) -> String {
    format!("encode {type_name}: {e}")
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
#[cold]
#[inline(never)]
fn left_over<T>(n: usize) -> String {
    decode_failed(
        std::any::type_name::<T>(),
        &format_args!("{n} bytes left over after the value"),
    )
}

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
        Bincode::encode_into(&mut buf, &(7u64, "seven".to_string())).unwrap();
        let back: (u64, String) = Bincode::decode(&buf).unwrap();
        assert_eq!(back, (7, "seven".to_string()));
        assert!(Bincode::decode::<(u64, String)>(&buf[..buf.len() - 1]).is_err());
        assert!(
            Bincode::decode::<u32>(&buf).is_err(),
            "trailing bytes are an error"
        );
        // A claimed length of 2^60 elements must fail, not allocate.
        let huge = (1u64 << 60).to_le_bytes();
        assert!(Bincode::decode::<Vec<u64>>(&huge).is_err());
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
        Bincode::encode_into(
            &mut buf,
            &(serde_bytes::ByteBuf::from(bytes.clone()), &text),
        )
        .unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while spares.hits() < 4 && std::time::Instant::now() < end {
            let (b, t): (serde_bytes::ByteBuf, String) =
                Bincode::decode_with(&buf, Some(spares)).unwrap();
            assert!(*b == bytes && t == text);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(spares.hits() >= 4, "the stock never served");
        let claims_more = [&(u64::MAX / 2).to_le_bytes()[..], &[0; 300 << 10]].concat();
        assert!(Bincode::decode_with::<serde_bytes::ByteBuf>(&claims_more, Some(spares)).is_err());
    }

    /// Values assembled from their parts' encodings decode as the
    /// compound value: a `Vec`, a `Vec` of `Result`s, a tuple.
    #[test]
    fn compound_values_assemble_from_their_parts() {
        fn enc<T: Serialize>(v: &T) -> Vec<u8> {
            let mut out = Vec::new();
            Codec::Bincode.encode_into(&mut out, v).unwrap();
            out
        }
        let words = ["alpha".to_string(), String::new(), "γ".to_string()];
        let mut seq = seq_len(words.len() as u64).to_vec();
        for w in &words {
            seq.extend(enc(w));
        }
        assert_eq!(Codec::Bincode.decode::<Vec<String>>(&seq).unwrap(), words);
        assert_eq!(
            Codec::Bincode.decode::<Vec<u64>>(&seq_len(0)).unwrap(),
            Vec::<u64>::new()
        );

        let mut results = seq_len(2).to_vec();
        results.extend(RESULT_OK);
        results.extend(enc(&7u32));
        results.extend(RESULT_ERR);
        results.extend(enc(&"bad".to_string()));
        let back: Vec<Result<u32, String>> = Codec::Bincode.decode(&results).unwrap();
        assert_eq!(back, [Ok(7), Err("bad".to_string())]);

        let mut tuple = enc(&3u8);
        tuple.extend(enc(&"x".to_string()));
        tuple.extend(enc(&vec![1u16, 2]));
        let back: (u8, String, Vec<u16>) = Codec::Bincode.decode(&tuple).unwrap();
        assert_eq!(back, (3, "x".to_string(), vec![1, 2]));
    }

    #[test]
    fn strings_and_bytes_go_through_the_slice_reader() {
        let mut buf = Vec::new();
        Bincode::encode_into(&mut buf, &("héllo", vec![1u8, 2, 3])).unwrap();
        let back: (String, Vec<u8>) = Bincode::decode(&buf).unwrap();
        assert_eq!(back, ("héllo".to_string(), vec![1, 2, 3]));
        // A string whose bytes are not UTF-8.
        let mut bad = 2u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        let e = Bincode::decode::<String>(&bad).unwrap_err();
        assert!(e.contains("String"), "{e}");
        // Trailing bytes are named.
        let mut long = Vec::new();
        Bincode::encode_into(&mut long, &5u32).unwrap();
        long.push(0);
        let e = Bincode::decode::<u32>(&long).unwrap_err();
        assert!(e.contains("1 bytes left over"), "{e}");
        // A string claiming more bytes than there are.
        let short = 100u64.to_le_bytes();
        assert!(Bincode::decode::<String>(&short).is_err());
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        tags: Vec<String>,
        ratio: Option<f64>,
        kind: Kind,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Kind {
        Small,
        Sized { w: u32, h: u32 },
    }

    /// Every codec of this build round-trips a value of a few shapes, and
    /// rejects truncated input and bytes after the value, never panicking.
    #[test]
    fn every_codec_round_trips_and_rejects_bad_input() {
        let value = Sample {
            id: u64::MAX - 7,
            name: "héllo".into(),
            tags: vec!["a".into(), String::new()],
            ratio: Some(0.25),
            kind: Kind::Sized { w: 640, h: 480 },
        };
        for &codec in Codec::available() {
            let mut buf = Vec::new();
            codec.encode_into(&mut buf, &value).unwrap();
            assert_eq!(
                codec.decode::<Sample>(&buf),
                Ok(value_clone(&value)),
                "{codec}"
            );
            assert_eq!(codec.name().parse::<Codec>(), Ok(codec));
            let short = &buf[..buf.len() - 1];
            assert!(codec.decode::<Sample>(short).is_err(), "{codec}: truncated");
            let mut long = buf.clone();
            long.push(0x01);
            let e = codec.decode::<Sample>(&long).unwrap_err();
            assert!(e.contains("Sample"), "{codec}: {e}");
            for len in 0..buf.len() {
                let _ = codec.decode::<Sample>(&buf[..len]);
            }
        }
        assert!("bson".parse::<Codec>().is_err());
    }

    fn value_clone(v: &Sample) -> Sample {
        Sample {
            id: v.id,
            name: v.name.clone(),
            tags: v.tags.clone(),
            ratio: v.ratio,
            kind: match &v.kind {
                Kind::Small => Kind::Small,
                Kind::Sized { w, h } => Kind::Sized { w: *w, h: *h },
            },
        }
    }

    proptest::proptest! {
        /// Garbage never panics a decoder, whatever the codec.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            for &codec in Codec::available() {
                let _ = codec.decode::<Sample>(&bytes);
                let _ = codec.decode::<Vec<String>>(&bytes);
                let _ = codec.decode::<(u64, Option<i32>)>(&bytes);
            }
        }
    }
}
