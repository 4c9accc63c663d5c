#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The `keygatectl` command line, on a database file and against a running server.

mod common;

use common::{keygatectl, run, run_with_stdin, Api, Server, ADMIN_TOKEN, SYNC_TOKEN};
use keygate_core::config::FilterConfig;
use keygate_core::digest::Digest;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// Runs `keygatectl --database DB --json ARGS…` and parses its answer.
fn cli_json(database: &Path, args: &[&str]) -> Value {
    json_of(&run(keygatectl(database).arg("--json").args(args)))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn str_of<'v>(value: &'v Value, field: &str) -> &'v str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
}

#[test]
fn the_key_lifecycle_works_on_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let created = cli_json(&db, &["account", "create", "--name", "Acme"]);
    let account = str_of(&created["account"], "id").to_string();
    assert_eq!(created["keys"].as_array().expect("keys").len(), 4);
    let secret_test = str_of(&created["keys"][0], "key_id").to_string();

    let listed = cli_json(&db, &["key", "list", "--account", &account]);
    assert_eq!(listed["keys"].as_array().expect("keys").len(), 4);
    assert!(listed["keys"][0].get("key").is_none());

    let rolled = cli_json(&db, &["key", "roll", &secret_test, "--expires-in", "24h"]);
    assert_eq!(rolled["old_key"]["status"], "expiring");
    let expires_at = rolled["old_key"]["expires_at"]
        .as_u64()
        .expect("expires_at");
    let rolled_at = rolled["old_key"]["rolled_at"].as_u64().expect("rolled_at");
    // 24 h, plus the second that makes a grace at least what was asked (whole seconds).
    assert_eq!(expires_at - rolled_at, 86_401);
    assert!(str_of(&rolled["new_key"], "key").starts_with("sk_test_"));

    let new_key = cli_json(
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
        ],
    );
    assert!(str_of(&new_key, "key").starts_with("pk_"));
    let id = str_of(&new_key, "key_id").to_string();
    assert_eq!(
        cli_json(&db, &["key", "disable", &id])["status"],
        "disabled"
    );
    assert_eq!(cli_json(&db, &["key", "enable", &id])["status"], "active");
    assert_eq!(cli_json(&db, &["key", "revoke", &id])["status"], "revoked");

    let shown = cli_json(&db, &["account", "show", &account]);
    assert_eq!(shown["keys"].as_array().expect("keys").len(), 6);
    let accounts = cli_json(&db, &["account", "list"]);
    assert_eq!(accounts["accounts"][0]["name"], "Acme");

    // The human table shows hints and states.
    let table = run(keygatectl(&db).args(["key", "list"]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("KEY ID"), "{table}");
    assert!(
        table.contains("expiring") && table.contains("revoked"),
        "{table}"
    );
    assert!(table.contains("sk_test_…"), "{table}");
}

#[test]
fn bad_input_gets_a_message_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let cases: Vec<(Vec<&str>, &str, i32, &str)> = vec![
        (vec!["key", "roll", "key_nope"], "", 1, "no key key_nope"),
        (
            vec!["key", "roll", "k", "--expires-in", "5"],
            "",
            2,
            "no unit",
        ),
        (
            vec!["key", "roll", "k", "--expires-in", "1w"],
            "",
            2,
            "not a duration",
        ),
        (
            vec![
                "key",
                "create",
                "--account",
                "a",
                "--type",
                "root",
                "--environment",
                "test",
            ],
            "",
            2,
            "invalid value",
        ),
        (
            vec!["key", "list", "--account", "acct_nope"],
            "",
            1,
            "no account",
        ),
        (
            vec!["account", "create", "--name", ""],
            "",
            2,
            "name is empty",
        ),
        (
            vec!["key", "import", "--account", "a"],
            "xk_garbage\n",
            2,
            "prefixes",
        ),
        (
            vec!["key", "import", "--account", "a"],
            "",
            2,
            "no key on standard input",
        ),
        (
            vec!["key", "import", "--account", "a", "--digest", "abc"],
            "",
            2,
            "--type",
        ),
        (
            vec![
                "key",
                "import",
                "--account",
                "a",
                "--type",
                "secret",
                "--env",
                "test",
                "--digest",
                "xyz",
            ],
            "",
            2,
            "64 hex",
        ),
        (vec!["hash"], "", 2, "no key"),
        (vec!["hash"], "a\nb\n", 2, "more than one line"),
        (
            vec!["--server", "localhost:1", "account", "list"],
            "",
            2,
            "http://",
        ),
        (
            vec!["--server", "http://127.0.0.1:9", "account", "list"],
            "",
            2,
            "admin token",
        ),
        (
            vec!["serve", "--purge-interval", "0s"],
            "",
            2,
            "at least 1s",
        ),
        (
            vec!["export", "--base", "/nonexistent/base.json"],
            "",
            1,
            "base.json",
        ),
    ];
    for (args, input, code, message) in cases {
        let output = run_with_stdin(keygatectl(&db).args(&args), input);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {text}");
        assert!(text.contains(message), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
    // A server that is not there: a transport error, exit 1.
    let output = run(keygatectl(&db)
        .args(["--server", "http://127.0.0.1:9", "account", "list"])
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("cannot reach"));
}

#[test]
fn hash_prints_the_sha256_of_the_key_on_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let output = run_with_stdin(keygatectl(&db).arg("hash"), "sk_test_abc\n");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        Digest::of_key("sk_test_abc").to_hex()
    );
    let crlf = run_with_stdin(keygatectl(&db).arg("hash"), "sk_test_abc\r\n");
    assert_eq!(crlf.stdout, output.stdout);
}

