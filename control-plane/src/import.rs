//! Bulk import for migrations: `keygatectl key import --file keys.jsonl`.
//!
//! Each line of the file is one JSON object: the key (`"key"`, hashed here and never sent or
//! stored) or its SHA-256 (`"digest"`), `"type"`, `"environment"`, `"account"`, and
//! optionally `"name"` and `"expires_at"` (RFC 3339 or unix seconds). The file is checked
//! whole first; every problem names its line and field and never repeats a value (it may be
//! a key). Then `Service::import_keys` checks the lines against the store and writes them in
//! one transaction, or nothing.

use crate::clock::parse_rfc3339;
use crate::model::{BulkImportKey, BulkImportRequest, BulkImportView, ImportedLine};
use crate::random::new_key_id;
use crate::service::{
    check_expiry, check_name, parse_digest, Service, ServiceError, ServiceResult,
};
use crate::store::import::{ImportItem, ImportProblem};
use crate::store::{Actor, KeyOrigin, NewKey};
use keygate_core::digest::Digest;
use keygate_core::key::{check_key, key_hint, Environment, KeyKind, KeyType};
use serde_json::{Map, Value};

/// The most keys one import takes (memory: a few hundred bytes each while checked).
pub const MAX_IMPORT_KEYS: usize = 1_000_000;

const FIELDS: &str = "key or digest, type, environment, account, name, expires_at";

fn problem(line: u64, field: &str, message: impl Into<String>) -> ImportProblem {
    ImportProblem {
        line,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads a JSONL file into an import request, or every problem found in it. Blank lines
/// are skipped (they keep their numbers, so lines are counted as an editor counts them).
pub fn parse_jsonl(text: &str, now: u64) -> Result<Vec<BulkImportKey>, Vec<ImportProblem>> {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if keys.len() >= MAX_IMPORT_KEYS {
            problems.push(problem(
                line,
                "file",
                format!("more than {MAX_IMPORT_KEYS} keys; split the file"),
            ));
            break;
        }
        match parse_line(raw, line, now) {
            Ok(key) => keys.push(key),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if keys.is_empty() && problems.is_empty() {
        problems.push(problem(0, "file", "no keys in the file"));
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// One line: a JSON object with the known fields. Every wrong field is reported.
fn parse_line(raw: &str, line: u64, now: u64) -> Result<BulkImportKey, Vec<ImportProblem>> {
    // Parsed as a value first: serde's messages for a typed struct could quote a value.
    let object: Map<String, Value> = match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(vec![problem(line, "line", "not a JSON object")]),
        Err(e) => {
            return Err(vec![problem(
                line,
                "line",
                format!("not valid JSON (column {})", e.column()),
            )])
        }
    };
    let mut problems = Vec::new();
    for field in object.keys() {
        let known = matches!(
            field.as_str(),
            "key"
                | "digest"
                | "type"
                | "environment"
                | "account"
                | "account_id"
                | "name"
                | "expires_at"
        );
        if !known {
            // A field's name is shown only when it cannot be a key pasted as one.
            let shown = if field.len() <= 32
                && field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                field.as_str()
            } else {
                "(a field)"
            };
            problems.push(problem(
                line,
                shown,
                format!("unknown field; the fields are {FIELDS}"),
            ));
        }
    }
    let text = |field: &str, problems: &mut Vec<ImportProblem>| -> Option<String> {
        match object.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                problems.push(problem(line, field, "must be a string"));
                None
            }
        }
    };
    let key_type = text("type", &mut problems).and_then(|t| match t.as_str() {
        "secret" => Some(KeyType::Secret),
        "publishable" => Some(KeyType::Publishable),
        _ => {
            problems.push(problem(line, "type", "must be secret or publishable"));
            None
        }
    });
    let environment = text("environment", &mut problems).and_then(|e| match e.as_str() {
        "test" => Some(Environment::Test),
        "production" => Some(Environment::Production),
        _ => {
            problems.push(problem(line, "environment", "must be test or production"));
            None
        }
    });
    let account = match (
        text("account", &mut problems),
        text("account_id", &mut problems),
    ) {
        (Some(a), None) | (None, Some(a)) if !a.trim().is_empty() => Some(a.trim().to_string()),
        (Some(_), Some(_)) => {
            problems.push(problem(
                line,
                "account",
                "give account or account_id, not both",
            ));
            None
        }
        _ => {
            problems.push(problem(
                line,
                "account",
                "missing: the account id the key belongs to",
            ));
            None
        }
    };
    let name = text("name", &mut problems).and_then(|n| match check_name(&n, "the name") {
        Ok(n) => Some(n),
        Err(message) => {
            problems.push(problem(line, "name", message));
            None
        }
    });
    let expires_at = match object.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let at = match value {
                Value::String(s) => parse_rfc3339(s),
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| "must be whole unix seconds or an RFC 3339 time".to_string()),
                _ => Err("must be an RFC 3339 time or unix seconds".to_string()),
            };
            match at.and_then(|at| check_expiry(at, now)) {
                Ok(at) => Some(at),
                Err(message) => {
                    problems.push(problem(line, "expires_at", message));
                    None
                }
            }
        }
    };
    // The key itself is hashed here; only its digest and hint go on.
    let secret = match (text("key", &mut problems), text("digest", &mut problems)) {
        (Some(_), Some(_)) => {
            problems.push(problem(line, "key", "give key or digest, not both"));
            None
        }
        (Some(key), None) => match check_key(&key) {
            Ok(kind) => Some((
                Digest::of_key(&key).to_hex(),
                Some(key_hint(&key)),
                Some(kind),
            )),
            Err(e) => {
                problems.push(problem(
                    line,
                    "key",
                    format!("the filter would refuse this key: {e}"),
                ));
                None
            }
        },
        (None, Some(digest)) => match parse_digest(&digest) {
            Ok(digest) => Some((digest.to_hex(), None, None)),
            Err(e) => {
                problems.push(problem(line, "digest", e.to_string()));
                None
            }
        },
        (None, None) => {
            problems.push(problem(
                line,
                "key",
                "missing: give key (the plaintext) or digest",
            ));
            None
        }
    };
    // A plaintext key's prefix says its kind; given fields must agree with it.
    let kind = match &secret {
        Some((_, _, Some(kind))) => {
            if key_type.is_some_and(|t| t != kind.key_type) {
                problems.push(problem(
                    line,
                    "type",
                    format!(
                        "the key's prefix {} says {}",
                        kind.prefix(),
                        kind.key_type.as_str()
                    ),
                ));
            }
            if environment.is_some_and(|e| e != kind.environment) {
                problems.push(problem(
                    line,
                    "environment",
                    format!(
                        "the key's prefix {} says {}",
                        kind.prefix(),
                        kind.environment.as_str()
                    ),
                ));
            }
            Some(*kind)
        }
        Some((_, _, None)) => {
            if key_type.is_none() && !problems.iter().any(|p| p.field == "type") {
                problems.push(problem(line, "type", "missing: required with a digest"));
            }
            if environment.is_none() && !problems.iter().any(|p| p.field == "environment") {
                problems.push(problem(
                    line,
                    "environment",
                    "missing: required with a digest",
                ));
            }
            key_type.zip(environment).map(|(t, e)| KeyKind::new(t, e))
        }
        None => {
            // A bad digest: still say what else the line lacks.
            if object.contains_key("digest") && !object.contains_key("key") {
                for (field, given) in [
                    ("type", key_type.is_some()),
                    ("environment", environment.is_some()),
                ] {
                    if !given && !problems.iter().any(|p| p.field == field) {
                        problems.push(problem(line, field, "missing: required with a digest"));
                    }
                }
            }
            None
        }
    };
    match (secret, kind, account) {
        (Some((digest, hint, _)), Some(kind), Some(account_id)) if problems.is_empty() => {
            Ok(BulkImportKey {
                line: Some(line),
                account_id,
                key_type: kind.key_type,
                environment: kind.environment,
                digest,
                hint,
                name,
                expires_at,
            })
        }
        _ => Err(problems),
    }
}

