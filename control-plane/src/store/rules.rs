//! What a change to a key may do, whatever the database: both backends ask these rules and
//! then write what they decided, so the two cannot drift apart.

use super::audit::AuditAction;
use super::{Account, KeyRecord, NewKey, StoreError, StoreResult};
use keygate_core::config::RawLimit;
use keygate_core::digest::Digest;
use keygate_core::rate_limit::{LimitError, Period, RateLimit, MAX_REQUESTS};

/// What a change does to a key's entry in the key map (recorded in the change log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeOp {
    Upsert,
    Remove,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Remove => "remove",
        }
    }
}

/// A store's unexpected value, named.
pub fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unexpected {what} {value:?}"))
}

/// Refuses changes to a key that has left the key map for good.
pub fn ensure_changeable(key: &KeyRecord, action: &'static str, now: u64) -> StoreResult<()> {
    let reason = if let Some(at) = key.revoked_at {
        format!("it was revoked at {at}")
    } else if !key.in_key_map(now) {
        "it has expired".to_string()
    } else {
        return Ok(());
    };
    Err(StoreError::KeyState {
        key_id: key.key_id.clone(),
        action,
        reason,
    })
}

/// Refuses a new account whose keys name another account.
pub fn ensure_keys_of(account: &Account, keys: &[NewKey]) -> StoreResult<()> {
    match keys.iter().find(|key| key.account_id != account.id) {
        Some(key) => Err(StoreError::KeyMismatch(key.key_id.clone())),
        None => Ok(()),
    }
}

/// How a roll changes the old key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollPlan {
    /// The old key's new expiry.
    pub expires_at: u64,
    /// Out of the key map now (`Remove`), or still in it until `expires_at` (`Upsert`).
    pub old_op: ChangeOp,
}

/// Checks that `old` may be rolled into `replacement` and says what happens to it: a key is
/// rolled once (roll its replacement next), into a key of the same account and kind; with a
/// grace period it keeps working until then (or until an earlier expiry it already had).
pub fn plan_roll(
    old: &KeyRecord,
    replacement: &NewKey,
    grace_seconds: u64,
    now: u64,
) -> StoreResult<RollPlan> {
    ensure_changeable(old, "rolled", now)?;
    if let Some(successor) = &old.replaced_by {
        return Err(StoreError::KeyState {
            key_id: old.key_id.clone(),
            action: "rolled",
            reason: format!("it was already rolled; roll its replacement {successor}"),
        });
    }
    if replacement.account_id != old.account_id || replacement.kind != old.kind {
        return Err(StoreError::KeyMismatch(old.key_id.clone()));
    }
    if grace_seconds == 0 {
        return Ok(RollPlan {
            expires_at: now,
            old_op: ChangeOp::Remove,
        });
    }
    let expires_at = now.saturating_add(grace_seconds);
    Ok(RollPlan {
        expires_at: old.expires_at.map_or(expires_at, |e| e.min(expires_at)),
        old_op: ChangeOp::Upsert,
    })
}

/// Whether disabling (or enabling) `key` changes anything; errors for keys out of the map.
pub fn disable_changes(key: &KeyRecord, disabled: bool, now: u64) -> StoreResult<bool> {
    ensure_changeable(key, if disabled { "disabled" } else { "enabled" }, now)?;
    Ok(key.disabled_at.is_some() != disabled)
}

/// Whether setting `limit` on `key` changes anything; refuses keys out of the map for good
/// and limits no filter would take.
pub fn limit_changes(key: &KeyRecord, limit: Option<&RawLimit>, now: u64) -> StoreResult<bool> {
    if let Some(limit) = limit {
        check_rate_limit(limit).map_err(|e| StoreError::InvalidRateLimit(e.to_string()))?;
    }
    ensure_changeable(key, "rate-limited", now)?;
    Ok(key.rate_limit.as_ref() != limit)
}

