#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! keygatectl replicas over one PostgreSQL: real `keygatectl serve` processes on loopback
//! ports sharing a database of the server that KEYGATE_TEST_POSTGRES_URL names (each test a
//! database of its own; `scripts/postgres.sh run cargo test` starts a server). The tests that
//! need the server are skipped, with a note on stderr, only when that variable is unset.

mod common;

use common::{run, send, Answer, ADMIN_TOKEN, BIN, SYNC_TOKEN};
use keygate_sync_core::message::KeyMapMessage;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The servers' re-read interval: the longest a change may take to reach another replica.
const REFRESH: Duration = Duration::from_secs(1);

/// A database of its own on the test server, dropped afterwards.
struct TestDb {
    server: postgres::Config,
    name: String,
    url: String,
}

impl TestDb {
    fn create() -> Option<TestDb> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let Some(server_url) = std::env::var("KEYGATE_TEST_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty())
        else {
            // `make test` requires the server: there a missing one fails instead of skipping.
            assert!(
                std::env::var("KEYGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "KEYGATE_REQUIRE_POSTGRES=1 but KEYGATE_TEST_POSTGRES_URL is unset"
            );
            eprintln!(
                "skipped: KEYGATE_TEST_POSTGRES_URL is unset (scripts/postgres.sh run cargo \
                 test starts a PostgreSQL for these tests)"
            );
            return None;
        };
        let server: postgres::Config = server_url.parse().expect("KEYGATE_TEST_POSTGRES_URL");
        let name = format!(
            "keygate_replicas_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = server.connect(postgres::NoTls).unwrap_or_else(|e| {
            panic!("KEYGATE_TEST_POSTGRES_URL is set but the server is unreachable: {e}")
        });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create the test database");
        let url = with_dbname(&server_url, &name);
        Some(TestDb { server, name, url })
    }

    /// A connection to the server's own database, for `ALTER DATABASE` and the like.
    fn admin(&self) -> postgres::Client {
        self.server.connect(postgres::NoTls).expect("connect")
    }

    fn client(&self) -> postgres::Client {
        let mut config = self.server.clone();
        config.dbname(&self.name);
        config.connect(postgres::NoTls).expect("connect")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = self.server.connect(postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `postgres://user:pw@host:port/olddb?opts` with another database name.
fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").expect("a URL") + 3;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{dbname}{query}", &base[..authority_end])
}

/// `keygatectl --database <url>` with the test's environment only.
fn keygatectl(url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .env_remove("KEYGATE_SERVER")
        .env_remove("PGPASSWORD")
        // The URL holds the password: in the environment, not on the command line.
        .env("KEYGATE_DATABASE", url);
    command
}

/// One `keygatectl serve` replica.
struct Replica {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    /// Its sync token file (SYNC_TOKEN), as each machine of a deployment has its own copy.
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(url: &str) -> Replica {
        Replica::try_start(url, ADMIN_TOKEN, "127.0.0.1:0").expect("replica starts")
    }

    /// Starts a replica; `Err` carries its log if it exits before listening.
    fn try_start(url: &str, token: &str, listen: &str) -> Result<Replica, String> {
        Replica::try_start_with(url, token, listen, Some(SYNC_TOKEN))
    }

    /// `sync_token`: written to a file given with `--sync-token-file`; `None` gives none.
    fn try_start_with(
        url: &str,
        token: &str,
        listen: &str,
        sync_token: Option<&str>,
    ) -> Result<Replica, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = keygatectl(url);
        command
            .args(["serve", "--listen", listen, "--purge-interval", "1s"])
            .env("KEYGATE_ADMIN_TOKEN", token);
        if let Some(sync_token) = sync_token {
            let file = dir.path().join("sync-token");
            std::fs::write(&file, format!("{sync_token}\n")).expect("write the sync token");
            command.arg("--sync-token-file").arg(file);
        }
        let running = common::spawn_listening(&mut command)?;
        Ok(Replica {
            child: running.child,
            base: running.base,
            log: running.log,
            _dir: dir,
        })
    }

    fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// SIGKILL: no goodbye, as a crash or a lost machine.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A GET with the sync token (what the key map needs; the admin API refuses it).
    fn get(&self, agent: &ureq::Agent, path: &str, headers: &[(&str, &str)]) -> Answer {
        send(
            agent,
            "GET",
            &format!("{}{path}", self.base),
            Some(SYNC_TOKEN),
            None,
            headers,
        )
    }

    fn post(&self, agent: &ureq::Agent, path: &str, body: &str) -> Answer {
        let answer = send(
            agent,
            "POST",
            &format!("{}{path}", self.base),
            Some(ADMIN_TOKEN),
            Some(body),
            &[],
        );
        assert!(
            answer.status == 200 || answer.status == 201,
            "{path}: {} {}",
            answer.status,
            answer.text
        );
        answer
    }

    fn version(&self, agent: &ureq::Agent) -> u64 {
        let answer = self.get(agent, "/v1/keymap", &[]);
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["version"].as_u64().expect("version")
    }

    /// Waits until the replica's map has at least `version`; answers how long that took.
    fn wait_for_version(&self, agent: &ureq::Agent, version: u64, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let seen = self.version(agent);
            if seen >= version {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{} still at version {seen}, not {version}, after {within:?}",
                self.base
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn key_id(key: &Value) -> String {
    key["key_id"].as_str().expect("key_id").to_string()
}

/// The `(key map version N)` of every "rolled" log line.
fn rolled_versions(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains(" rolled to "))
        .filter_map(|line| line.rsplit("(key map version ").next())
        .map(|tail| tail.trim_end_matches(')').parse().expect("version"))
        .collect()
}

#[test]
fn a_roll_through_one_replica_is_served_by_the_other_at_once() {
    let Some(db) = TestDb::create() else { return };
    let (a, b) = (Replica::start(&db.url), Replica::start(&db.url));
    assert!(b.log().contains("PostgreSQL LISTEN/NOTIFY"), "{}", b.log());
    let agent = common::agent();
    let created = a.post(&agent, "/v1/accounts", "{}").body;
    b.wait_for_version(&agent, a.version(&agent), REFRESH);
    let mut current = key_id(&created["keys"][0]);
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let unchanged = b.get(&agent, "/v1/keymap", &[]);
        let before = unchanged.body["version"].as_u64().expect("version");
        let etag = unchanged.etag.expect("etag");
        // B is polled as the filter polls it: conditional, with ?since.
        let path = format!("/v1/keymap?since={before}");
        let start = Instant::now();
        let rolled = a
            .post(&agent, &format!("/v1/keys/{current}/roll"), "{}")
            .body;
        let committed = Instant::now();
        let answer = loop {
            let answer = b.get(&agent, &path, &[("if-none-match", &etag)]);
            if answer.status == 200 {
                break answer;
            }
            assert_eq!(answer.status, 304);
            assert!(start.elapsed() < REFRESH, "B did not see the roll in time");
        };
        latencies.push((committed.elapsed(), start.elapsed()));
        let message: KeyMapMessage = serde_json::from_str(&answer.text).expect("delta");
        let KeyMapMessage::Delta {
            version,
            upserts,
            removes,
            ..
        } = message
        else {
            panic!("expected a delta: {}", answer.text);
        };
        assert!(version > before, "{before} → {version}");
        let store = answer.store.clone().expect("store");
        assert_eq!(answer.etag, Some(format!("\"{store}:{version}\"")));
        assert_eq!(a.get(&agent, "/v1/keymap", &[]).store, Some(store));
        let new_id = key_id(&rolled["new_key"]);
        assert_eq!(
            upserts.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
            [&new_id]
        );
        assert_eq!(
            removes,
            [rolled["old_key"]["digest"].as_str().expect("digest")]
        );
        // Both replicas hand out the same map for this version, and the same delta.
        let full_a = a.get(&agent, "/v1/keymap", &[]);
        let full_b = b.get(&agent, "/v1/keymap", &[]);
        assert_eq!(full_a.etag, full_b.etag);
        assert_eq!(full_a.text, full_b.text);
        assert_eq!(
            a.get(&agent, &path, &[]).text,
            b.get(&agent, &path, &[]).text
        );
        current = new_id;
    }
    let (mut after, mut total): (Vec<_>, Vec<_>) = latencies.into_iter().unzip();
    after.sort();
    total.sort();
    eprintln!(
        "roll through replica A → served by replica B, from A's answer: median {:?}, max {:?}; \
         from the roll request: median {:?}, max {:?} (10 rolls)",
        after[after.len() / 2],
        after[after.len() - 1],
        total[total.len() / 2],
        total[total.len() - 1]
    );
}

#[test]
fn concurrent_rolls_through_both_replicas_keep_versions_strictly_rising() {
    const ROLLS: usize = 25;
    let Some(db) = TestDb::create() else { return };
    let replicas = [Replica::start(&db.url), Replica::start(&db.url)];
    let agent = common::agent();
    let accounts: Vec<Value> = replicas
        .iter()
        .map(|r| r.post(&agent, "/v1/accounts", "{}").body)
        .collect();
    let start_version = replicas[0].version(&agent);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Pollers on both replicas, as filters: the version they see never goes back.
        let pollers: Vec<_> = replicas
            .iter()
            .map(|replica| {
                let done = &done;
                scope.spawn(move || {
                    let agent = common::agent();
                    let mut last = 0;
                    let mut polls = 0;
                    while !done.load(Ordering::Acquire) {
                        let etag = format!("\"{last}\"");
                        let answer = replica.get(
                            &agent,
                            &format!("/v1/keymap?since={last}"),
                            &[("if-none-match", &etag)],
                        );
                        polls += 1;
                        if answer.status == 304 {
                            continue;
                        }
                        assert_eq!(answer.status, 200, "{}", answer.text);
                        let version = answer.body["version"].as_u64().expect("version");
                        assert!(version >= last, "version went back: {last} → {version}");
                        last = version;
                    }
                    polls
                })
            })
            .collect();
        let rollers: Vec<_> = replicas
            .iter()
            .zip(&accounts)
            .map(|(replica, account)| {
                scope.spawn(move || {
                    let agent = common::agent();
                    let mut current = key_id(&account["keys"][0]);
                    for _ in 0..ROLLS {
                        let rolled =
                            replica.post(&agent, &format!("/v1/keys/{current}/roll"), "{}");
                        current = key_id(&rolled.body["new_key"]);
                    }
                })
            })
            .collect();
        for roller in rollers {
            roller.join().expect("roller");
        }
        done.store(true, Ordering::Release);
        for poller in pollers {
            assert!(poller.join().expect("poller") > 0);
        }
    });
    // Each roll had a version of its own; each replica's rolls strictly rise; none missing.
    let mut all = Vec::new();
    for replica in &replicas {
        let versions = rolled_versions(&replica.log());
        assert_eq!(versions.len(), ROLLS);
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2 * ROLLS, "every roll a version of its own");
    assert!(all[0] > start_version);
    // And both replicas end on the same map.
    let last = *all.last().expect("versions");
    for replica in &replicas {
        replica.wait_for_version(&agent, last, REFRESH);
    }
    let maps: Vec<String> = replicas
        .iter()
        .map(|r| r.get(&agent, "/v1/keymap", &[]).text)
        .collect();
    assert_eq!(maps[0], maps[1]);
    let map: Value = serde_json::from_str(&maps[0]).expect("map");
    assert_eq!(map["version"], last);
    assert_eq!(map["keys"].as_array().expect("keys").len(), 8);
}