#[test]
fn imported_keys_are_stored_by_digest_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let created = cli_json(&db, &["account", "create"]);
    let account = str_of(&created["account"], "id").to_string();
    let legacy = "sk_live_style_legacy_key_4f6b2a0c9d8e7f6a";
    let output = run_with_stdin(
        keygatectl(&db).args(["--json", "key", "import", "--account", &account]),
        &format!("{legacy}\n"),
    );
    let imported = json_of(&output);
    assert_eq!(imported["origin"], "imported");
    assert_eq!(imported["type"], "secret");
    assert_eq!(imported["environment"], "production");
    assert_eq!(imported["hint"], "sk_…7f6a");
    assert_eq!(imported["digest"], Digest::of_key(legacy).to_hex().as_str());
    // The prefix decides the kind; a contradicting flag is refused.
    let other = "pk_test_another_legacy_key_0123";
    let mismatch = run_with_stdin(
        keygatectl(&db).args(["key", "import", "--account", &account, "--type", "secret"]),
        other,
    );
    assert_eq!(mismatch.status.code(), Some(2));
    assert!(stderr(&mismatch).contains("prefix"));
    // By digest, with the kind given.
    let digest = Digest::of_key(other).to_hex();
    let by_digest = cli_json(
        &db,
        &[
            "key",
            "import",
            "--account",
            &account,
            "--type",
            "publishable",
            "--environment",
            "test",
            "--digest",
            &digest,
        ],
    );
    assert_eq!(by_digest["hint"], "pk_test_…????");
    let database = std::fs::read(&db).expect("db");
    let wal = std::fs::read(db.with_file_name("keygate.db-wal")).unwrap_or_default();
    for bytes in [database, wal] {
        assert!(!bytes.windows(legacy.len()).any(|w| w == legacy.as_bytes()));
    }
}

#[test]
fn export_writes_plugin_and_extension_configs_the_filter_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let created = cli_json(&db, &["account", "create"]);
    let disabled = str_of(&created["keys"][1], "key_id").to_string();
    cli_json(&db, &["key", "disable", &disabled]);
    let revoked = str_of(&created["keys"][2], "key_id").to_string();
    cli_json(&db, &["key", "revoke", &revoked]);
    let base = dir.path().join("base.json");
    std::fs::write(
        &base,
        r#"{"realm":"hypertrack","schemes":["token","basic"]}"#,
    )
    .expect("base");

    let plugin_path = dir.path().join("keygate.json");
    let output = run(keygatectl(&db)
        .args(["export", "--base"])
        .arg(&base)
        .arg("--output")
        .arg(&plugin_path));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&plugin_path).expect("plugin config");
    let plugin: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(plugin["version"], 1);
    assert_eq!(plugin["realm"], "hypertrack");
    let keys = plugin["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 3, "the revoked key is not exported");
    assert!(keys
        .iter()
        .any(|k| k["key_id"] == disabled.as_str() && k["disabled"] == true));
    let config = FilterConfig::parse(text.as_bytes()).expect("the filter loads it");
    assert_eq!(config.keys.len(), 3);

    let ecds_path = dir.path().join("keygate-ecds.yaml");
    let output = run(keygatectl(&db)
        .args([
            "export",
            "--format",
            "extension-config",
            "--wasm",
            "/etc/envoy/keygate.wasm",
        ])
        .arg("--output")
        .arg(&ecds_path));
    assert!(output.status.success(), "{}", stderr(&output));
    let ecds: Value =
        serde_json::from_str(&std::fs::read_to_string(&ecds_path).expect("ecds")).expect("json");
    let resource = &ecds["resources"][0];
    assert_eq!(
        resource["@type"],
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
    );
    assert_eq!(resource["name"], "keygate");
    let wasm = &resource["typed_config"]["config"];
    assert_eq!(
        wasm["vm_config"]["code"]["local"]["filename"],
        "/etc/envoy/keygate.wasm"
    );
    assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
    let inner = wasm["configuration"]["value"]
        .as_str()
        .expect("string value");
    assert_eq!(
        FilterConfig::parse(inner.as_bytes())
            .expect("loads")
            .keys
            .len(),
        3
    );
    // Written atomically: only the files we asked for are in the directory.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("keygate.db"))
        .collect();
    names.sort();
    assert_eq!(names, ["base.json", "keygate-ecds.yaml", "keygate.json"]);
}

