//! The store's behaviour through the `Store` trait, written once and run on both backends:
//! `tests::sqlite::*` on real SQLite files, `tests::postgres::*` each on a new database of the
//! PostgreSQL server that KEYGATE_TEST_POSTGRES_URL names (`scripts/postgres.sh run cargo
//! test` starts one). The PostgreSQL runs are skipped, with a note on stderr, only when that
//! variable is unset; a server that is set but unreachable fails them.

use super::*;
use crate::store::audit::who;
use keygate_core::key::{Environment, KeyType};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A version clock the test sets. Most tests keep it at 0, so that versions count 1, 2, 3…
/// (a change takes the larger of the previous version + 1 and the clock) and can be named.
#[derive(Clone, Default)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn at(ms: u64) -> TestClock {
        let clock = TestClock::default();
        clock.set(ms);
        clock
    }

    fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    fn options(&self, change_log_limit: u64) -> StoreOptions {
        let now = Arc::clone(&self.0);
        StoreOptions {
            change_log_limit,
            clock: Arc::new(move || now.load(Ordering::SeqCst)),
        }
    }
}

/// One backend's new, empty database. Every `open` is another connection to the same data:
/// another process's, or another replica's.
trait TestDb: Sync {
    fn try_open_with(&self, options: StoreOptions) -> StoreResult<Box<dyn Store>>;
    fn try_open(&self, change_log_limit: u64) -> StoreResult<Box<dyn Store>> {
        self.try_open_with(TestClock::default().options(change_log_limit))
    }
    fn open(&self) -> Box<dyn Store> {
        self.try_open(DEFAULT_CHANGE_LOG_LIMIT).expect("open")
    }
    fn open_with_change_log_limit(&self, limit: u64) -> Box<dyn Store> {
        self.try_open(limit).expect("open")
    }
    fn open_with_clock(&self, clock: &TestClock) -> Box<dyn Store> {
        self.try_open_with(clock.options(DEFAULT_CHANGE_LOG_LIMIT))
            .expect("open")
    }
    /// Runs SQL on the database directly, as an operator's tool would.
    fn execute(&self, sql: &str);
    /// A copy of the database as it is now, and a way to put it back (a backup and its
    /// restore), for the restore tests.
    fn backup(&self) -> Box<dyn Fn() + '_>;
    /// The schema version the database records.
    fn schema_version(&self) -> u32;
    /// Records another schema version, as a newer keygatectl would.
    fn set_schema_version(&self, version: u32);
    /// Sets the database up as keygatectl before store ids (schema version 1) left it.
    fn create_v1_schema(&self);
}

struct SqliteDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteDb {
    fn new() -> SqliteDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keygate.db");
        SqliteDb { _dir: dir, path }
    }

    /// A consistent copy of the database as it is now (`VACUUM INTO`), beside it.
    fn backup_file(&self) -> PathBuf {
        let copy = self.path.with_extension("backup");
        let _ = std::fs::remove_file(&copy);
        let conn = rusqlite::Connection::open(&self.path).expect("raw open");
        conn.execute("VACUUM INTO ?1", [copy.to_str().expect("utf-8 path")])
            .expect("backup");
        copy
    }
}

impl TestDb for SqliteDb {
    fn try_open_with(&self, options: StoreOptions) -> StoreResult<Box<dyn Store>> {
        Ok(Box::new(SqliteStore::open_with(&self.path, options)?))
    }

    fn execute(&self, sql: &str) {
        let conn = rusqlite::Connection::open(&self.path).expect("raw open");
        conn.execute_batch(sql).expect("execute");
    }

    /// A consistent copy in a file beside; the restore writes it back into the live
    /// database with SQLite's backup API, as `sqlite3 keygate.db ".restore BACKUP"` does.
    fn backup(&self) -> Box<dyn Fn() + '_> {
        let copy = self.backup_file();
        Box::new(move || {
            let mut live = rusqlite::Connection::open(&self.path).expect("raw open");
            live.busy_timeout(Duration::from_secs(10))
                .expect("busy timeout");
            live.restore(
                rusqlite::MAIN_DB,
                &copy,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .expect("restore");
        })
    }

    fn schema_version(&self) -> u32 {
        let conn = rusqlite::Connection::open(&self.path).expect("raw open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("user_version")
    }

    fn set_schema_version(&self, version: u32) {
        let conn = rusqlite::Connection::open(&self.path).expect("raw open");
        conn.pragma_update(None, "user_version", version)
            .expect("set user_version");
    }

    fn create_v1_schema(&self) {
        let conn = rusqlite::Connection::open(&self.path).expect("raw open");
        conn.execute_batch(include_str!("migrations/sqlite/0001_initial.sql"))
            .expect("schema 1");
        conn.pragma_update(None, "user_version", 1)
            .expect("user_version");
    }
}

/// A database of its own on the test server, dropped afterwards.
struct PostgresDb {
    server: ::postgres::Config,
    name: String,
    target: super::postgres::Target,
}

impl PostgresDb {
    /// `None` when KEYGATE_TEST_POSTGRES_URL is unset.
    fn create() -> Option<PostgresDb> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = std::env::var("KEYGATE_TEST_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty())?;
        let target = super::postgres::parse_url(&url).expect("KEYGATE_TEST_POSTGRES_URL");
        let server = target.config.clone();
        let name = format!(
            "keygate_store_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = server.connect(::postgres::NoTls).unwrap_or_else(|e| {
            panic!("KEYGATE_TEST_POSTGRES_URL is set but the server is unreachable: {e}")
        });
        // Each its own statement: neither may run inside a transaction block.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .expect("drop a stale test database");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        let mut target = target;
        target.config.dbname(&name);
        Some(PostgresDb {
            server,
            name,
            target,
        })
    }

    fn client(&self) -> ::postgres::Client {
        self.target
            .config
            .connect(::postgres::NoTls)
            .expect("connect to the test database")
    }

