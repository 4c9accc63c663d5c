#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! Names, expiry at creation, the "last used" column, bulk import and the audit trail, from
//! the command line: on the database file and against a running server.

mod common;

use common::{keygatectl, run, send, Api, Server, SYNC_TOKEN};
use keygate_core::digest::Digest;
use keygate_core::key::{issue_key, Environment, KeyKind, KeyType};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        stderr(output)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

fn cli(database: &Path, args: &[&str]) -> Output {
    run(keygatectl(database).args(args))
}

fn cli_json(database: &Path, args: &[&str]) -> Value {
    json_of(&run(keygatectl(database).arg("--json").args(args)))
}

fn new_account(database: &Path) -> String {
    let created = cli_json(database, &["account", "create", "--name", "Acme"]);
    created["account"]["id"].as_str().expect("id").to_string()
}

#[test]
fn keys_get_names_and_expiries_at_creation_and_names_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let account = new_account(&db);
    let before = now();
    let ios = cli_json(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "secret",
            "--env",
            "test",
            "--name",
            "iOS app 2.3",
            "--expires-in",
            "30d",
        ],
    );
    assert_eq!(ios["name"], "iOS app 2.3");
    assert_eq!(ios["status"], "expiring");
    let expires = ios["expires_at"].as_u64().expect("expires_at");
    assert!((before + 30 * 86_400..=now() + 30 * 86_400).contains(&expires));
    let billing = cli_json(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "pk",
            "--env",
            "prod",
            "--expires-at",
            "2030-01-01T01:00:00+01:00",
            "--name",
            "billing",
        ],
    );
    assert_eq!(billing["expires_at"], 1_893_456_000);
    // The name is never in the key map the filters read.
    let map = cli_json(&db, &["export"]);
    let map_text = map.to_string();
    assert!(!map_text.contains("iOS app") && !map_text.contains("billing"));
    assert!(map_text.contains(&expires.to_string()), "the expiry is");

    // Refused: both expiries, a past one, a name that is a key, a bad time.
    let both = cli(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "sk",
            "--env",
            "test",
            "--expires-in",
            "1d",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ],
    );
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    let past = cli(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "sk",
            "--env",
            "test",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert_eq!(past.status.code(), Some(2));
    assert!(
        stderr(&past).contains("not in the future"),
        "{}",
        stderr(&past)
    );
    let plaintext = issue_key(KeyKind::new(KeyType::Secret, Environment::Test), &[7; 32]);
    let keyish = cli(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "sk",
            "--env",
            "test",
            "--name",
            &plaintext,
        ],
    );
    assert_eq!(keyish.status.code(), Some(2));
    assert!(!stderr(&keyish).contains(&plaintext[8..]));
    let bad_time = cli(
        &db,
        &[
            "key",
            "create",
            "--account",
            &account,
            "--type",
            "sk",
            "--env",
            "test",
            "--expires-at",
            "tomorrow",
        ],
    );
    assert_eq!(bad_time.status.code(), Some(2));

    // Rename, clear, and a roll that keeps (or replaces) the name and keeps the expiry.
    let id = ios["key_id"].as_str().expect("key_id");
    let renamed = cli(&db, &["key", "rename", id, "iOS app 2.4"]);
    assert!(
        stdout(&renamed).contains("is now named “iOS app 2.4”"),
        "{}",
        stdout(&renamed)
    );
    let rolled = cli_json(&db, &["key", "roll", id, "--expires-in", "1h"]);
    assert_eq!(rolled["new_key"]["name"], "iOS app 2.4");
    assert_eq!(rolled["new_key"]["expires_at"].as_u64(), Some(expires));
    let new_id = rolled["new_key"]["key_id"]
        .as_str()
        .expect("key_id")
        .to_string();
    let cleared = cli_json(&db, &["key", "rename", &new_id, "--clear"]);
    assert_eq!(cleared["name"], Value::Null);
    let listed = stdout(&cli(&db, &["key", "list", "--account", &account]));
    let header = listed.lines().next().expect("header");
    assert!(
        header.contains("NAME") && header.contains("LAST USED"),
        "{header}"
    );
    assert!(listed.contains("iOS app 2.4") && listed.contains("billing"));
    assert!(
        listed.lines().skip(1).all(|l| l.contains(" never ")),
        "{listed}"
    );
}

