//! The PostgreSQL backend, for several keygatectl replicas over one database.
//!
//! - Every change locks the single `keymap_state` row first (`SELECT … FOR UPDATE`), makes
//!   its changes, sets the next version (`max(previous + 1, now in ms)`, computed here),
//!   records it in `keymap_versions` and the changed digests under it, and commits. Writers on every replica
//!   are serialised by that row lock, so versions strictly rise, each change has one version
//!   of its own, and no version is visible before its changes are (they commit together).
//! - The same transaction sends `NOTIFY keygate_changes, '<version>'`, which PostgreSQL
//!   delivers on commit. `watch_changes` LISTENs on a dedicated connection, so a replica
//!   learns of another's change within milliseconds; the server's one-second re-read of the
//!   version covers a lost connection.
//! - The key map is read from one REPEATABLE READ snapshot, so its version and its keys
//!   always belong together, and two replicas answer the same map for the same version.
//!   When a key's grace period has ended, the read purges it first, under the row lock.
//! - Schema migrations (`migrations/postgres/`) run in one transaction under an advisory
//!   lock and are recorded in `keygate_schema_migrations`, so replicas starting together
//!   migrate once.
//!
//! Connections come from a small pool (the server calls the store from at most a few
//! blocking threads at once); one that the server closed while idle is replaced on its next
//! use. Invariants are SQLite's (see `sqlite.rs`).

use super::audit::{Actor, AuditAction, AuditEvent, AuditQuery, NewAuditEvent};
use super::import::{ImportItem, ImportReport};
use super::lineage::{lineage_start, next_version, StoreId, VersionClock};
use super::postgres_audit::record;
use super::postgres_tls::{self, TlsSettings};
use super::rules::{
    account_limit_changes, corrupt, disable_changes, ensure_keys_of, full_map_answers,
    limit_changes, limit_columns, name_changes, plan_roll, stored_limit, token_action,
    AccountDefaults, ChangeOp,
};
use super::{
    Account, AccountWithKeys, DeltaLookup, KeyMapStatus, KeyOrigin, KeyRecord, NewKey, Rolled,
    Store, StoreError, StoreOptions, StoreResult, StoredKeyMap, Versioned,
};
use crate::log::log_event;
use keygate_core::config::RawLimit;
use keygate_core::digest::Digest;
use keygate_core::key::{Environment, KeyKind, KeyType};
use keygate_sync_core::message::KeyMapMessage;
use postgres::config::Host;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Config, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Schema migrations, in order; migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_initial.sql"),
    include_str!("migrations/postgres/0002_lineage.sql"),
    include_str!("migrations/postgres/0003_customers.sql"),
    include_str!("migrations/postgres/0004_names_audit_usage.sql"),
    include_str!("migrations/postgres/0005_rate_limits.sql"),
    include_str!("migrations/postgres/0006_account_rate_limits.sql"),
];

/// The channel every change is announced on (payload: the new version, `admin_token` or
/// `sync_token`).
pub const CHANGE_CHANNEL: &str = "keygate_changes";

/// The advisory lock migrations hold (any fixed number; "keygate" in ASCII).
const MIGRATION_LOCK: i64 = 0x006b_6579_6761_7465;

pub(super) const KEY_COLUMNS: &str =
    "id, account_id, digest, hint, type, environment, origin, created_at, \
     disabled_at, expires_at, rolled_at, replaced_by, revoked_at, removed_at, name, \
     rate_requests, rate_per, rate_burst";

pub(super) const ACCOUNT_COLUMNS: &str =
    "id, name, created_at, disabled_at, rate_requests, rate_per, rate_burst";

const ADMIN_TOKEN_SETTING: &str = "admin_token_digest";
const SYNC_TOKEN_SETTING: &str = "sync_token_digest";
const STORE_ID_SETTING: &str = "store_id";

/// A change waits this long for another replica's write lock before giving up (as SQLite's
/// busy timeout).
pub(super) const WRITE_BEGIN: &str =
    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '10s'";
/// Reads see one snapshot and take no locks.
const READ_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Unless the URL says otherwise (`connect_timeout=`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections kept for reuse; more are opened when needed and closed after.
const MAX_IDLE: usize = 8;
/// The change listener checks its connection after this long without a notification.
const LISTEN_CHECK: Duration = Duration::from_secs(30);
/// The change listener's reconnection backoff, doubling up to the second value.
const LISTEN_RETRY: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// True for the URLs that select this backend.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

/// Where to connect and how: the parsed URL and its TLS settings.
#[derive(Clone)]
pub struct Target {
    pub config: Config,
    pub tls: TlsSettings,
}

/// Parses a connection URL (`postgres://user:password@host:port/dbname?option=value`) and
/// fills in keygatectl's defaults: a connect timeout, `application_name=keygatectl`, the
/// password from `PGPASSWORD` when the URL has none, and the local socket or `localhost`
/// when it names no host. The TLS options (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`)
/// are libpq's (`postgres_tls.rs`).
pub fn parse_url(url: &str) -> StoreResult<Target> {
    let (rest, tls) =
        postgres_tls::take_tls_options(url).map_err(|e| StoreError::Backend(Box::new(e)))?;
    let mut config: Config = rest.parse().map_err(|e: postgres::Error| {
        // The parser's message names the bad option, never the password.
        StoreError::Backend(format!("invalid PostgreSQL URL: {e}").into())
    })?;
    config.ssl_mode(tls.mode.negotiation());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("keygatectl");
    }
    if config.get_password().is_none() {
        if let Some(password) = std::env::var_os("PGPASSWORD") {
            config.password(password.as_encoded_bytes());
        }
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        let socket_dir = std::path::Path::new("/var/run/postgresql");
        if cfg!(unix) && socket_dir.is_dir() {
            config.host_path(socket_dir);
        } else {
            config.host("localhost");
        }
    }
    Ok(Target { config, tls })
}