    /// Ends every other connection to the test database, as a server restart would.
    /// Waits (up to 5 s) until the database has at least `n` connections besides ours: the
    /// listener connects in the background.
    fn wait_for_connections(&self, n: usize) {
        let mut client = self.client();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let rows = client
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&self.name],
                )
                .expect("pg_stat_activity");
            if rows.len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends every other connection to the test database and waits (up to 5 s) until they
    /// are gone: each has sent its reason by then. Answers how many were ended.
    fn terminate_connections_and_wait(&self) -> usize {
        let mut client = self.client();
        let ended: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .expect("pg_stat_activity")
            .iter()
            .map(|row| row.get(0))
            .collect();
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                &[&ended],
            )
            .expect("terminate");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: i64 = client
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                    &[&ended],
                )
                .expect("pg_stat_activity")
                .get(0);
            if left == 0 {
                return ended.len();
            }
            assert!(
                Instant::now() < deadline,
                "ended connections are still there"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = self.server.connect(::postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

impl TestDb for PostgresDb {
    fn try_open_with(&self, options: StoreOptions) -> StoreResult<Box<dyn Store>> {
        Ok(Box::new(PostgresStore::open(self.target.clone(), options)?))
    }

    fn execute(&self, sql: &str) {
        self.client().batch_execute(sql).expect("execute");
    }

    /// The key map's tables as they are now; the restore writes them back in place (what
    /// pg_restore of a dump of them does).
    fn backup(&self) -> Box<dyn Fn() + '_> {
        let backup = format!("backup_{}", self.name);
        self.client()
            .batch_execute(&format!(
                "CREATE SCHEMA {backup}; \
                 CREATE TABLE {backup}.keymap_state AS SELECT * FROM keymap_state; \
                 CREATE TABLE {backup}.keymap_versions AS SELECT * FROM keymap_versions; \
                 CREATE TABLE {backup}.keymap_changes AS SELECT * FROM keymap_changes; \
                 CREATE TABLE {backup}.keys AS SELECT * FROM keys; \
                 CREATE TABLE {backup}.settings AS SELECT * FROM settings"
            ))
            .expect("backup");
        Box::new(move || {
            self.client()
                .batch_execute(&format!(
                    "BEGIN; \
                     DELETE FROM keymap_changes; DELETE FROM keymap_versions; \
                     UPDATE keys SET replaced_by = NULL; DELETE FROM keys; \
                     INSERT INTO keys OVERRIDING SYSTEM VALUE SELECT * FROM {backup}.keys; \
                     INSERT INTO keymap_versions SELECT * FROM {backup}.keymap_versions; \
                     INSERT INTO keymap_changes SELECT * FROM {backup}.keymap_changes; \
                     UPDATE keymap_state SET version = b.version, log_start = b.log_start \
                       FROM {backup}.keymap_state b WHERE keymap_state.id = b.id; \
                     DELETE FROM settings; INSERT INTO settings SELECT * FROM {backup}.settings; \
                     COMMIT"
                ))
                .expect("restore");
        })
    }

    fn schema_version(&self) -> u32 {
        super::postgres::schema_version(&mut self.client())
            .expect("schema version")
            .expect("a migrated database")
    }

    fn set_schema_version(&self, version: u32) {
        self.client()
            .execute(
                "INSERT INTO keygate_schema_migrations (version) VALUES ($1)",
                &[&(version as i32)],
            )
            .expect("set schema version");
    }

    fn create_v1_schema(&self) {
        let mut client = self.client();
        client
            .batch_execute(include_str!("migrations/postgres/0001_initial.sql"))
            .expect("schema 1");
        client
            .batch_execute(
                "CREATE TABLE keygate_schema_migrations (version INTEGER PRIMARY KEY, \
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
                 INSERT INTO keygate_schema_migrations (version) VALUES (1)",
            )
            .expect("schema 1 recorded");
    }
}

/// Runs each named test (a `fn(&dyn TestDb)`) on both backends.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::SqliteDb::new());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    match super::PostgresDb::create() {
                        Some(db) => super::$test(&db),
                        None => super::skipped(),
                    }
                }
            )*
        }
    };
}

fn skipped() {
    // `make test` sets this: a missing server fails the suite instead of passing it quietly.
    if std::env::var("KEYGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("KEYGATE_REQUIRE_POSTGRES=1 but KEYGATE_TEST_POSTGRES_URL is unset");
    }
    eprintln!(
        "skipped: KEYGATE_TEST_POSTGRES_URL is unset (scripts/postgres.sh run cargo test \
         starts a PostgreSQL for these tests)"
    );
}

on_both_backends!(
    an_account_is_created_with_four_keys_of_the_four_kinds,
    unknown_accounts_and_keys_are_not_found,
    rolling_without_grace_stops_the_old_key_at_once,
    rolling_with_grace_keeps_the_old_key_until_its_expiry_then_purges_it,
    reading_the_map_after_an_expiry_purges_it,
    a_key_cannot_be_rolled_twice_or_after_it_left_the_map,
    revoking_removes_the_key_and_records_when,
    disabled_keys_stay_in_the_map_marked_disabled,
    versions_strictly_rise_with_every_change,
    a_delta_since_any_version_holds_exactly_the_changes_after_it,
    a_since_older_than_the_change_log_or_in_the_future_gets_the_full_map,
    a_failing_change_leaves_nothing_half_written,
    the_schema_is_versioned_and_data_survives_reopening,
    concurrent_rolls_and_reads_keep_the_store_consistent,
    several_processes_opening_a_new_database_migrate_it_once,
    two_stores_over_one_database_answer_the_same_map_for_the_same_version,
    listings_keep_creation_order,
    versions_follow_the_clock_and_never_repeat,
    deltas_are_answered_only_from_versions_this_store_issued,
    the_change_log_keeps_the_last_versions_by_count,
    the_store_id_is_made_once_kept_on_reopening_and_shared_by_connections,
    a_restored_database_moves_past_every_version_it_handed_out,
    a_rogue_version_refuses_changes_until_a_new_lineage,
    a_schema_1_database_gets_an_id_and_keeps_its_counter_and_deltas,
    the_sync_token_digest_is_kept_and_shared,
);

// Users, sign-ups, resets and sessions, on both backends too.
mod customers;
// Names, expiries, the audit trail, bulk import and usage.
mod activity;
// Per-key rate limits.
mod rate_limits;
// Accounts' default rate limits.
mod account_rate_limits;
mod tls;

fn new_key(account_id: &str, kind: KeyKind, name: &str) -> NewKey {
    NewKey {
        key_id: format!("key_{name}"),
        account_id: account_id.into(),
        kind,
        digest: Digest::of_key(name),
        hint: format!("{}…{name}", kind.prefix()),
        origin: KeyOrigin::Issued,
        name: None,
        expires_at: None,
    }
}

