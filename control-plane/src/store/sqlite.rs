//! The SQLite backend: one file, WAL mode, a busy timeout so that several processes (a
//! running `serve` and a CLI command) can share it, and schema migrations numbered by
//! `PRAGMA user_version`.
//!
//! Invariant: a key is in the key map exactly while `removed_at IS NULL` and its expiry (if
//! any) has not passed; purging sets `removed_at` when that expiry passes.

use super::rules::{corrupt, disable_changes, ensure_keys_of, plan_roll, ChangeOp};
use super::{
    Account, AccountWithKeys, KeyMapStatus, KeyOrigin, KeyRecord, NewKey, Rolled, Store,
    StoreError, StoreResult, Versioned, DEFAULT_CHANGE_LOG_LIMIT,
};
use keygate_core::digest::Digest;
use keygate_core::key::{Environment, KeyKind, KeyType};
use keygate_sync_core::message::KeyMapMessage;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Schema migrations, in order; migration `i` takes the schema from version `i` to `i + 1`
/// (files under `migrations/sqlite/`, one per version).
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0003_customers.sql"),
];

const KEY_COLUMNS: &str = "id, account_id, digest, hint, type, environment, origin, created_at, \
     disabled_at, expires_at, rolled_at, replaced_by, revoked_at, removed_at";

const ADMIN_TOKEN_SETTING: &str = "admin_token_digest";

/// How long a call waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
    change_log_limit: u64,
}

impl SqliteStore {
    /// Opens (creating on first use) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_with_change_log_limit(path, DEFAULT_CHANGE_LOG_LIMIT)
    }

    pub fn open_with_change_log_limit(path: &Path, limit: u64) -> StoreResult<SqliteStore> {
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
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            change_log_limit: limit.max(1),
        })
    }

    fn lock(&self) -> StoreResult<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Backend("the database connection lock is poisoned".into()))
    }

    /// Runs `f` in a write transaction: IMMEDIATE takes the write lock up front, so two
    /// processes never deadlock upgrading a read lock.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in a read transaction, so that its queries see one snapshot.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Bumps the key-map version and records which digests changed in it.
    pub(super) fn bump_version(
        &self,
        tx: &Transaction,
        changes: &[(&Digest, ChangeOp)],
    ) -> StoreResult<u64> {
        let version: u64 = tx.query_row(
            "UPDATE keymap_state SET version = version + 1 WHERE id = 1 RETURNING version",
            [],
            |r| r.get(0),
        )?;
        for (digest, op) in changes {
            tx.execute(
                "INSERT INTO keymap_changes (version, digest, op) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (version, digest) DO UPDATE SET op = excluded.op",
                params![version, digest.to_hex(), op.as_str()],
            )?;
        }
        if version > self.change_log_limit {
            let drop_through = version - self.change_log_limit;
            tx.execute(
                "DELETE FROM keymap_changes WHERE version <= ?1",
                [drop_through],
            )?;
            tx.execute(
                "UPDATE keymap_state SET log_start = MAX(log_start, ?1) WHERE id = 1",
                [drop_through],
            )?;
        }
        Ok(version)
    }
}

/// Creates the database file readable by its owner only, before SQLite creates it with the
/// process umask.
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