#[test]
fn the_cli_works_against_a_running_server() {
    let server = Server::start();
    let db_elsewhere = server.dir.path().join("unused.db");
    let remote = |args: &[&str]| {
        let output = run(keygatectl(&db_elsewhere)
            .args(["--server", &server.base, "--json"])
            .args(args)
            .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN));
        json_of(&output)
    };
    let created = remote(&["account", "create", "--name", "Remote"]);
    let account = str_of(&created["account"], "id").to_string();
    let key = str_of(&created["keys"][0], "key_id").to_string();
    assert_eq!(
        remote(&["key", "list", "--account", &account])["keys"]
            .as_array()
            .expect("keys")
            .len(),
        4
    );
    let rolled = remote(&["key", "roll", &key, "--expires-in", "90s"]);
    assert_eq!(rolled["old_key"]["status"], "expiring");
    assert_eq!(remote(&["key", "disable", &key])["status"], "disabled");
    assert_eq!(
        remote(&["account", "show", &account])["keys"]
            .as_array()
            .expect("keys")
            .len(),
        5
    );
    // Rate limits: the account's default reaches its keys without their own (here in the
    // export, built from the key map); a key's own limit wins.
    let default = serde_json::json!({"requests": 30, "per": "minute", "burst": 5});
    let set = remote(&[
        "account",
        "limit",
        &account,
        "--requests",
        "30",
        "--per",
        "minute",
        "--burst",
        "5",
    ]);
    assert_eq!(set["rate_limit"], default);
    assert_eq!(
        remote(&["account", "show", &account])["account"]["rate_limit"],
        default
    );
    let own_key = str_of(&created["keys"][1], "key_id").to_string();
    let own = serde_json::json!({"requests": 10, "per": "second"});
    assert_eq!(
        remote(&[
            "key",
            "limit",
            &own_key,
            "--requests",
            "10",
            "--per",
            "second"
        ])["rate_limit"],
        own
    );
    let plugin = remote(&["export"]);
    let keys = plugin["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 5);
    for key in keys {
        let want = if key["key_id"] == own_key.as_str() {
            &own
        } else {
            &default
        };
        assert_eq!(&key["rate_limit"], want, "{key}");
    }
    let removed = remote(&["account", "limit", &account, "--remove"]);
    assert!(removed["rate_limit"].is_null());
    let plugin = remote(&["export"]);
    let limited: Vec<&serde_json::Value> = plugin["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| !k["rate_limit"].is_null())
        .collect();
    assert_eq!(
        limited.len(),
        1,
        "only the key with its own limit: {limited:?}"
    );
    assert!(
        !db_elsewhere.exists(),
        "--server never touches a local database"
    );

    // A wrong token: the server's 401, exit 1, no panic.
    let output = run(keygatectl(&db_elsewhere)
        .args(["--server", &server.base, "account", "list"])
        .env("KEYGATE_ADMIN_TOKEN", "wrong-token-0123456789"));
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("401 unauthorized"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn changes_made_on_the_file_reach_a_running_server() {
    let server = Server::start();
    let api = Api::new(&server);
    let before = api.key_map(None, None).etag.expect("etag");
    cli_json(&server.database(), &["account", "create"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.key_map(None, Some(&before)).status == 304 {
        assert!(Instant::now() < deadline, "the server never saw the change");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        api.key_map(None, None).body["keys"]
            .as_array()
            .map(Vec::len),
        Some(4)
    );

    // Rotating the admin token on the file: the server takes the new one within a second.
    let output = run(keygatectl(&server.database()).args(["admin-token", "rotate"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let new_token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(new_token.starts_with("kgadm_"), "{new_token}");
    let mut api = Api::new(&server);
    api.token = Some(new_token);
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.get("/v1/accounts").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the server never took the new token"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    api.token = Some(ADMIN_TOKEN.into());
    assert_eq!(api.get("/v1/accounts").status, 401);
}

/// A version that can no longer rise (a rogue value near the database's integer limit)
/// refuses changes with a way out; `keymap new-lineage` takes it, and a running server
/// serves the new store id and version within a second.
#[test]
fn a_new_lineage_unsticks_a_rogue_version_under_a_running_server() {
    let server = Server::start();
    let api = Api::new(&server);
    api.create_account(None);
    let before = cli_json(&server.database(), &["keymap", "status"]);
    let old_store = str_of(&before, "store").to_string();
    assert_eq!(
        api.key_map(None, None).store.as_deref(),
        Some(old_store.as_str())
    );
    rusqlite::Connection::open(server.database())
        .expect("open")
        .execute("UPDATE keymap_state SET version = 9223372036854775807", [])
        .expect("rogue version");
    let refused = run(keygatectl(&server.database()).args(["account", "create"]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("keygatectl keymap new-lineage"),
        "{}",
        stderr(&refused)
    );
    let started = run(keygatectl(&server.database()).args(["--json", "keymap", "new-lineage"]));
    let lineage = json_of(&started);
    assert!(stderr(&started).contains("started a new lineage"));
    let new_store = str_of(&lineage, "store").to_string();
    assert_ne!(new_store, old_store);
    let version = lineage["version"].as_u64().expect("version");
    assert!(
        version > 1_600_000_000_000 && version < 1 << 62,
        "{version}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = api.key_map(None, None);
        if answer.store.as_deref() == Some(new_store.as_str()) {
            assert_eq!(answer.body["version"].as_u64(), Some(version));
            assert_eq!(answer.body["keys"].as_array().map(Vec::len), Some(4));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never took the new lineage"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.log().contains("new lineage"), "{}", server.log());
    // Changes work again.
    api.create_account(None);
    assert!(api.key_map_version() > version);
}

/// `sync-token rotate` writes a new token to the token file and a running server takes
/// only it within a second; `sync-token render` fills a config template with it.
#[test]
fn the_sync_token_can_be_rotated_and_rendered_into_a_config() {
    let server = Server::start();
    let token_file = server.dir.path().join("sync-token");
    let rotated = run(keygatectl(&server.database())
        .args(["sync-token", "rotate", "--sync-token-file"])
        .arg(&token_file));
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_string();
    assert!(token.starts_with("kgsync_"), "{token}");
    assert!(!stderr(&rotated).contains(&token), "never printed");
    let mut api = Api::new(&server);
    api.sync_token = Some(token.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.key_map(None, None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the server never took the new token"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    api.sync_token = Some(SYNC_TOKEN.into());
    assert_eq!(api.key_map(None, None).status, 401);
    let template = server.dir.path().join("envoy.yaml");
    std::fs::write(&template, "bearer_token: \"KEYGATE_SYNC_TOKEN\"\n").expect("template");
    let rendered = run(keygatectl(&server.database())
        .args(["sync-token", "render", "--sync-token-file"])
        .arg(&token_file)
        .arg(&template));
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    assert_eq!(
        String::from_utf8_lossy(&rendered.stdout),
        format!("bearer_token: \"{token}\"\n")
    );
    let output = server.dir.path().join("rendered.yaml");
    let written = run(keygatectl(&server.database())
        .args(["sync-token", "render", "--sync-token-file"])
        .arg(&token_file)
        .arg(&template)
        .arg("--output")
        .arg(&output));
    assert!(written.status.success(), "{}", stderr(&written));
    assert!(std::fs::read_to_string(&output)
        .expect("rendered")
        .contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&output)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A template without the placeholder is refused: exit 2.
    std::fs::write(&template, "nothing here\n").expect("template");
    let refused = run(keygatectl(&server.database())
        .args(["sync-token", "render", "--sync-token-file"])
        .arg(&token_file)
        .arg(&template));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    // Back to a token given in a file (a Kubernetes Secret's): taken as it is.
    let given = server.dir.path().join("given-token");
    std::fs::write(&given, format!("{SYNC_TOKEN}\n")).expect("write");
    let taken = run(keygatectl(&server.database())
        .args(["sync-token", "rotate", "--new-token-file"])
        .arg(&given));
    assert!(taken.status.success(), "{}", stderr(&taken));
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.key_map(None, None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the server never took the given token"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