/// `user@host:port/dbname`, for messages: never the password.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("(OS user)"),
        hosts.join(","),
        config.get_dbname().unwrap_or("(user's database)")
    )
}

struct Pool {
    target: Target,
    connector: MakeRustlsConnect,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    fn new(target: Target) -> StoreResult<Pool> {
        let connector =
            postgres_tls::connector(&target.tls).map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Pool {
            target,
            connector,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn connect(&self) -> StoreResult<Client> {
        connect(&self.target, &self.connector)
    }

    /// A connection with `begin` run on it: an idle one when it still works, else a new one.
    fn begin(&self, begin: &str) -> StoreResult<Client> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut client) = idle else { break };
            match client.batch_execute(begin) {
                Ok(()) => return Ok(client),
                // Closed or ended while idle (the server restarted, or an administrator ended
                // it): nothing ran, so another connection may try.
                Err(e) if connection_gone(&e) || client.is_closed() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut client = self.connect()?;
        client.batch_execute(begin)?;
        Ok(client)
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }
}

/// True when the error says the connection is gone: closed, or ended by the server
/// (`pg_terminate_backend`, a shutdown, an idle timeout), which sends its reason (e.g.
/// 57P01 "terminating connection due to administrator command") as the answer to whatever
/// the connection sends next.
fn connection_gone(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|code| {
            [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::IDLE_SESSION_TIMEOUT,
            ]
            .contains(code)
        })
}

