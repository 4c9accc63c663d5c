//! `header_pairs`: the proxy-wasm header-map reader, `header_pairs::parse`.
//!
//! Input: both a serialized header map (parsed as is) and, split at `\n` into lines and each
//! line at its first `:` into name and value, a list of pairs to serialize.
//!
//! Invariants: no panic; a buffer that parses yields exactly its declared count of pairs
//! (iteration never stops half-way), pairs that lie inside the buffer, and re-serializing them
//! then parsing again gives the same pairs; any list of pairs survives serialize → parse; a
//! buffer cut short of its last byte is refused.

use crate::invariant;
use keygate_core::header_pairs::{parse, serialize};

pub fn check(data: &[u8]) {
    check_buffer(data);
    check_round_trip(data);
}

fn check_buffer(buf: &[u8]) {
    let Ok(pairs) = parse(buf) else {
        return;
    };
    let pairs: Vec<(&[u8], &[u8])> = pairs.collect();
    let declared = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    invariant!(
        pairs.len() == declared,
        "{} pairs of {declared} declared",
        pairs.len()
    );
    let range = buf.as_ptr_range();
    for (name, value) in &pairs {
        for part in [name, value] {
            let r = part.as_ptr_range();
            invariant!(
                r.start >= range.start && r.end <= range.end,
                "a pair points outside the buffer"
            );
        }
    }
    let again = serialize(&pairs);
    invariant!(
        again.len() <= buf.len(),
        "re-serialized map is longer than the buffer"
    );
    // Same layout: count and sizes are byte for byte the buffer's.
    let header = 4 + 8 * declared;
    invariant!(
        again[..header] == buf[..header],
        "re-serialized sizes differ"
    );
    let reparsed: Vec<(&[u8], &[u8])> = match parse(&again) {
        Ok(p) => p.collect(),
        Err(_) => {
            invariant!(false, "re-serialized map refused");
            return;
        }
    };
    invariant!(reparsed == pairs, "serialize → parse changed the pairs");
    // The data ends exactly at `again.len()`: anything shorter is refused.
    invariant!(
        parse(&buf[..again.len() - 1]).is_err(),
        "a map cut short of its last byte was accepted"
    );
}

fn check_round_trip(data: &[u8]) {
    let pairs: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        })
        .collect();
    let buf = serialize(&pairs);
    match parse(&buf) {
        Ok(parsed) => {
            let parsed: Vec<(&[u8], &[u8])> = parsed.collect();
            invariant!(
                parsed == pairs,
                "serialize → parse changed {} pairs",
                pairs.len()
            );
        }
        Err(_) => invariant!(false, "a serialized map of {} pairs refused", pairs.len()),
    }
    invariant!(
        parse(&buf[..buf.len() - 1]).is_err(),
        "a serialized map cut by one byte was accepted"
    );
}
