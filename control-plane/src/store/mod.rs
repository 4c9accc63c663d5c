//! The store: accounts, key records (digests and hints only, never a plaintext key), the key
//! map's version and its change log, the admin token's digest, and the customers who sign in
//! to their accounts (`customers.rs`).
//!
//! `Store` is the seam for backends: SQLite (`sqlite.rs`, the default: one file) and
//! PostgreSQL (`postgres.rs`: several replicas over one database). Every method is one
//! transaction that either happens whole or not at all, takes the current time from the
//! caller (so tests control the clock) and answers a typed `StoreError`.

pub mod audit;
pub mod customers;
pub mod import;
pub mod lineage;
pub mod postgres;
mod postgres_audit;
mod postgres_customers;
mod postgres_import;
pub mod postgres_tls;
mod postgres_usage;
pub mod rules;
pub mod sqlite;
mod sqlite_audit;
mod sqlite_customers;
mod sqlite_import;
mod sqlite_usage;
#[cfg(test)]
mod tests;
pub mod usage;

use keygate_core::config::{RawKey, RawLimit};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use keygate_sync_core::message::KeyMapMessage;
use std::path::Path;
use std::sync::Arc;

pub use audit::{Actor, AuditEvent, AuditQuery};
pub use customers::CustomerStore;
pub use import::{ImportItem, ImportReport};
pub use lineage::{StoreId, VersionClock};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use usage::UsageStore;

/// Opens the store `--database` names: a `postgres://` or `postgresql://` URL selects
/// PostgreSQL, anything else is a SQLite file (created on first use).
pub fn open(database: &Path) -> StoreResult<Arc<dyn Store>> {
    match database.to_str() {
        Some(url) if postgres::is_postgres_url(url) => Ok(Arc::new(PostgresStore::connect(url)?)),
        _ => Ok(Arc::new(SqliteStore::open(database)?)),
    }
}

/// How many key-map versions of changes are kept for deltas; older `since` values get a full
/// map instead.
pub const DEFAULT_CHANGE_LOG_LIMIT: u64 = 10_000;

/// How a store is opened: how long its change log is, and the clock versions follow.
#[derive(Clone)]
pub struct StoreOptions {
    pub change_log_limit: u64,
    pub clock: VersionClock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            change_log_limit: DEFAULT_CHANGE_LOG_LIMIT,
            clock: lineage::system_clock(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub name: Option<String>,
    pub created_at: u64,
    /// Set while the operator has disabled the account: its users cannot sign in.
    pub disabled_at: Option<u64>,
    /// The account's default rate limit: the key map gives it to each of the account's keys
    /// that has no limit of its own.
    pub rate_limit: Option<RawLimit>,
}

/// Where a key came from: issued here (shown once), or imported by digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Issued,
    Imported,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Issued => "issued",
            KeyOrigin::Imported => "imported",
        }
    }

    pub fn parse(s: &str) -> Option<KeyOrigin> {
        match s {
            "issued" => Some(KeyOrigin::Issued),
            "imported" => Some(KeyOrigin::Imported),
            _ => None,
        }
    }
}

/// A key to store: everything but the plaintext, which only its creator ever sees.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: String,
    pub account_id: String,
    pub kind: KeyKind,
    pub digest: Digest,
    pub hint: String,
    pub origin: KeyOrigin,
    /// A name for people ("iOS app 2.3"); never in the key map.
    pub name: Option<String>,
    /// When the key stops working, if it was created to expire.
    pub expires_at: Option<u64>,
}

/// A stored key and its history. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub account_id: String,
    pub kind: KeyKind,
    pub digest: Digest,
    pub hint: String,
    pub origin: KeyOrigin,
    /// A name for people; never in the key map.
    pub name: Option<String>,
    pub created_at: u64,
    pub disabled_at: Option<u64>,
    /// When the key stops working (set at creation, or by a roll).
    pub expires_at: Option<u64>,
    pub rolled_at: Option<u64>,
    /// The key that replaced this one in a roll.
    pub replaced_by: Option<String>,
    pub revoked_at: Option<u64>,
    /// When the key left the key map (revoked, rolled without grace, or purged at expiry).
    pub removed_at: Option<u64>,
    /// The key's rate limit, shipped in the key map; checked (`rules::check_rate_limit`)
    /// before it is stored.
    pub rate_limit: Option<RawLimit>,
}