fn account(id: &str, now: u64) -> Account {
    Account {
        id: id.into(),
        name: None,
        created_at: now,
        disabled_at: None,
        rate_limit: None,
    }
}

/// Creates account `id` with its four keys named `<id>-0` … `<id>-3`.
fn create(store: &dyn Store, id: &str, now: u64) -> Versioned<AccountWithKeys> {
    let keys: Vec<NewKey> = KeyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| new_key(id, kind, &format!("{id}-{i}")))
        .collect();
    store
        .create_account(&account(id, now), &keys, &who())
        .expect("create account")
}

type Map = BTreeMap<String, RawKey>;

fn full(store: &dyn Store, now: u64) -> (u64, Map) {
    match store.key_map(None, now).expect("key map") {
        KeyMapMessage::Full { version, keys } => (
            version,
            keys.into_iter().map(|k| (k.digest.clone(), k)).collect(),
        ),
        other => panic!("expected a full map, got {other:?}"),
    }
}

fn apply(map: &mut Map, message: KeyMapMessage) -> u64 {
    match message {
        KeyMapMessage::Full { version, keys } => {
            *map = keys.into_iter().map(|k| (k.digest.clone(), k)).collect();
            version
        }
        KeyMapMessage::Delta {
            version,
            upserts,
            removes,
            ..
        } => {
            for digest in removes {
                map.remove(&digest);
            }
            for key in upserts {
                map.insert(key.digest.clone(), key);
            }
            version
        }
    }
}

fn hex(name: &str) -> String {
    Digest::of_key(name).to_hex()
}

fn an_account_is_created_with_four_keys_of_the_four_kinds(db: &dyn TestDb) {
    let store = db.open();
    let created = create(&*store, "acct_a", 100);
    assert_eq!(created.version, 1);
    let kinds: Vec<KeyKind> = created.value.keys.iter().map(|k| k.kind).collect();
    assert_eq!(kinds, KeyKind::ALL.to_vec());
    assert!(created
        .value
        .keys
        .iter()
        .all(|k| k.status(100) == KeyStatus::Active && k.created_at == 100));
    assert_eq!(
        store.accounts().expect("accounts"),
        vec![account("acct_a", 100)]
    );
    assert_eq!(store.keys(Some("acct_a")).expect("keys").len(), 4);
    let (version, map) = full(&*store, 100);
    assert_eq!((version, map.len()), (1, 4));
    let entry = &map[&hex("acct_a-1")];
    assert_eq!(entry.key_type, KeyType::Publishable);
    assert_eq!(entry.environment, Environment::Test);
    assert_eq!((entry.expires_at, entry.disabled), (None, false));
}

fn unknown_accounts_and_keys_are_not_found(db: &dyn TestDb) {
    let store = db.open();
    assert!(matches!(
        store.account("acct_x"),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.keys(Some("acct_x")),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.key("key_x"),
        Err(StoreError::KeyNotFound(_))
    ));
    let orphan = new_key("acct_x", KeyKind::ALL[0], "orphan");
    assert!(matches!(
        store.add_key(&orphan, 1, &who()),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.revoke_key("key_x", 1, &who()),
        Err(StoreError::KeyNotFound(_))
    ));
    assert_eq!(store.key_map_status().expect("status").version, 0);
}

fn rolling_without_grace_stops_the_old_key_at_once(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let replacement = new_key("a", KeyKind::ALL[0], "a-0-next");
    let rolled = store
        .roll_key("key_a-0", &replacement, 0, 200, &who())
        .expect("roll");
    assert_eq!(rolled.version, 2);
    let old = &rolled.value.old;
    assert_eq!(old.status(200), KeyStatus::Expired);
    assert_eq!(
        (old.rolled_at, old.expires_at, old.removed_at),
        (Some(200), Some(200), Some(200))
    );
    assert_eq!(old.replaced_by.as_deref(), Some("key_a-0-next"));
    assert_eq!(rolled.value.new.status(200), KeyStatus::Active);
    let (_, map) = full(&*store, 200);
    assert!(!map.contains_key(&hex("a-0")));
    assert!(map.contains_key(&hex("a-0-next")));
    // The roll is one change: the new key in, the old one out.
    assert_eq!(
        store.key_map(Some(1), 200).expect("delta"),
        KeyMapMessage::Delta {
            version: 2,
            since: 1,
            upserts: vec![rolled.value.new.to_raw_key(None)],
            removes: vec![hex("a-0")],
        }
    );
}

fn rolling_with_grace_keeps_the_old_key_until_its_expiry_then_purges_it(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let replacement = new_key("a", KeyKind::ALL[1], "a-1-next");
    let rolled = store
        .roll_key("key_a-1", &replacement, 3600, 200, &who())
        .expect("roll");
    let old = &rolled.value.old;
    assert_eq!(old.status(200), KeyStatus::Expiring);
    assert_eq!((old.expires_at, old.removed_at), (Some(3800), None));
    let (version, map) = full(&*store, 3799);
    assert_eq!(version, 2);
    assert_eq!(map[&hex("a-1")].expires_at, Some(3800));
    assert_eq!(
        store.key_map_status().expect("status").next_expiry,
        Some(3800)
    );
    // Nothing to purge a second early; at the expiry the key leaves in a new version.
    assert!(store.purge_expired(3799).expect("purge").value.is_empty());
    let purged = store.purge_expired(3800).expect("purge");
    assert_eq!(purged.version, 3);
    assert_eq!(purged.value.len(), 1);
    assert_eq!(purged.value[0].removed_at, Some(3800));
    assert_eq!(purged.value[0].status(3800), KeyStatus::Expired);
    assert_eq!(store.key_map_status().expect("status").next_expiry, None);
    assert_eq!(
        store.key_map(Some(2), 3800).expect("delta"),
        KeyMapMessage::Delta {
            version: 3,
            since: 2,
            upserts: vec![],
            removes: vec![hex("a-1")],
        }
    );
}

fn reading_the_map_after_an_expiry_purges_it(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    store
        .roll_key(
            "key_a-2",
            &new_key("a", KeyKind::ALL[2], "next"),
            60,
            100,
            &who(),
        )
        .expect("roll");
    let (version, map) = full(&*store, 160);
    assert_eq!(version, 3, "the read purged, in a version of its own");
    assert!(!map.contains_key(&hex("a-2")));
    assert_eq!(store.key("key_a-2").expect("key").removed_at, Some(160));
}

