//! `sync_binary`: the binary full key map (`sync::apply_binary_full`, `parse_binary_header`),
//! read through a `BodyReader` in pieces, into an in-memory `BucketStore`.
//!
//! Input: one control byte `c`, then the answer body (`KGMAP01\n`, version u64 LE, count u32
//! LE, then `bucket::encode_entry` entries). `c % 9` picks the reader's largest read (1, 2, 7,
//! 20, 97, 553, 554, 4096 bytes, or unlimited), `(c / 9) % 2` whether the state already holds
//! a map (version 5, three keys, applied from JSON), `(c / 18) % 2` a lenient guard and
//! `(c / 36) % 4` the reader's chunk size (the default 1 MiB, or 1, 553, 554 bytes), so bodies
//! larger than a chunk are fuzzed with small inputs.
//!
//! Invariants: the walk ends within a number of reads linear in the body (a reader loop that
//! stops making progress is a hang of Envoy's main thread); the outcome and the store do not
//! depend on how the body is cut into reads or chunks
//! (known finding KF3: not when the first read is shorter than the 20-byte header); a
//! refused or unchanged answer writes nothing and leaves version and count alone; an applied
//! one leaves the store holding exactly the body's entries (each found by `bucket::find` in
//! its own bucket), the header's version and count, digests strictly rising and identifiers
//! valid; and the same keys sent as a JSON full map give the same store.

use crate::invariant;
use crate::sync_message::MemStore;
use keygate_core::bucket::{bucket_of, entries, find};
use keygate_core::key::is_issued_key;
use keygate_sync_core::binary::{parse_binary_header, BodyReader, BINARY_HEADER_LEN};
use keygate_sync_core::message::parse_message;
use keygate_sync_core::state::{Applied, Guard, SyncState};
use serde_json::json;

/// The largest read each `BodyReader` call returns, by control byte.
pub const READ_CAPS: [usize; 9] = [1, 2, 7, 20, 97, 553, 554, 4096, usize::MAX];

/// The reader's chunk size, by control byte.
pub const CHUNKS: [usize; 4] = [keygate_sync_core::binary::CHUNK_LEN, 1, 553, 554];

/// Serves `body` at most `cap` bytes a call, and counts the calls.
struct Capped<'a> {
    body: &'a [u8],
    cap: usize,
    reads: usize,
}

impl BodyReader for Capped<'_> {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
        self.reads += 1;
        invariant!(
            self.reads <= 2 * self.body.len() + BINARY_HEADER_LEN + 2,
            "{} reads of a {}-byte body: the reader loop makes no progress",
            self.reads,
            self.body.len()
        );
        let mut body = self.body;
        body.read(start, len.min(self.cap))
    }
}

/// A state holding a small map already (version 5), with its store.
pub fn held_map() -> (SyncState, MemStore) {
    let entry = |key: &str, id: &str| {
        json!({
            "digest": keygate_core::digest::Digest::of_key(key).to_hex(),
            "account_id": "acct_1", "key_id": id, "type": "secret", "environment": "test",
        })
    };
    let full = json!({
        "kind": "full", "version": 5,
        "keys": [entry("k1", "a"), entry("k2", "b"), entry("k3", "c")],
    });
    let mut state = SyncState::default();
    let mut store = MemStore::default();
    let message = parse_message(full.to_string().as_bytes()).expect("valid full map");
    state
        .apply(message, "s", &mut store, Guard::default())
        .expect("applied");
    (state, store)
}

thread_local! {
    static HELD: std::cell::OnceCell<(SyncState, MemStore)> = const { std::cell::OnceCell::new() };
}

