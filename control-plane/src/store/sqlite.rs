//! The SQLite backend: one file, WAL mode, a busy timeout so that several processes (a
//! running `serve` and a CLI command) can share it, and schema migrations numbered by
//! `PRAGMA user_version`.
//!
//! Invariant: a key is in the key map exactly while `removed_at IS NULL` and its expiry (if
//! any) has not passed; purging sets `removed_at` when that expiry passes.
//!
//! Versions: every change gets `max(previous + 1, now in ms)` (`lineage::next_version`) and
//! is recorded in `keymap_versions`, so a delta is answered only from a version this database
//! issued. A file replaced under a running server (a restore by rename) is noticed at the
//! next status read and reopened.

use super::audit::{Actor, AuditAction, AuditEvent, AuditQuery, NewAuditEvent};
use super::import::{ImportItem, ImportReport};
use super::lineage::{lineage_start, next_version, StoreId, VersionClock};
use super::rules::{
    account_limit_changes, corrupt, disable_changes, ensure_keys_of, full_map_answers,
    limit_changes, limit_columns, name_changes, plan_roll, stored_limit, token_action,
    AccountDefaults, ChangeOp,
};
use super::sqlite_audit::record;
use super::{
    Account, AccountWithKeys, DeltaLookup, KeyMapStatus, KeyOrigin, KeyRecord, NewKey, Rolled,
    Store, StoreError, StoreOptions, StoreResult, StoredKeyMap, Versioned,
};
use crate::log::log_event;
use keygate_core::config::RawLimit;
use keygate_core::digest::Digest;
use keygate_core::key::{Environment, KeyKind, KeyType};
use keygate_sync_core::message::KeyMapMessage;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Schema migrations, in order; migration `i` takes the schema from version `i` to `i + 1`
/// (files under `migrations/sqlite/`, one per version).
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0002_lineage.sql"),
    include_str!("migrations/sqlite/0003_customers.sql"),
    include_str!("migrations/sqlite/0004_names_audit_usage.sql"),
    include_str!("migrations/sqlite/0005_rate_limits.sql"),
    include_str!("migrations/sqlite/0006_account_rate_limits.sql"),
];

pub(super) const KEY_COLUMNS: &str =
    "id, account_id, digest, hint, type, environment, origin, created_at, \
     disabled_at, expires_at, rolled_at, replaced_by, revoked_at, removed_at, name, \
     rate_requests, rate_per, rate_burst";

pub(super) const ACCOUNT_COLUMNS: &str =
    "id, name, created_at, disabled_at, rate_requests, rate_per, rate_burst";

const ADMIN_TOKEN_SETTING: &str = "admin_token_digest";
const SYNC_TOKEN_SETTING: &str = "sync_token_digest";
const STORE_ID_SETTING: &str = "store_id";

/// How long a call waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

pub struct SqliteStore {
    path: PathBuf,
    /// `None` after a failed reopen: the next call tries again.
    db: Mutex<Option<OpenDb>>,
    /// A second connection for full-map reads (opened on first use): a million-key read
    /// takes seconds, and WAL lets it run beside the main connection, so deltas, status
    /// reads and changes are not held up meanwhile. Lock `db` first when taking both.
    reader: Mutex<Option<Connection>>,
    change_log_limit: u64,
    clock: VersionClock,
}

/// The connection, and which file it opened (to notice the path now names another).
struct OpenDb {
    conn: Connection,
    file: Option<FileId>,
}

/// A file's device and inode.
type FileId = (u64, u64);

fn file_id(path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Opens the database file (creating it on first use) and brings its schema up to date.
fn open_connection(path: &Path) -> StoreResult<OpenDb> {
    create_private_file(path)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode = switch_to_wal(&conn)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(
            format!("could not switch the database to WAL mode (got {mode})").into(),
        ));
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    // FULL: a key shown to its owner must survive a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Up to 64 MiB of page cache (taken only as pages are read): a bulk import of 100,000
    // keys touches every index page many times, and the 2 MiB default spills them to the
    // log and reads them back hundreds of thousands of times.
    conn.pragma_update(None, "cache_size", -65_536)?;
    migrate(&mut conn)?;
    Ok(OpenDb {
        conn,
        file: file_id(path),
    })
}