/// Writes a JSONL import of `count` keys for `account` (plaintext and digest lines alike).
fn import_file(
    dir: &Path,
    name: &str,
    account: &str,
    count: usize,
) -> (std::path::PathBuf, Vec<String>) {
    let mut lines = Vec::new();
    let mut plaintexts = Vec::new();
    for i in 0..count {
        let seed = Digest::of_key(&format!("{name}-{i}")).0;
        let key = issue_key(KeyKind::new(KeyType::Secret, Environment::Test), &seed);
        let line = if i % 2 == 0 {
            json!({"key": key, "account": account, "name": format!("legacy {i}")})
        } else {
            json!({"digest": Digest::of_key(&key).to_hex(), "type": "secret",
                   "environment": "test", "account": account,
                   "expires_at": "2031-01-01T00:00:00Z"})
        };
        lines.push(line.to_string());
        plaintexts.push(key);
    }
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    (path, plaintexts)
}

#[test]
fn a_bulk_import_is_checked_whole_dry_run_then_written_once_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let account = new_account(&db);
    let (good, plaintexts) = import_file(dir.path(), "keys.jsonl", &account, 200);
    // The same file with three bad lines: refused whole, each named, no key echoed.
    let text = std::fs::read_to_string(&good).expect("read");
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[4] = json!({"key": plaintexts[4], "account": "acct_nope"}).to_string();
    lines[9] = json!({"digest": plaintexts[9], "type": "secret", "environment": "test",
                      "account": account})
    .to_string();
    lines[150] = format!("{{\"key\": \"{}\"", plaintexts[150]);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let version = cli_json(&db, &["keymap", "status"])["version"].clone();
    let refused = cli(
        &db,
        &["key", "import", "--file", bad.to_str().expect("path")],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("line 10: digest: digest looks like a plaintext API key"),
        "{said}"
    );
    assert!(said.contains("line 151: line: not valid JSON"), "{said}");
    for key in &plaintexts {
        assert!(!said.contains(&key[8..]), "a key was echoed: {said}");
    }
    // The account check happens when the file itself is fine: fix the syntax, keep it.
    lines[9] = text.lines().nth(9).expect("line").to_string();
    lines[150] = text.lines().nth(150).expect("line").to_string();
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let refused = cli(
        &db,
        &["key", "import", "--file", bad.to_str().expect("path")],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("line 5: account: no account acct_nope"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(cli_json(&db, &["keymap", "status"])["version"], version);
    assert_eq!(
        cli_json(&db, &["key", "list"])["keys"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );

    let dry = cli_json(
        &db,
        &[
            "key",
            "import",
            "--file",
            good.to_str().expect("path"),
            "--dry-run",
        ],
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["added"].as_array().map(Vec::len), Some(200));
    assert_eq!(cli_json(&db, &["keymap", "status"])["version"], version);

    let done = cli_json(
        &db,
        &["key", "import", "--file", good.to_str().expect("path")],
    );
    assert_eq!(done["added"].as_array().map(Vec::len), Some(200));
    assert_eq!(done["added"][0]["line"], 1);
    let keys = cli_json(&db, &["key", "list", "--account", &account])["keys"].clone();
    assert_eq!(keys.as_array().map(Vec::len), Some(204));
    let first = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["digest"] == Digest::of_key(&plaintexts[0]).to_hex())
        .expect("imported");
    assert_eq!(first["origin"], "imported");
    assert_eq!(first["name"], "legacy 0");
    assert_eq!(
        first["hint"],
        format!("sk_test_…{}", &plaintexts[0][plaintexts[0].len() - 4..])
    );
    let second = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["digest"] == Digest::of_key(&plaintexts[1]).to_hex())
        .expect("imported");
    assert_eq!(second["expires_at"], 1_924_992_000);
    assert_eq!(second["hint"], "sk_test_…????");
    // Only digests were stored.
    let raw = std::fs::read(&db).expect("db");
    let raw = String::from_utf8_lossy(&raw);
    assert!(plaintexts.iter().all(|k| !raw.contains(k.as_str())));

    let again = cli(
        &db,
        &["key", "import", "--file", good.to_str().expect("path")],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("Imported 0 keys (200 already stored"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        cli_json(&db, &["key", "list"])["keys"]
            .as_array()
            .map(Vec::len),
        Some(204)
    );
    // One audit event for the import, by the CLI.
    let audit = cli_json(&db, &["audit", "--account", &account]);
    let imported: Vec<&Value> = audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "key.imported")
        .collect();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0]["actor"]["kind"], "cli");
    assert_eq!(imported[0]["key_ids"].as_array().map(Vec::len), Some(200));
}

