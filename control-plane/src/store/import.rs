//! Bulk import: many keys known by their digests, checked whole and written in one
//! transaction (one key-map version), or not at all. A key already stored for the same
//! account and kind is left as it is, so running an import again changes nothing.
//!
//! What each line becomes (`plan_import`) is decided here, for both backends, from what the
//! store holds for the lines' accounts and digests.

use super::{KeyRecord, NewKey};
use std::collections::{HashMap, HashSet};

/// One key to import and the line of the file it came from (for messages).
#[derive(Debug, Clone)]
pub struct ImportItem {
    pub line: u64,
    pub key: NewKey,
}

/// Why a line cannot be imported: its line, the field at fault, and what is wrong. Never the
/// field's value (it may be a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProblem {
    pub line: u64,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ImportProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.field, self.message)
    }
}

/// What an import did, or would do (`applied` false: a dry run, or refused for problems).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub applied: bool,
    /// (line, new key id) of each key added (or that would be).
    pub added: Vec<(u64, String)>,
    /// (line, key id) of each key already stored as asked: left unchanged.
    pub unchanged: Vec<(u64, String)>,
    /// Nothing is written while there is one.
    pub problems: Vec<ImportProblem>,
    /// The key-map version after the import (the current one when nothing was written).
    pub version: u64,
}

/// Sorts lines into added, unchanged and refused, given the accounts that exist and the
/// keys already stored under the lines' digests.
pub fn plan_import(
    items: &[ImportItem],
    accounts: &HashSet<String>,
    stored: &HashMap<String, KeyRecord>,
) -> ImportReport {
    let mut report = ImportReport::default();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut ids: HashSet<&str> = HashSet::new();
    for item in items {
        let key = &item.key;
        let digest = key.digest.to_hex();
        let problem = |field: &str, message: String| ImportProblem {
            line: item.line,
            field: field.to_string(),
            message,
        };
        if let Some(line) = first_line.get(&digest) {
            report.problems.push(problem(
                "key",
                format!("the same key as line {line} (each key once)"),
            ));
            continue;
        }
        first_line.insert(digest.clone(), item.line);
        if !accounts.contains(&key.account_id) {
            report
                .problems
                .push(problem("account", format!("no account {}", key.account_id)));
            continue;
        }
        match stored.get(&digest) {
            Some(existing)
                if existing.account_id == key.account_id && existing.kind == key.kind =>
            {
                report.unchanged.push((item.line, existing.key_id.clone()));
            }
            Some(existing) => report.problems.push(problem(
                "key",
                format!(
                    "already stored as {} for {} ({} key); a key belongs to one account and kind",
                    existing.key_id, existing.account_id, existing.kind
                ),
            )),
            None if !ids.insert(key.key_id.as_str()) => {
                report
                    .problems
                    .push(problem("key_id", "a key id given twice".into()));
            }
            None => report.added.push((item.line, key.key_id.clone())),
        }
    }
    report
}
