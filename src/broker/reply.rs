//! Redis replies read without trusting their shape: RESP2 arrays and
//! RESP3 maps and sets alike, and anything unexpected read as nothing
//! rather than a panic (a malformed entry is skipped, or kept for its
//! reader to dead-letter: see `host.rs`).

use redis::Value;

/// The entries of an `XREAD`/`XRANGE`-like reply, per stream.
pub(crate) type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

/// A bulk string reply, as Redis sends it, for the tests of the reply
/// readers in `host.rs`, `inspect.rs` and `revoke.rs`.
#[cfg(test)]
pub(crate) fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// A string, a status or an integer as bytes; `None` for anything else.
pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// An array's or a set's items, a map's keys and values in turn; nothing
/// for anything else.
pub(crate) fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// An `XREAD`/`XREADGROUP` reply, `[[stream, entries], ...]` (RESP2) or
/// `{stream: entries}` (RESP3): each stream's name and its entries, not
/// yet read.
pub(crate) fn per_stream(v: Value) -> Vec<(String, Value)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .filter_map(|s| {
                let mut p = items(s).into_iter();
                Some((p.next()?, p.next()?))
            })
            .collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, es)| Some((String::from_utf8(bytes(k)?).ok()?, es)))
        .collect()
}

/// `[[id, [k, v, ...]], ...]` as entries; an entry whose id or a key is
/// not a string is skipped, a trailing key without a value dropped.
pub(crate) fn entries(v: Value) -> Entries {
    items(v)
        .into_iter()
        .filter_map(|e| {
            let mut p = items(e).into_iter();
            let id = String::from_utf8(bytes(p.next()?)?).ok()?;
            let mut flat = items(p.next()?).into_iter();
            let mut fields = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push((bytes(k)?, bytes(v).unwrap_or_default()));
            }
            Some((id, fields))
        })
        .collect()
}

/// An `XREAD` reply: per stream, its entries.
pub(crate) fn stream_entries(v: Value) -> Vec<(String, Entries)> {
    per_stream(v)
        .into_iter()
        .map(|(k, es)| (k, entries(es)))
        .collect()
}
