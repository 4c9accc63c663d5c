#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The HTTP API of a real `keygatectl serve` process on a loopback port.

mod common;

use common::{send, Answer, Api, Server, StartOptions, ADMIN_TOKEN, SYNC_TOKEN};
use keygate_sync_core::message::{parse_message, KeyMapMessage};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn plaintexts(created: &Value) -> Vec<String> {
    created["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["key"].as_str().expect("plaintext").to_string())
        .collect()
}

fn key_id(key: &Value) -> String {
    key["key_id"].as_str().expect("key_id").to_string()
}

#[test]
fn admin_endpoints_refuse_a_missing_or_wrong_token() {
    let server = Server::start();
    let mut api = Api::new(&server);
    api.create_account(Some("Acme"));
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        api.token = token.map(String::from);
        for (method, path) in [
            ("GET", "/v1/accounts"),
            ("GET", "/v1/keys"),
            ("POST", "/v1/accounts"),
            ("POST", "/v1/keys/key_x/roll"),
        ] {
            let answer = send(
                &api.agent,
                method,
                &server.url(path),
                token,
                Some("{}"),
                &[],
            );
            assert_eq!(answer.status, 401, "{method} {path}");
            assert_eq!(answer.body["error"]["code"], "unauthorized");
            assert!(!answer.text.contains("key_id") && !answer.text.contains("acct_"));
        }
    }
    // Another scheme with the right token is still refused.
    let basic = send(
        &api.agent,
        "GET",
        &server.url("/v1/accounts"),
        None,
        None,
        &[("authorization", &format!("Basic {ADMIN_TOKEN}"))],
    );
    assert_eq!(basic.status, 401);
    // Health and (by default) the key map need no token.
    assert_eq!(api.get("/healthz").status, 200);
    assert_eq!(api.key_map(None, None).status, 200);
}

#[test]
fn accounts_and_keys_are_created_listed_rolled_revoked_disabled_and_enabled() {
    let server = Server::start();
    let api = Api::new(&server);
    let created = api.create_account(Some("Acme"));
    let account_id = created["account"]["id"].as_str().expect("id").to_string();
    assert_eq!(created["account"]["name"], "Acme");
    let kinds: Vec<String> = created["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| format!("{} {}", k["type"], k["environment"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "\"secret\" \"test\"",
            "\"publishable\" \"test\"",
            "\"secret\" \"production\"",
            "\"publishable\" \"production\""
        ]
    );
    let keys = plaintexts(&created);
    for (key, prefix) in keys.iter().zip(["sk_test_", "pk_test_", "sk_", "pk_"]) {
        assert!(key.starts_with(prefix), "{key}");
    }

    // Lists show hints, never plaintext.
    let accounts = api.get("/v1/accounts");
    assert_eq!(accounts.body["accounts"][0]["id"], account_id.as_str());
    let detail = api.get(&format!("/v1/accounts/{account_id}"));
    assert_eq!(detail.status, 200);
    assert_eq!(detail.body["keys"].as_array().expect("keys").len(), 4);
    let listed = api.get(&format!("/v1/keys?account_id={account_id}"));
    assert_eq!(listed.body["keys"].as_array().expect("keys").len(), 4);
    for text in [&accounts.text, &detail.text, &listed.text] {
        assert!(keys.iter().all(|k| !text.contains(k.as_str())));
    }
    assert!(listed.body["keys"][0].get("key").is_none());

    // One more key, shown once.
    let one = api.post(
        "/v1/keys",
        &json!({"account_id": account_id, "type": "secret", "environment": "production"})
            .to_string(),
    );
    assert_eq!(one.status, 201, "{}", one.text);
    assert!(one.body["key"].as_str().expect("key").starts_with("sk_"));
    assert_eq!(one.cache_control.as_deref(), Some("no-store"));
    let extra = key_id(&one.body);

    // Roll with a grace period: new key shown once, the old one expiring.
    let secret_test = key_id(&created["keys"][0]);
    let rolled = api.post(
        &format!("/v1/keys/{secret_test}/roll"),
        r#"{"expires_in_seconds": 3600}"#,
    );
    assert_eq!(rolled.status, 200, "{}", rolled.text);
    assert!(rolled.body["new_key"]["key"]
        .as_str()
        .expect("key")
        .starts_with("sk_test_"));
    assert_eq!(rolled.body["old_key"]["status"], "expiring");
    assert_eq!(
        rolled.body["old_key"]["replaced_by"],
        rolled.body["new_key"]["key_id"]
    );
    assert!(rolled.body["old_key"]["rolled_at"].is_u64());
    let again = api.post(&format!("/v1/keys/{secret_test}/roll"), "");
    assert_eq!(again.status, 409);
    assert_eq!(again.body["error"]["code"], "key_state_conflict");

    // Roll without a body: the old key stops at once.
    let publishable_test = key_id(&created["keys"][1]);
    let rolled_now = api.post(&format!("/v1/keys/{publishable_test}/roll"), "");
    assert_eq!(rolled_now.status, 200);
    assert_eq!(rolled_now.body["old_key"]["status"], "expired");

    // Disable, enable, revoke.
    let disabled = api.post(&format!("/v1/keys/{extra}/disable"), "");
    assert_eq!(
        (disabled.status, &disabled.body["status"]),
        (200, &json!("disabled"))
    );
    let enabled = api.post(&format!("/v1/keys/{extra}/enable"), "");
    assert_eq!(enabled.body["status"], "active");
    let revoked = api.post(&format!("/v1/keys/{extra}/revoke"), "");
    assert_eq!(revoked.body["status"], "revoked");
    assert!(revoked.body["revoked_at"].is_u64());
    assert_eq!(
        api.post(&format!("/v1/keys/{extra}/enable"), "").status,
        409
    );

    // Import by digest.
    let digest = "a".repeat(64);
    let imported = api.post(
        "/v1/keys/import",
        &json!({"account_id": account_id, "type": "publishable", "environment": "test",
                "digest": digest})
        .to_string(),
    );
    assert_eq!(imported.status, 201, "{}", imported.text);
    assert_eq!(imported.body["origin"], "imported");
    assert!(imported.body.get("key").is_none());
}