fn connect(target: &Target, connector: &MakeRustlsConnect) -> StoreResult<Client> {
    target.config.connect(connector.clone()).map_err(|e| {
        let host = target
            .config
            .get_hosts()
            .first()
            .map(|host| match host {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_default();
        let why = postgres_tls::explain_handshake_failure(&e, &target.tls, &host)
            .unwrap_or_else(|| error_detail(&e));
        StoreError::Backend(
            format!(
                "cannot connect to PostgreSQL at {}: {why}",
                describe(&target.config)
            )
            .into(),
        )
    })
}

/// An error with its cause ("error connecting to server: Connection refused").
fn error_detail(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

pub struct PostgresStore {
    pool: Arc<Pool>,
    change_log_limit: u64,
    clock: VersionClock,
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema up to date.
    pub fn connect(url: &str) -> StoreResult<PostgresStore> {
        PostgresStore::open(parse_url(url)?, StoreOptions::default())
    }

    pub fn open(target: Target, options: StoreOptions) -> StoreResult<PostgresStore> {
        let pool = Pool::new(target)?;
        let mut client = pool.connect()?;
        migrate(&mut client)?;
        pool.give_back(client);
        Ok(PostgresStore {
            pool: Arc::new(pool),
            change_log_limit: options.change_log_limit.max(1),
            clock: options.clock,
        })
    }

    /// Runs `f` between `begin` and COMMIT (ROLLBACK when it fails).
    pub(super) fn transaction<T>(
        &self,
        begin: &str,
        f: impl FnOnce(&mut Client) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let started = std::time::Instant::now();
        let result = self.transaction_untimed(begin, f);
        let kind = if begin == READ_BEGIN { "read" } else { "write" };
        crate::metrics::store_transaction("postgres", kind, started.elapsed(), result.is_ok());
        result
    }

    fn transaction_untimed<T>(
        &self,
        begin: &str,
        f: impl FnOnce(&mut Client) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut client = self.pool.begin(begin)?;
        match f(&mut client) {
            Ok(value) => {
                // A failed COMMIT drops the connection with the error.
                client.batch_execute("COMMIT")?;
                self.pool.give_back(client);
                Ok(value)
            }
            Err(e) => {
                if client.batch_execute("ROLLBACK").is_ok() {
                    self.pool.give_back(client);
                }
                Err(e)
            }
        }
    }

    /// A change: takes the key map's row lock first, so that changes on every replica run
    /// one at a time and each statement sees every change committed before it.
    pub(super) fn write<T>(&self, f: impl FnOnce(&mut Client) -> StoreResult<T>) -> StoreResult<T> {
        self.transaction(WRITE_BEGIN, |c| {
            c.query_one(
                "SELECT version FROM keymap_state WHERE id = 1 FOR UPDATE",
                &[],
            )?;
            f(c)
        })
    }

    /// A read from one snapshot.
    pub(super) fn read<T>(&self, f: impl FnOnce(&mut Client) -> StoreResult<T>) -> StoreResult<T> {
        self.transaction(READ_BEGIN, f)
    }

    /// Issues the next version, records it and which digests changed in it, trims the change
    /// log to the last `change_log_limit` versions and announces the version (delivered when
    /// the transaction commits). Runs under the row lock.
    pub(super) fn issue_version(
        &self,
        c: &mut Client,
        changes: &[(&Digest, ChangeOp)],
    ) -> StoreResult<u64> {
        let version = next_version(current_version(c)?, (self.clock)())?;
        let signed_version = signed(version)?;
        c.execute(
            "UPDATE keymap_state SET version = $1 WHERE id = 1",
            &[&signed_version],
        )?;
        c.execute(
            "INSERT INTO keymap_versions (version) VALUES ($1)",
            &[&signed_version],
        )?;
        // One statement for all (an import changes thousands of keys); a digest named twice
        // keeps its last change, as one row can be written once per statement.
        let mut last_op: HashMap<String, &str> = HashMap::with_capacity(changes.len());
        for (digest, op) in changes {
            last_op.insert(digest.to_hex(), op.as_str());
        }
        let (digests, ops): (Vec<String>, Vec<&str>) = last_op.into_iter().unzip();
        c.execute(
            "INSERT INTO keymap_changes (version, digest, op) \
             SELECT $1, d, o FROM UNNEST($2::text[], $3::text[]) AS t(d, o)",
            &[&signed_version, &digests, &ops],
        )?;
        // The oldest version a delta is still answered from: the change log keeps
        // everything after it.
        let oldest: Option<i64> = c
            .query_opt(
                "SELECT version FROM keymap_versions ORDER BY version DESC LIMIT 1 OFFSET $1",
                &[&signed(self.change_log_limit)?],
            )?
            .map(|row| row.try_get(0))
            .transpose()?;
        if let Some(oldest) = oldest {
            c.execute("DELETE FROM keymap_versions WHERE version < $1", &[&oldest])?;
            c.execute("DELETE FROM keymap_changes WHERE version <= $1", &[&oldest])?;
            c.execute(
                "UPDATE keymap_state SET log_start = $1 WHERE id = 1",
                &[&oldest],
            )?;
        }
        c.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANGE_CHANNEL, &version.to_string()],
        )?;
        Ok(version)
    }

    /// Runs `f` on one read-only snapshot; when a key's grace period has ended, purges it
    /// first (a version of its own) and runs `f` under the lock instead, so that the answer
    /// is exactly that version's map on every replica.
    fn read_after_purge<T>(
        &self,
        now: u64,
        f: impl Fn(&mut Client) -> StoreResult<T>,
    ) -> StoreResult<T> {
        // Usually nothing is due to expire: one read-only snapshot, no lock.
        let answer = self.read(|c| {
            if purge_due(c, now)? {
                return Ok(None);
            }
            f(c).map(Some)
        })?;
        match answer {
            Some(value) => Ok(value),
            None => self.write(|c| {
                self.purge_in(c, now)?;
                f(c)
            }),
        }
    }

    /// Marks keys whose expiry has passed as removed, in one new version. Runs under the
    /// write lock.
    fn purge_in(&self, c: &mut Client, now: u64) -> StoreResult<Versioned<Vec<KeyRecord>>> {
        let expired = query_keys(
            c,
            "WHERE removed_at IS NULL AND expires_at <= $1 ORDER BY id",
            &[&signed(now)?],
        )?;
        if expired.is_empty() {
            return Ok(Versioned {
                value: expired,
                version: current_version(c)?,
            });
        }
        let ids: Vec<&str> = expired.iter().map(|k| k.key_id.as_str()).collect();
        c.execute(
            "UPDATE keys SET removed_at = $1 WHERE id = ANY($2)",
            &[&signed(now)?, &ids],
        )?;
        let changes: Vec<_> = expired
            .iter()
            .map(|k| (&k.digest, ChangeOp::Remove))
            .collect();
        let version = self.issue_version(c, &changes)?;
        let purged = query_keys(c, "WHERE id = ANY($1) ORDER BY id", &[&ids])?;
        Ok(Versioned {
            value: purged,
            version,
        })
    }
}

/// Brings the schema up to date. Replicas starting together over a new database take turns
/// on the advisory lock; the first migrates, the others find it done.
fn migrate(client: &mut Client) -> StoreResult<()> {
    let supported = MIGRATIONS.len() as u32;
    // The common case, without locks or DDL: already up to date.
    if let Some(found) = schema_version(client)? {
        if found > supported {
            return Err(StoreError::SchemaTooNew { found, supported });
        }
        if found == supported {
            return Ok(());
        }
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS keygate_schema_migrations (
             version     INTEGER PRIMARY KEY,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM keygate_schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let found = u32::try_from(found).map_err(|_| corrupt("schema version", &found.to_string()))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO keygate_schema_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The schema version recorded, or `None` before the first migration.
pub fn schema_version(client: &mut Client) -> StoreResult<Option<u32>> {
    let table: Option<String> = client
        .query_one("SELECT to_regclass('keygate_schema_migrations')::text", &[])?
        .try_get(0)?;
    if table.is_none() {
        return Ok(None);
    }
    let found: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM keygate_schema_migrations",
            &[],
        )?
        .try_get(0)?;
    u32::try_from(found)
        .map(Some)
        .map_err(|_| corrupt("schema version", &found.to_string()))
}

/// Unix seconds as PostgreSQL's BIGINT.
pub(super) fn signed(value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| {
        StoreError::Backend(format!("{value} does not fit PostgreSQL's BIGINT").into())
    })
}

pub(super) fn unsigned(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt("negative number", &value.to_string()))
}

pub(super) fn unsigned_opt(value: Option<i64>) -> StoreResult<Option<u64>> {
    value.map(unsigned).transpose()
}

pub(super) fn current_version(c: &mut Client) -> StoreResult<u64> {
    unsigned(
        c.query_one("SELECT version FROM keymap_state WHERE id = 1", &[])?
            .try_get(0)?,
    )
}

pub(super) fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
    let digest: String = row.try_get(2)?;
    let key_type: String = row.try_get(4)?;
    let environment: String = row.try_get(5)?;
    let origin: String = row.try_get(6)?;
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
        key_id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        digest: Digest::from_hex(&digest).map_err(|_| corrupt("digest", &digest))?,
        hint: row.try_get(3)?,
        kind: KeyKind::new(key_type, environment),
        origin: KeyOrigin::parse(&origin).ok_or_else(|| corrupt("key origin", &origin))?,
        created_at: unsigned(row.try_get(7)?)?,
        disabled_at: unsigned_opt(row.try_get(8)?)?,
        expires_at: unsigned_opt(row.try_get(9)?)?,
        rolled_at: unsigned_opt(row.try_get(10)?)?,
        replaced_by: row.try_get(11)?,
        revoked_at: unsigned_opt(row.try_get(12)?)?,
        removed_at: unsigned_opt(row.try_get(13)?)?,
        name: row.try_get(14)?,
        rate_limit: stored_limit(
            unsigned_opt(row.try_get(15)?)?,
            row.try_get(16)?,
            unsigned_opt(row.try_get(17)?)?,
        )?,
    })
}