fn a_key_cannot_be_rolled_twice_or_after_it_left_the_map(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    store
        .roll_key(
            "key_a-0",
            &new_key("a", KeyKind::ALL[0], "n1"),
            600,
            100,
            &who(),
        )
        .expect("roll");
    let again = store.roll_key(
        "key_a-0",
        &new_key("a", KeyKind::ALL[0], "n2"),
        0,
        101,
        &who(),
    );
    assert!(matches!(again, Err(StoreError::KeyState { .. })));
    store.revoke_key("key_a-1", 102, &who()).expect("revoke");
    let revoked = store.roll_key(
        "key_a-1",
        &new_key("a", KeyKind::ALL[1], "n3"),
        0,
        103,
        &who(),
    );
    assert!(matches!(revoked, Err(StoreError::KeyState { .. })));
    // A replacement of another kind is a caller's bug, refused.
    let mismatch = store.roll_key(
        "key_a-2",
        &new_key("a", KeyKind::ALL[0], "n4"),
        0,
        104,
        &who(),
    );
    assert!(matches!(mismatch, Err(StoreError::KeyMismatch(_))));
    assert_eq!(store.key_map_status().expect("status").version, 3);
}

fn revoking_removes_the_key_and_records_when(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let revoked = store.revoke_key("key_a-3", 150, &who()).expect("revoke");
    assert_eq!(revoked.version, 2);
    assert_eq!(revoked.value.revoked_at, Some(150));
    assert_eq!(revoked.value.status(150), KeyStatus::Revoked);
    assert!(!full(&*store, 150).1.contains_key(&hex("a-3")));
    // Again: nothing changes, the first time stays.
    let again = store
        .revoke_key("key_a-3", 999, &who())
        .expect("revoke again");
    assert_eq!((again.version, again.value.revoked_at), (2, Some(150)));
    // A revoked key cannot come back.
    assert!(matches!(
        store.set_key_disabled("key_a-3", false, 200, &who()),
        Err(StoreError::KeyState { .. })
    ));
}

fn disabled_keys_stay_in_the_map_marked_disabled(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let disabled = store
        .set_key_disabled("key_a-0", true, 110, &who())
        .expect("disable");
    assert_eq!(disabled.version, 2);
    assert_eq!(disabled.value.status(110), KeyStatus::Disabled);
    assert!(full(&*store, 110).1[&hex("a-0")].disabled);
    // Disabling twice is no change.
    assert_eq!(
        store
            .set_key_disabled("key_a-0", true, 111, &who())
            .expect("again")
            .version,
        2
    );
    let enabled = store
        .set_key_disabled("key_a-0", false, 120, &who())
        .expect("enable");
    assert_eq!((enabled.version, enabled.value.disabled_at), (3, None));
    assert!(!full(&*store, 120).1[&hex("a-0")].disabled);
}

fn versions_strictly_rise_with_every_change(db: &dyn TestDb) {
    let store = db.open();
    let mut versions = vec![create(&*store, "a", 1).version];
    versions.push(
        store
            .add_key(&new_key("a", KeyKind::ALL[0], "extra"), 2, &who())
            .expect("add")
            .version,
    );
    versions.push(
        store
            .set_key_disabled("key_extra", true, 3, &who())
            .expect("disable")
            .version,
    );
    versions.push(
        store
            .roll_key("key_a-0", &new_key("a", KeyKind::ALL[0], "r"), 5, 4, &who())
            .expect("roll")
            .version,
    );
    versions.push(
        store
            .revoke_key("key_a-1", 5, &who())
            .expect("revoke")
            .version,
    );
    versions.push(store.purge_expired(10).expect("purge").version);
    versions.push(create(&*store, "b", 11).version);
    assert_eq!(versions, (1..=7).collect::<Vec<u64>>());
}

fn a_delta_since_any_version_holds_exactly_the_changes_after_it(db: &dyn TestDb) {
    let store = db.open();
    let mut snapshots = vec![full(&*store, 0)];
    create(&*store, "a", 1);
    snapshots.push(full(&*store, 1));
    create(&*store, "b", 2);
    snapshots.push(full(&*store, 2));
    store
        .roll_key(
            "key_a-0",
            &new_key("a", KeyKind::ALL[0], "a-0-r"),
            0,
            3,
            &who(),
        )
        .expect("roll");
    snapshots.push(full(&*store, 3));
    store
        .set_key_disabled("key_b-1", true, 4, &who())
        .expect("disable");
    snapshots.push(full(&*store, 4));
    store.revoke_key("key_b-2", 5, &who()).expect("revoke");
    let (current, expected) = full(&*store, 5);
    assert_eq!(current, 5);
    // Since 2: exactly the roll (one in, one out), the disable and the revoke.
    let KeyMapMessage::Delta {
        upserts, removes, ..
    } = store.key_map(Some(2), 5).expect("delta")
    else {
        panic!("expected a delta");
    };
    let mut upserted: Vec<&str> = upserts.iter().map(|k| k.key_id.as_str()).collect();
    upserted.sort_unstable();
    assert_eq!(upserted, ["key_a-0-r", "key_b-1"]);
    let mut removed = removes.clone();
    removed.sort();
    let mut expected_removes = vec![hex("a-0"), hex("b-2")];
    expected_removes.sort();
    assert_eq!(removed, expected_removes);
    // From every earlier snapshot, its delta leads to the current map.
    for (version, snapshot) in snapshots {
        let mut map = snapshot;
        let delta = store.key_map(Some(version), 5).expect("delta");
        assert!(matches!(delta, KeyMapMessage::Delta { .. }));
        assert_eq!(apply(&mut map, delta), 5);
        assert_eq!(map, expected, "delta since {version}");
    }
    // Since now: an empty delta.
    assert_eq!(
        store.key_map(Some(5), 5).expect("delta"),
        KeyMapMessage::Delta {
            version: 5,
            since: 5,
            upserts: vec![],
            removes: vec![]
        }
    );
}