#[test]
fn bad_requests_get_json_errors_with_fitting_statuses() {
    let server = Server::start();
    let api = Api::new(&server);
    let created = api.create_account(None);
    let account_id = created["account"]["id"].as_str().expect("id");
    let stolen_key_as_digest = json!({"account_id": account_id, "type": "secret",
                                      "environment": "test", "digest": plaintexts(&created)[0]})
    .to_string();
    let roll_path = format!("/v1/keys/{}/roll", key_id(&created["keys"][0]));
    let cases: Vec<(&str, &str, &str, u16, &str)> = vec![
        (
            "GET",
            "/v1/accounts/acct_nope",
            "",
            404,
            "account_not_found",
        ),
        (
            "GET",
            "/v1/keys?account_id=acct_nope",
            "",
            404,
            "account_not_found",
        ),
        ("GET", "/v1/keys?bogus=1", "", 400, "invalid_request"),
        ("POST", "/v1/keys/key_nope/roll", "", 404, "key_not_found"),
        ("POST", "/v1/keys/key_nope/revoke", "", 404, "key_not_found"),
        ("POST", "/v1/accounts", "{not json", 400, "invalid_request"),
        (
            "POST",
            "/v1/accounts",
            r#"{"nmae":"x"}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/accounts",
            r#"{"name":""}"#,
            400,
            "invalid_request",
        ),
        ("POST", "/v1/keys", "", 400, "invalid_request"),
        (
            "POST",
            "/v1/keys",
            r#"{"account_id":"x","type":"root","environment":"test"}"#,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/keys/import",
            &stolen_key_as_digest,
            400,
            "invalid_request",
        ),
        (
            "POST",
            &roll_path,
            r#"{"expires_in_seconds": -1}"#,
            400,
            "invalid_request",
        ),
        ("GET", "/v1/nothing", "", 404, "not_found"),
        ("DELETE", "/v1/accounts", "", 405, "method_not_allowed"),
        ("GET", "/v1/keymap?since=abc", "", 400, "invalid_request"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = send(
            &api.agent,
            method,
            &server.url(path),
            Some(ADMIN_TOKEN),
            Some(body),
            &[],
        );
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text);
        assert_eq!(answer.body["error"]["code"], code, "{method} {path}");
        assert!(answer.body["error"]["message"].is_string());
    }
    // A duplicate digest is a conflict.
    let digest = "b".repeat(64);
    let import = json!({"account_id": account_id, "type": "secret", "environment": "test",
                        "digest": digest})
    .to_string();
    assert_eq!(api.post("/v1/keys/import", &import).status, 201);
    let duplicate = api.post("/v1/keys/import", &import);
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.body["error"]["code"], "duplicate_key");
}

