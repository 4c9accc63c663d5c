//! Writes the hand-made seed inputs into `corpus/<target>/seed-*`:
//! `cargo run --manifest-path core/fuzz/Cargo.toml --example make_seeds`.
//! Seeds hold the fixture's own keys (fixed, fake "randomness"), never a real one.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use keygate_core::bucket::{encode_entry, KeyInfo};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use keygate_core_fuzz::{config, corpus_dir, decision, header_pairs_seed, sample_keys};
use std::fs;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    let file = if name.starts_with("finding-") {
        name.to_owned()
    } else {
        format!("seed-{name}")
    };
    fs::write(dir.join(file), data).expect("write seed");
}

/// `finding-<ID>-<mode>-<rest>` or `<mode>-<name>`.
fn prefixed(mode: &str, name: &str) -> String {
    match name.strip_prefix("finding-") {
        Some(rest) => {
            let (id, rest) = rest.split_once('-').expect("finding-<ID>-…");
            format!("finding-{id}-{mode}-{rest}")
        }
        None => format!("{mode}-{name}"),
    }
}

/// One binary-map entry.
fn entry_of<'a>(
    key: &str,
    account_id: &'a str,
    key_id: &'a str,
    kind: KeyKind,
    expires_at: Option<u64>,
    disabled: bool,
) -> (Digest, KeyInfo<'a>) {
    let info = KeyInfo {
        account_id,
        key_id,
        kind,
        expires_at,
        disabled,
        limit: None,
    };
    (Digest::of_key(key), info)
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

fn main() {
    let [sk_test, pk_test, sk, pk] = sample_keys();

    // credentials: control byte '7' = all schemes, max 128, one value; 'W' two; 'w' three;
    // '\x17' none; '\'' max 16; '1' token only; '?' max 1024.
    let cred: Vec<(&str, Vec<u8>)> = vec![
        ("token", format!("7token {sk_test}").into()),
        ("token-legacy", b"7Token sk_test_abc".to_vec()),
        ("bearer", format!("7Bearer {pk}").into()),
        ("token-caps-spaces", format!("7TOKEN    {sk}").into()),
        ("ows", b"7 \tToken sk_test_abc\t ".to_vec()),
        (
            "basic-key-colon",
            format!("7Basic {}", b64(&format!("{sk_test}:"))).into(),
        ),
        (
            "basic-colon-key",
            format!("7Basic {}", b64(&format!(":{sk_test}"))).into(),
        ),
        (
            "basic-account",
            format!("7Basic {}", b64(&format!("acct_1:{sk_test}"))).into(),
        ),
        (
            "basic-nopad",
            format!("7basic {}", STANDARD_NO_PAD.encode("sk_test_ab:")).into(),
        ),
        ("basic-noncanonical", b"7Basic YR==".to_vec()),
        ("basic-bad-alphabet", b"7Basic Pz8_".to_vec()),
        (
            "basic-no-colon",
            format!("7Basic {}", b64("sk_test_abc")).into(),
        ),
        (
            "basic-latin1",
            [
                b"7Basic ".as_slice(),
                STANDARD.encode(b"\xe9t\xe9:").as_bytes(),
            ]
            .concat(),
        ),
        ("comma-joined", b"7Token a,Token b".to_vec()),
        ("nul", b"7Token sk\x00x".to_vec()),
        ("tab-separator", b"7Token\tsk_test_abc".to_vec()),
        ("inner-space", b"7Token sk_test abc".to_vec()),
        ("unknown-scheme", b"7Digest abc".to_vec()),
        ("scheme-only", b"7Token".to_vec()),
        ("empty", b"7".to_vec()),
        ("two-values", b"Wtoken a\ntoken b".to_vec()),
        ("three-values", b"wa\nb\nc".to_vec()),
        ("no-value", b"\x17".to_vec()),
        ("too-long-16", b"'token sk_test_0123456789".to_vec()),
        ("scheme-not-accepted", b"1bearer sk_test_abc".to_vec()),
        (
            "long-1024",
            format!("?token sk_{}", "k".repeat(1021)).into(),
        ),
        ("not-utf8", b"7Token \xff\xfe".to_vec()),
        ("finding-KF2-nbsp-in-key", "7Token sk_a\u{a0}b".into()),
        ("finding-KF2-nel-in-key", "7Token sk_a\u{85}b".into()),
        (
            "finding-KF2-basic-nbsp-in-key",
            format!("7Basic {}", b64("acct:sk_a\u{a0}b")).into(),
        ),
        ("newline-in-value", b"7Token a\nb".to_vec()),
    ];
    for (name, data) in cred {
        write("credentials", name, &data);
    }

    let paths = [
        ("get-by-id", "GET /v3/devices/abc"),
        ("head-api-v1", "HEAD /api/v1/users/42/"),
        ("post-events", "POST /v3/devices/abc/events"),
        ("double-slashes", "GET //v3//devices/abc"),
        ("encoded-letter", "GET /v3/%64evices/abc"),
        ("encoded-slash", "GET /v3/devices/a%2Fb"),
        ("encoded-backslash", "GET /v3/devices/a%5Cb"),
        ("dotdot-inside", "GET /v3/devices/abc/../../admin/x"),
        ("dotdot-escape", "GET /../v3/devices/abc"),
        ("encoded-dotdot", "GET /v3/%2e%2e/%2E%2E/v3/x/y"),
        ("encoded-dotdot-slash", "GET /v3/%2e%2e%2Fx"),
        ("bad-escape", "GET /v3/devices/%zz"),
        ("truncated-escape", "GET /v3/devices/%4"),
        ("path-param", "GET /v3/devices/abc;x=1"),
        ("lower-method", "get /v3/devices/abc"),
        ("delete", "DELETE /v3/devices/abc"),
        ("query-fragment", "GET /v3/devices/abc?x=/..#/.."),
        ("utf8-segment", "GET /v3/caf%C3%A9/x"),
        ("overlong-utf8", "GET /v3/%C0%AE%C0%AE/x"),
        ("encoded-nul", "GET /v3/a%00/b"),
        ("asterisk", "OPTIONS *"),
        ("absolute-uri", "GET http://host/v3/x/y"),
        ("post-events-escape", "POST /v3/devices/abc/events/../../x"),
        ("dot-end", "GET /v3/devices/abc/."),
        ("plain-specials", "GET /api/v1/~u:x@y/z.json"),
        ("encoded-space", "GET /v3/devices/abc%20"),
        ("backslashes", "GET /v3\\devices\\abc"),
        ("three-dots", "GET /v3/.../x"),
        ("no-method", "/v3/devices/abc"),
        ("root", "GET /"),
    ];
    for (name, data) in paths {
        write("path_policy", name, data.as_bytes());
    }

    // config, raw mode.
    let valid = serde_json::to_string(&config::seed()).expect("json");
    let digest_of = |k: &str| Digest::of_key(k).to_hex();
    let raw: Vec<(&str, String)> = vec![
        ("minimal", r#"{"version":1}"#.into()),
        ("full", valid.clone()),
        (
            "pretty",
            serde_json::to_string_pretty(&config::seed()).expect("json"),
        ),
        ("array", "[]".into()),
        ("truncated", "{".into()),
        ("version-2", r#"{"version":2}"#.into()),
        ("trailing", r#"{"version":1} x"#.into()),
        ("unknown-field", r#"{"version":1,"extra":1}"#.into()),
        ("no-schemes", r#"{"version":1,"schemes":[]}"#.into()),
        ("bad-realm", r#"{"version":1,"realm":"a\"b"}"#.into()),
        (
            "max-key-length",
            r#"{"version":1,"max_key_length":4}"#.into(),
        ),
        (
            "dup-header",
            r#"{"version":1,"identity_headers":{"key_id":"x-keygate-account-id"}}"#.into(),
        ),
        (
            "bad-rule",
            r#"{"version":1,"publishable":{"allow":[{"methods":["PO ST"],"path":"v3/{x"}]}}"#
                .into(),
        ),
        (
            "bad-prefix",
            r#"{"version":1,"publishable":{"api_prefixes":["/v3/{"]}}"#.into(),
        ),
        ("sync", r#"{"version":1,"sync":{}}"#.into()),
        (
            "sync-bad-namespace",
            r#"{"version":1,"sync":{"namespace":"a/b"}}"#.into(),
        ),
        (
            "plaintext-digest",
            valid.replace(&digest_of(&sk_test), &sk_test),
        ),
        ("plaintext-account", valid.replace("acct_1", &pk_test)),
        (
            "dup-digest",
            valid.replace(&digest_of(&pk_test), &digest_of(&sk_test)),
        ),
        ("short-digest", valid.replace(&digest_of(&sk_test), "abc")),
        (
            "big-number",
            r#"{"version":1,"max_key_length":18446744073709551616}"#.into(),
        ),
        (
            "deep",
            format!(
                r#"{{"version":1,"x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
        ),
        // Plaintext keys where serde may quote them back in its own messages.
        (
            "finding-KF1-plaintext-version",
            format!(r#"{{"version":"{sk}"}}"#),
        ),
        (
            "finding-KF1-plaintext-field-name",
            format!(r#"{{"version":1,"{sk}":1}}"#),
        ),
        (
            "finding-KF1-plaintext-type",
            valid.replace(r#""type":"publishable""#, &format!(r#""type":"{pk}""#)),
        ),
    ];
    for (name, data) in raw {
        write("config", &prefixed("raw", name), data.as_bytes());
    }
    // config, structured mode: triples op path value, each 'A' + index (see config.rs).
    let script = |steps: &[(usize, usize, usize)]| -> Vec<u8> {
        steps
            .iter()
            .flat_map(|&(op, path, value)| [op, path, value].map(|i| b'A' + i as u8))
            .collect()
    };
    let path = |p: &str| config::PATHS.iter().position(|x| *x == p).expect("path");
    let (set, remove, add_field, push) = (0, 1, 2, 3);
    let structured: Vec<(&str, Vec<u8>)> = vec![
        ("unchanged", script(&[(remove, path("keys/0/disabled"), 0)])),
        (
            "finding-KF1-set-version-plaintext",
            script(&[(set, path("version"), 13)]),
        ),
        (
            "set-digest-plaintext",
            script(&[(set, path("keys/0/digest"), 14)]),
        ),
        (
            "finding-KF1-set-type-plaintext",
            script(&[(set, path("keys/0/type"), 15)]),
        ),
        (
            "finding-KF1-set-environment-plaintext",
            script(&[(set, path("environment"), 13)]),
        ),
        (
            "finding-KF1-add-field-plaintext",
            script(&[(add_field, path(""), 13)]),
        ),
        (
            "finding-KF1-add-key-field-plaintext",
            script(&[(add_field, path("keys/0"), 14)]),
        ),
        (
            "set-scheme-plaintext",
            script(&[(set, path("schemes/0"), 15)]),
        ),
        (
            "set-method-plaintext",
            script(&[(set, path("publishable/allow/0/methods/0"), 13)]),
        ),
        (
            "set-rule-path-plaintext",
            script(&[(set, path("publishable/allow/0/path"), 14)]),
        ),
        (
            "set-namespace-plaintext",
            script(&[(set, path("sync/namespace"), 13)]),
        ),
        ("set-realm-two-keys", script(&[(set, path("realm"), 35)])),
        ("dup-digest", script(&[(set, path("keys/1/digest"), 17)])),
        ("push-plaintext-entry", script(&[(push, path("keys"), 37)])),
        ("remove-version", script(&[(remove, path("version"), 0)])),
        (
            "max-key-length-huge",
            script(&[(set, path("max_key_length"), 32)]),
        ),
        (
            "expires-float",
            script(&[(set, path("keys/0/expires_at"), 10)]),
        ),
        (
            "rule-object",
            script(&[
                (push, path("publishable/allow"), 36),
                (set, path("publishable/allow/0/path"), 24),
            ]),
        ),
        (
            "nul-header",
            script(&[(set, path("identity_headers/key_id"), 31)]),
        ),
    ];
    for (name, data) in structured {
        write("config", &prefixed("mut", name), &data);
    }

    // sync_message: one JSON answer per line.
    let entry = |key: &str, id: &str| {
        format!(
            r#"{{"digest":"{}","account_id":"acct_1","key_id":"{id}","type":"secret","environment":"test"}}"#,
            digest_of(key)
        )
    };
    let full = |v: u64, keys: &[(&str, &str)]| {
        let keys: Vec<String> = keys.iter().map(|(k, id)| entry(k, id)).collect();
        format!(
            r#"{{"kind":"full","version":{v},"keys":[{}]}}"#,
            keys.join(",")
        )
    };
    let delta = |since: u64, v: u64, up: &[(&str, &str)], rm: &[&str]| {
        let up: Vec<String> = up.iter().map(|(k, id)| entry(k, id)).collect();
        let rm: Vec<String> = rm.iter().map(|k| format!("\"{}\"", digest_of(k))).collect();
        format!(
            r#"{{"kind":"delta","version":{v},"since":{since},"upserts":[{}],"removes":[{}]}}"#,
            up.join(","),
            rm.join(",")
        )
    };
    let twelve: Vec<(String, String)> = (0..12)
        .map(|i| (format!("k{i}"), format!("id{i}")))
        .collect();
    let twelve: Vec<(&str, &str)> = twelve
        .iter()
        .map(|(k, i)| (k.as_str(), i.as_str()))
        .collect();
    let eleven: Vec<&str> = twelve[..11].iter().map(|(k, _)| *k).collect();
    let sync: Vec<(&str, Vec<String>)> = vec![
        ("full", vec![full(3, &[("k1", "a"), ("k2", "b")])]),
        ("full-then-roll", vec![full(3, &[("k1", "a"), ("k2", "b")]), delta(3, 4, &[("k3", "c")], &["k1"])]),
        ("older-version", vec![full(5, &[("k1", "a")]), full(4, &[("k2", "b")])]),
        ("same-version", vec![full(5, &[("k1", "a")]), full(5, &[("k2", "b")])]),
        ("delta-wrong-base", vec![full(5, &[("k1", "a")]), delta(3, 6, &[("k2", "b")], &[])]),
        ("delta-first", vec![delta(0, 1, &[("k1", "a")], &[])]),
        ("delta-same-version", vec![full(5, &[("k1", "a")]), delta(5, 5, &[], &["k1"])]),
        ("mass-removal", vec![full(1, &twelve), delta(1, 2, &[], &eleven)]),
        ("mass-removal-full", vec![full(1, &twelve), full(2, &twelve[..3])]),
        ("empty-map", vec![full(1, &[("k1", "a")]), full(2, &[])]),
        ("upsert-and-remove", vec![full(1, &[("k1", "a")]), delta(1, 2, &[("k1", "b")], &["k1", "k1"])]),
        ("replace-map", vec![full(1, &[("k1", "a"), ("k2", "b")]), full(2, &[("k2", "c"), ("k3", "d")])]),
        ("garbage-between", vec![full(1, &[("k1", "a")]), "not json".into(), delta(1, 2, &[], &["k1"])]),
        ("bad-remove", vec![r#"{"kind":"delta","version":2,"since":1,"upserts":[],"removes":["zz"]}"#.into()]),
        ("duplicate-digest", vec![full(1, &[("k1", "a"), ("k1", "b")])]),
        ("plaintext-digest", vec![format!(r#"{{"kind":"full","version":1,"keys":[{}]}}"#, entry("x", "a").replace(&digest_of("x"), &sk_test))]),
        ("finding-KF1-plaintext-kind", vec![format!(r#"{{"kind":"{sk_test}","version":1,"keys":[]}}"#)]),
        ("u64-max", vec![full(u64::MAX, &[("k1", "a")]), delta(u64::MAX, u64::MAX, &[], &[])]),
        ("expiring-publishable", vec![full(1, &[]).replace(
            "[]",
            &format!(r#"[{{"digest":"{}","account_id":"acct_1","key_id":"p","type":"publishable","environment":"production","expires_at":7,"disabled":true}}]"#, digest_of(&pk)),
        )]),
    ];
    for (name, lines) in sync {
        write("sync_message", name, lines.join("\n").as_bytes());
    }

    // sync_binary: control byte, then a binary full map. Control: % 9 read cap (4 = 97 bytes,
    // 0 = 1 byte, 8 = unlimited), / 9 % 2 a map held already (version 5), / 18 % 2 lenient,
    // / 36 % 4 the chunk size (0 = the 1 MiB default, 1 = 1 byte, 2 = 553, 3 = 554).
    let [sk_t, pk_t, sk_p, pk_p] = KeyKind::ALL;
    let binary = |version: u64, mut keys: Vec<(Digest, KeyInfo<'_>)>| {
        keys.sort_by_key(|k| k.0);
        let mut out = b"KGMAP01\n".to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for (d, info) in &keys {
            encode_entry(&mut out, d, info);
        }
        out
    };
    let three = || {
        vec![
            entry_of("k1", "acct_1", "a", sk_t, None, false),
            entry_of("k4", "acct_2", "d", pk_p, Some(7), false),
            entry_of("k5", "acct_2", "e", sk_p, None, true),
        ]
    };
    let many: Vec<String> = (0..12).map(|i| format!("m{i}")).collect();
    let twelve: Vec<_> = many
        .iter()
        .map(|k| entry_of(k, "acct", k, pk_t, None, false))
        .collect();
    let mut unsorted = binary(1, three());
    let tail = unsorted[20..].to_vec();
    unsorted.extend_from_slice(&tail);
    unsorted[16] = 6;
    let mut wrong_count = binary(1, three());
    wrong_count[16] = 4;
    let mut unknown_flags = binary(1, three());
    unknown_flags[20 + 32] |= 0x10;
    let long_id = "i".repeat(200);
    // The first entry's account id is not UTF-8 while more than one entry is buffered:
    // this spun the reader forever (control 112: 97-byte reads, 554-byte chunks).
    let mut stuck = binary(2, twelve.clone());
    stuck[20 + 32 + 1 + 1] = 0xFF;
    let bin: Vec<(&str, u8, Vec<u8>)> = vec![
        ("malformed-entry-with-more-buffered", 112, stuck.clone()),
        ("malformed-entry-one-byte-chunks", 36, stuck),
        ("three-fresh", 4, binary(6, three())),
        ("three-over-held", 13, binary(6, three())),
        ("same-version-held", 13, binary(5, three())),
        ("older-held", 13, binary(4, three())),
        ("empty-over-held", 13, binary(6, vec![])),
        ("empty-over-held-lenient", 31, binary(6, vec![])),
        (
            "finding-KF3-twelve-one-byte-reads",
            0,
            binary(2, twelve.clone()),
        ),
        ("twelve-unlimited", 8, binary(2, twelve)),
        (
            "held-keys-kept",
            22,
            binary(
                9,
                vec![
                    entry_of("k2", "acct_1", "b", sk_t, None, false),
                    entry_of("k6", "acct_1", "f", sk_t, Some(u64::MAX), false),
                ],
            ),
        ),
        ("truncated", 4, binary(1, three())[..60].to_vec()),
        ("header-only", 4, binary(1, vec![])[..20].to_vec()),
        ("short-header", 4, b"KGMAP01\n\x01".to_vec()),
        (
            "bad-magic",
            4,
            b"KGMAP02\n\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec(),
        ),
        ("unsorted-duplicate", 4, unsorted),
        ("wrong-count", 4, wrong_count),
        ("unknown-flag-bits", 4, unknown_flags),
        (
            "plaintext-account",
            4,
            binary(1, vec![entry_of("k1", &sk_test, "a", sk_t, None, false)]),
        ),
        (
            "long-key-id",
            4,
            binary(1, vec![entry_of("k1", "acct", &long_id, sk_t, None, false)]),
        ),
        (
            "empty-key-id",
            4,
            binary(1, vec![entry_of("k1", "acct", "", sk_t, None, false)]),
        ),
        (
            "space-in-account",
            4,
            binary(1, vec![entry_of("k1", "a b", "x", sk_t, None, false)]),
        ),
        ("u64-max-version", 8, binary(u64::MAX, three())),
    ];
    for (name, control, body) in bin {
        write("sync_binary", name, &[&[control][..], &body].concat());
    }

    for (name, data) in header_pairs_seed() {
        write("header_pairs", &name, &data);
    }

    // decision: first line METHOD SP path, then one authorization value per line.
    let known = decision::known_keys();
    let key = |id: &str| {
        known
            .iter()
            .find(|k| k.key_id == id)
            .expect("known")
            .key
            .clone()
    };
    let basic = |s: String| format!("Basic {}", b64(&s));
    let dec: Vec<(&str, String)> = vec![
        (
            "secret-token",
            format!("DELETE /v3/devices/1\ntoken {sk_test}"),
        ),
        (
            "secret-bearer-prod",
            format!("PATCH /anything\nBearer {sk}"),
        ),
        (
            "publishable-get",
            format!("GET /v3/devices/abc\ntoken {pk_test}"),
        ),
        (
            "publishable-head-prod",
            format!("HEAD /api/v1/users/42/\nBearer {pk}"),
        ),
        (
            "publishable-post-rule",
            format!("POST /v3/devices/abc/events\ntoken {pk_test}"),
        ),
        (
            "publishable-post-denied",
            format!("POST /v3/devices/abc\ntoken {pk_test}"),
        ),
        (
            "publishable-dotdot",
            format!("GET /v3/devices/abc/../../admin/x\ntoken {pk_test}"),
        ),
        (
            "publishable-encoded-slash",
            format!("GET /v3/devices/a%2Fb\nBearer {pk}"),
        ),
        (
            "publishable-lower-method",
            format!("get /v3/devices/abc\ntoken {pk_test}"),
        ),
        (
            "basic-key",
            format!("GET /\n{}", basic(format!("{sk_test}:"))),
        ),
        (
            "basic-account",
            format!("GET /\n{}", basic(format!("acct_1:{sk}"))),
        ),
        (
            "basic-other-account",
            format!("GET /\n{}", basic(format!("acct_2:{sk}"))),
        ),
        (
            "basic-publishable",
            format!("GET /v3/x/y\n{}", basic(format!(":{pk}"))),
        ),
        (
            "expired",
            format!("GET /v3/x\ntoken {}", key("key_expired")),
        ),
        (
            "expires-later",
            format!("GET /v3/x\nBearer {}", key("key_later")),
        ),
        (
            "disabled",
            format!("GET /v3/x/y\nBearer {}", key("key_disabled")),
        ),
        (
            "legacy",
            format!("GET /v3/x/y\ntoken {}", key("key_legacy")),
        ),
        (
            "two-headers",
            format!("GET /\ntoken {sk_test}\ntoken {sk_test}"),
        ),
        ("no-header", "GET /v3/x/y".into()),
        ("empty-header", "GET /v3/x/y\n".into()),
        (
            "typo",
            format!("GET /\ntoken {}x", &sk_test[..sk_test.len() - 1]),
        ),
        ("unknown-prefix", "GET /\ntoken xk_abc".into()),
        ("wrong-case-scheme", format!("GET /\nBEARER    {pk}")),
        ("bad-path", format!("GET /%zz\nBearer {pk}")),
    ];
    // As header lines: `METHOD path` → `:method:`, `:path:`; each further line → authorization.
    let as_headers = |text: &str| -> String {
        let mut lines = text.split('\n');
        let first = lines.next().unwrap_or_default();
        let (method, path) = first.split_once(' ').unwrap_or((first, ""));
        let mut out = format!(":method:{method}\n:path:{path}");
        for value in lines {
            out.push_str(&format!("\nauthorization:{value}"));
        }
        out
    };
    for (name, data) in dec {
        write("decision", name, as_headers(&data).as_bytes());
    }
    let overrides: Vec<(&str, String)> = vec![
        (
            "override-get",
            format!("GET /v3/devices/abc\ntoken {pk_test}"),
        ),
        (
            "override-delete",
            format!("GET /v3/devices/abc\ntoken {pk_test}"),
        ),
        (
            "override-secret",
            format!("GET /v3/devices/abc\ntoken {sk_test}"),
        ),
        (
            "override-many",
            format!("HEAD /v3/devices/abc\nBearer {pk}"),
        ),
    ];
    let extra = [
        "x-http-method-override:GET",
        "x-http-method:DELETE",
        "x-method-override:PUT",
        "x-http-method:GET\nx-http-method:GET\nx-http-method:GET\nx-http-method:GET\nx-http-method:GET",
    ];
    for ((name, data), extra) in overrides.into_iter().zip(extra) {
        write(
            "decision",
            name,
            format!("{}\n{extra}", as_headers(&data)).as_bytes(),
        );
    }
    let spoof = format!(
        ":path:/v3/x/y\nx-keygate-key-id:spoof\n:method:GET\nx-keygate-account-id:a\nauthorization:Bearer {pk}\n:method:HEAD"
    );
    write(
        "decision",
        "identity-spoof-repeated-method",
        spoof.as_bytes(),
    );
    println!("seeds written under {}", corpus_dir("").display());
}