impl SqliteStore {
    /// Opens (creating on first use) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, StoreOptions::default())
    }

    pub fn open_with(path: &Path, options: StoreOptions) -> StoreResult<SqliteStore> {
        let db = open_connection(path)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            db: Mutex::new(Some(db)),
            reader: Mutex::new(None),
            change_log_limit: options.change_log_limit.max(1),
            clock: options.clock,
        })
    }

    /// Runs `f` on the connection, opening it again first if it was closed.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> StoreResult<T>) -> StoreResult<T> {
        let mut db = self
            .db
            .lock()
            .map_err(|_| StoreError::Backend("the database connection lock is poisoned".into()))?;
        let open = match db.take() {
            Some(open) => open,
            None => open_connection(&self.path)?,
        };
        let open = db.insert(open);
        f(&mut open.conn)
    }

    /// Runs `f` in a read transaction on the reader connection.
    fn read_beside<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut reader = self
            .reader
            .lock()
            .map_err(|_| StoreError::Backend("the reader connection lock is poisoned".into()))?;
        let conn = match reader.take() {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn
            }
        };
        let conn = reader.insert(conn);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Reopens the database when its path names another file than the one open: a restore
    /// that replaced the file (by rename) under a running server. SQLite leaves the old
    /// file's write-ahead log and shared-memory index under the path's names when the file
    /// has moved; read as the new file's they would mix old pages into it, so they are
    /// removed after the old connection is closed and before the new file is opened.
    /// (`sqlite3 DB ".restore BACKUP"` restores in place and needs none of this.)
    fn follow_replaced_file(&self) -> StoreResult<()> {
        let mut db = self
            .db
            .lock()
            .map_err(|_| StoreError::Backend("the database connection lock is poisoned".into()))?;
        let now = file_id(&self.path);
        let replaced = matches!((&*db, now), (Some(open), Some(id)) if open.file != Some(id));
        if !replaced {
            return Ok(());
        }
        log_event(&format!(
            "the database file {} was replaced; reopening it",
            self.path.display()
        ));
        let mut reader = self
            .reader
            .lock()
            .map_err(|_| StoreError::Backend("the reader connection lock is poisoned".into()))?;
        let old_reader = reader.take().map(|conn| conn.close().map_err(|(_, e)| e));
        let old_main = db.take().map(|old| old.conn.close().map_err(|(_, e)| e));
        for closed in [old_reader, old_main].into_iter().flatten() {
            if let Err(e) = closed {
                log_event(&format!("closing the replaced database file: {e}"));
            }
        }
        for suffix in ["-wal", "-shm"] {
            let mut name = self.path.as_os_str().to_owned();
            name.push(suffix);
            match std::fs::remove_file(PathBuf::from(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Backend(Box::new(e)));
                }
                _ => {}
            }
        }
        *db = Some(open_connection(&self.path)?);
        Ok(())
    }

    /// Runs `f` in a write transaction: IMMEDIATE takes the write lock up front, so two
    /// processes never deadlock upgrading a read lock.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        timed("write", || {
            self.with_conn(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            })
        })
    }

    /// Runs `f` in a read transaction, so that its queries see one snapshot.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        timed("read", || {
            self.with_conn(|conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
                let value = f(&tx)?;
                tx.commit()?;
                Ok(value)
            })
        })
    }

    /// Runs `f` on one snapshot; when a key's grace period has ended, purges it first (a
    /// version of its own) and runs `f` under the write lock instead. Reads write nothing
    /// otherwise.
    fn read_after_purge<T>(
        &self,
        now: u64,
        f: impl Fn(&Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let answer = self.read(|tx| {
            if purge_due(tx, now)? {
                return Ok(None);
            }
            f(tx).map(Some)
        })?;
        match answer {
            Some(value) => Ok(value),
            None => self.write(|tx| {
                purge_in(self, tx, now)?;
                f(tx)
            }),
        }
    }

    /// Issues the next version, records it and which digests changed in it, and trims the
    /// change log to the last `change_log_limit` versions.
    pub(super) fn issue_version(
        &self,
        tx: &Transaction,
        changes: &[(&Digest, ChangeOp)],
    ) -> StoreResult<u64> {
        let version = next_version(current_version(tx)?, (self.clock)())?;
        tx.execute(
            "UPDATE keymap_state SET version = ?1 WHERE id = 1",
            [version],
        )?;
        tx.execute(
            "INSERT INTO keymap_versions (version) VALUES (?1)",
            [version],
        )?;
        // Cached: an import records a change for each of its keys.
        let mut record_change = tx.prepare_cached(
            "INSERT INTO keymap_changes (version, digest, op) VALUES (?1, ?2, ?3) \
             ON CONFLICT (version, digest) DO UPDATE SET op = excluded.op",
        )?;
        for (digest, op) in changes {
            record_change.execute(params![version, digest.to_hex(), op.as_str()])?;
        }
        drop(record_change);
        // The oldest version a delta is still answered from: the change log keeps
        // everything after it.
        let oldest: Option<u64> = tx
            .query_row(
                "SELECT version FROM keymap_versions ORDER BY version DESC LIMIT 1 OFFSET ?1",
                [self.change_log_limit],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(oldest) = oldest {
            tx.execute("DELETE FROM keymap_versions WHERE version < ?1", [oldest])?;
            tx.execute("DELETE FROM keymap_changes WHERE version <= ?1", [oldest])?;
            tx.execute(
                "UPDATE keymap_state SET log_start = ?1 WHERE id = 1",
                [oldest],
            )?;
        }
        Ok(version)
    }
}

/// Creates the database file readable by its owner only, before SQLite creates it with the
/// process umask.
/// Runs a transaction, timed for the metrics.
fn timed<T>(kind: &str, run: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    let started = std::time::Instant::now();
    let result = run();
    crate::metrics::store_transaction("sqlite", kind, started.elapsed(), result.is_ok());
    result
}

fn create_private_file(path: &Path) -> StoreResult<()> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another process created it first: fine.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(Box::new(std::io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        )))),
    }
}