#[test]
fn the_cli_on_the_database_reaches_every_replica() {
    let Some(db) = TestDb::create() else { return };
    let replicas = [Replica::start(&db.url), Replica::start(&db.url)];
    let agent = common::agent();
    let created = run(keygatectl(&db.url).args(["--json", "account", "create"]));
    assert!(created.status.success(), "{:?}", created);
    let created: Value = serde_json::from_slice(&created.stdout).expect("json");
    for replica in &replicas {
        let took = replica.wait_for_version(&agent, 1, REFRESH);
        eprintln!("CLI change → {}: {took:?}", replica.address());
    }
    let listed = run(keygatectl(&db.url).args(["--json", "key", "list"]));
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed["keys"].as_array().expect("keys").len(), 4);
    assert_eq!(
        listed["keys"][0]["key_id"], created["keys"][0]["key_id"],
        "keys in creation order"
    );
    // Rotating the admin token: every replica takes the new one.
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "rotated-admin-token-0123456789\n").expect("write token");
    let rotated = run(keygatectl(&db.url)
        .args(["admin-token", "rotate", "--new-token-file"])
        .arg(&token_file));
    assert!(rotated.status.success(), "{:?}", rotated);
    for replica in &replicas {
        let start = Instant::now();
        loop {
            let answer = send(
                &agent,
                "GET",
                &format!("{}/v1/accounts", replica.base),
                Some("rotated-admin-token-0123456789"),
                None,
                &[],
            );
            if answer.status == 200 {
                break;
            }
            assert!(start.elapsed() < REFRESH * 2, "the new token is not taken");
            std::thread::sleep(Duration::from_millis(5));
        }
        let old = send(
            &agent,
            "GET",
            &format!("{}/v1/accounts", replica.base),
            Some(ADMIN_TOKEN),
            None,
            &[],
        );
        assert_eq!(old.status, 401);
    }
}

