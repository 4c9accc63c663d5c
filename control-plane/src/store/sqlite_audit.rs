//! The audit trail on SQLite: events written in the caller's transaction, and listed.

use super::audit::{
    join_key_ids, split_key_ids, Actor, ActorKind, AuditAction, AuditEvent, AuditQuery,
    NewAuditEvent, MAX_AUDIT_LIMIT,
};
use super::rules::corrupt;
use super::{SqliteStore, StoreResult};
use rusqlite::{params, Row, Transaction};

/// Writes one event in `tx`, the transaction of the change it records.
pub(super) fn record(
    tx: &Transaction,
    now: u64,
    actor: &Actor,
    event: NewAuditEvent,
) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO audit_events (at, actor_kind, actor_id, client, action, account_id, \
         user_id, key_ids, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        now,
        actor.kind.as_str(),
        actor.id,
        actor.client,
        event.action.as_str(),
        event.account_id,
        event.user_id,
        join_key_ids(&event.key_ids),
        event.detail,
    ])?;
    Ok(())
}

fn event_from_row(row: &Row) -> StoreResult<AuditEvent> {
    let kind: String = row.get(2)?;
    let action: String = row.get(5)?;
    let key_ids: String = row.get(8)?;
    Ok(AuditEvent {
        seq: row.get(0)?,
        at: row.get(1)?,
        actor: Actor {
            kind: ActorKind::parse(&kind).ok_or_else(|| corrupt("actor kind", &kind))?,
            id: row.get(3)?,
            client: row.get(4)?,
        },
        action: AuditAction::parse(&action).ok_or_else(|| corrupt("audit action", &action))?,
        account_id: row.get(6)?,
        user_id: row.get(7)?,
        key_ids: split_key_ids(&key_ids),
        detail: row.get(9)?,
    })
}

impl SqliteStore {
    pub(super) fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        let limit = query.limit.clamp(1, MAX_AUDIT_LIMIT);
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, at, actor_kind, actor_id, client, action, account_id, user_id, \
                 key_ids, detail FROM audit_events \
                 WHERE (?1 IS NULL OR account_id = ?1) AND (?2 IS NULL OR at >= ?2) \
                 AND (?3 IS NULL OR seq < ?3) ORDER BY seq DESC LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![
                query.account_id,
                query.since,
                query.before,
                limit as u64
            ])?;
            let mut events = Vec::new();
            while let Some(row) = rows.next()? {
                events.push(event_from_row(row)?);
            }
            Ok(events)
        })
    }
}