fn current_version(tx: &Transaction) -> StoreResult<u64> {
    Ok(
        tx.query_row("SELECT version FROM keymap_state WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
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

fn load_key(tx: &Transaction, key_id: &str) -> StoreResult<KeyRecord> {
    query_keys(tx, "WHERE id = ?1", [key_id])?
        .pop()
        .ok_or_else(|| StoreError::KeyNotFound(key_id.to_string()))
}

pub(super) fn load_account(tx: &Transaction, account_id: &str) -> StoreResult<Account> {
    tx.query_row(
        "SELECT id, name, created_at, disabled_at FROM accounts WHERE id = ?1",
        [account_id],
        account_from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::AccountNotFound(account_id.to_string()))
}

pub(super) fn account_from_row(r: &Row) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        disabled_at: r.get(3)?,
    })
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
    tx.execute(
        "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            key.key_id,
            key.account_id,
            digest_hex,
            key.hint,
            key.kind.key_type.as_str(),
            key.kind.environment.as_str(),
            key.origin.as_str(),
            now
        ],
    )?;
    load_key(tx, &key.key_id)
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
    let version = store.bump_version(tx, &changes)?;
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
            let version = self.bump_version(tx, &changes)?;
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
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT id, name, created_at, disabled_at FROM accounts ORDER BY created_at, id",
            )?;
            let accounts = stmt
                .query_map([], account_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(accounts)
        })
    }

    fn account(&self, account_id: &str) -> StoreResult<Account> {
        self.read(|tx| load_account(tx, account_id))
    }

    fn add_key(&self, key: &NewKey, now: u64) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|tx| {
            load_account(tx, &key.account_id)?;
            let record = insert_key(tx, key, now)?;
            let version = self.bump_version(tx, &[(&record.digest, ChangeOp::Upsert)])?;
            Ok(Versioned {
                value: record,
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
    ) -> StoreResult<Versioned<Rolled>> {
        self.write(|tx| {
            let old = load_key(tx, key_id)?;
            let plan = plan_roll(&old, replacement, grace_seconds, now)?;
            let new = insert_key(tx, replacement, now)?;
            let removed_at = (plan.old_op == ChangeOp::Remove).then_some(now);
            tx.execute(
                "UPDATE keys SET expires_at = ?1, rolled_at = ?2, replaced_by = ?3, \
                 removed_at = COALESCE(?4, removed_at) WHERE id = ?5",
                params![plan.expires_at, now, new.key_id, removed_at, old.key_id],
            )?;
            let old_op = plan.old_op;
            let version = self.bump_version(
                tx,
                &[(&new.digest, ChangeOp::Upsert), (&old.digest, old_op)],
            )?;
            Ok(Versioned {
                value: Rolled {
                    old: load_key(tx, key_id)?,
                    new,
                },
                version,
            })
        })
    }

    fn revoke_key(&self, key_id: &str, now: u64) -> StoreResult<Versioned<KeyRecord>> {
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
            let version = self.bump_version(tx, &[(&key.digest, ChangeOp::Remove)])?;
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
            let version = self.bump_version(tx, &[(&key.digest, ChangeOp::Upsert)])?;
            Ok(Versioned {
                value: load_key(tx, key_id)?,
                version,
            })
        })
    }

    fn purge_expired(&self, now: u64) -> StoreResult<Versioned<Vec<KeyRecord>>> {
        self.write(|tx| purge_in(self, tx, now))
    }

    fn key_map(&self, since: Option<u64>, now: u64) -> StoreResult<KeyMapMessage> {
        self.write(|tx| {
            let version = purge_in(self, tx, now)?.version;
            let log_start: u64 =
                tx.query_row("SELECT log_start FROM keymap_state WHERE id = 1", [], |r| {
                    r.get(0)
                })?;
            match since {
                Some(since) if (log_start..=version).contains(&since) => {
                    let mut stmt = tx.prepare(
                        "SELECT DISTINCT digest FROM keymap_changes WHERE version > ?1 \
                         ORDER BY digest",
                    )?;
                    let digests = stmt
                        .query_map([since], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut upserts = Vec::new();
                    let mut removes = Vec::new();
                    // Each changed digest is answered with its state now, whatever happened
                    // to it in between.
                    for digest in digests {
                        match query_keys(tx, "WHERE digest = ?1", [&digest])?.pop() {
                            Some(key) if key.in_key_map(now) => upserts.push(key.to_raw_key()),
                            _ => removes.push(digest),
                        }
                    }
                    Ok(KeyMapMessage::Delta {
                        version,
                        since,
                        upserts,
                        removes,
                    })
                }
                _ => {
                    let keys = query_keys(tx, "WHERE removed_at IS NULL ORDER BY digest", [])?
                        .into_iter()
                        .filter(|k| k.in_key_map(now))
                        .map(|k| k.to_raw_key())
                        .collect();
                    Ok(KeyMapMessage::Full { version, keys })
                }
            }
        })
    }

    fn key_map_status(&self) -> StoreResult<KeyMapStatus> {
        self.read(|tx| {
            let next_expiry: Option<u64> = tx.query_row(
                "SELECT MIN(expires_at) FROM keys WHERE removed_at IS NULL",
                [],
                |r| r.get(0),
            )?;
            Ok(KeyMapStatus {
                version: current_version(tx)?,
                next_expiry,
            })
        })
    }

    fn admin_token_digest(&self) -> StoreResult<Option<Digest>> {
        self.read(|tx| {
            let hex: Option<String> = tx
                .query_row(
                    "SELECT value FROM settings WHERE name = ?1",
                    [ADMIN_TOKEN_SETTING],
                    |r| r.get(0),
                )
                .optional()?;
            hex.map(|h| Digest::from_hex(&h).map_err(|_| corrupt("admin token digest", &h)))
                .transpose()
        })
    }

    fn set_admin_token_digest(&self, digest: &Digest) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![ADMIN_TOKEN_SETTING, digest.to_hex()],
            )?;
            Ok(())
        })
    }
}