/// Switches a connection to WAL. Several processes opening a new file at once can find it
/// locked here without SQLite's busy handler being asked, so retry for a while.
fn switch_to_wal(conn: &Connection) -> StoreResult<String> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        // journal_mode answers with a row, so it is queried rather than set.
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return Ok(result?),
        }
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let supported = MIGRATIONS.len() as u32;
    // IMMEDIATE and a re-read inside: two processes opening a new file migrate it once.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn current_version(tx: &Transaction) -> StoreResult<u64> {
    let version: i64 = tx.query_row("SELECT version FROM keymap_state WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    u64::try_from(version).map_err(|_| corrupt("key map version", &version.to_string()))
}

fn setting(tx: &Transaction, name: &str) -> StoreResult<Option<String>> {
    Ok(tx
        .query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?)
}

fn set_setting(tx: &Transaction, name: &str, value: &str) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

fn digest_setting(tx: &Transaction, name: &str) -> StoreResult<Option<Digest>> {
    setting(tx, name)?
        .map(|h| Digest::from_hex(&h).map_err(|_| corrupt(name, &h)))
        .transpose()
}

fn store_id(tx: &Transaction) -> StoreResult<StoreId> {
    let text = setting(tx, STORE_ID_SETTING)?.unwrap_or_default();
    StoreId::parse(&text).ok_or_else(|| corrupt("store id", &text))
}

fn status_in(tx: &Transaction) -> StoreResult<KeyMapStatus> {
    let next_expiry: Option<u64> = tx.query_row(
        "SELECT MIN(expires_at) FROM keys WHERE removed_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(KeyMapStatus {
        store: store_id(tx)?,
        version: current_version(tx)?,
        next_expiry,
    })
}

/// True while a key whose expiry has passed is still in the map (a purge is due).
fn purge_due(tx: &Transaction, now: u64) -> StoreResult<bool> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE removed_at IS NULL AND expires_at <= ?1)",
        [now],
        |r| r.get(0),
    )?)
}

