//! Bulk import on SQLite: one transaction under the write lock (a dry run reads only).

use super::audit::{Actor, AuditAction, NewAuditEvent};
use super::import::{plan_import, ImportItem, ImportReport};
use super::rules::ChangeOp;
use super::sqlite::{current_version, key_from_row, write_key, KEY_COLUMNS};
use super::sqlite_audit::record;
use super::{KeyRecord, SqliteStore, StoreResult};
use rusqlite::{OptionalExtension, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};

impl SqliteStore {
    pub(super) fn import_in(
        &self,
        items: &[ImportItem],
        now: u64,
        actor: &Actor,
        apply: bool,
    ) -> StoreResult<ImportReport> {
        let run = |tx: &Transaction| -> StoreResult<ImportReport> {
            let mut report = plan_import(items, &accounts_of(tx, items)?, &stored_of(tx, items)?);
            if !apply || !report.problems.is_empty() || report.added.is_empty() {
                report.version = current_version(tx)?;
                return Ok(report);
            }
            let adding: HashSet<&str> = report.added.iter().map(|(_, id)| id.as_str()).collect();
            let new_keys: Vec<_> = items
                .iter()
                .map(|item| &item.key)
                .filter(|key| adding.contains(key.key_id.as_str()))
                .collect();
            for key in &new_keys {
                write_key(tx, key, now)?;
            }
            let changes: Vec<_> = new_keys
                .iter()
                .map(|key| (&key.digest, ChangeOp::Upsert))
                .collect();
            report.version = self.issue_version(tx, &changes)?;
            for event in import_events(new_keys.iter().map(|k| (&k.account_id, &k.key_id))) {
                record(tx, now, actor, event)?;
            }
            report.applied = true;
            Ok(report)
        };
        if apply {
            self.write(run)
        } else {
            self.read(run)
        }
    }
}

/// The accounts among the lines' that exist.
fn accounts_of(tx: &Transaction, items: &[ImportItem]) -> StoreResult<HashSet<String>> {
    let wanted: HashSet<&str> = items.iter().map(|i| i.key.account_id.as_str()).collect();
    let mut stmt = tx.prepare_cached("SELECT 1 FROM accounts WHERE id = ?1")?;
    let mut found = HashSet::new();
    for id in wanted {
        if stmt.query_row([id], |_| Ok(())).optional()?.is_some() {
            found.insert(id.to_string());
        }
    }
    Ok(found)
}

/// The keys already stored under the lines' digests, by digest.
fn stored_of(tx: &Transaction, items: &[ImportItem]) -> StoreResult<HashMap<String, KeyRecord>> {
    let mut stmt =
        tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE digest = ?1"))?;
    let mut stored = HashMap::new();
    for item in items {
        let digest = item.key.digest.to_hex();
        let mut rows = stmt.query([&digest])?;
        if let Some(row) = rows.next()? {
            stored.insert(digest, key_from_row(row)?);
        }
    }
    Ok(stored)
}

/// One audit event per account, naming the keys imported into it.
pub(super) fn import_events<'a>(
    keys: impl Iterator<Item = (&'a String, &'a String)>,
) -> Vec<NewAuditEvent> {
    let mut by_account: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (account, key_id) in keys {
        by_account.entry(account).or_default().push(key_id);
    }
    by_account
        .into_iter()
        .map(|(account, ids)| {
            let count = ids.len();
            NewAuditEvent::new(AuditAction::KeysImported)
                .account(account)
                .keys(ids)
                .detail(format!(
                    "{count} {} imported by digest",
                    if count == 1 { "key" } else { "keys" }
                ))
        })
        .collect()
}