/// Runs a key query and reads every row.
pub(super) fn query_keys(
    c: &mut Client,
    sql_after_from: &str,
    args: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<KeyRecord>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM keys {sql_after_from}");
    c.query(sql.as_str(), args)?
        .iter()
        .map(key_from_row)
        .collect()
}

fn load_key(c: &mut Client, key_id: &str) -> StoreResult<KeyRecord> {
    query_keys(c, "WHERE id = $1", &[&key_id])?
        .pop()
        .ok_or_else(|| StoreError::KeyNotFound(key_id.to_string()))
}

/// Reads a row of `ACCOUNT_COLUMNS`.
fn account_from_row(row: &Row) -> StoreResult<Account> {
    Ok(Account {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        created_at: unsigned(row.try_get(2)?)?,
        disabled_at: unsigned_opt(row.try_get(3)?)?,
        rate_limit: stored_limit(
            unsigned_opt(row.try_get(4)?)?,
            row.try_get(5)?,
            unsigned_opt(row.try_get(6)?)?,
        )?,
    })
}

/// Runs an account query and reads every row.
fn query_accounts(
    c: &mut Client,
    sql_after_from: &str,
    args: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<Account>> {
    let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts {sql_after_from}");
    c.query(sql.as_str(), args)?
        .iter()
        .map(account_from_row)
        .collect()
}

pub(super) fn load_account(c: &mut Client, account_id: &str) -> StoreResult<Account> {
    query_accounts(c, "WHERE id = $1", &[&account_id])?
        .pop()
        .ok_or_else(|| StoreError::AccountNotFound(account_id.to_string()))
}

/// The default rate limits of the accounts that have one: of every account (`digests`:
/// none), or of the accounts of these keys (what a delta needs).
fn account_defaults(c: &mut Client, digests: Option<&[String]>) -> StoreResult<AccountDefaults> {
    let has_default = "(rate_requests IS NOT NULL OR rate_per IS NOT NULL \
                       OR rate_burst IS NOT NULL)";
    let accounts = match digests {
        None => query_accounts(c, &format!("WHERE {has_default}"), &[])?,
        Some(digests) => query_accounts(
            c,
            &format!(
                "WHERE {has_default} AND id IN (SELECT account_id FROM keys \
                 WHERE digest = ANY($1))"
            ),
            &[&digests],
        )?,
    };
    Ok(accounts
        .into_iter()
        .filter_map(|a| a.rate_limit.map(|limit| (a.id, limit)))
        .collect())
}

/// Inserts a key after checking that neither its id nor its digest is taken.
pub(super) fn insert_key(c: &mut Client, key: &NewKey, now: u64) -> StoreResult<KeyRecord> {
    let digest_hex = key.digest.to_hex();
    if let Some(row) = c.query_opt("SELECT id FROM keys WHERE digest = $1", &[&digest_hex])? {
        return Err(StoreError::DuplicateDigest(row.try_get(0)?));
    }
    if c.query_opt("SELECT 1 FROM keys WHERE id = $1", &[&key.key_id])?
        .is_some()
    {
        return Err(StoreError::DuplicateId(key.key_id.clone()));
    }
    c.execute(
        "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, created_at, \
         name, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &key.key_id,
            &key.account_id,
            &digest_hex,
            &key.hint,
            &key.kind.key_type.as_str(),
            &key.kind.environment.as_str(),
            &key.origin.as_str(),
            &signed(now)?,
            &key.name,
            &key.expires_at.map(signed).transpose()?,
        ],
    )?;
    load_key(c, &key.key_id)
}

/// True while a key whose expiry has passed is still in the map (a purge is due).
fn purge_due(c: &mut Client, now: u64) -> StoreResult<bool> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM keys WHERE removed_at IS NULL AND expires_at <= $1)",
        &[&signed(now)?],
    )?
    .try_get(0)?)
}

fn setting(c: &mut Client, name: &str) -> StoreResult<Option<String>> {
    Ok(
        c.query_opt("SELECT value FROM settings WHERE name = $1", &[&name])?
            .map(|row| row.try_get(0))
            .transpose()?,
    )
}

fn set_setting(c: &mut Client, name: &str, value: &str) -> StoreResult<()> {
    c.execute(
        "INSERT INTO settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[&name, &value],
    )?;
    Ok(())
}