#[test]
fn a_dead_replica_leaves_the_others_serving_and_catches_up_when_back() {
    let Some(db) = TestDb::create() else { return };
    let mut a = Replica::start(&db.url);
    let b = Replica::start(&db.url);
    let agent = common::agent();
    let created = a.post(&agent, "/v1/accounts", "{}").body;
    let address = a.address().to_string();
    a.kill();
    let rolled = b
        .post(
            &agent,
            &format!("/v1/keys/{}/roll", key_id(&created["keys"][0])),
            "{}",
        )
        .body;
    let version = b.version(&agent);
    // Back on its old address: it serves the current map at once.
    let a = Replica::try_start(&db.url, ADMIN_TOKEN, &address).expect("restart");
    let map = a.get(&agent, "/v1/keymap", &[]);
    assert_eq!(map.body["version"], version);
    let ids: Vec<&str> = map.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key_id"].as_str().expect("key_id"))
        .collect();
    assert!(ids.contains(&key_id(&rolled["new_key"]).as_str()));
    assert!(!ids.contains(&key_id(&created["keys"][0]).as_str()));
}

#[test]
fn a_replica_with_another_admin_token_is_refused() {
    let Some(db) = TestDb::create() else { return };
    let _a = Replica::start(&db.url);
    let log = match Replica::try_start(&db.url, "another-token-0123456789", "127.0.0.1:0") {
        Ok(_) => panic!("a replica with another admin token started"),
        Err(log) => log,
    };
    assert!(log.contains("does not match"), "{log}");
}

#[test]
fn the_schema_is_migrated_once_and_recorded() {
    let Some(db) = TestDb::create() else { return };
    let replicas: Vec<Replica> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Replica::start(&db.url)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start"))
            .collect()
    });
    assert_eq!(replicas.len(), 3);
    let rows = db
        .client()
        .query("SELECT version FROM keygate_schema_migrations", &[])
        .expect("schema table");
    let mut versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    // No plaintext key in the database: digests and hints only.
    let agent = common::agent();
    let created = replicas[0].post(&agent, "/v1/accounts", "{}").body;
    let mut client = db.client();
    let dump: Vec<String> = client
        .query("SELECT row_to_json(k)::text FROM keys k", &[])
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dump = dump.join("\n");
    for key in created["keys"].as_array().expect("keys") {
        let plaintext = key["key"].as_str().expect("plaintext");
        assert!(!dump.contains(plaintext));
        assert!(dump.contains(key["digest"].as_str().expect("digest")));
    }
}

