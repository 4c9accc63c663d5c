//! Bulk import on PostgreSQL: one transaction under the key map's row lock (a dry run reads
//! one snapshot only), the keys written with one statement.

use super::audit::Actor;
use super::import::{plan_import, ImportItem, ImportReport};
use super::postgres::{current_version, query_keys, signed};
use super::postgres_audit::record;
use super::rules::ChangeOp;
use super::sqlite_import::import_events;
use super::{PostgresStore, StoreResult};
use postgres::Client;
use std::collections::{HashMap, HashSet};

impl PostgresStore {
    pub(super) fn import_in(
        &self,
        items: &[ImportItem],
        now: u64,
        actor: &Actor,
        apply: bool,
    ) -> StoreResult<ImportReport> {
        let run = |c: &mut Client| -> StoreResult<ImportReport> {
            let mut report = plan_import(items, &accounts_of(c, items)?, &stored_of(c, items)?);
            if !apply || !report.problems.is_empty() || report.added.is_empty() {
                report.version = current_version(c)?;
                return Ok(report);
            }
            let adding: HashSet<&str> = report.added.iter().map(|(_, id)| id.as_str()).collect();
            let new_keys: Vec<_> = items
                .iter()
                .map(|item| &item.key)
                .filter(|key| adding.contains(key.key_id.as_str()))
                .collect();
            let column = |f: fn(&super::NewKey) -> String| -> Vec<String> {
                new_keys.iter().map(|k| f(k)).collect()
            };
            let expiries = new_keys
                .iter()
                .map(|k| k.expires_at.map(signed).transpose())
                .collect::<StoreResult<Vec<Option<i64>>>>()?;
            let names: Vec<Option<&str>> = new_keys.iter().map(|k| k.name.as_deref()).collect();
            c.execute(
                "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, \
                 created_at, name, expires_at) \
                 SELECT id, account_id, digest, hint, type, environment, origin, $8, name, \
                 expires_at FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $9::text[], $10::bigint[]) \
                 AS t(id, account_id, digest, hint, type, environment, origin, name, expires_at)",
                &[
                    &column(|k| k.key_id.clone()),
                    &column(|k| k.account_id.clone()),
                    &column(|k| k.digest.to_hex()),
                    &column(|k| k.hint.clone()),
                    &column(|k| k.kind.key_type.as_str().to_string()),
                    &column(|k| k.kind.environment.as_str().to_string()),
                    &column(|k| k.origin.as_str().to_string()),
                    &signed(now)?,
                    &names,
                    &expiries,
                ],
            )?;
            let changes: Vec<_> = new_keys
                .iter()
                .map(|key| (&key.digest, ChangeOp::Upsert))
                .collect();
            report.version = self.issue_version(c, &changes)?;
            for event in import_events(new_keys.iter().map(|k| (&k.account_id, &k.key_id))) {
                record(c, now, actor, event)?;
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

fn accounts_of(c: &mut Client, items: &[ImportItem]) -> StoreResult<HashSet<String>> {
    let wanted: Vec<&str> = items
        .iter()
        .map(|i| i.key.account_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    c.query("SELECT id FROM accounts WHERE id = ANY($1)", &[&wanted])?
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect()
}

fn stored_of(
    c: &mut Client,
    items: &[ImportItem],
) -> StoreResult<HashMap<String, super::KeyRecord>> {
    let digests: Vec<String> = items.iter().map(|i| i.key.digest.to_hex()).collect();
    Ok(query_keys(c, "WHERE digest = ANY($1)", &[&digests])?
        .into_iter()
        .map(|k| (k.digest.to_hex(), k))
        .collect())
}