/// A token's digest, its row locked until the transaction ends (two rotations at once each
/// see the other's result, so each is audited as what it replaced).
fn locked_digest_setting(c: &mut Client, name: &str) -> StoreResult<Option<Digest>> {
    c.query_opt(
        "SELECT value FROM settings WHERE name = $1 FOR UPDATE",
        &[&name],
    )?
    .map(|row| {
        let hex: String = row.try_get(0)?;
        Digest::from_hex(&hex).map_err(|_| corrupt(name, &hex))
    })
    .transpose()
}

fn digest_setting(c: &mut Client, name: &str) -> StoreResult<Option<Digest>> {
    setting(c, name)?
        .map(|h| Digest::from_hex(&h).map_err(|_| corrupt(name, &h)))
        .transpose()
}

fn store_id(c: &mut Client) -> StoreResult<StoreId> {
    let text = setting(c, STORE_ID_SETTING)?.unwrap_or_default();
    StoreId::parse(&text).ok_or_else(|| corrupt("store id", &text))
}

fn status_in(c: &mut Client) -> StoreResult<KeyMapStatus> {
    let row = c.query_one(
        "SELECT version, (SELECT MIN(expires_at) FROM keys WHERE removed_at IS NULL) \
         FROM keymap_state WHERE id = 1",
        &[],
    )?;
    Ok(KeyMapStatus {
        store: store_id(c)?,
        version: unsigned(row.try_get(0)?)?,
        next_expiry: unsigned_opt(row.try_get(1)?)?,
    })
}