fn a_since_older_than_the_change_log_or_in_the_future_gets_the_full_map(db: &dyn TestDb) {
    let store = db.open_with_change_log_limit(3);
    for i in 0..6 {
        create(&*store, &format!("acct_{i}"), i);
    }
    // Version 6, log kept for versions 4..=6: deltas answer since 3 and later.
    assert!(matches!(
        store.key_map(Some(2), 6),
        Ok(KeyMapMessage::Full { version: 6, .. })
    ));
    assert!(matches!(
        store.key_map(Some(3), 6),
        Ok(KeyMapMessage::Delta { since: 3, .. })
    ));
    assert!(matches!(
        store.key_map(Some(7), 6),
        Ok(KeyMapMessage::Full { version: 6, .. })
    ));
    let KeyMapMessage::Delta { upserts, .. } = store.key_map(Some(3), 6).expect("delta") else {
        panic!("expected a delta");
    };
    assert_eq!(upserts.len(), 12);
}

fn a_failing_change_leaves_nothing_half_written(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    // The third key's digest is taken: the account and its first two keys must not stay.
    let mut keys: Vec<NewKey> = KeyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| new_key("b", kind, &format!("b-{i}")))
        .collect();
    keys[2].digest = Digest::of_key("a-2");
    let failed = store.create_account(&account("b", 2), &keys, &who());
    assert!(matches!(failed, Err(StoreError::DuplicateDigest(ref holder)) if holder == "key_a-2"));
    assert!(matches!(
        store.account("b"),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.key("key_b-0"),
        Err(StoreError::KeyNotFound(_))
    ));
    // A roll whose replacement collides leaves the old key as it was.
    let before = store.key("key_a-0").expect("key");
    let mut replacement = new_key("a", KeyKind::ALL[0], "r");
    replacement.digest = Digest::of_key("a-1");
    assert!(store
        .roll_key("key_a-0", &replacement, 0, 3, &who())
        .is_err());
    assert_eq!(store.key("key_a-0").expect("key"), before);
    assert!(matches!(
        store.key("key_r"),
        Err(StoreError::KeyNotFound(_))
    ));
    // No version was used and no change recorded.
    assert_eq!(store.key_map_status().expect("status").version, 1);
    assert_eq!(
        store.key_map(Some(1), 3).expect("delta"),
        KeyMapMessage::Delta {
            version: 1,
            since: 1,
            upserts: vec![],
            removes: vec![]
        }
    );
}

fn the_schema_is_versioned_and_data_survives_reopening(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    store
        .set_admin_token_digest(&Digest::of_key("token"), 1, &who())
        .expect("set token");
    drop(store);
    let store = db.open();
    assert_eq!(store.keys(None).expect("keys").len(), 4);
    assert_eq!(
        store.admin_token_digest().expect("token"),
        Some(Digest::of_key("token"))
    );
    drop(store);
    assert_eq!(db.schema_version(), 6);
    db.set_schema_version(99);
    assert!(matches!(
        db.try_open(DEFAULT_CHANGE_LOG_LIMIT),
        Err(StoreError::SchemaTooNew {
            found: 99,
            supported: 6
        })
    ));
}

/// Several processes' worth of connections roll keys and read the map at once: every change
/// gets its own version, each writer sees its versions rise, and the map ends consistent.
fn concurrent_rolls_and_reads_keep_the_store_consistent(db: &dyn TestDb) {
    const THREADS: usize = 6;
    const ROLLS: usize = 15;
    let store = db.open();
    for t in 0..THREADS {
        create(&*store, &format!("t{t}"), 1);
    }
    let all_versions: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let store = db.open();
                    let mut versions = Vec::new();
                    let mut current = format!("key_t{t}-0");
                    for r in 0..ROLLS {
                        let name = format!("t{t}-roll{r}");
                        let replacement = new_key(&format!("t{t}"), KeyKind::ALL[0], &name);
                        let rolled = store
                            .roll_key(&current, &replacement, 0, 2, &who())
                            .expect("roll");
                        versions.push(rolled.version);
                        current = rolled.value.new.key_id;
                        let read = store.key_map(None, 2).expect("read").version();
                        assert!(read >= rolled.version);
                    }
                    versions
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut all = Vec::new();
    for versions in all_versions {
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        THREADS * ROLLS,
        "every roll had a version of its own"
    );
    let (version, map) = full(&*store, 2);
    assert_eq!(version, (THREADS + THREADS * ROLLS) as u64);
    assert_eq!(map.len(), THREADS * 4);
    for t in 0..THREADS {
        assert!(map.contains_key(&hex(&format!("t{t}-roll{}", ROLLS - 1))));
        assert!(!map.contains_key(&hex(&format!("t{t}-0"))));
    }
    // The deltas since the start lead to the same map.
    let mut replayed = Map::new();
    apply(&mut replayed, store.key_map(Some(0), 2).expect("delta"));
    assert_eq!(replayed, map);
}

/// Replicas starting together over a new database: one migrates (making the one store id),
/// the others find it done.
fn several_processes_opening_a_new_database_migrate_it_once(db: &dyn TestDb) {
    let statuses: Vec<KeyMapStatus> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| db.open().key_map_status().expect("status")))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert!(statuses.iter().all(|s| s.version == 0));
    assert!(statuses.iter().all(|s| s.store == statuses[0].store));
    assert_eq!(db.schema_version(), 6);
    let store = db.open();
    assert_eq!(create(&*store, "a", 1).version, 1);
}