/// The delta since `since`, if `since` is a version this database issued and still has the
/// changes after.
fn delta_in(tx: &Transaction, since: u64, now: u64) -> StoreResult<DeltaLookup> {
    let store = store_id(tx)?;
    let version = current_version(tx)?;
    if since > version {
        return Ok(DeltaLookup::Ahead { store, version });
    }
    let issued: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM keymap_versions WHERE version = ?1)",
        [since],
        |r| r.get(0),
    )?;
    if !issued {
        return Ok(DeltaLookup::NotIssued);
    }
    let changed: u64 = tx.query_row(
        "SELECT COUNT(DISTINCT digest) FROM keymap_changes WHERE version > ?1",
        [since],
        |r| r.get(0),
    )?;
    let keys_in_map = || -> StoreResult<u64> {
        Ok(tx.query_row(
            "SELECT COUNT(*) FROM keys WHERE removed_at IS NULL",
            [],
            |r| r.get(0),
        )?)
    };
    if full_map_answers(changed, keys_in_map)? {
        return Ok(DeltaLookup::NotIssued);
    }
    // Each changed digest is answered with its state now, whatever happened to it in
    // between: one query, the key (if any) beside each digest.
    let columns: Vec<String> = KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect();
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {}, c.digest FROM (SELECT DISTINCT digest FROM keymap_changes \
         WHERE version > ?1) c LEFT JOIN keys k ON k.digest = c.digest ORDER BY c.digest",
        columns.join(", ")
    ))?;
    let digest_column = columns.len();
    let defaults = account_defaults(tx, Some(since))?;
    let mut rows = stmt.query([since])?;
    let mut upserts = Vec::new();
    let mut removes = Vec::new();
    while let Some(row) = rows.next()? {
        let key = match row.get::<_, Option<String>>(0)? {
            Some(_) => Some(key_from_row(row)?),
            None => None,
        };
        match key {
            Some(key) if key.in_key_map(now) => {
                upserts.push(key.to_raw_key(defaults.get(&key.account_id)))
            }
            _ => removes.push(row.get(digest_column)?),
        }
    }
    Ok(DeltaLookup::Delta(StoredKeyMap {
        store,
        message: KeyMapMessage::Delta {
            version,
            since,
            upserts,
            removes,
        },
    }))
}

/// The whole key map as the transaction sees it.
fn full_in(tx: &Transaction, now: u64) -> StoreResult<StoredKeyMap> {
    let store = store_id(tx)?;
    let version = current_version(tx)?;
    let defaults = account_defaults(tx, None)?;
    let keys = query_keys(tx, "WHERE removed_at IS NULL ORDER BY digest", [])?
        .into_iter()
        .filter(|k| k.in_key_map(now))
        .map(|k| k.to_raw_key(defaults.get(&k.account_id)))
        .collect();
    Ok(StoredKeyMap {
        store,
        message: KeyMapMessage::Full { version, keys },
    })
}

pub(super) fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
    let digest: String = row.get(2)?;
    let key_type: String = row.get(4)?;
    let environment: String = row.get(5)?;
    let origin: String = row.get(6)?;
    let key_type = match key_type.as_str() {
        "secret" => KeyType::Secret,
        "publishable" => KeyType::Publishable,
        other => return Err(corrupt("key type", other)),
    };
    let environment = match environment.as_str() {
        "test" => Environment::Test,
        "production" => Environment::Production,
        other => return Err(corrupt("environment", other)),
    };
    Ok(KeyRecord {
        key_id: row.get(0)?,
        account_id: row.get(1)?,
        digest: Digest::from_hex(&digest).map_err(|_| corrupt("digest", &digest))?,
        hint: row.get(3)?,
        kind: KeyKind::new(key_type, environment),
        origin: KeyOrigin::parse(&origin).ok_or_else(|| corrupt("key origin", &origin))?,
        created_at: row.get(7)?,
        disabled_at: row.get(8)?,
        expires_at: row.get(9)?,
        rolled_at: row.get(10)?,
        replaced_by: row.get(11)?,
        revoked_at: row.get(12)?,
        removed_at: row.get(13)?,
        name: row.get(14)?,
        rate_limit: stored_limit(row.get(15)?, row.get(16)?, row.get(17)?)?,
    })
}

/// Runs a key query and reads every row.
fn query_keys(
    tx: &Transaction,
    sql_after_from: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys {sql_after_from}");
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = stmt.query(args)?;
    let mut keys = Vec::new();
    while let Some(row) = rows.next()? {
        keys.push(key_from_row(row)?);
    }
    Ok(keys)
}

