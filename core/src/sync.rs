//! The key-map transfer format between `keygatectl` and the filters: a full snapshot, or a
//! delta since a version so that rolling one key does not resend the whole map. Defined
//! once here; the server writes it, the filter's fetcher reads it.

use crate::config::{build_key_map, ConfigError, RawKey};
use crate::digest::Digest;
use crate::keymap::KeyMap;
use serde::{Deserialize, Serialize};

/// One answer of the key-map endpoint (`GET /v1/keymap[?since=N]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyMapMessage {
    /// Every live key at `version`.
    Full { version: u64, keys: Vec<RawKey> },
    /// What changed after `since` up to `version`: keys added or changed, digests removed.
    Delta {
        version: u64,
        since: u64,
        upserts: Vec<RawKey>,
        removes: Vec<String>,
    },
}

impl KeyMapMessage {
    pub fn version(&self) -> u64 {
        match self {
            KeyMapMessage::Full { version, .. } | KeyMapMessage::Delta { version, .. } => *version,
        }
    }
}

/// A delta validated in full before any of it is applied.
#[derive(Debug, Clone)]
pub struct ValidDelta {
    pub since: u64,
    pub version: u64,
    upserts: KeyMap,
    removes: Vec<Digest>,
}

impl ValidDelta {
    pub fn apply_to(self, map: &mut KeyMap) {
        for digest in &self.removes {
            map.remove(digest);
        }
        for (digest, entry) in self.upserts.iter() {
            map.upsert(*digest, entry.clone());
        }
    }
}

/// A message validated in full: either a complete map or a delta to apply.
#[derive(Debug, Clone)]
pub enum ValidMessage {
    Full { version: u64, keys: KeyMap },
    Delta(ValidDelta),
}

/// Parses and validates a key-map answer. Nothing is applied if anything in it is wrong.
pub fn parse_message(body: &[u8]) -> Result<ValidMessage, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let message: KeyMapMessage =
        serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError {
            field: crate::config::json_error_field(e.path()),
            problem: crate::config::Problem::Json(e.into_inner().to_string()),
        })?;
    match message {
        KeyMapMessage::Full { version, keys } => Ok(ValidMessage::Full {
            version,
            keys: build_key_map(&keys, "keys")?,
        }),
        KeyMapMessage::Delta {
            version,
            since,
            upserts,
            removes,
        } => {
            let removes = removes
                .iter()
                .enumerate()
                .map(|(i, hex)| {
                    Digest::from_hex(hex).map_err(|e| ConfigError {
                        field: format!("removes[{i}]"),
                        problem: crate::config::Problem::Digest(e),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ValidMessage::Delta(ValidDelta {
                since,
                version,
                upserts: build_key_map(&upserts, "upserts")?,
                removes,
            }))
        }
    }
}
