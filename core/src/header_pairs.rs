//! Reads the proxy-wasm ABI's serialized header map in place: one buffer from one host call,
//! no allocation per header.
//!
//! Layout (little-endian u32s): count N; N pairs of (name length, value length); then each
//! name and value, each followed by a NUL byte.

use crate::prelude::*;

/// The buffer does not follow the layout (a host bug or a truncated buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedHeaderMap;

/// Iterates `(name, value)` pairs of a serialized header map, validating every bound first.
pub fn parse(buf: &[u8]) -> Result<HeaderPairs<'_>, MalformedHeaderMap> {
    let count = read_u32(buf, 0).ok_or(MalformedHeaderMap)? as usize;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&end| end <= buf.len())
        .ok_or(MalformedHeaderMap)?;
    // Walk the sizes once to check the data fits, so iteration cannot fail half-way.
    let mut data_end = sizes_end;
    for i in 0..count {
        let name_len = read_u32(buf, 4 + i * 8).ok_or(MalformedHeaderMap)? as usize;
        let value_len = read_u32(buf, 8 + i * 8).ok_or(MalformedHeaderMap)? as usize;
        data_end = data_end
            .checked_add(name_len)
            .and_then(|n| n.checked_add(value_len))
            .and_then(|n| n.checked_add(2))
            .filter(|&end| end <= buf.len())
            .ok_or(MalformedHeaderMap)?;
    }
    Ok(HeaderPairs {
        buf,
        index: 0,
        count,
        data: sizes_end,
    })
}

/// A serialized header map whose bounds were checked once: its pairs can be walked again
/// without checking them again.
pub struct HeaderMap {
    buf: Vec<u8>,
    count: usize,
    data: usize,
}

impl HeaderMap {
    /// Takes the host's buffer, validating every bound.
    pub fn new(buf: Vec<u8>) -> Result<HeaderMap, MalformedHeaderMap> {
        let (count, data) = {
            let pairs = parse(&buf)?;
            (pairs.count, pairs.data)
        };
        Ok(HeaderMap { buf, count, data })
    }

    pub fn pairs(&self) -> HeaderPairs<'_> {
        HeaderPairs {
            buf: &self.buf,
            index: 0,
            count: self.count,
            data: self.data,
        }
    }
}

#[derive(Clone)]
pub struct HeaderPairs<'a> {
    buf: &'a [u8],
    index: usize,
    count: usize,
    data: usize,
}

impl<'a> Iterator for HeaderPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let name_len = read_u32(self.buf, 4 + self.index * 8)? as usize;
        let value_len = read_u32(self.buf, 8 + self.index * 8)? as usize;
        let name = self.buf.get(self.data..self.data + name_len)?;
        let value_start = self.data + name_len + 1;
        let value = self.buf.get(value_start..value_start + value_len)?;
        self.data = value_start + value_len + 1;
        self.index += 1;
        Some((name, value))
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Serializes pairs in the same layout (for tests and for the host-call side).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_pairs_including_non_utf8_values() {
        let pairs: [(&[u8], &[u8]); 3] = [
            (b":path", b"/v3/devices/1"),
            (b"authorization", b"token \xff\xfe"),
            (b"x-empty", b""),
        ];
        let buf = serialize(&pairs);
        let parsed: Vec<_> = parse(&buf).expect("valid").collect();
        assert_eq!(parsed, pairs.to_vec());
    }

    #[test]
    fn a_validated_map_walks_its_pairs_as_often_as_asked() {
        let pairs: [(&[u8], &[u8]); 2] = [(b"a", b"1"), (b"b", b"2")];
        let map = HeaderMap::new(serialize(&pairs)).expect("valid");
        assert_eq!(map.pairs().collect::<Vec<_>>(), pairs.to_vec());
        assert_eq!(map.pairs().count(), 2);
        assert!(HeaderMap::new(vec![1, 0, 0, 0]).is_err());
    }

    #[test]
    fn an_empty_map_has_no_pairs() {
        assert_eq!(parse(&serialize(&[])).expect("valid").count(), 0);
    }

    #[test]
    fn truncated_or_lying_buffers_are_refused() {
        let buf = serialize(&[(b"a", b"b")]);
        for cut in 0..buf.len() {
            assert!(parse(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).is_err());
        let mut long_name = buf;
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&long_name).is_err());
    }
}