pub(super) fn load_key(tx: &Transaction, key_id: &str) -> StoreResult<KeyRecord> {
    query_keys(tx, "WHERE id = ?1", [key_id])?
        .pop()
        .ok_or_else(|| StoreError::KeyNotFound(key_id.to_string()))
}

pub(super) fn load_account(tx: &Transaction, account_id: &str) -> StoreResult<Account> {
    query_accounts(tx, "WHERE id = ?1", [account_id])?
        .pop()
        .ok_or_else(|| StoreError::AccountNotFound(account_id.to_string()))
}

/// Runs an account query and reads every row.
fn query_accounts(
    tx: &Transaction,
    sql_after_from: &str,
    args: impl rusqlite::Params,
) -> StoreResult<Vec<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts {sql_after_from}");
    let mut stmt = tx.prepare(&sql)?;
    let mut rows = stmt.query(args)?;
    let mut accounts = Vec::new();
    while let Some(r) = rows.next()? {
        accounts.push(Account {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at: r.get(2)?,
            disabled_at: r.get(3)?,
            rate_limit: stored_limit(r.get(4)?, r.get(5)?, r.get(6)?)?,
        });
    }
    Ok(accounts)
}

/// The default rate limits of the accounts that have one: of every account (`since`: none),
/// or of the accounts of the keys changed after `since` (what a delta needs).
fn account_defaults(tx: &Transaction, since: Option<u64>) -> StoreResult<AccountDefaults> {
    let has_default = "(rate_requests IS NOT NULL OR rate_per IS NOT NULL \
                       OR rate_burst IS NOT NULL)";
    let accounts = match since {
        None => query_accounts(tx, &format!("WHERE {has_default}"), [])?,
        Some(since) => query_accounts(
            tx,
            &format!(
                "WHERE {has_default} AND id IN (SELECT k.account_id FROM keys k \
                 WHERE k.digest IN (SELECT digest FROM keymap_changes WHERE version > ?1))"
            ),
            [since],
        )?,
    };
    Ok(accounts
        .into_iter()
        .filter_map(|a| a.rate_limit.map(|limit| (a.id, limit)))
        .collect())
}

/// Inserts a key after checking that neither its id nor its digest is taken.
pub(super) fn insert_key(tx: &Transaction, key: &NewKey, now: u64) -> StoreResult<KeyRecord> {
    let digest_hex = key.digest.to_hex();
    let holder: Option<String> = tx
        .query_row(
            "SELECT id FROM keys WHERE digest = ?1",
            [&digest_hex],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(holder) = holder {
        return Err(StoreError::DuplicateDigest(holder));
    }
    let id_taken: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE id = ?1)",
        [&key.key_id],
        |r| r.get(0),
    )?;
    if id_taken {
        return Err(StoreError::DuplicateId(key.key_id.clone()));
    }
    write_key(tx, key, now)?;
    load_key(tx, &key.key_id)
}

/// Inserts a key's row (its id and digest checked free by the caller).
pub(super) fn write_key(tx: &Transaction, key: &NewKey, now: u64) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, created_at, \
         name, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        key.key_id,
        key.account_id,
        key.digest.to_hex(),
        key.hint,
        key.kind.key_type.as_str(),
        key.kind.environment.as_str(),
        key.origin.as_str(),
        now,
        key.name,
        key.expires_at,
    ])?;
    Ok(())
}

/// Marks keys whose expiry has passed as removed, in one new version.
fn purge_in(
    store: &SqliteStore,
    tx: &Transaction,
    now: u64,
) -> StoreResult<Versioned<Vec<KeyRecord>>> {
    let expired = query_keys(
        tx,
        "WHERE removed_at IS NULL AND expires_at <= ?1 ORDER BY id",
        [now],
    )?;
    if expired.is_empty() {
        return Ok(Versioned {
            value: expired,
            version: current_version(tx)?,
        });
    }
    for key in &expired {
        tx.execute(
            "UPDATE keys SET removed_at = ?1 WHERE id = ?2",
            params![now, key.key_id],
        )?;
    }
    let changes: Vec<_> = expired
        .iter()
        .map(|k| (&k.digest, ChangeOp::Remove))
        .collect();
    let version = store.issue_version(tx, &changes)?;
    let purged = expired
        .iter()
        .map(|k| load_key(tx, &k.key_id))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Versioned {
        value: purged,
        version,
    })
}

