//! `config`: `FilterConfig::parse`, on raw bytes and on mutations of a valid config.
//!
//! Input: if its first non-whitespace byte is `{`, the bytes are the config (raw mode). Any
//! other input is a mutation script (structured mode) applied to [`seed`], a valid config with
//! two keys and a publishable rule: byte triples `op path value`, each byte an index
//! `(byte - b'A') mod len` into [`OPS`], [`PATHS`] and [`values`], e.g. `ANZ` sets `version` to
//! a plaintext key. The mutated config is serialised and parsed (raw bytes are parsed too).
//!
//! Invariants: no panic; the same bytes always give the same answer; an error's `Display`
//! starts with `invalid keygate config: ` and has a non-empty problem; **no error message ever
//! holds a plaintext (issued) key**, wherever in the document the key was put; a valid config's
//! settings are in their documented ranges and no key entry names a plaintext key.

use crate::invariant;
use keygate_core::config::{ConfigError, FilterConfig};
use keygate_core::key::is_issued_key;
use serde_json::{json, Value};

/// The mutation operations.
pub const OPS: [&str; 4] = ["set", "remove", "add-field", "push"];

/// Where a mutation applies: object keys and array indexes, `/`-separated; "" is the root.
pub const PATHS: [&str; 30] = [
    "version",
    "schemes",
    "schemes/0",
    "realm",
    "max_key_length",
    "environment",
    "identity_headers",
    "identity_headers/key_id",
    "keep_authorization",
    "publishable",
    "publishable/api_prefixes",
    "publishable/api_prefixes/0",
    "publishable/retrieve_by_id",
    "publishable/allow",
    "publishable/allow/0/methods",
    "publishable/allow/0/methods/0",
    "publishable/allow/0/path",
    "keys",
    "keys/0",
    "keys/0/digest",
    "keys/0/account_id",
    "keys/0/key_id",
    "keys/0/type",
    "keys/0/environment",
    "keys/0/expires_at",
    "keys/0/disabled",
    "keys/1/digest",
    "sync",
    "sync/namespace",
    "",
];

/// The values a mutation may put somewhere; plaintext keys among them.
pub fn values() -> Vec<Value> {
    let [sk_test, pk_test, sk, pk] = crate::sample_keys();
    let digest = keygate_core::digest::Digest::of_key(&sk_test).to_hex();
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(16),
        json!(1024),
        json!(4_294_967_296u64),
        json!(1.5),
        json!(""),
        json!("x"),
        json!(sk_test.clone()),
        json!(pk_test.clone()),
        json!(sk.clone()),
        json!("sk_test_legacy0123"),
        json!(digest.clone()),
        json!(digest.to_uppercase()),
        json!([]),
        json!({}),
        json!([sk_test.clone()]),
        json!({ pk.clone(): pk }),
        json!("GET"),
        json!("/v3/{id}"),
        json!("token"),
        json!("production"),
        json!("secret"),
        json!("publishable"),
        json!("a".repeat(200)),
        json!("caf\u{e9} \u{2003}"),
        json!("\u{0}"),
        json!(u64::MAX),
        json!("x-keygate-key-id"),
        json!("/{a}/{"),
        json!(format!("{sk_test} {pk_test}")),
        json!({ "methods": ["get"], "path": "/x/{y}" }),
        json!({ "digest": sk, "account_id": "a", "key_id": "b", "type": "secret", "environment": "test" }),
    ]
}

/// A valid config: every section present, two keys, one publishable rule, sync on.
pub fn seed() -> Value {
    let keys = crate::sample_keys();
    let entry = |key: &str, id: &str, ty: &str, env: &str| {
        json!({
            "digest": keygate_core::digest::Digest::of_key(key).to_hex(),
            "account_id": "acct_1",
            "key_id": id,
            "type": ty,
            "environment": env,
            "expires_at": 2_000_000_000u64,
            "disabled": false,
        })
    };
    json!({
        "version": 1,
        "schemes": ["token", "bearer", "basic"],
        "realm": "keygate",
        "max_key_length": 128,
        "environment": "test",
        "identity_headers": { "account_id": "x-account", "key_id": "x-key" },
        "keep_authorization": false,
        "publishable": {
            "api_prefixes": ["/v3", "/api/v1"],
            "retrieve_by_id": true,
            "allow": [{ "methods": ["POST"], "path": crate::oracle::EVENTS_RULE }],
        },
        "keys": [
            entry(&keys[0], "key_sk_test", "secret", "test"),
            entry(&keys[1], "key_pk_test", "publishable", "test"),
        ],
        "sync": { "namespace": "keygate" },
    })
}