/// Two writers and two readers, each on its own store (as two replicas, each with writes
/// coming in): a reader following deltas never sees its version go back, and whenever both
/// readers saw a version, they saw the same map for it, the one a full read answers.
fn two_stores_over_one_database_answer_the_same_map_for_the_same_version(db: &dyn TestDb) {
    const WRITERS: usize = 2;
    const CHANGES: usize = 20;
    let store = db.open();
    for w in 0..WRITERS {
        create(&*store, &format!("w{w}"), 1);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen: Vec<BTreeMap<u64, Map>> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let store = db.open();
                    let (mut version, mut map) = full(&*store, 2);
                    let mut seen = BTreeMap::from([(version, map.clone())]);
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) || reads < 3 {
                        reads += 1;
                        let delta = store.key_map(Some(version), 2).expect("delta");
                        let next = apply(&mut map, delta);
                        assert!(next >= version, "version went back: {version} → {next}");
                        version = next;
                        seen.insert(version, map.clone());
                        if reads % 4 == 0 {
                            let (full_version, full_map) = full(&*store, 2);
                            seen.insert(full_version, full_map.clone());
                            if full_version == version {
                                assert_eq!(full_map, map, "deltas and full map at {version}");
                            }
                        }
                    }
                    // The loop may have ended between the last write and its read.
                    let delta = store.key_map(Some(version), 2).expect("delta");
                    let next = apply(&mut map, delta);
                    assert!(next >= version, "version went back: {version} → {next}");
                    seen.insert(next, map.clone());
                    seen
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                scope.spawn(move || {
                    let store = db.open();
                    let account = format!("w{w}");
                    let mut current = format!("key_w{w}-0");
                    for c in 0..CHANGES {
                        if c % 3 == 2 {
                            let key = format!("key_w{w}-1");
                            store
                                .set_key_disabled(&key, c % 2 == 0, 2, &who())
                                .expect("toggle");
                        } else {
                            let name = format!("w{w}-roll{c}");
                            let replacement = new_key(&account, KeyKind::ALL[0], &name);
                            let rolled = store
                                .roll_key(&current, &replacement, 0, 2, &who())
                                .expect("roll");
                            current = rolled.value.new.key_id;
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        done.store(true, Ordering::Release);
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .collect()
    });
    let mut common = 0;
    for (version, map) in &seen[0] {
        if let Some(other) = seen[1].get(version) {
            assert_eq!(map, other, "two maps for version {version}");
            common += 1;
        }
    }
    assert!(common >= 1);
    let (last, map) = full(&*store, 2);
    for readings in &seen {
        assert_eq!(
            readings.get(&last),
            Some(&map),
            "both readers reached the last version"
        );
    }
}

/// Accounts by creation time, keys in the order they were created.
fn listings_keep_creation_order(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "b", 5);
    create(&*store, "a", 5);
    create(&*store, "c", 1);
    let ids: Vec<String> = store
        .accounts()
        .expect("accounts")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["c", "a", "b"]);
    store
        .add_key(&new_key("b", KeyKind::ALL[3], "b-extra"), 5, &who())
        .expect("add");
    let keys: Vec<String> = store
        .keys(Some("b"))
        .expect("keys")
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(
        keys,
        ["key_b-0", "key_b-1", "key_b-2", "key_b-3", "key_b-extra"]
    );
    let all = store.keys(None).expect("all keys");
    assert_eq!(all.len(), 13);
    assert_eq!(all[0].key_id, "key_c-0");
}

// Backend-specific: announcing changes to other replicas.

/// A restore that renames a backup over the database file under a running store: the store
/// reopens the new file at its next status read, without the old file's write-ahead log.
#[test]
fn sqlite_follows_a_database_file_replaced_under_it() {
    let db = SqliteDb::new();
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    create(&*store, "a", 1);
    let backup = db.backup_file();
    let backed_up = status(&*store);
    clock.set(T + 10_000);
    create(&*store, "b", 2);
    assert_eq!(full(&*store, 2).1.len(), 8);
    let staged = db.path.with_extension("restoring");
    std::fs::copy(&backup, &staged).expect("copy the backup");
    std::fs::rename(&staged, &db.path).expect("replace the file");
    assert_eq!(status(&*store), backed_up);
    assert_eq!(
        full(&*store, 3).1.len(),
        4,
        "the backup's keys, none of the old file's"
    );
    clock.set(T + 20_000);
    assert_eq!(create(&*store, "c", 3).version, T + 20_000);
    // Another process sees the same: nothing of the old file's log came along.
    let other = db.open();
    assert_eq!(full(&*other, 3).1.len(), 8);
    assert!(matches!(
        other.account("b"),
        Err(StoreError::AccountNotFound(_))
    ));
}

#[test]
fn sqlite_does_not_announce_changes() {
    let db = SqliteDb::new();
    let watching = db.open().watch_changes(Box::new(|| {})).expect("watch");
    assert!(
        !watching,
        "SQLite relies on the server's one-second re-read"
    );
}

/// Receives `watch_changes` calls.
fn watch(store: &dyn Store) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    let watching = store
        .watch_changes(Box::new(move || {
            let _ = tx.send(Instant::now());
        }))
        .expect("watch");
    assert!(watching);
    rx
}

fn drain(rx: &mpsc::Receiver<Instant>, quiet: Duration) -> usize {
    let mut calls = 0;
    while rx.recv_timeout(quiet).is_ok() {
        calls += 1;
    }
    calls
}

