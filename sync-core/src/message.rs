//! The key-map transfer format between `keygatectl` and the filters: a full snapshot, or a
//! delta since a version so that rolling one key does not resend the whole map. Defined
//! once here; the server writes it (serde, in keygatectl), the fetchers read it with
//! keygate-core's strict JSON reader, whose errors name the field and never quote the
//! answer (an answer is attacker-controlled input too).

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use keygate_core::config::{build_key_map, read_document, read_keys, ConfigError, Problem, RawKey};
use keygate_core::digest::Digest;
use keygate_core::fields::{as_list, as_str, Fields, Path};
use keygate_core::keymap::KeyMap;
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
    pub(crate) upserts: KeyMap,
    pub(crate) removes: Vec<Digest>,
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

impl ValidMessage {
    pub fn version(&self) -> u64 {
        match self {
            ValidMessage::Full { version, .. } => *version,
            ValidMessage::Delta(delta) => delta.version,
        }
    }
}

const KINDS: &[&str] = &["full", "delta"];
const FULL_FIELDS: &[&str] = &["kind", "version", "keys"];
const DELTA_FIELDS: &[&str] = &["kind", "version", "since", "upserts", "removes"];
/// Versions are SQL integers at keygatectl: anything larger is not one of its versions.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Every member name either kind allows, for the first look at `kind`.
const ANY_FIELDS: &[&str] = &["kind", "version", "since", "upserts", "removes", "keys"];

/// Reads a key-map answer as written, without validating its keys.
pub fn decode_message(body: &[u8]) -> Result<KeyMapMessage, ConfigError> {
    let doc = read_document(body)?;
    let root = Path::Root;
    let kind = {
        let top = Fields::of(&doc, &root, ANY_FIELDS)?;
        top.choice("kind", KINDS)?
            .ok_or_else(|| top.path("kind").error(Problem::MissingField))?
    };
    if kind == 0 {
        let top = Fields::of(&doc, &root, FULL_FIELDS)?;
        Ok(KeyMapMessage::Full {
            version: required_version(&top, "version")?,
            keys: key_list(&top, "keys")?,
        })
    } else {
        let top = Fields::of(&doc, &root, DELTA_FIELDS)?;
        let removes_path = top.path("removes");
        let removes = as_list(top.required("removes")?, &removes_path)?
            .iter()
            .enumerate()
            .map(|(i, v)| as_str(v, &Path::Index(&removes_path, i)).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyMapMessage::Delta {
            version: required_version(&top, "version")?,
            since: required_version(&top, "since")?,
            upserts: key_list(&top, "upserts")?,
            removes,
        })
    }
}

fn required_version(top: &Fields, name: &'static str) -> Result<u64, ConfigError> {
    top.u64(name, MAX_VERSION)?
        .ok_or_else(|| top.path(name).error(Problem::MissingField))
}

fn key_list(top: &Fields, name: &'static str) -> Result<Vec<RawKey>, ConfigError> {
    let path = top.path(name);
    read_keys(as_list(top.required(name)?, &path)?, &path)
}

/// Parses and validates a key-map answer. Nothing is applied if anything in it is wrong.
pub fn parse_message(body: &[u8]) -> Result<ValidMessage, ConfigError> {
    match decode_message(body)? {
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
                        problem: Problem::Digest(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2021::*;

    #[test]
    fn garbage_answers_are_refused_before_anything_is_applied() {
        for body in [
            &b"not json"[..],
            br#"{"kind":"full","version":1}"#,
            br#"{"kind":"full","keys":[]}"#,
            br#"{"kind":"delta","version":2,"upserts":[],"removes":[]}"#,
            br#"{"kind":"full","version":-1,"keys":[]}"#,
            br#"{"kind":"full","version":9223372036854775808,"keys":[]}"#,
            br#"{"kind":"delta","version":2,"since":1,"upserts":[],"removes":["zz"]}"#,
            br#"{"kind":"full","version":1,"keys":[{"digest":"sk_test_abc","account_id":"a","key_id":"b","type":"secret","environment":"test"}]}"#,
            br#"{"kind":"full","version":1,"keys":[],"extra":1}"#,
            br#"{"kind":"full","version":1,"keys":[],"since":1}"#,
            br#"{"kind":"other","version":1,"keys":[]}"#,
            br#"{"version":1,"keys":[]}"#,
            br#"{"kind":"full","version":1,"keys":["#,
            br#"{"kind":"full","version":1,"kind":"full","keys":[]}"#,
        ] {
            assert!(parse_message(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn errors_name_the_field_and_never_quote_a_key() {
        let key = keygate_core::key::issue_key(keygate_core::key::KeyKind::ALL[0], &[7; 32]);
        let body = format!(
            r#"{{"kind":"full","version":1,"keys":[{{"digest":"{key}","account_id":"a","key_id":"b","type":"secret","environment":"test"}}]}}"#
        );
        let error = parse_message(body.as_bytes())
            .expect_err("a plaintext key")
            .to_string();
        assert!(error.contains("keys[0].digest"), "{error}");
        assert!(!error.contains(&key), "{error}");
        let body = format!(r#"{{"kind":"full","version":1,"keys":[],"{key}":1}}"#);
        let error = parse_message(body.as_bytes())
            .expect_err("unknown field")
            .to_string();
        assert!(!error.contains(&key), "{error}");
    }

    #[test]
    fn what_serde_writes_the_fetchers_read() {
        let raw = RawKey {
            digest: Digest::of_key("k").to_hex(),
            account_id: "acct".into(),
            key_id: "key_1".into(),
            key_type: keygate_core::key::KeyType::Publishable,
            environment: keygate_core::key::Environment::Production,
            expires_at: Some(9),
            disabled: true,
            rate_limit: Some(keygate_core::config::RawLimit {
                requests: 10,
                per: keygate_core::rate_limit::Period::Minute,
                burst: None,
            }),
        };
        for message in [
            KeyMapMessage::Full {
                version: 3,
                keys: alloc::vec![raw.clone()],
            },
            KeyMapMessage::Delta {
                version: 4,
                since: 3,
                upserts: alloc::vec![raw],
                removes: alloc::vec![Digest::of_key("gone").to_hex()],
            },
        ] {
            let json = serde_json::to_vec(&message).expect("serializable");
            assert_eq!(decode_message(&json).expect("readable"), message);
        }
    }
}