/// The delta since `since`, if `since` is a version this database issued and still has the
/// changes after. Digests sort bytewise (`COLLATE "C"`), as in SQLite.
fn delta_in(c: &mut Client, since: u64, now: u64) -> StoreResult<DeltaLookup> {
    let store = store_id(c)?;
    let version = current_version(c)?;
    if since > version {
        return Ok(DeltaLookup::Ahead { store, version });
    }
    let since_signed = signed(since)?;
    let issued: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM keymap_versions WHERE version = $1)",
            &[&since_signed],
        )?
        .try_get(0)?;
    if !issued {
        return Ok(DeltaLookup::NotIssued);
    }
    let changed: i64 = c
        .query_one(
            "SELECT COUNT(DISTINCT digest) FROM keymap_changes WHERE version > $1",
            &[&since_signed],
        )?
        .try_get(0)?;
    let keys_in_map = || -> StoreResult<u64> {
        let count: i64 = c
            .query_one("SELECT COUNT(*) FROM keys WHERE removed_at IS NULL", &[])?
            .try_get(0)?;
        unsigned(count)
    };
    if full_map_answers(unsigned(changed)?, keys_in_map)? {
        return Ok(DeltaLookup::NotIssued);
    }
    let digests = c
        .query(
            "SELECT DISTINCT digest COLLATE \"C\" AS digest FROM keymap_changes \
             WHERE version > $1 ORDER BY 1",
            &[&since_signed],
        )?
        .iter()
        .map(|row| row.try_get::<_, String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    let mut current: HashMap<String, KeyRecord> =
        query_keys(c, "WHERE digest = ANY($1)", &[&digests])?
            .into_iter()
            .map(|k| (k.digest.to_hex(), k))
            .collect();
    let defaults = account_defaults(c, Some(&digests))?;
    let mut upserts = Vec::new();
    let mut removes = Vec::new();
    // Each changed digest is answered with its state now, whatever happened to it in
    // between.
    for digest in digests {
        match current.remove(&digest) {
            Some(key) if key.in_key_map(now) => {
                upserts.push(key.to_raw_key(defaults.get(&key.account_id)))
            }
            _ => removes.push(digest),
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
fn full_in(c: &mut Client, now: u64) -> StoreResult<StoredKeyMap> {
    let store = store_id(c)?;
    let version = current_version(c)?;
    let defaults = account_defaults(c, None)?;
    let keys = query_keys(
        c,
        "WHERE removed_at IS NULL ORDER BY digest COLLATE \"C\"",
        &[],
    )?
    .into_iter()
    .filter(|k| k.in_key_map(now))
    .map(|k| k.to_raw_key(defaults.get(&k.account_id)))
    .collect();
    Ok(StoredKeyMap {
        store,
        message: KeyMapMessage::Full { version, keys },
    })
}

impl Store for PostgresStore {
    fn create_account(
        &self,
        account: &Account,
        keys: &[NewKey],
        actor: &Actor,
    ) -> StoreResult<Versioned<AccountWithKeys>> {
        self.write(|c| {
            if c.query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&account.id])?
                .is_some()
            {
                return Err(StoreError::DuplicateId(account.id.clone()));
            }
            c.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)",
                &[&account.id, &account.name, &signed(account.created_at)?],
            )?;
            ensure_keys_of(account, keys)?;
            let records = keys
                .iter()
                .map(|key| insert_key(c, key, account.created_at))
                .collect::<StoreResult<Vec<_>>>()?;
            let changes: Vec<_> = records
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(c, &changes)?;
            record(
                c,
                account.created_at,
                actor,
                super::audit::account_created(account, &records),
            )?;
            Ok(Versioned {
                value: AccountWithKeys {
                    account: load_account(c, &account.id)?,
                    keys: records,
                },
                version,
            })
        })
    }

    fn accounts(&self) -> StoreResult<Vec<Account>> {
        self.read(|c| query_accounts(c, "ORDER BY created_at, id", &[]))
    }

    fn account(&self, account_id: &str) -> StoreResult<Account> {
        self.read(|c| load_account(c, account_id))
    }

    fn add_key(&self, key: &NewKey, now: u64, actor: &Actor) -> StoreResult<Versioned<KeyRecord>> {
        self.write(|c| {
            load_account(c, &key.account_id)?;
            let created = insert_key(c, key, now)?;
            let version = self.issue_version(c, &[(&created.digest, ChangeOp::Upsert)])?;
            record(c, now, actor, super::audit::key_created(&created))?;
            Ok(Versioned {
                value: created,
                version,
            })
        })
    }

    fn keys(&self, account_id: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
        self.read(|c| match account_id {
            Some(account_id) => {
                load_account(c, account_id)?;
                query_keys(
                    c,
                    "WHERE account_id = $1 ORDER BY created_at, seq",
                    &[&account_id],
                )
            }
            None => query_keys(c, "ORDER BY created_at, seq", &[]),
        })
    }

    fn key(&self, key_id: &str) -> StoreResult<KeyRecord> {
        self.read(|c| load_key(c, key_id))
    }

    fn roll_key(
        &self,
        key_id: &str,
        replacement: &NewKey,
        grace_seconds: u64,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Versioned<Rolled>> {
        self.write(|c| {
            let old = load_key(c, key_id)?;
            let plan = plan_roll(&old, replacement, grace_seconds, now)?;
            let mut new = insert_key(c, replacement, now)?;
            // The replacement keeps the old key's rate limit: a roll changes the secret,
            // not what its holder may do.
            if old.rate_limit.is_some() {
                let (requests, per, burst) = limit_columns(old.rate_limit.as_ref());
                c.execute(
                    "UPDATE keys SET rate_requests = $1, rate_per = $2, rate_burst = $3 \
                     WHERE id = $4",
                    &[
                        &requests.map(signed).transpose()?,
                        &per,
                        &burst.map(signed).transpose()?,
                        &new.key_id,
                    ],
                )?;
                new.rate_limit = old.rate_limit;
            }
            let removed_at = match plan.old_op {
                ChangeOp::Remove => Some(signed(now)?),
                ChangeOp::Upsert => None,
            };
            c.execute(
                "UPDATE keys SET expires_at = $1, rolled_at = $2, replaced_by = $3, \
                 removed_at = COALESCE($4, removed_at) WHERE id = $5",
                &[
                    &signed(plan.expires_at)?,
                    &signed(now)?,
                    &new.key_id,
                    &removed_at,
                    &old.key_id,
                ],
            )?;
            let old_op = plan.old_op;
            let version =
                self.issue_version(c, &[(&new.digest, ChangeOp::Upsert), (&old.digest, old_op)])?;
            let rolled = Rolled {
                old: load_key(c, key_id)?,
                new,
            };
            record(c, now, actor, super::audit::key_rolled(&rolled, now))?;
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
        self.write(|c| {
            let key = load_key(c, key_id)?;
            if key.revoked_at.is_some() {
                // Revoking twice changes nothing, and keeps the first time.
                return Ok(Versioned {
                    value: key,
                    version: current_version(c)?,
                });
            }
            c.execute(
                "UPDATE keys SET revoked_at = $1, removed_at = COALESCE(removed_at, $1) \
                 WHERE id = $2",
                &[&signed(now)?, &key_id],
            )?;
            let version = self.issue_version(c, &[(&key.digest, ChangeOp::Remove)])?;
            record(
                c,
                now,
                actor,
                super::audit::key_event(AuditAction::KeyRevoked, &key),
            )?;
            Ok(Versioned {
                value: load_key(c, key_id)?,
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
        self.write(|c| {
            let key = load_key(c, key_id)?;
            if !disable_changes(&key, disabled, now)? {
                return Ok(Versioned {
                    value: key,
                    version: current_version(c)?,
                });
            }
            let disabled_at = disabled.then_some(signed(now)?);
            c.execute(
                "UPDATE keys SET disabled_at = $1 WHERE id = $2",
                &[&disabled_at, &key_id],
            )?;
            let version = self.issue_version(c, &[(&key.digest, ChangeOp::Upsert)])?;
            let action = if disabled {
                AuditAction::KeyDisabled
            } else {
                AuditAction::KeyEnabled
            };
            record(c, now, actor, super::audit::key_event(action, &key))?;
            Ok(Versioned {
                value: load_key(c, key_id)?,
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
        self.write(|c| {
            let key = load_key(c, key_id)?;
            if !limit_changes(&key, limit, now)? {
                return Ok(Versioned {
                    value: key,
                    version: current_version(c)?,
                });
            }
            let (requests, per, burst) = limit_columns(limit);
            c.execute(
                "UPDATE keys SET rate_requests = $1, rate_per = $2, rate_burst = $3 WHERE id = $4",
                &[
                    &requests.map(signed).transpose()?,
                    &per,
                    &burst.map(signed).transpose()?,
                    &key_id,
                ],
            )?;
            let version = self.issue_version(c, &[(&key.digest, ChangeOp::Upsert)])?;
            let changed = load_key(c, key_id)?;
            record(c, now, actor, super::audit::key_rate_limit(&changed))?;
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
        self.write(|c| {
            let account = load_account(c, account_id)?;
            if !account_limit_changes(&account, limit)? {
                return Ok(Versioned {
                    value: account,
                    version: current_version(c)?,
                });
            }
            let (requests, per, burst) = limit_columns(limit);
            c.execute(
                "UPDATE accounts SET rate_requests = $1, rate_per = $2, rate_burst = $3 \
                 WHERE id = $4",
                &[
                    &requests.map(signed).transpose()?,
                    &per,
                    &burst.map(signed).transpose()?,
                    &account_id,
                ],
            )?;
            // The entries that change: the account's keys in the map without a limit of
            // their own. The version moves even when there are none, like any change.
            let inheriting = query_keys(
                c,
                "WHERE account_id = $1 AND removed_at IS NULL AND rate_requests IS NULL",
                &[&account_id],
            )?;
            let changes: Vec<_> = inheriting
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(c, &changes)?;
            let changed = load_account(c, account_id)?;
            record(c, now, actor, super::audit::account_rate_limit(&changed))?;
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
        // Not a key-map change: no version, no key map lock; the key's row lock orders
        // renames of one key.
        self.transaction(WRITE_BEGIN, |c| {
            let key = query_keys(c, "WHERE id = $1 FOR UPDATE", &[&key_id])?
                .pop()
                .ok_or_else(|| StoreError::KeyNotFound(key_id.to_string()))?;
            if !name_changes(&key, name) {
                return Ok(key);
            }
            c.execute("UPDATE keys SET name = $1 WHERE id = $2", &[&name, &key_id])?;
            let renamed = load_key(c, key_id)?;
            record(c, now, actor, super::audit::key_renamed(&renamed))?;
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
        // Every replica's purge timer lands here; most find nothing, and take no lock.
        let idle = self.read(|c| {
            Ok(if purge_due(c, now)? {
                None
            } else {
                Some(current_version(c)?)
            })
        })?;
        match idle {
            Some(version) => Ok(Versioned {
                value: Vec::new(),
                version,
            }),
            None => self.write(|c| self.purge_in(c, now)),
        }
    }

    fn read_key_map(&self, since: Option<u64>, now: u64) -> StoreResult<StoredKeyMap> {
        self.read_after_purge(now, |c| {
            if let Some(since) = since {
                if let DeltaLookup::Delta(delta) = delta_in(c, since, now)? {
                    return Ok(delta);
                }
            }
            full_in(c, now)
        })
    }

    fn key_map_delta(&self, since: u64, now: u64) -> StoreResult<DeltaLookup> {
        self.read_after_purge(now, |c| delta_in(c, since, now))
    }

    fn key_map_size(&self, now: u64) -> StoreResult<u64> {
        self.read(|c| {
            // The keys `KeyRecord::in_key_map` keeps.
            let count: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL AND removed_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1)",
                    &[&signed(now)?],
                )?
                .try_get(0)?;
            unsigned(count)
        })
    }

    fn key_map_status(&self) -> StoreResult<KeyMapStatus> {
        self.read(status_in)
    }

    fn record_restore(&self, store: &StoreId, seen: u64) -> StoreResult<Option<u64>> {
        self.write(|c| {
            if store_id(c)? != *store || current_version(c)? >= seen {
                return Ok(None);
            }
            self.issue_version(c, &[]).map(Some)
        })
    }

    fn new_lineage(&self) -> StoreResult<KeyMapStatus> {
        let store = StoreId::random()?;
        let version = signed(lineage_start((self.clock)()))?;
        // Nothing here reads the old version: it may be the rogue value being replaced.
        self.write(|c| {
            c.batch_execute("DELETE FROM keymap_changes; DELETE FROM keymap_versions")?;
            c.execute(
                "INSERT INTO keymap_versions (version) VALUES ($1)",
                &[&version],
            )?;
            c.execute(
                "UPDATE keymap_state SET version = $1, log_start = $1 WHERE id = 1",
                &[&version],
            )?;
            set_setting(c, STORE_ID_SETTING, store.as_str())?;
            c.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANGE_CHANNEL, &version.to_string()],
            )?;
            status_in(c)
        })
    }

    fn admin_token_digest(&self) -> StoreResult<Option<Digest>> {
        self.read(|c| digest_setting(c, ADMIN_TOKEN_SETTING))
    }

    fn set_admin_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
        self.transaction(WRITE_BEGIN, |c| {
            let previous = locked_digest_setting(c, ADMIN_TOKEN_SETTING)?;
            set_setting(c, ADMIN_TOKEN_SETTING, &digest.to_hex())?;
            if let Some(action) = token_action(previous.as_ref(), digest, true) {
                record(c, now, actor, NewAuditEvent::new(action))?;
            }
            // Running replicas take the new token at once.
            c.execute("SELECT pg_notify($1, 'admin_token')", &[&CHANGE_CHANNEL])?;
            Ok(())
        })
    }

    fn sync_token_digest(&self) -> StoreResult<Option<Digest>> {
        self.read(|c| digest_setting(c, SYNC_TOKEN_SETTING))
    }

    fn set_sync_token_digest(&self, digest: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
        self.transaction(WRITE_BEGIN, |c| {
            let previous = locked_digest_setting(c, SYNC_TOKEN_SETTING)?;
            set_setting(c, SYNC_TOKEN_SETTING, &digest.to_hex())?;
            if let Some(action) = token_action(previous.as_ref(), digest, false) {
                record(c, now, actor, NewAuditEvent::new(action))?;
            }
            c.execute("SELECT pg_notify($1, 'sync_token')", &[&CHANGE_CHANNEL])?;
            Ok(())
        })
    }

    fn watch_changes(&self, on_change: Box<dyn Fn() + Send>) -> StoreResult<bool> {
        let client = listen(&self.pool.target, &self.pool.connector)?;
        let target = self.pool.target.clone();
        let connector = self.pool.connector.clone();
        let alive = Arc::downgrade(&self.pool);
        std::thread::Builder::new()
            .name("keygate-listen".into())
            .spawn(move || {
                follow_changes(client, (&target, &connector), &alive, on_change.as_ref())
            })
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(true)
    }
}

/// A connection LISTENing on the change channel.
fn listen(target: &Target, connector: &MakeRustlsConnect) -> StoreResult<Client> {
    let mut client = connect(target, connector)?;
    client.batch_execute(&format!("LISTEN {CHANGE_CHANNEL}"))?;
    Ok(client)
}

enum Heard {
    Change,
    Quiet,
    Lost(String),
}

/// Waits up to `LISTEN_CHECK` for notifications; several at once are one change.
fn wait_for_change(client: &mut Client) -> Heard {
    let first = client.notifications().timeout_iter(LISTEN_CHECK).next();
    match first {
        Ok(Some(_)) => {
            // Take whatever else already arrived: one refresh covers it all.
            let mut notifications = client.notifications();
            let mut pending = notifications.iter();
            while let Ok(Some(_)) = pending.next() {}
            Heard::Change
        }
        Err(e) => Heard::Lost(error_detail(&e)),
        // A quiet spell, or a closed connection: ask.
        Ok(None) => match client.is_valid(Duration::from_secs(5)) {
            Ok(()) if !client.is_closed() => Heard::Quiet,
            Ok(()) => Heard::Lost("the connection closed".into()),
            Err(e) => Heard::Lost(error_detail(&e)),
        },
    }
}

/// The listener thread: calls `on_change` for every burst of notifications, reconnects when
/// the connection is lost (and then calls `on_change`, as notifications may have been missed
/// meanwhile), and ends once the store is dropped.
fn follow_changes(
    mut client: Client,
    (target, connector): (&Target, &MakeRustlsConnect),
    alive: &Weak<Pool>,
    on_change: &dyn Fn(),
) {
    loop {
        let heard = wait_for_change(&mut client);
        if alive.strong_count() == 0 {
            return;
        }
        match heard {
            Heard::Change => on_change(),
            Heard::Quiet => {}
            Heard::Lost(reason) => {
                log_event(&format!(
                    "lost the PostgreSQL change listener ({reason}); reconnecting (meanwhile \
                     changes from other replicas arrive within a second)"
                ));
                let mut delay = LISTEN_RETRY.0;
                client = loop {
                    std::thread::sleep(delay);
                    if alive.strong_count() == 0 {
                        return;
                    }
                    match listen(target, connector) {
                        Ok(client) => break client,
                        Err(_) => delay = (delay * 2).min(LISTEN_RETRY.1),
                    }
                };
                log_event("the PostgreSQL change listener is back");
                on_change();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Ends `client`'s server process from another connection once it is running a
    /// statement (not idle): the reason then comes as that statement's answer.
    fn end_while_busy(client: &mut Client, server: &Target) -> std::thread::JoinHandle<()> {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pid")
            .get(0);
        let mut admin = server.config.connect(postgres::NoTls).expect("admin");
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let state: Option<String> = admin
                    .query_one("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
                    .expect("state")
                    .get(0);
                if state.as_deref() == Some("active") {
                    break;
                }
                assert!(Instant::now() < deadline, "the statement never started");
                std::thread::sleep(Duration::from_millis(10));
            }
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .expect("terminate");
        })
    }

    /// A pooled connection that the server ends just as it is used (a busy machine, a
    /// failover) answers the pool's BEGIN with the reason, "terminating connection due to
    /// administrator command" (57P01), rather than as a closed connection: the pool must
    /// take that for a gone connection and begin on another, as it does for a closed one.
    #[test]
    fn a_connection_ended_by_the_server_as_it_begins_is_replaced() {
        let Some(url) = std::env::var("KEYGATE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            return eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is unset");
        };
        // Plain TCP: over TLS the reason may be lost to the closing of the TLS session, and
        // the connection seen closed instead (the other case the pool handles).
        let sep = if url.contains('?') { '&' } else { '?' };
        let target = parse_url(&format!("{url}{sep}sslmode=disable")).expect("url");
        let pool = Pool::new(target.clone()).expect("pool");
        // Only the marked connection waits in its begin; a new one begins at once.
        let begin = "SELECT pg_sleep(30) WHERE current_setting('keygate.doomed', true) = 'yes'; \
                     BEGIN";
        let mark = |client: &mut Client| {
            client
                .batch_execute("SET keygate.doomed = 'yes'")
                .expect("mark");
        };
        // What such a connection answers: the reason as its BEGIN's answer, or (when the
        // end of the connection is read with it) a closed connection; the first is seen
        // within a few tries.
        let reason_seen = (0..20).any(|_| {
            let mut witness = pool.connect().expect("connect");
            mark(&mut witness);
            let ender = end_while_busy(&mut witness, &target);
            let e = witness.batch_execute(begin).expect_err("ended");
            ender.join().expect("ender");
            assert!(connection_gone(&e), "{e}");
            e.code() == Some(&SqlState::ADMIN_SHUTDOWN)
        });
        assert!(reason_seen, "the server's reason never came as an answer");
        // The pool: the marked idle connection is ended in its begin, a new one begins.
        // Several rounds, so that the reason comes as the answer in some of them.
        for _ in 0..8 {
            let mut doomed = pool.connect().expect("connect");
            mark(&mut doomed);
            let ender = end_while_busy(&mut doomed, &target);
            pool.give_back(doomed);
            let mut client = pool.begin(begin).expect("begun on a new connection");
            ender.join().expect("ender");
            client.batch_execute("ROLLBACK").expect("rollback");
        }
    }
}