#[test]
fn postgres_announces_each_change_to_the_other_replicas_at_once() {
    let Some(db) = PostgresDb::create() else {
        return skipped();
    };
    let (a, b) = (db.open(), db.open());
    let heard = watch(b.as_ref());
    let mut latencies = Vec::new();
    for i in 0..5 {
        let before = Instant::now();
        let created = create(&*a, &format!("acct_{i}"), 1);
        let at = heard
            .recv_timeout(Duration::from_secs(2))
            .expect("the change is announced");
        latencies.push(at.duration_since(before));
        // Announced on commit: the other store already reads the new version.
        assert_eq!(b.key_map_status().expect("status").version, created.version);
    }
    latencies.sort();
    eprintln!(
        "change through one store → announced to another: median {:?}, max {:?} (commit included)",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(latencies[latencies.len() - 1] < Duration::from_millis(500));
    // The admin token too.
    a.set_admin_token_digest(&Digest::of_key("rotated"), 1, &who())
        .expect("rotate");
    heard
        .recv_timeout(Duration::from_secs(2))
        .expect("the rotation is announced");
    // A burst: at least one call, and after the last the other store has the last version.
    for i in 0..10 {
        a.set_key_disabled("key_acct_0-0", i % 2 == 0, 2, &who())
            .expect("toggle");
    }
    assert!(drain(&heard, Duration::from_millis(300)) >= 1);
    assert_eq!(
        b.key_map_status().expect("status").version,
        a.key_map_status().expect("status").version
    );
    // Reads and no-op changes announce nothing.
    a.key_map(None, 2).expect("read");
    a.revoke_key("key_acct_1-0", 2, &who()).expect("revoke");
    drain(&heard, Duration::from_millis(300));
    a.revoke_key("key_acct_1-0", 3, &who())
        .expect("revoke again: no change");
    assert!(heard.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn postgres_replaces_connections_the_server_closed() {
    let Some(db) = PostgresDb::create() else {
        return skipped();
    };
    let store = db.open();
    create(&*store, "a", 1);
    let heard = watch(store.as_ref());
    // The pooled connection and the listener's, ended as by a server restart.
    db.wait_for_connections(2);
    // Once the server has ended them, each pooled connection holds the reason (57P01,
    // "terminating connection due to administrator command") as the answer to whatever it
    // sends next: the pool must take that for a closed connection, not fail the call.
    assert!(db.terminate_connections_and_wait() >= 2);
    // The next calls work, on new connections.
    assert_eq!(store.keys(None).expect("keys after the restart").len(), 4);
    create(&*store, "b", 2);
    // The listener comes back, and says so (changes may have been missed meanwhile).
    heard
        .recv_timeout(Duration::from_secs(5))
        .expect("the listener reconnects");
    drain(&heard, Duration::from_millis(300));
    store.revoke_key("key_a-0", 3, &who()).expect("revoke");
    heard
        .recv_timeout(Duration::from_secs(2))
        .expect("announced after reconnecting");
}

/// A moment in unix milliseconds (2023-11-14T22:13:20Z).
const T: u64 = 1_700_000_000_000;

fn status(store: &dyn Store) -> KeyMapStatus {
    store.key_map_status().expect("status")
}

fn versions_follow_the_clock_and_never_repeat(db: &dyn TestDb) {
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    assert_eq!(create(&*store, "a", 1).version, T);
    // Several changes in one millisecond, or a clock set back: one more each time.
    assert_eq!(create(&*store, "b", 1).version, T + 1);
    clock.set(T - 60_000);
    assert_eq!(
        store
            .revoke_key("key_a-0", 2, &who())
            .expect("revoke")
            .version,
        T + 2
    );
    // The clock again ahead: its time.
    clock.set(T + 5_000);
    assert_eq!(
        store
            .revoke_key("key_a-1", 3, &who())
            .expect("revoke")
            .version,
        T + 5_000
    );
    assert_eq!(status(&*store).version, T + 5_000);
}

fn deltas_are_answered_only_from_versions_this_store_issued(db: &dyn TestDb) {
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    let first = create(&*store, "a", 1).version;
    clock.set(T + 1_000);
    let second = create(&*store, "b", 2).version;
    let current = status(&*store);
    assert_eq!((first, second, current.version), (T, T + 1_000, T + 1_000));
    // Issued: a delta, naming the store.
    match store.key_map_delta(first, 2).expect("delta") {
        DeltaLookup::Delta(StoredKeyMap { store: id, message }) => {
            assert_eq!(id, current.store);
            let KeyMapMessage::Delta {
                since,
                version,
                upserts,
                ..
            } = message
            else {
                panic!("expected a delta");
            };
            assert_eq!((since, version, upserts.len()), (first, second, 4));
        }
        other => panic!("expected a delta, got {other:?}"),
    }
    // Between two issued versions, before the first, or 0 (never issued here): not a
    // version of this store, whatever the range.
    for since in [T + 500, T - 1, 1] {
        assert_eq!(
            store.key_map_delta(since, 2).expect("lookup"),
            DeltaLookup::NotIssued,
            "since {since}"
        );
        assert!(matches!(
            store.key_map(Some(since), 2),
            Ok(KeyMapMessage::Full { version, .. }) if version == second
        ));
    }
    // Newer than the store: ahead.
    assert_eq!(
        store.key_map_delta(second + 1, 2).expect("lookup"),
        DeltaLookup::Ahead {
            store: current.store.clone(),
            version: second
        }
    );
    // An empty change (a restore's) is a version of its own, and deltas start from it.
    clock.set(T + 2_000);
    let bumped = store
        .record_restore(&current.store, u64::MAX)
        .expect("record")
        .expect("behind");
    assert_eq!(bumped, T + 2_000);
    match store.key_map_delta(bumped, 3).expect("delta") {
        DeltaLookup::Delta(delta) => assert_eq!(
            delta.message,
            KeyMapMessage::Delta {
                version: bumped,
                since: bumped,
                upserts: vec![],
                removes: vec![]
            }
        ),
        other => panic!("expected a delta, got {other:?}"),
    }
    assert!(matches!(
        store.key_map_delta(second, 3).expect("delta"),
        DeltaLookup::Delta(StoredKeyMap { message: KeyMapMessage::Delta { version, .. }, .. })
            if version == bumped
    ));
}

fn the_change_log_keeps_the_last_versions_by_count(db: &dyn TestDb) {
    let clock = TestClock::at(T);
    let store = db
        .try_open_with(clock.options(3))
        .expect("open with a short log");
    let mut versions = Vec::new();
    for i in 0..6u64 {
        clock.set(T + i * 1_000);
        versions.push(create(&*store, &format!("acct_{i}"), i).version);
    }
    // The last three versions and the one before them (the base of the oldest delta).
    for (i, &version) in versions.iter().enumerate() {
        let lookup = store.key_map_delta(version, 6).expect("lookup");
        if i >= 2 {
            assert!(matches!(lookup, DeltaLookup::Delta(_)), "version {version}");
        } else {
            assert_eq!(lookup, DeltaLookup::NotIssued, "version {version}");
        }
    }
}

fn the_store_id_is_made_once_kept_on_reopening_and_shared_by_connections(db: &dyn TestDb) {
    let first = db.open();
    let second = db.open();
    let id = status(&*first).store;
    assert_eq!(id.as_str().len(), 32);
    assert_eq!(status(&*second).store, id);
    create(&*first, "a", 1);
    assert_eq!(
        second.read_key_map(None, 1).expect("map").store,
        id,
        "answers name the store"
    );
    drop((first, second));
    assert_eq!(status(&*db.open()).store, id);
    // Another database has another id.
    let other = SqliteDb::new();
    assert_ne!(status(&*other.open()).store, id);
}

fn a_restored_database_moves_past_every_version_it_handed_out(db: &dyn TestDb) {
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    create(&*store, "a", 1);
    let restore = db.backup();
    let backed_up = status(&*store);
    clock.set(T + 10_000);
    create(&*store, "b", 2);
    clock.set(T + 20_000);
    store.revoke_key("key_a-0", 3, &who()).expect("revoke");
    let handed_out = status(&*store).version;
    assert_eq!(handed_out, T + 20_000);
    restore();
    // The store reads the restored state (SQLite: the replaced file is reopened).
    let restored = status(&*store);
    assert_eq!(restored.store, backed_up.store, "a backup keeps the id");
    assert_eq!(restored.version, backed_up.version);
    // A filter holding the lost version is ahead of the store.
    assert_eq!(
        store.key_map_delta(handed_out, 4).expect("lookup"),
        DeltaLookup::Ahead {
            store: restored.store.clone(),
            version: restored.version
        }
    );
    // Nothing is recorded for another store, or when the store is not behind.
    let other = StoreId::random().expect("random");
    assert_eq!(
        store.record_restore(&other, handed_out).expect("record"),
        None
    );
    assert_eq!(
        store
            .record_restore(&restored.store, restored.version)
            .expect("record"),
        None
    );
    // The empty change takes the clock, not the poller's number.
    clock.set(T + 30_000);
    let bumped = store
        .record_restore(&restored.store, handed_out)
        .expect("record")
        .expect("behind");
    assert_eq!(bumped, T + 30_000);
    assert!(bumped > handed_out);
    let rogue = store
        .record_restore(&restored.store, u64::MAX)
        .expect("record")
        .expect("behind");
    assert_eq!(rogue, T + 30_001, "never a value the poller chose");
    // The full map is the backup's, at the new version; the lost version is unknown.
    let (version, map) = full(&*store, 5);
    assert_eq!(version, rogue);
    assert_eq!(map.len(), 4);
    assert!(map.contains_key(&hex("a-0")));
    assert_eq!(
        store.key_map_delta(handed_out, 5).expect("lookup"),
        DeltaLookup::NotIssued
    );
}

fn a_rogue_version_refuses_changes_until_a_new_lineage(db: &dyn TestDb) {
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    create(&*store, "a", 1);
    let before = status(&*store);
    db.execute(&format!(
        "UPDATE keymap_state SET version = {} WHERE id = 1",
        lineage::MAX_VERSION
    ));
    // Reads still work; changes are refused with a way out, and leave nothing behind.
    assert_eq!(status(&*store).version, lineage::MAX_VERSION);
    assert!(matches!(full(&*store, 2), (v, m) if v == lineage::MAX_VERSION && m.len() == 4));
    let refused = store.revoke_key("key_a-0", 2, &who());
    assert!(
        matches!(refused, Err(StoreError::VersionExhausted { current }) if current == lineage::MAX_VERSION)
    );
    assert!(refused
        .map(|_| ())
        .unwrap_err()
        .to_string()
        .contains("keygatectl keymap new-lineage"));
    assert_eq!(store.key("key_a-0").expect("key").revoked_at, None);
    // A new lineage: a new id, the version now, no deltas from the old lineage.
    clock.set(T + 1_000);
    let fresh = store.new_lineage().expect("new lineage");
    assert_ne!(fresh.store, before.store);
    assert_eq!(fresh.version, T + 1_000);
    assert_eq!(status(&*store), fresh);
    assert_eq!(
        store.key_map_delta(before.version, 3).expect("lookup"),
        DeltaLookup::NotIssued
    );
    assert_eq!(full(&*store, 3).1.len(), 4, "the keys stay");
    assert_eq!(
        store
            .revoke_key("key_a-0", 3, &who())
            .expect("revoke")
            .version,
        T + 1_001
    );
    assert!(matches!(
        store.key_map_delta(fresh.version, 3).expect("delta"),
        DeltaLookup::Delta(_)
    ));
    // Another connection (a replica, a reopened server) sees the same lineage.
    assert_eq!(status(&*db.open()).store, fresh.store);
}

fn a_schema_1_database_gets_an_id_and_keeps_its_counter_and_deltas(db: &dyn TestDb) {
    db.create_v1_schema();
    // What keygatectl before store ids left: versions 1..=57, changes kept from 50 on.
    let mut sql = String::from(
        "INSERT INTO accounts (id, created_at) VALUES ('a', 1); \
         UPDATE keymap_state SET version = 57, log_start = 50 WHERE id = 1;",
    );
    for v in 51..=57 {
        let name = format!("old-{v}");
        sql.push_str(&format!(
            "INSERT INTO keys (id, account_id, digest, hint, type, environment, origin, \
             created_at) VALUES ('key_{name}', 'a', '{}', 'sk_test_…{v}', 'secret', 'test', \
             'issued', 1); \
             INSERT INTO keymap_changes (version, digest, op) VALUES ({v}, '{}', 'upsert');",
            hex(&name),
            hex(&name)
        ));
    }
    db.execute(&sql);
    let clock = TestClock::at(T);
    let store = db.open_with_clock(&clock);
    assert_eq!(db.schema_version(), 6);
    let migrated = status(&*store);
    assert_eq!(migrated.version, 57, "the counter carries on");
    for since in 50..=57 {
        assert!(
            matches!(
                store.key_map_delta(since, 2).expect("lookup"),
                DeltaLookup::Delta(_)
            ),
            "since {since}"
        );
    }
    match store.key_map_delta(53, 2).expect("delta") {
        DeltaLookup::Delta(delta) => {
            let KeyMapMessage::Delta { upserts, .. } = delta.message else {
                panic!("expected a delta");
            };
            assert_eq!(upserts.len(), 4);
        }
        other => panic!("expected a delta, got {other:?}"),
    }
    assert_eq!(
        store.key_map_delta(49, 2).expect("lookup"),
        DeltaLookup::NotIssued
    );
    // The next change jumps to the clock.
    assert_eq!(
        store
            .revoke_key("key_old-51", 2, &who())
            .expect("revoke")
            .version,
        T
    );
    assert_eq!(status(&*db.open()).store, migrated.store);
}

fn the_sync_token_digest_is_kept_and_shared(db: &dyn TestDb) {
    let store = db.open();
    assert_eq!(store.sync_token_digest().expect("none"), None);
    store
        .set_sync_token_digest(&Digest::of_key("sync-token-one"), 1, &who())
        .expect("set");
    assert_eq!(
        db.open().sync_token_digest().expect("shared"),
        Some(Digest::of_key("sync-token-one"))
    );
    store
        .set_sync_token_digest(&Digest::of_key("sync-token-two"), 1, &who())
        .expect("replace");
    assert_eq!(
        db.open().sync_token_digest().expect("replaced"),
        Some(Digest::of_key("sync-token-two"))
    );
    // The admin token is another setting.
    assert_eq!(store.admin_token_digest().expect("admin"), None);
}
