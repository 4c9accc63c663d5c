//! The audit trail on PostgreSQL: events written in the caller's transaction, and listed.

use super::audit::{
    join_key_ids, split_key_ids, Actor, ActorKind, AuditAction, AuditEvent, AuditQuery,
    NewAuditEvent, MAX_AUDIT_LIMIT,
};
use super::postgres::{signed, unsigned};
use super::rules::corrupt;
use super::{PostgresStore, StoreResult};
use postgres::{Client, Row};

/// Writes one event in the transaction of the change it records.
pub(super) fn record(
    c: &mut Client,
    now: u64,
    actor: &Actor,
    event: NewAuditEvent,
) -> StoreResult<()> {
    c.execute(
        "INSERT INTO audit_events (at, actor_kind, actor_id, client, action, account_id, \
         user_id, key_ids, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &signed(now)?,
            &actor.kind.as_str(),
            &actor.id,
            &actor.client,
            &event.action.as_str(),
            &event.account_id,
            &event.user_id,
            &join_key_ids(&event.key_ids),
            &event.detail,
        ],
    )?;
    Ok(())
}

fn event_from_row(row: &Row) -> StoreResult<AuditEvent> {
    let kind: String = row.try_get(2)?;
    let action: String = row.try_get(5)?;
    let key_ids: String = row.try_get(8)?;
    Ok(AuditEvent {
        seq: unsigned(row.try_get(0)?)?,
        at: unsigned(row.try_get(1)?)?,
        actor: Actor {
            kind: ActorKind::parse(&kind).ok_or_else(|| corrupt("actor kind", &kind))?,
            id: row.try_get(3)?,
            client: row.try_get(4)?,
        },
        action: AuditAction::parse(&action).ok_or_else(|| corrupt("audit action", &action))?,
        account_id: row.try_get(6)?,
        user_id: row.try_get(7)?,
        key_ids: split_key_ids(&key_ids),
        detail: row.try_get(9)?,
    })
}

impl PostgresStore {
    pub(super) fn query_audit(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        let limit = query.limit.clamp(1, MAX_AUDIT_LIMIT) as i64;
        let since = query.since.map(signed).transpose()?;
        let before = query.before.map(signed).transpose()?;
        self.read(|c| {
            c.query(
                "SELECT seq, at, actor_kind, actor_id, client, action, account_id, user_id, \
                 key_ids, detail FROM audit_events \
                 WHERE ($1::text IS NULL OR account_id = $1) AND ($2::bigint IS NULL OR at >= $2) \
                 AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq DESC LIMIT $4",
                &[&query.account_id, &since, &before, &limit],
            )?
            .iter()
            .map(event_from_row)
            .collect()
        })
    }
}