/// A key's state as people read it. Revoked wins over expired, expired over disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    /// Still working, with an expiry set (a rolled key in its grace period).
    Expiring,
    Disabled,
    Expired,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Expiring => "expiring",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    pub fn status(&self, now: u64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.is_expired(now) || self.removed_at.is_some() {
            KeyStatus::Expired
        } else if self.disabled_at.is_some() {
            KeyStatus::Disabled
        } else if self.expires_at.is_some() {
            KeyStatus::Expiring
        } else {
            KeyStatus::Active
        }
    }

    /// True while the key belongs in the filters' key map (disabled keys do: the filter
    /// answers `disabled_api_key` for them).
    pub fn in_key_map(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.removed_at.is_none() && !self.is_expired(now)
    }

    /// The key map entry the filters read, given its account's default rate limit (the
    /// key's own limit wins).
    pub fn to_raw_key(&self, account_default: Option<&RawLimit>) -> RawKey {
        RawKey {
            digest: self.digest.to_hex(),
            account_id: self.account_id.clone(),
            key_id: self.key_id.clone(),
            key_type: self.kind.key_type,
            environment: self.kind.environment,
            expires_at: self.expires_at,
            disabled: self.disabled_at.is_some(),
            rate_limit: self.rate_limit.or(account_default.copied()),
        }
    }
}

/// The result of a change: its value and the key-map version it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    /// The key-map version after the change (unchanged if the call changed nothing).
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountWithKeys {
    pub account: Account,
    pub keys: Vec<KeyRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rolled {
    pub old: KeyRecord,
    pub new: KeyRecord,
}

/// What the key-map server keeps in memory so that an unchanged map costs no query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMapStatus {
    /// The store the version belongs to.
    pub store: StoreId,
    pub version: u64,
    /// The earliest expiry among keys still in the map: at that time the map must change.
    pub next_expiry: Option<u64>,
}

/// A key-map message and the store it comes from, read from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyMap {
    pub store: StoreId,
    pub message: KeyMapMessage,
}

/// What the store says to a poll's `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaLookup {
    /// `since` is a version this store issued and its change log still reaches back to.
    Delta(StoredKeyMap),
    /// `since` is not one of this store's versions (another lineage, or older than the
    /// change log), or so many keys changed since (an import) that the full map is the
    /// smaller answer (`rules::full_map_answers`): only the full map answers it.
    NotIssued,
    /// `since` is newer than this store's current version: the database was restored from
    /// an older copy, or the poller is not one of ours.
    Ahead { store: StoreId, version: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no account {0}")]
    AccountNotFound(String),
    #[error("no key {0}")]
    KeyNotFound(String),
    #[error("no user {0}")]
    UserNotFound(String),
    #[error("a key with this digest is already stored (key {0})")]
    DuplicateDigest(String),
    #[error("the id {0} is already taken")]
    DuplicateId(String),
    /// The key's state does not allow the operation (e.g. rolling a revoked key).
    #[error("key {key_id} cannot be {action}: {reason}")]
    KeyState {
        key_id: String,
        action: &'static str,
        reason: String,
    },
    /// A new key that does not belong where it is stored (another account, or a roll's
    /// replacement of another kind): a caller's bug.
    #[error("key {0} does not match the account or kind it is stored under")]
    KeyMismatch(String),
    #[error(
        "the database has schema version {found}, newer than this keygatectl knows ({supported}); \
         use a newer keygatectl"
    )]
    SchemaTooNew { found: u32, supported: u32 },
    /// A rate limit no filter would take (the field named).
    #[error("{0}")]
    InvalidRateLimit(String),
    #[error("the database holds data this keygatectl cannot read: {0}")]
    Corrupt(String),
    /// The version counter cannot rise any more (a rogue value near the integer limit).
    #[error(
        "the key map's version {current} has reached the largest a database integer holds; \
         start a new lineage with `keygatectl keymap new-lineage`"
    )]
    VersionExhausted { current: u64 },
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The operations keygatectl needs from a backend. Each call is one transaction; each change
/// made for someone (`actor`) writes its audit event in that same transaction.
pub trait Store: CustomerStore + UsageStore + Send + Sync {
    /// Creates an account with its keys; the account id and key ids are the caller's. The
    /// keys are answered in the order given.
    fn create_account(
        &self,
        account: &Account,
        keys: &[NewKey],
        actor: &Actor,
    ) -> StoreResult<Versioned<AccountWithKeys>>;
    fn accounts(&self) -> StoreResult<Vec<Account>>;
    fn account(&self, account_id: &str) -> StoreResult<Account>;