pub fn check(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let cap = READ_CAPS[usize::from(control % 9)];
    let chunk = CHUNKS[usize::from((control / 36) % 4)];
    let (state, store) = if (control / 9) % 2 == 1 {
        HELD.with(|held| held.get_or_init(held_map).clone())
    } else {
        (SyncState::default(), MemStore::default())
    };
    let guard = if (control / 18) % 2 == 1 {
        Guard {
            allow_empty_map: true,
            max_removed_fraction: 1.0,
        }
    } else {
        Guard::default()
    };

    let run = |cap: usize, chunk: usize| {
        let (mut state, mut store) = (state.clone(), store.clone());
        let mut reader = Capped {
            body,
            cap,
            reads: 0,
        };
        let result = state.apply_binary_full_in_chunks(
            &mut reader,
            body.len(),
            "s",
            &mut store,
            guard,
            chunk,
        );
        (result, state, store)
    };
    let (result, after, stored) = run(cap, chunk);
    let (whole, whole_state, whole_store) = if cap == usize::MAX && chunk == CHUNKS[0] {
        (result.clone(), after.clone(), stored.clone())
    } else {
        run(usize::MAX, CHUNKS[0])
    };
    if cap < BINARY_HEADER_LEN && result != whole {
        // The header is read with one call, the entries with as many as it takes.
        crate::known_finding!(
            "KF3",
            false,
            "reads of {cap} bytes give {result:?}, whole reads {whole:?}"
        );
        return;
    }
    invariant!(
        result == whole && stored == whole_store && after.version() == whole_state.version(),
        "reads of {cap} bytes in chunks of {chunk} give {result:?}, whole reads {whole:?}"
    );
    if let Err(e) = &result {
        invariant!(!e.to_string().is_empty(), "empty error message");
        invariant!(
            crate::issued_keys_in(&e.to_string()).is_empty(),
            "a plaintext key in {e}"
        );
    }

    match result {
        Ok(Applied::Updated { version, keys, .. }) => {
            let header = parse_binary_header(body).expect("an applied map has a header");
            invariant!(
                header.version == version && header.count == keys && after.keys() == keys,
                "applied {version}/{keys} from header {header:?}"
            );
            invariant!(
                after.version() == Some(version),
                "version {:?}",
                after.version()
            );
            let sent: Vec<_> = entries(&body[BINARY_HEADER_LEN..]).collect();
            invariant!(
                sent.len() == keys,
                "{} entries for count {keys}",
                sent.len()
            );
            for pair in sent.windows(2) {
                invariant!(pair[0].0 < pair[1].0, "digests do not rise strictly");
            }
            for (digest, info) in &sent {
                let ok = |s: &str| {
                    (1..=128).contains(&s.len())
                        && s.bytes().all(|b| b.is_ascii_graphic())
                        && !is_issued_key(s)
                };
                invariant!(
                    ok(info.account_id) && ok(info.key_id),
                    "an applied entry has a bad identifier"
                );
                let found = stored
                    .buckets
                    .get(bucket_of(digest))
                    .and_then(|b| find(b, digest));
                invariant!(found.as_ref() == Some(info), "entry {digest:?} not found");
            }
            invariant!(
                stored.contents() == sent,
                "the store holds other entries than the body's"
            );

            // The same keys as a JSON full map.
            let keys: Vec<_> = sent
                .iter()
                .map(|(digest, info)| {
                    let mut key = json!({
                        "digest": digest.to_hex(),
                        "account_id": info.account_id,
                        "key_id": info.key_id,
                        "type": info.kind.key_type.as_str(),
                        "environment": info.kind.environment.as_str(),
                        "disabled": info.disabled,
                    });
                    if let Some(at) = info.expires_at {
                        key["expires_at"] = json!(at);
                    }
                    if let Some(limit) = info.limit {
                        key["rate_limit"] = json!({
                            "requests": limit.requests,
                            "per": limit.period.as_str(),
                            "burst": limit.burst,
                        });
                    }
                    key
                })
                .collect();
            let full = json!({ "kind": "full", "version": version, "keys": keys });
            let message = parse_message(full.to_string().as_bytes());
            let Ok(message) = message else {
                invariant!(false, "the JSON form of an applied binary map is refused");
                return;
            };
            let (mut json_state, mut json_store) = (state.clone(), store.clone());
            let applied = json_state.apply(message, "s", &mut json_store, guard);
            invariant!(
                applied
                    == Ok(Applied::Updated {
                        version,
                        keys: sent.len(),
                        new_lineage: false
                    }),
                "the JSON form is applied as {applied:?}"
            );
            invariant!(
                json_store.contents() == stored.contents(),
                "the JSON form gives another store"
            );
        }
        _ => {
            invariant!(
                stored == store
                    && after.version() == state.version()
                    && after.keys() == state.keys(),
                "a refused or unchanged binary map changed the store or the state"
            );
        }
    }
}
