//! Per-key usage counted at the edge: how many requests each key made (allowed, and refused
//! after the key was known: forbidden, expired, disabled, over its limit), gathered in
//! memory with no host call on the request path and reported to keygatectl now and then.
//!
//! A table of fixed size (no allocation after the first, no hashing beyond the digest's own
//! bits): the keys busy between two reports are counted exactly; once the table is full,
//! further keys' requests are counted only in `unattributed`, so memory stays bounded
//! however many keys a map holds.

use crate::prelude::*;

use crate::digest::Digest;

/// Slots of a table by default: 40 bytes each, so 640 KiB per worker: this many distinct
/// keys between two reports are counted exactly.
pub const DEFAULT_SLOTS: usize = 16384;
/// Slots a digest may sit in, from the one its first bits name.
const PROBES: usize = 16;

#[derive(Clone, Copy, Default)]
struct Slot {
    digest: Option<Digest>,
    allowed: u32,
    refused: u32,
}

/// One key's counts since the last drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub digest: Digest,
    pub allowed: u32,
    pub refused: u32,
}

/// A worker's counts (single-threaded: one per wasm VM, one per native worker thread).
pub struct UsageTable {
    slots: Vec<Slot>,
    used: usize,
    /// Requests of keys that found no slot since the last drain.
    unattributed: u64,
}

impl UsageTable {
    pub fn new(slots: usize) -> UsageTable {
        UsageTable {
            slots: vec![Slot::default(); slots.max(PROBES).next_power_of_two()],
            used: 0,
            unattributed: 0,
        }
    }

    /// Counts one request of the key `digest` (a digest of the map: its bits are spread
    /// already, and only keygatectl makes them).
    pub fn record(&mut self, digest: &Digest, allowed: bool) {
        let mask = self.slots.len() - 1;
        let [a, b, c, d, ..] = digest.0;
        let home = u32::from_le_bytes([a, b, c, d]) as usize;
        for probe in 0..PROBES {
            let Some(slot) = self.slots.get_mut((home + probe) & mask) else {
                continue;
            };
            match slot.digest {
                Some(held) if held != *digest => continue,
                Some(_) => {}
                None => {
                    slot.digest = Some(*digest);
                    self.used += 1;
                }
            }
            if allowed {
                slot.allowed = slot.allowed.saturating_add(1);
            } else {
                slot.refused = slot.refused.saturating_add(1);
            }
            return;
        }
        self.unattributed = self.unattributed.saturating_add(1);
    }

    /// Whether anything was counted since the last drain.
    pub fn is_empty(&self) -> bool {
        self.used == 0 && self.unattributed == 0
    }

    /// Takes every count (the table is empty afterwards): each key's, and the requests no
    /// slot took.
    pub fn drain(&mut self) -> (Vec<KeyUsage>, u64) {
        let mut out = Vec::with_capacity(self.used);
        if self.used > 0 {
            for slot in self.slots.iter_mut() {
                if let Some(digest) = slot.digest.take() {
                    out.push(KeyUsage {
                        digest,
                        allowed: slot.allowed,
                        refused: slot.refused,
                    });
                    *slot = Slot::default();
                }
            }
        }
        self.used = 0;
        (out, core::mem::take(&mut self.unattributed))
    }
}

/// Drained counts as bytes, to hand from the wasm workers to the fetcher through shared
/// data: digest (32) | allowed (u32 LE) | refused (u32 LE), then, last, the unattributed
/// count (u64 LE) under an all-zero digest.
pub const RECORD_LEN: usize = 40;

pub fn encode_records(out: &mut Vec<u8>, usage: &[KeyUsage], unattributed: u64) {
    for u in usage {
        out.extend_from_slice(&u.digest.0);
        out.extend_from_slice(&u.allowed.to_le_bytes());
        out.extend_from_slice(&u.refused.to_le_bytes());
    }
    if unattributed > 0 {
        out.extend_from_slice(&[0; 32]);
        out.extend_from_slice(&unattributed.to_le_bytes());
    }
}

/// Reads what `encode_records` wrote (possibly several workers' runs one after another):
/// the records, and the unattributed requests summed. A trailing partial record is ignored.
pub fn decode_records(bytes: &[u8]) -> (Vec<KeyUsage>, u64) {
    let mut usage = Vec::with_capacity(bytes.len() / RECORD_LEN);
    let mut unattributed = 0u64;
    for record in bytes.chunks_exact(RECORD_LEN) {
        let (digest, counts) = record.split_at(32);
        let mut d = [0u8; 32];
        d.copy_from_slice(digest);
        let mut pair = [0u8; 8];
        pair.copy_from_slice(counts);
        if d == [0; 32] {
            unattributed = unattributed.saturating_add(u64::from_le_bytes(pair));
        } else {
            let [a0, a1, a2, a3, r0, r1, r2, r3] = pair;
            usage.push(KeyUsage {
                digest: Digest(d),
                allowed: u32::from_le_bytes([a0, a1, a2, a3]),
                refused: u32::from_le_bytes([r0, r1, r2, r3]),
            });
        }
    }
    (usage, unattributed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_key_apart_and_drains_to_empty() {
        let mut table = UsageTable::new(64);
        let (a, b) = (Digest::of_key("a"), Digest::of_key("b"));
        for _ in 0..3 {
            table.record(&a, true);
        }
        table.record(&a, false);
        table.record(&b, false);
        let (mut usage, unattributed) = table.drain();
        usage.sort_by_key(|u| u.digest);
        let mut want = vec![
            KeyUsage {
                digest: a,
                allowed: 3,
                refused: 1,
            },
            KeyUsage {
                digest: b,
                allowed: 0,
                refused: 1,
            },
        ];
        want.sort_by_key(|u| u.digest);
        assert_eq!(usage, want);
        assert_eq!(unattributed, 0);
        assert!(table.is_empty());
        assert_eq!(table.drain(), (Vec::new(), 0));
    }

    #[test]
    fn a_full_table_counts_the_rest_as_unattributed() {
        let mut table = UsageTable::new(16);
        for i in 0..100 {
            table.record(&Digest::of_key(&format!("k{i}")), true);
        }
        let (usage, unattributed) = table.drain();
        assert_eq!(usage.len(), 16);
        assert_eq!(
            usage.iter().map(|u| u.allowed as u64).sum::<u64>() + unattributed,
            100
        );
    }

    #[test]
    fn records_round_trip_across_workers() {
        let one = [KeyUsage {
            digest: Digest::of_key("a"),
            allowed: 5,
            refused: 2,
        }];
        let two = [KeyUsage {
            digest: Digest::of_key("b"),
            allowed: 1,
            refused: 0,
        }];
        let mut bytes = Vec::new();
        encode_records(&mut bytes, &one, 3);
        encode_records(&mut bytes, &two, 4);
        bytes.push(7); // a torn tail is ignored
        let (usage, unattributed) = decode_records(&bytes);
        assert_eq!(usage, [one[0], two[0]]);
        assert_eq!(unattributed, 7);
    }
}