/// Whether setting `limit` as `account`'s default changes anything; refuses limits no
/// filter would take.
pub fn account_limit_changes(account: &Account, limit: Option<&RawLimit>) -> StoreResult<bool> {
    if let Some(limit) = limit {
        check_rate_limit(limit).map_err(|e| StoreError::InvalidRateLimit(e.to_string()))?;
    }
    Ok(account.rate_limit.as_ref() != limit)
}

/// The accounts' default rate limits, by account id, for building key-map entries.
pub type AccountDefaults = std::collections::HashMap<String, RawLimit>;

/// Whether naming `key` `name` changes anything (names are kept even on revoked keys: they
/// help read the history).
pub fn name_changes(key: &KeyRecord, name: Option<&str>) -> bool {
    key.name.as_deref() != name
}

/// The audit action of setting a token's digest: set up the first time, rotated after, and
/// nothing when it is the same token again.
pub fn token_action(previous: Option<&Digest>, new: &Digest, admin: bool) -> Option<AuditAction> {
    match (previous, admin) {
        (Some(previous), _) if previous == new => None,
        (None, true) => Some(AuditAction::AdminTokenSet),
        (Some(_), true) => Some(AuditAction::AdminTokenRotated),
        (None, false) => Some(AuditAction::SyncTokenSet),
        (Some(_), false) => Some(AuditAction::SyncTokenRotated),
    }
}

/// A delta of more changed keys than this may be answered with the full map instead.
pub const LARGE_DELTA: u64 = 10_000;

/// True when the full map should answer a `since` instead of a delta of `changed` keys: a
/// delta entry is about 190 bytes of JSON and a full map's about 75 bytes of binary, so past
/// a third of the map the full map is smaller, and it is built once for every poller (an
/// import of many keys) rather than a delta for each. `keys_in_map` is asked only then.
pub fn full_map_answers(
    changed: u64,
    keys_in_map: impl FnOnce() -> StoreResult<u64>,
) -> StoreResult<bool> {
    if changed <= LARGE_DELTA {
        return Ok(false);
    }
    Ok(changed.saturating_mul(3) >= keys_in_map()?)
}

/// Why a rate limit was refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRefused {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for LimitRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks a key's rate limit as the filters will (`RateLimit::new`), so that keygatectl never
/// ships a limit a filter would refuse (a filter refuses a whole map with one bad entry).
pub fn check_rate_limit(limit: &RawLimit) -> Result<(), LimitRefused> {
    match RateLimit::new(limit.requests, limit.per, limit.burst) {
        Ok(_) => Ok(()),
        Err(e) => Err(LimitRefused {
            field: match e {
                LimitError::Requests => "rate_limit.requests",
                LimitError::Burst => "rate_limit.burst",
            },
            message: format!("must be 1 to {MAX_REQUESTS}"),
        }),
    }
}

/// A limit as the store keeps it: requests, period, burst (all `None`: no limit).
pub fn limit_columns(limit: Option<&RawLimit>) -> (Option<u64>, Option<&'static str>, Option<u64>) {
    match limit {
        Some(l) => (Some(l.requests), Some(l.per.as_str()), l.burst),
        None => (None, None, None),
    }
}

/// A stored limit read back; a half-written or out-of-range one is corruption, not a limit.
pub fn stored_limit(
    requests: Option<u64>,
    per: Option<String>,
    burst: Option<u64>,
) -> StoreResult<Option<RawLimit>> {
    let (requests, per) = match (requests, per) {
        (None, None) if burst.is_none() => return Ok(None),
        (Some(requests), Some(per)) => (requests, per),
        (requests, per) => {
            return Err(corrupt(
                "rate limit",
                &format!("{requests:?} per {per:?} burst {burst:?}"),
            ))
        }
    };
    let per = match per.as_str() {
        "second" => Period::Second,
        "minute" => Period::Minute,
        other => return Err(corrupt("rate limit period", other)),
    };
    let limit = RawLimit {
        requests,
        per,
        burst,
    };
    check_rate_limit(&limit).map_err(|e| corrupt("rate limit", &e.to_string()))?;
    Ok(Some(limit))
}