thread_local! {
    /// [`seed`] and [`values`], made once per thread.
    static FIXTURE: std::cell::OnceCell<(Value, Vec<Value>)> = const { std::cell::OnceCell::new() };
}

pub fn check(data: &[u8]) {
    if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let mutated = FIXTURE.with(|cell| {
            let (seed, values) = cell.get_or_init(|| (seed(), values()));
            mutate(seed.clone(), values, data)
        });
        check_parse(&serde_json::to_vec(&mutated).expect("a Value serialises"));
    }
    check_parse(data);
}

fn index(byte: u8, len: usize) -> usize {
    usize::from(byte.wrapping_sub(b'A')) % len
}

/// Applies the mutation script `script` to `doc`, taking values from `values`.
pub fn mutate(mut doc: Value, values: &[Value], script: &[u8]) -> Value {
    for op in script.chunks(3) {
        let [op, path, value] = [0, 1, 2].map(|i| op.get(i).copied().unwrap_or(b'A'));
        let path: Vec<&str> = PATHS[index(path, PATHS.len())]
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let value = values[index(value, values.len())].clone();
        match OPS[index(op, OPS.len())] {
            "set" => {
                if let Some(slot) = slot(&mut doc, &path) {
                    *slot = value;
                }
            }
            "remove" => {
                if let Some((last, parent)) = path.split_last() {
                    match slot(&mut doc, parent) {
                        Some(Value::Object(m)) => {
                            m.remove(*last);
                        }
                        Some(Value::Array(a)) => {
                            if let Ok(i) = last.parse::<usize>() {
                                if i < a.len() {
                                    a.remove(i);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            "add-field" => {
                let name = match &value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Some(Value::Object(m)) = slot(&mut doc, &path) {
                    m.insert(name, value);
                }
            }
            _ => {
                if let Some(slot) = slot(&mut doc, &path) {
                    match slot {
                        Value::Array(a) => a.push(value),
                        other => *other = Value::Array(vec![value]),
                    }
                }
            }
        }
    }
    doc
}

/// The value at `path`, creating missing object members (as null) on the way.
fn slot<'a>(doc: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut at = doc;
    for part in path {
        at = match at {
            Value::Object(m) => m.entry(part.to_string()).or_insert(Value::Null),
            Value::Array(a) => a.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

fn check_parse(bytes: &[u8]) {
    let result = FilterConfig::parse(bytes);
    let again = FilterConfig::parse(bytes);
    invariant!(
        result.as_ref().err() == again.as_ref().err() && result.is_ok() == again.is_ok(),
        "parsing the same bytes twice gave different answers"
    );
    match result {
        Err(e) => check_error(&e),
        Ok(config) => check_valid(&config),
    }
}

/// What every config error must be: non-empty, prefixed, and free of plaintext keys.
pub fn check_error(e: &ConfigError) {
    let shown = e.to_string();
    invariant!(
        shown.starts_with("invalid keygate config: "),
        "error {shown:?} lacks its prefix"
    );
    invariant!(!e.problem.to_string().is_empty(), "empty problem in {e:?}");
    let leaked = !crate::issued_keys_in(&shown).is_empty();
    invariant!(
        !leaked,
        "a plaintext key is echoed in the error message (field {:?}): {shown}",
        e.field
    );
}

fn check_valid(config: &FilterConfig) {
    let s = &config.settings;
    invariant!(
        (16..=1024).contains(&s.max_key_length),
        "max_key_length {}",
        s.max_key_length
    );
    let challenges = s.www_authenticate.split(", ").count();
    invariant!(
        s.schemes.iter().count() >= 1 && challenges == s.schemes.iter().count(),
        "{challenges} challenges for {:?}",
        s.schemes
    );
    let names = s.identity_headers.names();
    for (i, name) in names.iter().enumerate() {
        invariant!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !names[..i].contains(name),
            "identity header {name:?}"
        );
    }
    for (_, entry) in config.keys.iter() {
        invariant!(
            !is_issued_key(&entry.account_id) && !is_issued_key(&entry.key_id),
            "a key entry names a plaintext key"
        );
        invariant!(
            (1..=128).contains(&entry.account_id.len()) && (1..=128).contains(&entry.key_id.len()),
            "identifier lengths {} {}",
            entry.account_id.len(),
            entry.key_id.len()
        );
    }
    if let Some(ns) = &config.sync_namespace {
        invariant!(
            keygate_core::shared_data::is_valid_name(ns),
            "namespace {ns:?}"
        );
    }
}