/// The password in a URL never shows: not in `--help` (KEYGATE_DATABASE), not in errors.
/// Needs no server: nothing listens on port 1.
#[test]
fn a_database_password_never_shows() {
    let url = "postgres://keygate:hunter2-very-secret@127.0.0.1:1/keygate?connect_timeout=2";
    let help = run(keygatectl(url).arg("--help"));
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("postgres://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let failed = run(keygatectl(url).args(["account", "list"]));
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("cannot connect to PostgreSQL at keygate@127.0.0.1:1/keygate"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let bad =
        run(keygatectl("postgres://keygate:hunter2@127.0.0.1:notaport/x").args(["key", "list"]));
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("invalid PostgreSQL URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A failed serve says so before it listens.
    let serve = run(keygatectl(url).args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(serve.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&serve.stderr).contains("hunter2"));
}

#[test]
fn the_key_map_of_an_empty_database_is_version_zero_on_every_replica() {
    let Some(db) = TestDb::create() else { return };
    let replicas = [Replica::start(&db.url), Replica::start(&db.url)];
    let agent = common::agent();
    let store = replicas[0]
        .get(&agent, "/v1/keymap", &[])
        .store
        .expect("store");
    for replica in &replicas {
        let answer = replica.get(&agent, "/v1/keymap", &[]);
        // One store: its id is in the database, shared by every replica.
        assert_eq!(answer.store.as_deref(), Some(store.as_str()));
        assert_eq!(answer.etag, Some(format!("\"{store}:0\"")));
        assert_eq!(
            answer.body,
            json!({"kind": "full", "version": 0, "keys": []})
        );
        let tag = format!("\"{store}:0\"");
        let unchanged = replica.get(&agent, "/v1/keymap", &[("if-none-match", &tag)]);
        assert_eq!(unchanged.status, 304);
    }
    // Deltas from either replica lead to the same map.
    replicas[0].post(&agent, "/v1/accounts", "{}");
    replicas[1].post(&agent, "/v1/accounts", "{}");
    let latest = replicas[1].version(&agent);
    let mut maps = Vec::new();
    for replica in &replicas {
        replica.wait_for_version(&agent, latest, REFRESH);
        let delta = replica.get(&agent, "/v1/keymap?since=0", &[]);
        let message: KeyMapMessage = serde_json::from_str(&delta.text).expect("delta");
        let mut map = BTreeMap::new();
        if let KeyMapMessage::Delta { upserts, .. } = message {
            for key in upserts {
                map.insert(key.digest.clone(), key.key_id.clone());
            }
        }
        assert_eq!(map.len(), 8);
        maps.push(map);
    }
    assert_eq!(maps[0], maps[1]);
}

#[test]
fn a_replica_keeps_serving_unchanged_maps_while_the_database_is_unreachable() {
    let Some(db) = TestDb::create() else { return };
    let a = Replica::start(&db.url);
    let agent = common::agent();
    let created = a.post(&agent, "/v1/accounts", "{}").body;
    let full = a.get(&agent, "/v1/keymap", &[]);
    let version = full.body["version"].as_u64().expect("version");
    let etag = full.etag.clone().expect("etag");
    let since_version = format!("/v1/keymap?since={version}");
    // The database goes away: its connections end, and no new one is let in.
    let mut admin = db.admin();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            db.name
        ))
        .expect("close the database");
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db.name],
        )
        .expect("end its connections");
    // Unchanged polls and the full map are answered from memory…
    for _ in 0..3 {
        let unchanged = a.get(&agent, &since_version, &[("if-none-match", &etag)]);
        assert_eq!(unchanged.status, 304);
        assert_eq!(a.get(&agent, "/v1/keymap", &[]).text, full.text);
    }
    // …while a change, or a delta the memory cannot answer, fails whole.
    let key = key_id(&created["keys"][0]);
    let roll = send(
        &agent,
        "POST",
        &format!("{}/v1/keys/{key}/roll", a.base),
        Some(ADMIN_TOKEN),
        Some("{}"),
        &[],
    );
    assert_eq!(roll.status, 500, "{}", roll.text);
    assert_eq!(roll.body["error"]["code"], "internal_error");
    assert_eq!(a.get(&agent, "/v1/keymap?since=0", &[]).status, 500);
    // Back: the replica reconnects by itself; a change through another replica reaches it.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            db.name
        ))
        .expect("open the database");
    let b = Replica::start(&db.url);
    b.post(&agent, &format!("/v1/keys/{key}/roll"), "{}");
    let took = a.wait_for_version(&agent, version + 1, REFRESH * 2);
    eprintln!("database back: replica A serves B's change after {took:?}");
    assert!(a.log().contains("internal error"), "{}", a.log());
}