impl Service {
    /// Checks every key of the request, then has the store check them against what it
    /// holds and write them in one transaction (unless `dry_run`). Any problem refuses the
    /// whole import, listing each with its line and field.
    pub fn import_keys(
        &self,
        request: &BulkImportRequest,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<BulkImportView> {
        if request.keys.len() > MAX_IMPORT_KEYS {
            return Err(ServiceError::Invalid(format!(
                "an import takes at most {MAX_IMPORT_KEYS} keys; split it"
            )));
        }
        if request.keys.is_empty() {
            return Err(ServiceError::Invalid("the import has no keys".into()));
        }
        let mut items = Vec::with_capacity(request.keys.len());
        let mut problems = Vec::new();
        for (index, key) in request.keys.iter().enumerate() {
            let line = key.line.unwrap_or(index as u64 + 1);
            match item_of(key, line, now) {
                Ok(item) => items.push(item),
                Err(mut found) => problems.append(&mut found),
            }
        }
        if !problems.is_empty() {
            return Err(ServiceError::ImportRefused(problems));
        }
        let report = self
            .store()
            .import_keys(&items, now, actor, !request.dry_run)?;
        if !report.problems.is_empty() {
            return Err(ServiceError::ImportRefused(report.problems));
        }
        let lines = |found: Vec<(u64, String)>| {
            found
                .into_iter()
                .map(|(line, key_id)| ImportedLine { line, key_id })
                .collect()
        };
        Ok(BulkImportView {
            dry_run: request.dry_run,
            added: lines(report.added),
            unchanged: lines(report.unchanged),
            version: report.version,
        })
    }
}

/// A request's key as the store takes it, with a new key id.
fn item_of(key: &BulkImportKey, line: u64, now: u64) -> Result<ImportItem, Vec<ImportProblem>> {
    let kind = KeyKind::new(key.key_type, key.environment);
    let mut problems = Vec::new();
    let digest = parse_digest(&key.digest)
        .map_err(|e| problems.push(problem(line, "digest", e.to_string())))
        .ok();
    let hint = match &key.hint {
        Some(hint) if hint_fits(hint, kind) => hint.clone(),
        Some(_) => {
            problems.push(problem(
                line,
                "hint",
                format!(
                    "must be the prefix {}, '…' and at most the last 4 characters",
                    kind.prefix()
                ),
            ));
            String::new()
        }
        None => format!("{}…????", kind.prefix()),
    };
    let name = key
        .name
        .as_deref()
        .map(|n| check_name(n, "the name").map_err(|m| problems.push(problem(line, "name", m))))
        .transpose()
        .ok()
        .flatten();
    let expires_at = key
        .expires_at
        .map(|at| check_expiry(at, now).map_err(|m| problems.push(problem(line, "expires_at", m))))
        .transpose()
        .ok()
        .flatten();
    let account_id = key.account_id.trim();
    if account_id.is_empty() {
        problems.push(problem(line, "account", "empty"));
    }
    let key_id = new_key_id().map_err(|e| vec![problem(line, "key_id", e.to_string())])?;
    match digest {
        Some(digest) if problems.is_empty() => Ok(ImportItem {
            line,
            key: NewKey {
                key_id,
                account_id: account_id.to_string(),
                kind,
                digest,
                hint,
                origin: KeyOrigin::Imported,
                name,
                expires_at,
            },
        }),
        _ => Err(problems),
    }
}

/// What `key_hint` makes for a key of `kind`: prefix, `…`, at most four visible characters.
fn hint_fits(hint: &str, kind: KeyKind) -> bool {
    hint.strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('…'))
        .is_some_and(|tail| tail.len() <= 4 && tail.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::key::issue_key;

    const NOW: u64 = 1_700_000_000;

    fn key(n: u8) -> String {
        issue_key(KeyKind::new(KeyType::Secret, Environment::Test), &[n; 32])
    }

    #[test]
    fn good_lines_become_digests_and_hints_only() {
        let plaintext = key(1);
        let digest = Digest::of_key("legacy-key").to_hex();
        let text = format!(
            "{{\"key\":\"{plaintext}\",\"account\":\"acct_a\",\"name\":\"iOS app\"}}\n\n\
             {{\"digest\":\"{digest}\",\"type\":\"publishable\",\"environment\":\"production\",\
             \"account_id\":\"acct_b\",\"expires_at\":\"2030-01-01T00:00:00Z\"}}\n"
        );
        let keys = parse_jsonl(&text, NOW).expect("parsed");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].line, Some(1));
        assert_eq!(keys[0].digest, Digest::of_key(&plaintext).to_hex());
        assert_eq!(keys[0].hint.as_deref(), Some(key_hint(&plaintext).as_str()));
        assert_eq!(keys[0].name.as_deref(), Some("iOS app"));
        assert_eq!(keys[1].line, Some(3));
        assert_eq!(keys[1].key_type, KeyType::Publishable);
        assert_eq!(keys[1].expires_at, Some(1_893_456_000));
        let json = serde_json::to_string(&keys).expect("json");
        assert!(
            !json.contains(&plaintext),
            "the plaintext never leaves the parser"
        );
    }

    #[test]
    fn every_problem_names_its_line_and_field_and_never_a_value() {
        let plaintext = key(2);
        let text = format!(
            "{{\"key\":\"{plaintext}\",\"account\":\"a\",\"type\":\"publishable\"}}\n\
             not json {plaintext}\n\
             {{\"digest\":\"{plaintext}\",\"account\":\"a\",\"type\":\"secret\",\"environment\":\"test\"}}\n\
             {{\"digest\":\"abc\",\"account\":\"a\"}}\n\
             {{\"key\":\"sk_test_a b\",\"account\":\"a\",\"expires_at\":\"yesterday\",\"colour\":1}}\n\
             {{\"key\":\"{plaintext}\",\"{plaintext}\":1,\"account\":\"a\",\"name\":\"{plaintext}\"}}\n\
             []\n"
        );
        let problems = parse_jsonl(&text, NOW).expect_err("refused");
        let said: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = said.join("\n");
        assert!(!all.contains(&plaintext[8..]), "{all}");
        for expected in [
            "line 1: type: the key's prefix sk_test_ says secret",
            "line 2: line: not valid JSON",
            "line 3: digest: digest looks like a plaintext API key",
            "line 4: digest: digest:",
            "line 4: type: missing",
            "line 4: environment: missing",
            "line 5: key: the filter would refuse this key",
            "line 5: expires_at: not an RFC 3339 time",
            "line 5: colour: unknown field",
            "line 6: (a field): unknown field",
            "line 6: name: the name looks like an API key",
            "line 7: line: not a JSON object",
        ] {
            assert!(all.contains(expected), "{expected} in\n{all}");
        }
    }

    #[test]
    fn an_empty_file_or_a_past_expiry_is_refused() {
        assert_eq!(
            parse_jsonl("\n  \n", NOW).expect_err("empty")[0].field,
            "file"
        );
        let text = format!(
            "{{\"key\":\"{}\",\"account\":\"a\",\"expires_at\":{}}}",
            key(3),
            NOW - 1
        );
        let problems = parse_jsonl(&text, NOW).expect_err("past");
        assert_eq!(problems[0].field, "expires_at");
    }
}