impl Store for SqliteStore {
    fn create_account(
        &self,
        account: &Account,
        keys: &[NewKey],
        actor: &Actor,
    ) -> StoreResult<Versioned<AccountWithKeys>> {
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = ?1)",
                [&account.id],
                |r| r.get(0),
            )?;
            if taken {
                return Err(StoreError::DuplicateId(account.id.clone()));
            }
            tx.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![account.id, account.name, account.created_at],
            )?;
            ensure_keys_of(account, keys)?;
            let records = keys
                .iter()
                .map(|key| insert_key(tx, key, account.created_at))
                .collect::<StoreResult<Vec<_>>>()?;
            let changes: Vec<_> = records
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(tx, &changes)?;
            record(
                tx,
                account.created_at,
                actor,
                super::audit::account_created(account, &records),
            )?;
            Ok(Versioned {
                value: AccountWithKeys {
                    account: load_account(tx, &account.id)?,
                    keys: records,
                },
                version,
            })
        })
    }

    fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.read(|tx| query_accounts(tx, "ORDER BY created_at, id", []))
    }

    fn account(&self, account_id: &str) -> StoreResult<Account> {
        self.read(|tx| load_account(tx, account_id))
    }

    fn add_key(&self, key: &NewKey, now: u64, actor: &Actor) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|tx| {
            load_account(tx, &key.account_id)?;
            let created = insert_key(tx, key, now)?;
            let version = self.issue_version(tx, &[(&created.digest, ChangeOp::Upsert)])?;
            record(tx, now, actor, super::audit::key_created(&created))?;
            Ok(Versioned {
                value: created,
                version,
            })
        })
    }

    fn keys(&self, account_id: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
        self.read(|tx| match account_id {
            Some(account_id) => {
                load_account(tx, account_id)?;
                query_keys(
                    tx,
                    "WHERE account_id = ?1 ORDER BY created_at, rowid",
                    [account_id],
                )
            }
            None => query_keys(tx, "ORDER BY created_at, rowid", []),
        })
    }

    fn key(&self, key_id: &str) -> StoreResult<KeyRecord> {
        self.read(|tx| load_key(tx, key_id))
    }

    fn roll_key(
        &self,
        key_id: &str,
        replacement: &NewKey,
        grace_seconds: u64,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<Rolled>> {
        self.write(|tx| {
            let old = load_key(tx, key_id)?;
            let plan = plan_roll(&old, replacement, grace_seconds, now)?;
            let mut new = insert_key(tx, replacement, now)?;
            // The replacement keeps the old key's rate limit: a roll changes the secret,
            // not what its holder may do.
            if old.rate_limit.is_some() {
                let (requests, per, burst) = limit_columns(old.rate_limit.as_ref());
                tx.execute(
                    "UPDATE keys SET rate_requests = ?1, rate_per = ?2, rate_burst = ?3 \
                     WHERE id = ?4",
                    params![requests, per, burst, new.key_id],
                )?;
                new.rate_limit = old.rate_limit;
            }
            let removed_at = (plan.old_op == ChangeOp::Remove).then_some(now);
            tx.execute(
                "UPDATE keys SET expires_at = ?1, rolled_at = ?2, replaced_by = ?3, \
                 removed_at = COALESCE(?4, removed_at) WHERE id = ?5",
                params![plan.expires_at, now, new.key_id, removed_at, old.key_id],
            )?;
            let old_op = plan.old_op;
            let version = self.issue_version(
                tx,
                &[(&new.digest, ChangeOp::Upsert), (&old.digest, old_op)],
            )?;
            let rolled = Rolled {
                old: load_key(tx, key_id)?,
                new,
            };
            record(tx, now, actor, super::audit::key_rolled(&rolled, now))?;
            Ok(Versioned {
                value: rolled,
                version,
            })
        })
    }

    fn revoke_key(
        &self,
        key_id: &str,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|tx| {
            let key = load_key(tx, key_id)?;
            if key.revoked_at.is_some() {
                // Revoking twice changes nothing, and keeps the first time.
                return Ok(Versioned {
                    value: key,
                    version: current_version(tx)?,
                });
            }
            tx.execute(
                "UPDATE keys SET revoked_at = ?1, removed_at = COALESCE(removed_at, ?1) \
                 WHERE id = ?2",
                params![now, key_id],
            )?;
            let version = self.issue_version(tx, &[(&key.digest, ChangeOp::Remove)])?;
            record(
                tx,
                now,
                actor,
                super::audit::key_event(AuditAction::KeyRevoked, &key),
            )?;
            Ok(Versioned {
                value: load_key(tx, key_id)?,
                version,
            })
        })
    }

    fn set_key_disabled(
        &self,
        key_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|tx| {
            let key = load_key(tx, key_id)?;
            if !disable_changes(&key, disabled, now)? {
                return Ok(Versioned {
                    value: key,
                    version: current_version(tx)?,
                });
            }
            let disabled_at = disabled.then_some(now);
            tx.execute(
                "UPDATE keys SET disabled_at = ?1 WHERE id = ?2",
                params![disabled_at, key_id],
            )?;
            let version = self.issue_version(tx, &[(&key.digest, ChangeOp::Upsert)])?;
            let action = if disabled {
                AuditAction::KeyDisabled
            } else {
                AuditAction::KeyEnabled
            };
            record(tx, now, actor, super::audit::key_event(action, &key))?;
            Ok(Versioned {
                value: load_key(tx, key_id)?,
                version,
            })
        })
    }

    fn set_rate_limit(
        &self,
        key_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|tx| {
            let key = load_key(tx, key_id)?;
            if !limit_changes(&key, limit, now)? {
                return Ok(Versioned {
                    value: key,
                    version: current_version(tx)?,
                });
            }
            let (requests, per, burst) = limit_columns(limit);
            tx.execute(
                "UPDATE keys SET rate_requests = ?1, rate_per = ?2, rate_burst = ?3 WHERE id = ?4",
                params![requests, per, burst, key_id],
            )?;
            let version = self.issue_version(tx, &[(&key.digest, ChangeOp::Upsert)])?;
            let changed = load_key(tx, key_id)?;
            record(tx, now, actor, super::audit::key_rate_limit(&changed))?;
            Ok(Versioned {
                value: changed,
                version,
            })
        })
    }

    fn set_account_rate_limit(
        &self,
        account_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<Account>> {
        self.write(|tx| {
            let account = load_account(tx, account_id)?;
            if !account_limit_changes(&account, limit)? {
                return Ok(Versioned {
                    value: account,
                    version: current_version(tx)?,
                });
            }
            let (requests, per, burst) = limit_columns(limit);
            tx.execute(
                "UPDATE accounts SET rate_requests = ?1, rate_per = ?2, rate_burst = ?3 \
                 WHERE id = ?4",
                params![requests, per, burst, account_id],
            )?;
            // The entries that change: the account's keys in the map without a limit of
            // their own. The version moves even when there are none, like any change.
            let inheriting = query_keys(
                tx,
                "WHERE account_id = ?1 AND removed_at IS NULL AND rate_requests IS NULL",
                [account_id],
            )?;
            let changes: Vec<_> = inheriting
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(tx, &changes)?;
            let changed = load_account(tx, account_id)?;
            record(tx, now, actor, super::audit::account_rate_limit(&changed))?;
            Ok(Versioned {
                value: changed,
                version,
            })
        })
    }

    fn rename_key(
        &self,
        key_id: &str,
        name: Option<&str>,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<KeyRecord> {
        self.write(|tx| {
            let key = load_key(tx, key_id)?;
            if !name_changes(&key, name) {
                return Ok(key);
            }
            tx.execute(
                "UPDATE keys SET name = ?1 WHERE id = ?2",
                params![name, key_id],
            )?;
            let renamed = load_key(tx, key_id)?;
            record(tx, now, actor, super::audit::key_renamed(&renamed))?;
            Ok(renamed)
        })
    }

    fn import_keys(
        &self,
        items: &[ImportItem],
        now: u64,
        actor: &Actor,
        apply: bool,
    ) -> StoreResult<ImportReport> {
        self.import_in(items, now, actor, apply)
    }

    fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
        self.query_audit(query)
    }

    fn purge_expired(&self, now: u64) -> StoreResult<Versioned<Vec<KeyRecord>>> {
        // The purge timer lands here every few seconds; usually nothing is due: no write.
        let idle = self.read(|tx| {
            Ok(if purge_due(tx, now)? {
                None
            } else {
                Some(current_version(tx)?)
            })
        })?;
        match idle {
            Some(version) => Ok(Versioned {
                value: Vec::new(),
                version,
            }),
            None => self.write(|tx| purge_in(self, tx, now)),
        }
    }

    fn read_key_map(&self, since: Option<u64>, now: u64) -> StoreResult<StoredKeyMap> {
        // The full map (what the server builds): beside the main connection.
        if since.is_none() {
            let full = self.read_beside(|tx| {
                if purge_due(tx, now)? {
                    return Ok(None);
                }
                full_in(tx, now).map(Some)
            })?;
            if let Some(full) = full {
                return Ok(full);
            }
        }
        self.read_after_purge(now, |tx| {
            if let Some(since) = since {
                if let DeltaLookup::Delta(delta) = delta_in(tx, since, now)? {
                    return Ok(delta);
                }
            }
            full_in(tx, now)
        })
    }

    fn key_map_delta(&self, since: u64, now: u64) -> StoreResult<DeltaLookup> {
        self.read_after_purge(now, |tx| delta_in(tx, since, now))
    }

    /// Reopens the file first if it was replaced: this is what the server reads every
    /// second.
    fn key_map_size(&self, now: u64) -> StoreResult<u64> {
        self.read(|tx| {
            // The keys `KeyRecord::in_key_map` keeps.
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL AND removed_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > ?1)",
                [now],
                |row| row.get(0),
            )?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
    }

    fn key_map_status(&self) -> StoreResult<KeyMapStatus> {
        self.follow_replaced_file()?;
        self.read(status_in)
    }

    fn record_restore(&self, store: &StoreId, seen: u64) -> StoreResult<Option<u64>> {
        self.write(|tx| {
            if store_id(tx)? != *store || current_version(tx)? >= seen {
                return Ok(None);
            }
            self.issue_version(tx, &[]).map(Some)
        })
    }

    fn new_lineage(&self) -> StoreResult<KeyMapStatus> {
        let store = StoreId::random()?;
        let version = lineage_start((self.clock)());
        // Nothing here reads the old version: it may be the rogue value being replaced.
        self.write(|tx| {
            tx.execute("DELETE FROM keymap_changes", [])?;
            tx.execute("DELETE FROM keymap_versions", [])?;
            tx.execute(
                "INSERT INTO keymap_versions (version) VALUES (?1)",
                [version],
            )?;
            tx.execute(
                "UPDATE keymap_state SET version = ?1, log_start = ?1 WHERE id = 1",
                [version],
            )?;
            set_setting(tx, STORE_ID_SETTING, store.as_str())?;
            status_in(tx)
        })
    }

    fn admin_token_digest(&self) -> StoreResult<Option<Digest>> {
        self.read(|tx| digest_setting(tx, ADMIN_TOKEN_SETTING))
    }

    fn set_admin_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
        self.write(|tx| {
            let previous = digest_setting(tx, ADMIN_TOKEN_SETTING)?;
            set_setting(tx, ADMIN_TOKEN_SETTING, &digest.to_hex())?;
            if let Some(action) = token_action(previous.as_ref(), digest, true) {
                record(tx, now, actor, NewAuditEvent::new(action))?;
            }
            Ok(())
        })
    }

    fn sync_token_digest(&self) -> StoreResult<Option<Digest>> {
        self.read(|tx| digest_setting(tx, SYNC_TOKEN_SETTING))
    }

    fn set_sync_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
        self.write(|tx| {
            let previous = digest_setting(tx, SYNC_TOKEN_SETTING)?;
            set_setting(tx, SYNC_TOKEN_SETTING, &digest.to_hex())?;
            if let Some(action) = token_action(previous.as_ref(), digest, false) {
                record(tx, now, actor, NewAuditEvent::new(action))?;
            }
            Ok(())
        })
    }
}