fn tag(store: &str, version: u64) -> String {
    format!("\"{store}:{version}\"")
}

fn version_of(answer: &Answer) -> u64 {
    answer.body["version"].as_u64().expect("version")
}

#[test]
fn the_key_map_answers_304_for_its_etag_and_deltas_since_a_version() {
    let server = Server::start();
    let api = Api::new(&server);
    let empty = api.key_map(None, None);
    assert_eq!(empty.status, 200);
    let store = empty.store.clone().expect("keygate-store");
    assert_eq!(store.len(), 32);
    assert_eq!(empty.etag, Some(tag(&store, 0)));
    assert_eq!(
        empty.body,
        json!({"kind": "full", "version": 0, "keys": []})
    );

    let created = api.create_account(None);
    let first = api.key_map(None, Some(&tag(&store, 0)));
    assert_eq!(first.status, 200);
    let v1 = version_of(&first);
    // Versions follow the clock (unix milliseconds) once something changes.
    assert!(v1 > 1_600_000_000_000, "{v1}");
    assert_eq!(first.etag, Some(tag(&store, v1)));
    assert_eq!(first.store.as_deref(), Some(store.as_str()));
    // What the filter parses is what the server sends.
    assert!(parse_message(first.text.as_bytes()).is_ok());
    assert_eq!(first.body["keys"].as_array().expect("keys").len(), 4);
    let unchanged = api.key_map(None, Some(&tag(&store, v1)));
    assert_eq!(unchanged.status, 304);
    assert_eq!(unchanged.etag, Some(tag(&store, v1)));
    assert_eq!(unchanged.store.as_deref(), Some(store.as_str()));
    assert!(unchanged.text.is_empty());
    assert_eq!(api.key_map(Some(v1), Some(&tag(&store, v1))).status, 304);
    // Weak, listed, or the bare version filters sent before store ids: the same.
    for tags in [
        format!("W/{}", tag(&store, v1)),
        format!("\"x\", {}", tag(&store, v1)),
        format!("\"{v1}\""),
    ] {
        assert_eq!(api.key_map(None, Some(&tags)).status, 304, "{tags}");
    }
    // Another store's version is another map.
    let other = "0123456789abcdef0123456789abcdef";
    assert_eq!(api.key_map(None, Some(&tag(other, v1))).status, 200);
    let up_to_date = api.key_map(Some(v1), None);
    assert_eq!(
        up_to_date.body,
        json!({"kind": "delta", "version": v1, "since": v1, "upserts": [], "removes": []})
    );
    assert_eq!(up_to_date.store.as_deref(), Some(store.as_str()));

    // Disable one key, revoke another, roll a third: each a new version.
    let ids: Vec<String> = created["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(key_id)
        .collect();
    api.post(&format!("/v1/keys/{}/disable", ids[0]), "");
    api.post(&format!("/v1/keys/{}/revoke", ids[1]), "");
    let rolled = api.post(
        &format!("/v1/keys/{}/roll", ids[2]),
        r#"{"expires_in_seconds":600}"#,
    );
    let changed = api.key_map(None, Some(&tag(&store, v1)));
    let v4 = version_of(&changed);
    assert!(v4 >= v1 + 3, "{v1} → {v4}");
    assert_eq!(changed.etag, Some(tag(&store, v4)));

    let delta = api.key_map(Some(v1), None);
    assert_eq!(delta.etag, Some(tag(&store, v4)));
    assert_eq!(delta.store.as_deref(), Some(store.as_str()));
    let message: KeyMapMessage = serde_json::from_str(&delta.text).expect("message");
    let KeyMapMessage::Delta {
        version,
        since,
        upserts,
        removes,
    } = message
    else {
        panic!("expected a delta: {}", delta.text);
    };
    assert_eq!((version, since), (v4, v1));
    let upserted: BTreeMap<String, _> =
        upserts.into_iter().map(|k| (k.key_id.clone(), k)).collect();
    let new_key = key_id(&rolled.body["new_key"]);
    let mut expected = vec![ids[0].clone(), ids[2].clone(), new_key.clone()];
    expected.sort();
    assert_eq!(upserted.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(upserted[&ids[0]].disabled, "disabled keys stay, marked");
    assert!(
        upserted[&ids[2]].expires_at.is_some(),
        "a rolled key stays until it expires"
    );
    assert_eq!(
        removes,
        vec![created["keys"][1]["digest"].as_str().expect("digest")]
    );
}

/// A delta only from a version this store issued, and only for this store: anything else
/// gets the full map.
#[test]
fn deltas_answer_only_this_store_s_own_versions() {
    let server = Server::start();
    let api = Api::new(&server);
    api.create_account(None);
    let v1 = api.key_map_version();
    api.create_account(None);
    let full = api.key_map(None, None);
    let (store, v2) = (full.store.clone().expect("store"), version_of(&full));
    let kind = |query: &str| {
        let answer = api.key_map_query(Some(query), None);
        assert_eq!(answer.status, 200, "{query}: {}", answer.text);
        assert_eq!(answer.store.as_deref(), Some(store.as_str()), "{query}");
        assert_eq!(version_of(&answer), v2, "{query}");
        answer.body["kind"].as_str().expect("kind").to_string()
    };
    assert_eq!(kind(&format!("since={v1}")), "delta");
    assert_eq!(kind(&format!("since={v1}&store={store}")), "delta");
    // The same number from another store is not this store's version.
    let other = "0123456789abcdef0123456789abcdef";
    assert_eq!(kind(&format!("since={v1}&store={other}")), "full");
    // A number between two versions this store issued, or one it never issued.
    assert_eq!(kind(&format!("since={}", v1 + 1)), "full");
    assert_eq!(kind("since=1"), "full");
    assert_eq!(kind(&format!("store={store}")), "full");
    for bad in ["store=ABC", "store=0123", "since=x", "since=1&other=2"] {
        let answer = api.key_map_query(Some(bad), None);
        assert_eq!(answer.status, 400, "{bad}");
        assert_eq!(answer.body["error"]["code"], "invalid_request");
    }
}

/// A poll holding a version newer than the store's: the database went back (restored from
/// an older copy). The store records an empty change so that its version passes every one
/// handed out, at most once a second, never to the poller's number; the poller gets the
/// full map.
#[test]
fn a_poll_from_the_future_moves_the_store_past_it() {
    let server = Server::start();
    let api = Api::new(&server);
    api.create_account(None);
    let full = api.key_map(None, None);
    let (store, current) = (full.store.clone().expect("store"), version_of(&full));
    let ahead = current + 1;
    let answer = api.key_map_query(Some(&format!("since={ahead}&store={store}")), None);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["kind"], "full");
    assert_eq!(answer.body["keys"].as_array().map(Vec::len), Some(4));
    let bumped = version_of(&answer);
    assert!(bumped > current, "{current} → {bumped}");
    assert_eq!(answer.etag, Some(tag(&store, bumped)));
    assert!(
        server.log().contains("restored from an older copy"),
        "{}",
        server.log()
    );
    // A rogue poller's number is never taken.
    let rogue = api.key_map_query(Some(&format!("since={}", u64::MAX)), None);
    assert_eq!(rogue.body["kind"], "full");
    assert!(version_of(&rogue) < 1 << 62);
    // Another store's future version is nothing to this store.
    let other = "0123456789abcdef0123456789abcdef";
    let before = api.key_map_version();
    let answer = api.key_map_query(Some(&format!("since={}&store={other}", u64::MAX)), None);
    assert_eq!(version_of(&answer), before);
}

#[test]
fn a_rolled_key_leaves_the_map_when_its_grace_period_ends() {
    let server = Server::start();
    let api = Api::new(&server);
    let created = api.create_account(None);
    let old = key_id(&created["keys"][3]);
    let old_digest = created["keys"][3]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    api.post(
        &format!("/v1/keys/{old}/roll"),
        r#"{"expires_in_seconds":1}"#,
    );
    let during = api.key_map(None, None);
    let version = during.body["version"].as_u64().expect("version");
    assert!(during.text.contains(&old_digest));
    std::thread::sleep(Duration::from_millis(2100));
    // Even the cheap conditional poll notices the expiry.
    let after = api.key_map(None, Some(&format!("\"{version}\"")));
    assert_eq!(after.status, 200, "{}", after.text);
    assert!(after.body["version"].as_u64().expect("version") > version);
    assert!(!after.text.contains(&old_digest));
    let keys = api.get("/v1/keys");
    let old_key = keys.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"] == old.as_str())
        .expect("old key listed")
        .clone();
    assert_eq!(old_key["status"], "expired");
    assert!(old_key["removed_at"].is_u64());
}

#[test]
fn plaintext_keys_appear_nowhere_in_the_database_files_or_the_log() {
    let server = Server::start();
    let api = Api::new(&server);
    let mut secrets = Vec::new();
    let mut digests = Vec::new();
    for name in ["one", "two"] {
        let created = api.create_account(Some(name));
        secrets.extend(plaintexts(&created));
        let rolled = api.post(
            &format!("/v1/keys/{}/roll", key_id(&created["keys"][0])),
            r#"{"expires_in_seconds":60}"#,
        );
        secrets.push(
            rolled.body["new_key"]["key"]
                .as_str()
                .expect("key")
                .to_string(),
        );
        digests.push(
            created["keys"][1]["digest"]
                .as_str()
                .expect("digest")
                .to_string(),
        );
    }
    let database = server.database();
    let mut files = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = database.with_file_name(format!("keygate.db{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            files.push((path, bytes));
        }
    }
    let everything: Vec<u8> = files.iter().flat_map(|(_, b)| b.clone()).collect();
    // The scan reads the right bytes: the digests are there.
    for digest in &digests {
        assert!(
            contains(&everything, digest.as_bytes()),
            "digest {digest} not found"
        );
    }
    for secret in &secrets {
        let body = &secret[secret.len() - 20..];
        assert!(
            !contains(&everything, secret.as_bytes()),
            "plaintext key in the database"
        );
        assert!(
            !contains(&everything, body.as_bytes()),
            "key body in the database"
        );
    }
    let log = server.log();
    assert!(log.contains("rolled"), "{log}");
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "plaintext key in the log");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sync_token_guards_the_key_map_when_configured() {
    let server = Server::start_with(StartOptions {
        sync_token: Some("sync-token-0123456789"),
        ..StartOptions::default()
    })
    .expect("start");
    let api = Api::new(&server);
    let url = server.url("/v1/keymap");
    let without = send(&api.agent, "GET", &url, None, None, &[]);
    assert_eq!(without.status, 401);
    assert_eq!(without.body["error"]["code"], "unauthorized");
    let wrong = send(
        &api.agent,
        "GET",
        &url,
        Some("not-the-sync-token"),
        None,
        &[],
    );
    assert_eq!(wrong.status, 401);
    let with_sync = send(
        &api.agent,
        "GET",
        &url,
        Some("sync-token-0123456789"),
        None,
        &[],
    );
    assert_eq!(with_sync.status, 200);
    let with_admin = send(&api.agent, "GET", &url, Some(ADMIN_TOKEN), None, &[]);
    assert_eq!(with_admin.status, 200);
    // The sync token opens nothing else.
    let admin_with_sync = send(
        &api.agent,
        "GET",
        &server.url("/v1/accounts"),
        Some("sync-token-0123456789"),
        None,
        &[],
    );
    assert_eq!(admin_with_sync.status, 401);
}

#[test]
fn a_generated_admin_token_is_printed_once_and_kept_as_a_digest() {
    let server = Server::start_with(StartOptions {
        admin_token: None,
        ..StartOptions::default()
    })
    .expect("start");
    let log = server.log();
    let token = log
        .lines()
        .find_map(|line| line.split("admin token: ").nth(1))
        .expect("generated token printed")
        .trim()
        .to_string();
    let mut api = Api::new(&server);
    api.token = Some(token.clone());
    assert_eq!(api.get("/v1/accounts").status, 200);
    let dir = server.stop();
    let database = std::fs::read(dir.path().join("keygate.db")).expect("db");
    assert!(!contains(&database, token.as_bytes()));

    // Restarting: no new token, the old one still works.
    let server = Server::start_with(StartOptions {
        admin_token: None,
        dir: Some(dir),
        ..StartOptions::default()
    })
    .expect("restart");
    assert!(!server.log().contains("admin token: "));
    let mut api = Api::new(&server);
    api.token = Some(token);
    assert_eq!(api.get("/v1/accounts").status, 200);
    let dir = server.stop();

    // Restarting with a different token is refused, with a reason.
    let Err((_, log)) = Server::start_with(StartOptions {
        admin_token: Some("some-other-token-0123456789"),
        dir: Some(dir),
        ..StartOptions::default()
    }) else {
        panic!("a mismatching admin token must stop the server");
    };
    assert!(log.contains("does not match"), "{log}");
}

/// Many clients roll keys and poll the map at once: each sees versions strictly rise around
/// its own rolls, and the map ends holding exactly the latest keys.
#[test]
fn concurrent_rolls_and_polls_keep_the_map_consistent() {
    const WRITERS: usize = 4;
    const ROLLS: usize = 8;
    const READERS: usize = 3;
    let server = Server::start();
    let api = Api::new(&server);
    let accounts: Vec<Value> = (0..WRITERS).map(|_| api.create_account(None)).collect();
    let start_version = api.key_map_version();
    std::thread::scope(|scope| {
        let writers: Vec<_> = accounts
            .iter()
            .map(|account| {
                let server = &server;
                scope.spawn(move || {
                    let api = Api::new(server);
                    let mut current = key_id(&account["keys"][0]);
                    for _ in 0..ROLLS {
                        let before = api.key_map_version();
                        let rolled = api.post(&format!("/v1/keys/{current}/roll"), "");
                        assert_eq!(rolled.status, 200, "{}", rolled.text);
                        let after = api.key_map_version();
                        assert!(after > before, "version {before} → {after}");
                        current = key_id(&rolled.body["new_key"]);
                    }
                    current
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let server = &server;
                scope.spawn(move || {
                    let api = Api::new(server);
                    let mut map = BTreeMap::new();
                    let mut version = 0;
                    for _ in 0..40 {
                        let answer = api.key_map(Some(version), None);
                        assert_eq!(answer.status, 200);
                        let message: KeyMapMessage =
                            serde_json::from_str(&answer.text).expect("message");
                        assert!(message.version() >= version, "versions never go back");
                        version = apply(&mut map, message);
                    }
                })
            })
            .collect();
        let latest: Vec<String> = writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect();
        for reader in readers {
            reader.join().expect("reader");
        }
        let final_map = api.key_map(None, None);
        // Each roll a version of its own: at least one more each.
        assert!(
            final_map.body["version"].as_u64().expect("version")
                >= start_version + (WRITERS * ROLLS) as u64
        );
        let keys = final_map.body["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), WRITERS * 4);
        for id in latest {
            assert!(keys.iter().any(|k| k["key_id"] == id.as_str()));
        }
        // A client that followed deltas from the start holds the same map.
        let mut replayed = BTreeMap::new();
        let message: KeyMapMessage =
            serde_json::from_str(&api.key_map(Some(0), None).text).expect("message");
        apply(&mut replayed, message);
        assert_eq!(replayed.len(), keys.len());
    });
}

fn apply(map: &mut BTreeMap<String, String>, message: KeyMapMessage) -> u64 {
    match message {
        KeyMapMessage::Full { version, keys } => {
            *map = keys.into_iter().map(|k| (k.digest, k.key_id)).collect();
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
                map.insert(key.digest, key.key_id);
            }
            version
        }
    }
}

/// The conditional poll is answered from memory. Debug builds are slow, so the floor here is
/// low; `--release` reaches far more (see the README).
#[test]
fn conditional_polls_are_cheap() {
    const POLLS: usize = 2000;
    let server = Server::start();
    let api = Api::new(&server);
    api.create_account(None);
    let etag = api.key_map(None, None).etag.expect("etag");
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = format!(
        "GET /v1/keymap HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {SYNC_TOKEN}\r\n\
         If-None-Match: {etag}\r\n\r\n"
    );
    let mut buffer = [0u8; 1024];
    let started = Instant::now();
    for _ in 0..POLLS {
        stream.write_all(request.as_bytes()).expect("write");
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).expect("read");
            assert!(n > 0, "connection closed");
            seen.extend_from_slice(&buffer[..n]);
        }
        assert!(
            seen.starts_with(b"HTTP/1.1 304"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
    }
    // How fast is `make bench`'s business; a timed assertion would only be a flake.
    let rate = POLLS as f64 / started.elapsed().as_secs_f64();
    eprintln!("{rate:.0} conditional polls per second on one connection");
}

/// One raw HTTP/1.1 GET with this `Host` (ureq would write its own): the status line's code.
fn status_with_host(server: &Server, path: &str, host: &str, token: Option<&str>) -> u16 {
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let code = answer.split(' ').nth(1).expect("status line");
    if code == "421" {
        assert!(answer.contains("\"host_not_allowed\""), "{answer}");
    }
    code.parse().expect("status")
}

/// DNS rebinding: a page whose name resolves to 127.0.0.1 still sends its own name as
/// `Host`. Only IP literals, localhost and the names given with --allowed-host are answered.
#[test]
fn requests_for_other_host_names_are_refused() {
    let server = Server::start_with(StartOptions {
        extra_args: vec![
            "--allowed-host".into(),
            "keygatectl".into(),
            "--allowed-host".into(),
            "*.svc.example".into(),
        ],
        ..StartOptions::default()
    })
    .expect("start");
    let port = server.base.rsplit(':').next().expect("port").to_string();
    let paths = [
        ("/v1/keymap", Some(SYNC_TOKEN)),
        ("/v1/accounts", Some(ADMIN_TOKEN)),
        ("/ui/login", None),
    ];
    for (path, token) in paths {
        for host in [
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
            format!("localhost:{port}"),
            "localhost".to_string(),
            format!("keygatectl:{port}"),
            "keygatectl.ns.svc.example".to_string(),
        ] {
            assert_eq!(
                status_with_host(&server, path, &host, token),
                200,
                "{path} {host}"
            );
        }
        for host in [
            format!("rebind.attacker.example:{port}"),
            "keygatectl.attacker.example".to_string(),
            "svc.example".to_string(),
        ] {
            assert_eq!(
                status_with_host(&server, path, &host, token),
                421,
                "{path} {host}"
            );
        }
    }
    // Health checks name the cluster (Envoy's default) and learn nothing: always answered.
    assert_eq!(status_with_host(&server, "/healthz", "anything", None), 200);
    assert!(server
        .log()
        .contains("answering Host names: IP addresses, localhost, keygatectl, *.svc.example"));
}

/// Wrong admin tokens on the API slow down their address as on the sign-in page: each
/// answer waits longer, and attempts while the wait runs get 429 with Retry-After,
/// unchecked. A missing token is no attempt.
#[test]
fn wrong_tokens_on_the_api_are_throttled_per_address() {
    let server = Server::start();
    let mut api = Api::new(&server);
    api.token = Some("wrong-admin-token-0123456789".into());
    let without_token = || {
        send(
            &api.agent,
            "GET",
            &server.url("/v1/accounts"),
            None,
            None,
            &[],
        )
    };
    assert_eq!(without_token().status, 401);
    assert_eq!(api.get("/v1/accounts").status, 401);
    assert!(server
        .log()
        .contains("wrong admin token from 127.0.0.1 (1 in a row)"));
    std::thread::scope(|scope| {
        // A second wrong token: its answer waits; meanwhile this address is refused.
        let wrong = scope.spawn(|| api.get("/v1/accounts").status);
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = loop {
            let answer = without_token();
            if answer.status == 429 {
                break answer;
            }
            assert_eq!(answer.status, 401);
            assert!(Instant::now() < deadline, "never throttled");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(refused.body["error"]["code"], "too_many_attempts");
        let retry: u64 = refused
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .expect("secs");
        assert!((1..=30).contains(&retry), "{retry}");
        // Even the right token waits its turn.
        let mut right = Api::new(&server);
        right.token = Some(ADMIN_TOKEN.into());
        assert_eq!(wrong.join().expect("wrong"), 401);
        assert!(server.log().contains("(2 in a row)"), "{}", server.log());
        let deadline = Instant::now() + Duration::from_secs(10);
        while right.get("/v1/accounts").status == 429 {
            assert!(Instant::now() < deadline, "still throttled");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(right.get("/v1/accounts").status, 200);
    });
    // The key map: a token that is not the sync token counts (the admin token works there,
    // so it may be a guess at it), in a throttle of its own: a filter still sending a
    // rotated-out token locks neither the filters holding the right one nor the admin API.
    let key_map = |token: Option<&str>| {
        send(
            &api.agent,
            "GET",
            &server.url("/v1/keymap"),
            token,
            None,
            &[],
        )
    };
    assert_eq!(key_map(Some("wrong-sync-token-0123456789")).status, 401);
    assert!(
        server
            .log()
            .contains("wrong sync token from 127.0.0.1 (1 in a row)"),
        "{}",
        server.log()
    );
    std::thread::scope(|scope| {
        let wrong = scope.spawn(|| key_map(Some("wrong-sync-token-0123456789")).status);
        let deadline = Instant::now() + Duration::from_secs(10);
        while key_map(None).status != 429 {
            assert!(Instant::now() < deadline, "never throttled");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(key_map(Some(SYNC_TOKEN)).status, 200);
        let mut admin = Api::new(&server);
        admin.token = Some(ADMIN_TOKEN.into());
        assert_eq!(admin.get("/v1/accounts").status, 200);
        assert_eq!(wrong.join().expect("wrong"), 401);
    });
}

/// By default the key map needs a sync token: created on the first start beside the
/// database (owner-only), kept on later starts. Opting out takes a flag and logs a warning.
#[test]
fn a_sync_token_is_created_on_first_start_and_required() {
    let server = Server::start_with(StartOptions {
        sync_token: None,
        ..StartOptions::default()
    })
    .expect("start");
    let file = server.dir.path().join("keygate.db.sync-token");
    let token = std::fs::read_to_string(&file)
        .expect("token file")
        .trim()
        .to_string();
    assert!(token.starts_with("kgsync_") && token.len() == 47, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        server.log().contains("keygate.db.sync-token"),
        "{}",
        server.log()
    );
    assert!(!server.log().contains(&token), "the token is never logged");
    let mut api = Api::new(&server);
    api.sync_token = None;
    assert_eq!(api.key_map(None, None).status, 401);
    api.sync_token = Some(token.clone());
    assert_eq!(api.key_map(None, None).status, 200);
    // Restarted: the same token.
    let dir = server.stop();
    let server = Server::start_with(StartOptions {
        sync_token: None,
        dir: Some(dir),
        ..StartOptions::default()
    })
    .expect("restart");
    let mut api = Api::new(&server);
    api.sync_token = Some(token);
    assert_eq!(api.key_map(None, None).status, 200);
    // Opting out: open, with a warning.
    let dir = server.stop();
    let server = Server::start_with(StartOptions {
        sync_token: None,
        dir: Some(dir),
        extra_args: vec!["--no-sync-token".into()],
        ..StartOptions::default()
    })
    .expect("restart open");
    let mut api = Api::new(&server);
    api.sync_token = None;
    assert_eq!(api.key_map(None, None).status, 200);
    assert!(
        server.log().contains(" WARN keygatectl: --no-sync-token"),
        "{}",
        server.log()
    );
    // Another token in the file than the database's: refused at start.
    let dir = server.stop();
    std::fs::write(
        dir.path().join("keygate.db.sync-token"),
        "another-token-0123456789\n",
    )
    .expect("write");
    let (_, log) = match Server::start_with(StartOptions {
        sync_token: None,
        dir: Some(dir),
        ..StartOptions::default()
    }) {
        Ok(_) => panic!("started with another sync token"),
        Err(failed) => failed,
    };
    assert!(log.contains("does not match"), "{log}");
}

/// The database restored in place (`sqlite3 keygate.db ".restore BACKUP"`) under a running
/// server: its next status read sees the version go back, records an empty change past the
/// version it had, and serves the restored map under it.
#[test]
fn a_database_restored_under_a_running_server_moves_past_what_it_served() {
    let server = Server::start();
    let api = Api::new(&server);
    api.create_account(None);
    let backup = server.dir.path().join("backup.db");
    rusqlite::Connection::open(server.database())
        .expect("open")
        .execute("VACUUM INTO ?1", [backup.to_str().expect("path")])
        .expect("backup");
    api.create_account(None);
    // What the filters hold: a version learnt without a full map in the server's memory (a
    // conditional poll), so the first full map after the restore is built from it.
    let served = api.key_map(None, Some("*"));
    assert_eq!(served.status, 304);
    let store = served.store.clone().expect("store");
    let etag = served.etag.expect("etag");
    let served_version: u64 = etag
        .trim_matches('"')
        .rsplit(':')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("version");
    let mut live = rusqlite::Connection::open(server.database()).expect("open");
    live.busy_timeout(Duration::from_secs(10)).expect("busy");
    live.restore(
        rusqlite::MAIN_DB,
        &backup,
        None::<fn(rusqlite::backup::Progress)>,
    )
    .expect("restore");
    drop(live);
    let deadline = Instant::now() + Duration::from_secs(10);
    let restored = loop {
        let answer = api.key_map(None, None);
        if answer.body["keys"].as_array().map(Vec::len) == Some(4) {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the server never saw the restore"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        restored.store.as_deref(),
        Some(store.as_str()),
        "a backup keeps the id"
    );
    assert!(version_of(&restored) > served_version, "{}", restored.text);
    assert!(server.log().contains("went back"), "{}", server.log());
    // A filter still at the lost version gets the full map, not a delta.
    let lost = api.key_map_query(Some(&format!("since={served_version}&store={store}")), None);
    assert_eq!(lost.body["kind"], "full");
}