#[test]
fn through_a_server_changes_are_audited_as_the_admin_token_with_the_client_address() {
    let server = Server::start();
    let api = Api::new(&server);
    let created = api.create_account(Some("Globex"));
    let account = created["account"]["id"].as_str().expect("id").to_string();
    let key_id = created["keys"][0]["key_id"]
        .as_str()
        .expect("key")
        .to_string();
    let remote = |args: &[&str]| {
        let mut command = keygatectl(&server.database());
        command
            .env("KEYGATE_ADMIN_TOKEN", common::ADMIN_TOKEN)
            .args(["--server", &server.url(""), "--json"])
            .args(args);
        json_of(&run(&mut command))
    };
    remote(&["key", "rename", &key_id, "backend"]);
    remote(&["key", "disable", &key_id]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, _) = import_file(dir.path(), "remote.jsonl", &account, 20);
    let imported = remote(&["key", "import", "--file", file.to_str().expect("path")]);
    assert_eq!(imported["added"].as_array().map(Vec::len), Some(20));
    // And one on the database file directly, by the CLI.
    json_of(&cli(
        &server.database(),
        &["--json", "key", "enable", &key_id],
    ));

    let events = remote(&["audit", "--account", &account, "--since", "1h"])["events"].clone();
    let seen: Vec<(String, String, String)> = events
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["actor"]["kind"].as_str().unwrap_or("").to_string(),
                e["actor"]["client"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let expect = |action: &str, kind: &str, client: &str| {
        (action.to_string(), kind.to_string(), client.to_string())
    };
    assert_eq!(
        seen,
        vec![
            expect("account.created", "admin_token", "127.0.0.1"),
            expect("key.renamed", "admin_token", "127.0.0.1"),
            expect("key.disabled", "admin_token", "127.0.0.1"),
            expect("key.imported", "admin_token", "127.0.0.1"),
            expect("key.enabled", "cli", "-"),
        ]
    );
    // The table names who did what; the names stay out of the server's log.
    let table = stdout(&cli(&server.database(), &["audit", "--account", &account]));
    assert!(table
        .lines()
        .next()
        .is_some_and(|h| h.starts_with("WHEN") && h.contains("WHO")));
    assert!(table.contains("key.renamed") && table.contains("admin_token"));
    assert!(!server.log().contains("backend"), "{}", server.log());
    // Bad input is refused clearly.
    let bad = cli(&server.database(), &["audit", "--since", "last week"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn key_list_shows_when_each_key_was_last_used() {
    let server = Server::start();
    let api = Api::new(&server);
    let created = api.create_account(None);
    let account = created["account"]["id"].as_str().expect("id").to_string();
    let used = created["keys"][0]["key_id"]
        .as_str()
        .expect("key")
        .to_string();
    let report = json!({"report_id": "cli-test-report-0001",
        "keys": [{"key_id": used, "allowed": 3, "refused": 1, "last_used": now() - 185}]});
    let answer = send(
        &api.agent,
        "POST",
        &server.url("/v1/usage"),
        Some(SYNC_TOKEN),
        Some(&report.to_string()),
        &[],
    );
    assert_eq!(answer.status, 204, "{}", answer.text);
    let listed = stdout(&cli(
        &server.database(),
        &["key", "list", "--account", &account],
    ));
    let row = listed.lines().find(|l| l.starts_with(&used)).expect("row");
    assert!(row.contains(" min ago "), "{row}");
    let others = listed.lines().skip(1).filter(|l| !l.starts_with(&used));
    assert!(
        others.into_iter().all(|l| l.contains(" never ")),
        "{listed}"
    );
    let keys = cli_json(&server.database(), &["key", "list", "--account", &account]);
    let last = keys["keys"][0]["last_used_at"]
        .as_u64()
        .expect("last_used_at");
    assert_eq!(last % 60, 0, "minute precision");
    // The usage API answers the account's 30 days.
    let usage = api.get(&format!("/v1/accounts/{account}/usage?days=30"));
    assert_eq!(usage.status, 200, "{}", usage.text);
    let mine = usage.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"] == used.as_str())
        .expect("the used key")
        .clone();
    assert_eq!(
        (mine["allowed"].as_u64(), mine["refused"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(mine["days"].as_array().map(Vec::len), Some(1));
}