/// The sync token's digest lives in the database: the first replica sets it up from its
/// file, the others need none, and a rotation reaches every replica. Without any, a
/// replica says where to put it.
#[test]
fn replicas_share_the_sync_token_through_the_database() {
    let Some(db) = TestDb::create() else { return };
    let log = match Replica::try_start_with(&db.url, ADMIN_TOKEN, "127.0.0.1:0", None) {
        Ok(_) => panic!("a replica started with no sync token anywhere"),
        Err(log) => log,
    };
    assert!(log.contains("--sync-token-file"), "{log}");
    let a = Replica::start(&db.url);
    let b = Replica::try_start_with(&db.url, ADMIN_TOKEN, "127.0.0.1:0", None).expect("b");
    let agent = common::agent();
    for replica in [&a, &b] {
        assert_eq!(replica.get(&agent, "/v1/keymap", &[]).status, 200);
        let without = send(
            &agent,
            "GET",
            &format!("{}/v1/keymap", replica.base),
            None,
            None,
            &[],
        );
        assert_eq!(without.status, 401);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sync-token");
    let rotated = run(keygatectl(&db.url)
        .args(["sync-token", "rotate", "--sync-token-file"])
        .arg(&file));
    assert!(rotated.status.success(), "{rotated:?}");
    let token = std::fs::read_to_string(&file)
        .expect("token")
        .trim()
        .to_string();
    for replica in [&a, &b] {
        let start = Instant::now();
        loop {
            let url = format!("{}/v1/keymap", replica.base);
            if send(&agent, "GET", &url, Some(&token), None, &[]).status == 200 {
                break;
            }
            assert!(
                start.elapsed() < REFRESH * 2,
                "the new sync token is not taken"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(replica.get(&agent, "/v1/keymap", &[]).status, 401);
    }
}

/// `keymap new-lineage` on the database: every replica serves the new store id at once.
#[test]
fn a_new_lineage_reaches_every_replica() {
    let Some(db) = TestDb::create() else { return };
    let replicas = [Replica::start(&db.url), Replica::start(&db.url)];
    let agent = common::agent();
    replicas[0].post(&agent, "/v1/accounts", "{}");
    let old = replicas[0]
        .get(&agent, "/v1/keymap", &[])
        .store
        .expect("store");
    let started = run(keygatectl(&db.url).args(["--json", "keymap", "new-lineage"]));
    assert!(started.status.success(), "{started:?}");
    let lineage: Value = serde_json::from_slice(&started.stdout).expect("json");
    let store = lineage["store"].as_str().expect("store").to_string();
    assert_ne!(store, old);
    for replica in &replicas {
        let start = Instant::now();
        loop {
            let answer = replica.get(&agent, "/v1/keymap", &[]);
            if answer.store.as_deref() == Some(store.as_str()) {
                assert_eq!(answer.body["version"], lineage["version"]);
                assert_eq!(answer.body["keys"].as_array().map(Vec::len), Some(4));
                break;
            }
            assert!(
                start.elapsed() < REFRESH,
                "{} kept the old lineage",
                replica.base
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