    fn add_key(&self, key: &NewKey, now: u64, actor: &Actor) -> StoreResult<Versioned<KeyRecord>>;
    /// All keys, or one account's (an unknown account is an error, not an empty list).
    fn keys(&self, account_id: Option<&str>) -> StoreResult<Vec<KeyRecord>>;
    fn key(&self, key_id: &str) -> StoreResult<KeyRecord>;
    /// Replaces a key with `replacement`; the old key stops working `grace_seconds` after
    /// `now` (at once for 0).
    fn roll_key(
        &self,
        key_id: &str,
        replacement: &NewKey,
        grace_seconds: u64,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<Rolled>>;
    fn revoke_key(
        &self,
        key_id: &str,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>>;
    fn set_key_disabled(
        &self,
        key_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>>;
    /// Sets a key's rate limit (`None`: no limit), checked by `rules::check_rate_limit`; a
    /// new key-map version carries it to the filters. Setting the same limit changes nothing.
    fn set_rate_limit(
        &self,
        key_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>>;
    /// Sets an account's default rate limit (`None`: no default), checked like a key's; a new
    /// key-map version ships it in the entries of the account's keys without a limit of
    /// their own. Setting the same default changes nothing.
    fn set_account_rate_limit(
        &self,
        account_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<Account>>;
    /// Names a key (`None`: no name). The key map does not change: names are not in it.
    fn rename_key(
        &self,
        key_id: &str,
        name: Option<&str>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<KeyRecord>;
    /// Imports keys by digest: checked whole against the store, then written in one
    /// transaction and one version, unless there is a problem or `apply` is false (a dry
    /// run). Keys already stored for the same account and kind are left unchanged.
    fn import_keys(
        &self,
        items: &[ImportItem],
        now: u64,
        actor: &Actor,
        apply: bool,
    ) -> StoreResult<ImportReport>;
    /// The audit trail, newest first.
    fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>>;

    /// Takes keys whose expiry has passed out of the map (one new version if any).
    fn purge_expired(&self, now: u64) -> StoreResult<Versioned<Vec<KeyRecord>>>;
    /// The key map after purging expired keys (a write only when one is due): a delta since
    /// `since` when that is a version this store issued and its change log still holds,
    /// else the full map.
    fn read_key_map(&self, since: Option<u64>, now: u64) -> StoreResult<StoredKeyMap>;
    /// The delta since `since`, if this store can answer one; never builds the full map.
    fn key_map_delta(&self, since: u64, now: u64) -> StoreResult<DeltaLookup>;
    fn key_map_status(&self) -> StoreResult<KeyMapStatus>;
    /// Records an empty change when `store` is this store and its version is below `seen`
    /// (a version a poller holds, or the server had read before): the database went back
    /// to an older copy. The new version is the usual next one, never `seen` or anything a
    /// poller chose. Answers the new version, or `None` when nothing was behind.
    fn record_restore(&self, store: &StoreId, seen: u64) -> StoreResult<Option<u64>>;
    /// Starts a new lineage: a new store id, the version set to now, the change log
    /// emptied. For a version that cannot rise any more; filters take the next full map as
    /// a new lineage.
    fn new_lineage(&self) -> StoreResult<KeyMapStatus>;

    /// How many keys the key map holds at `now` (disabled ones included), for the metrics.
    /// Backends answer with a count; this default reads the whole map.
    fn key_map_size(&self, now: u64) -> StoreResult<u64> {
        match self.read_key_map(None, now)?.message {
            KeyMapMessage::Full { keys, .. } => Ok(keys.len() as u64),
            KeyMapMessage::Delta { .. } => Err(StoreError::Backend(
                "the store answered a delta for the full map".into(),
            )),
        }
    }

    /// The message alone, as `read_key_map` answers it.
    fn key_map(&self, since: Option<u64>, now: u64) -> StoreResult<KeyMapMessage> {
        self.read_key_map(since, now).map(|stored| stored.message)
    }

    fn admin_token_digest(&self) -> StoreResult<Option<Digest>>;
    /// Sets the admin token's digest (audited as set up the first time, else rotated).
    fn set_admin_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()>;
    /// The sync token's digest: in the database, so replicas share it and a rotation
    /// reaches every running server.
    fn sync_token_digest(&self) -> StoreResult<Option<Digest>>;
    fn set_sync_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()>;

    /// For backends that announce changes (PostgreSQL's LISTEN/NOTIFY): calls `on_change`
    /// from a background thread soon after any process (another replica, the CLI) commits a
    /// change to the key map or the admin token, and answers true. Other backends answer
    /// false; the server re-reads the version every second either way.
    fn watch_changes(&self, on_change: Box<dyn Fn() + Send>) -> StoreResult<bool> {
        drop(on_change);
        Ok(false)
    }
}
