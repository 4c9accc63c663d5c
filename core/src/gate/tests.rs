//! The gate against a mock host: every outcome of the request table, what each does to the
//! request's headers, and what it counts, without Envoy.

use super::*;
use crate::key::issue_key;
use crate::rate_limit::RateLimit;

/// What the gate did to one request.
#[derive(Debug, Default, PartialEq, Eq)]
struct Effects {
    set: Vec<(String, String)>,
    added: Vec<(String, String)>,
    removed: Vec<String>,
    answered: Option<(u32, String, String)>,
    extra: Vec<(String, String)>,
    /// Kept for the response (`rate_limit_headers`).
    response: Vec<(String, String)>,
    counted: Vec<Count>,
}

struct MockHost {
    headers: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    now: u64,
    clock_asked: core::cell::Cell<bool>,
    effects: Effects,
}

struct MockHeaders<'h>(&'h [(Vec<u8>, Vec<u8>)]);

impl HeaderSource for MockHeaders<'_> {
    type Pairs<'a>
        = core::iter::Map<
        core::slice::Iter<'a, (Vec<u8>, Vec<u8>)>,
        fn(&'a (Vec<u8>, Vec<u8>)) -> (&'a [u8], &'a [u8]),
    >
    where
        Self: 'a;

    fn pairs(&self) -> Self::Pairs<'_> {
        self.0.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))
    }
}

impl Host for MockHost {
    type Headers<'h> = MockHeaders<'h>;

    fn request_headers(&self) -> Result<MockHeaders<'_>, HeadersUnreadable> {
        self.headers
            .as_deref()
            .map(MockHeaders)
            .ok_or(HeadersUnreadable)
    }
    fn set_request_header(&mut self, name: &str, value: &str) {
        self.effects.set.push((name.into(), value.into()));
    }
    fn add_request_header(&mut self, name: &str, value: &str) {
        self.effects.added.push((name.into(), value.into()));
    }
    fn remove_request_header(&mut self, name: &str) {
        self.effects.removed.push(name.into());
    }
    fn send_answer(&mut self, answer: &Answer, extra: &[(&str, &str)]) {
        let challenge = answer
            .headers
            .iter()
            .find(|(n, _)| n == "www-authenticate")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.effects.answered = Some((answer.status, answer.denial.code().into(), challenge));
        self.effects.extra = extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
    }
    fn set_response_headers(&mut self, headers: LimitHeaders) {
        let response = &mut self.effects.response;
        headers.write(|name, value| response.push((name.to_owned(), value.to_owned())));
    }
    fn count(&mut self, event: Count) {
        self.effects.counted.push(event);
    }
    fn now_unix_seconds(&self) -> u64 {
        self.clock_asked.set(true);
        self.now
    }
    fn now_micros(&self) -> u64 {
        self.now * 1_000_000
    }
}

fn host(headers: &[(&str, &str)]) -> MockHost {
    MockHost {
        headers: Some(
            headers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        ),
        now: 1_000,
        clock_asked: core::cell::Cell::new(false),
        effects: Effects::default(),
    }
}

struct Fixture {
    gate: Gate,
    keys: [String; 4],
    expired: String,
    disabled: String,
}

fn fixture(options: &str, sync_mode: bool) -> Fixture {
    let keys = KeyKind::ALL.map(|kind| issue_key(kind, &[kind.prefix().len() as u8; 32]));
    let expired = issue_key(KeyKind::ALL[0], &[1; 32]);
    let disabled = issue_key(KeyKind::ALL[0], &[2; 32]);
    let mut entries: Vec<String> = KeyKind::ALL
        .iter()
        .zip(&keys)
        .map(|(kind, key)| {
            format!(
                r#"{{"digest":"{}","account_id":"acct_1","key_id":"key_{}","type":"{}","environment":"{}"}}"#,
                Digest::of_key(key).to_hex(),
                kind.prefix().trim_end_matches('_'),
                kind.key_type.as_str(),
                kind.environment.as_str()
            )
        })
        .collect();
    entries.push(format!(
        r#"{{"digest":"{}","account_id":"acct_1","key_id":"key_old","type":"secret","environment":"test","expires_at":1000}}"#,
        Digest::of_key(&expired).to_hex()
    ));
    entries.push(format!(
        r#"{{"digest":"{}","account_id":"acct_1","key_id":"key_off","type":"secret","environment":"test","disabled":true}}"#,
        Digest::of_key(&disabled).to_hex()
    ));
    let json = format!(r#"{{"version":1{options},"keys":[{}]}}"#, entries.join(","));
    let config = FilterConfig::parse(json.as_bytes()).expect("valid config");
    Fixture {
        gate: Gate::new(config, sync_mode),
        keys,
        expired,
        disabled,
    }
}

fn run(f: &Fixture, headers: &[(&str, &str)]) -> (Verdict, Effects) {
    let mut host = host(headers);
    let mut worker = Worker::new(Some([9; 16]));
    let verdict = f.gate.on_request_headers(
        &mut host,
        None::<&KeyMap>,
        &mut worker,
        &Unlimited,
        &Uncounted,
    );
    (verdict, host.effects)
}

fn request<'a>(method: &'a str, path: &'a str, auth: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![(":method", method), (":path", path)];
    if !auth.is_empty() {
        headers.push(("authorization", auth));
    }
    headers
}

#[test]
fn every_outcome_of_the_request_table() {
    let f = fixture("", false);
    let [sk_test, pk_test, sk, _pk] = &f.keys;
    let token = |k: &str| format!("token {k}");
    let table: Vec<(String, String, String, Result<&str, Denial>)> = vec![
        (
            "GET".into(),
            "/v3/devices".into(),
            token(sk_test),
            Ok("key_sk_test"),
        ),
        (
            "DELETE".into(),
            "/v3/devices/1".into(),
            token(sk),
            Ok("key_sk"),
        ),
        (
            "GET".into(),
            "/v3/devices/1".into(),
            token(pk_test),
            Ok("key_pk_test"),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            String::new(),
            Err(Denial::MissingCredentials),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            "token".into(),
            Err(Denial::MalformedCredentials),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            token("sk_test_unknownunknownunknownunknownXXXXXX"),
            Err(Denial::InvalidApiKey),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            token(&f.expired),
            Err(Denial::ExpiredApiKey),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            token(&f.disabled),
            Err(Denial::DisabledApiKey),
        ),
        (
            "GET".into(),
            "/v3/devices".into(),
            token(pk_test),
            Err(Denial::InsufficientPermissions),
        ),
    ];
    for (method, path, auth, want) in &table {
        let (verdict, effects) = run(&f, &request(method, path, auth));
        match want {
            Ok(key_id) => {
                assert_eq!(verdict, Verdict::Continue, "{method} {path}");
                assert!(effects.answered.is_none());
                assert!(effects
                    .added
                    .contains(&("x-keygate-key-id".into(), (*key_id).into())));
                assert_eq!(effects.removed, ["authorization"]);
                assert_eq!(effects.counted, [Count::Allowed]);
            }
            Err(denial) => {
                assert_eq!(verdict, Verdict::Stop, "{method} {path} {denial:?}");
                let (status, code, challenge) = effects.answered.clone().expect("answered");
                assert_eq!((status, code.as_str()), (denial.status(), denial.code()));
                assert_eq!(challenge.is_empty(), status != 401, "a 401 challenges");
                assert!(effects.added.is_empty() && effects.set.is_empty());
                assert!(effects.removed.is_empty(), "nothing sent, nothing to strip");
                assert_eq!(effects.counted, [Count::Denied(*denial)]);
            }
        }
    }
}

#[test]
fn the_clock_is_asked_only_for_keys_with_an_expiry() {
    let f = fixture("", false);
    let mut live = host(&request("GET", "/", &format!("token {}", f.keys[0])));
    let mut worker = Worker::new(None);
    f.gate.on_request_headers(
        &mut live,
        None::<&KeyMap>,
        &mut worker,
        &Unlimited,
        &Uncounted,
    );
    assert!(!live.clock_asked.get());
    let mut old = host(&request("GET", "/", &format!("token {}", f.expired)));
    f.gate.on_request_headers(
        &mut old,
        None::<&KeyMap>,
        &mut worker,
        &Unlimited,
        &Uncounted,
    );
    assert!(old.clock_asked.get());
}

#[test]
fn identity_headers_of_either_form_sent_by_a_client_never_go_on() {
    let spoofed = [
        ("x-keygate-account-id", "acct_evil"),
        ("x-keygate-identity", "account-id=\"acct_evil\""),
    ];
    // Per-field headers: the spoofed per-field copy is replaced, the combined one removed.
    let f = fixture("", false);
    let mut headers = request("GET", "/v3/devices", "");
    let auth = format!("token {}", f.keys[0]);
    headers.push(("authorization", &auth));
    headers.extend(spoofed);
    let (verdict, effects) = run(&f, &headers);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(
        effects.set,
        [("x-keygate-account-id".to_owned(), "acct_1".to_owned())]
    );
    assert_eq!(effects.added.len(), 3);
    assert_eq!(effects.removed, ["x-keygate-identity", "authorization"]);

    // One combined header: it is replaced, and the per-field copy removed.
    let f = fixture(r#","identity_header":"x-keygate-identity""#, false);
    let mut headers = request("GET", "/v3/devices", "");
    let auth = format!("token {}", f.keys[0]);
    headers.push(("authorization", &auth));
    headers.extend(spoofed);
    let (_, effects) = run(&f, &headers);
    assert_eq!(effects.set.len(), 1);
    assert_eq!(effects.set[0].0, "x-keygate-identity");
    assert!(effects.set[0].1.contains("account-id=\"acct_1\""));
    assert!(effects.added.is_empty());
    assert_eq!(effects.removed, ["x-keygate-account-id", "authorization"]);

    // Custom names: the defaults of both forms are stripped as well.
    let f = fixture(r#","identity_headers":{"account_id":"x-account"}"#, false);
    let mut headers = request("GET", "/v3/devices", "token nope");
    headers.extend(spoofed);
    headers.push(("x-account", "acct_evil"));
    let (verdict, effects) = run(&f, &headers);
    assert_eq!(verdict, Verdict::Stop);
    let mut removed = effects.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["x-account", "x-keygate-account-id", "x-keygate-identity"]
    );
}

#[test]
fn keep_authorization_leaves_the_credential() {
    let f = fixture(r#","keep_authorization":true"#, false);
    let auth = format!("token {}", f.keys[0]);
    let (_, effects) = run(&f, &request("GET", "/", &auth));
    assert!(effects.removed.is_empty());
}

#[test]
fn unreadable_headers_are_a_malformed_credential() {
    let f = fixture("", false);
    let mut host = host(&[]);
    host.headers = None;
    let verdict = f.gate.on_request_headers(
        &mut host,
        None::<&KeyMap>,
        &mut Worker::new(None),
        &Unlimited,
        &Uncounted,
    );
    assert_eq!(verdict, Verdict::Stop);
    assert_eq!(
        host.effects.counted,
        [Count::Denied(Denial::MalformedCredentials)]
    );
}

#[test]
fn sync_mode_serves_the_synced_map_then_bootstrap_keys_then_refuses() {
    // No synced map and no bootstrap keys: 503, and spoofed identity still stripped.
    let config = FilterConfig::parse(br#"{"version":1}"#).expect("valid");
    let gate = Gate::new(config, true);
    let mut empty = host(&[(":path", "/"), ("x-keygate-key-id", "spoof")]);
    let verdict = gate.on_request_headers(
        &mut empty,
        None::<&KeyMap>,
        &mut Worker::new(None),
        &Unlimited,
        &Uncounted,
    );
    assert_eq!(verdict, Verdict::Stop);
    assert_eq!(
        empty.effects.answered.as_ref().map(|a| a.0),
        Some(503),
        "fail closed"
    );
    assert_eq!(empty.effects.removed, ["x-keygate-key-id"]);

    // Bootstrap keys serve until a synced map is there; then only the synced map counts.
    let f = fixture("", true);
    let auth = format!("token {}", f.keys[0]);
    let (verdict, _) = run(&f, &request("GET", "/", &auth));
    assert_eq!(verdict, Verdict::Continue);
    let synced = KeyMap::new();
    let mut h = host(&request("GET", "/", &auth));
    let verdict = f.gate.on_request_headers(
        &mut h,
        Some(&synced),
        &mut Worker::new(None),
        &Unlimited,
        &Uncounted,
    );
    assert_eq!(verdict, Verdict::Stop);
    assert_eq!(h.effects.counted, [Count::Denied(Denial::InvalidApiKey)]);
}

#[test]
fn answers_are_built_once_from_the_denial_table() {
    let f = fixture(r#","realm":"api""#, false);
    for denial in Denial::ALL {
        let answer = f.gate.answer(denial);
        assert_eq!(answer.status, denial.status());
        assert_eq!(answer.body, denial.body());
        assert_eq!(answer.details, denial.details());
        let names: Vec<&str> = answer.headers.iter().map(|(n, _)| n.as_str()).collect();
        let want: &[&str] = match denial.status() {
            401 => &["content-type", "www-authenticate"],
            503 => &["content-type", "retry-after"],
            _ => &["content-type"],
        };
        assert_eq!(names, want, "{denial:?}");
        let parsed: Vec<(Vec<u8>, Vec<u8>)> = header_pairs::parse(&answer.serialized_headers)
            .expect("serialized")
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = answer
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(parsed, expected);
    }
    assert!(f
        .gate
        .answer(Denial::InvalidApiKey)
        .headers
        .iter()
        .any(|(_, v)| v.contains("realm=\"api\"")));
}

#[test]
fn counters_have_one_name_and_index_each() {
    let names: Vec<String> = Count::all().map(Count::name).collect();
    assert_eq!(names.len(), Count::LEN);
    assert!(names.contains(&"keygate.allowed".to_owned()));
    assert!(names.contains(&"keygate.denied.rate_limited".to_owned()));
    assert!(names.contains(&"keygate.rate_limit.overflow".to_owned()));
    assert!(names.contains(&"keygate.denied.invalid_api_key".to_owned()));
    for (i, count) in Count::all().enumerate() {
        assert_eq!(count.index(), i);
    }
}

/// A table of limits with a settable share, as the front ends keep them.
struct Limits {
    table: crate::rate_limit::LimitTable,
    enforcers: u32,
}

impl Limits {
    /// A table of 64 slots, shared by `enforcers`.
    fn shared_by(enforcers: u32) -> Limits {
        Limits {
            table: crate::rate_limit::LimitTable::new(64),
            enforcers,
        }
    }
}

impl RateLimits for Limits {
    fn enforcers(&self) -> u32 {
        self.enforcers
    }
    fn admit(&self, key_id: &str, limit: &RateLimit, now_us: u64) -> Checked {
        self.table.admit(key_id, limit, now_us)
    }
}

/// A `GET /` with `key` through `gate` (no synced map, usage not counted): the verdict and
/// what it did.
fn send_limited<R: RateLimits>(
    gate: &Gate,
    key: &str,
    worker: &mut Worker,
    limits: &R,
) -> (Verdict, Effects) {
    let auth = format!("token {key}");
    let mut h = host(&request("GET", "/", &auth));
    let verdict = gate.on_request_headers(&mut h, None::<&KeyMap>, worker, limits, &Uncounted);
    (verdict, h.effects)
}

fn limited_fixture() -> (Gate, String, String) {
    limited_fixture_with("")
}

/// A key limited to 2 a minute and one without a limit, with `options` in the config.
fn limited_fixture_with(options: &str) -> (Gate, String, String) {
    let limited = issue_key(KeyKind::ALL[0], &[5; 32]);
    let other = issue_key(KeyKind::ALL[0], &[6; 32]);
    let json = format!(
        r#"{{"version":1{options},"keys":[
            {{"digest":"{}","account_id":"acct_1","key_id":"key_limited","type":"secret","environment":"test","rate_limit":{{"requests":2,"per":"minute"}}}},
            {{"digest":"{}","account_id":"acct_1","key_id":"key_free","type":"secret","environment":"test"}}]}}"#,
        Digest::of_key(&limited).to_hex(),
        Digest::of_key(&other).to_hex()
    );
    let config = FilterConfig::parse(json.as_bytes()).expect("valid config");
    (Gate::new(config, false), limited, other)
}

#[test]
fn a_key_over_its_limit_gets_429_with_the_rate_limit_headers_and_others_are_unaffected() {
    let (gate, limited, other) = limited_fixture();
    let limits = Limits::shared_by(1);
    let mut worker = Worker::new(None);
    let mut run = |key: &str| {
        let auth = format!("token {key}");
        let mut h = host(&request("GET", "/v3/devices", &auth));
        h.headers
            .as_mut()
            .expect("headers")
            .push((b"x-keygate-key-id".to_vec(), b"spoof".to_vec()));
        let verdict =
            gate.on_request_headers(&mut h, None::<&KeyMap>, &mut worker, &limits, &Uncounted);
        (verdict, h.effects)
    };
    assert_eq!(run(&limited).0, Verdict::Continue);
    assert_eq!(run(&limited).0, Verdict::Continue);
    let (verdict, effects) = run(&limited);
    assert_eq!(verdict, Verdict::Stop);
    let (status, code, _) = effects.answered.clone().expect("answered");
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    let header = |name: &str| {
        effects
            .extra
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("retry-after").as_deref(), Some("30"));
    assert_eq!(
        header("ratelimit-policy").as_deref(),
        Some("\"keygate\";q=2;w=60")
    );
    assert_eq!(header("ratelimit").as_deref(), Some("\"keygate\";r=0;t=30"));
    assert_eq!(effects.counted, [Count::Denied(Denial::RateLimited)]);
    assert_eq!(
        effects.removed,
        ["x-keygate-key-id"],
        "a client's identity still stripped"
    );
    // Another key of the same account is not limited.
    assert_eq!(run(&other).0, Verdict::Continue);
    assert_eq!(run(&other).0, Verdict::Continue);
    assert_eq!(run(&other).0, Verdict::Continue);
}

#[test]
fn each_of_several_enforcers_admits_its_share() {
    let (gate, limited, _) = limited_fixture();
    let limits = Limits::shared_by(2);
    let mut worker = Worker::new(None);
    let verdicts: Vec<Verdict> = (0..3)
        .map(|_| send_limited(&gate, &limited, &mut worker, &limits).0)
        .collect();
    assert_eq!(verdicts, [Verdict::Continue, Verdict::Stop, Verdict::Stop]);
}

#[test]
fn a_full_limiter_lets_the_key_through_and_counts_it() {
    let (gate, limited, _) = limited_fixture();
    let (verdict, effects) = send_limited(&gate, &limited, &mut Worker::new(None), &Unlimited);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(effects.counted, [Count::LimitOverflow, Count::Allowed]);
}

/// Usage as a front end counts it: a worker's table.
struct Counted(core::cell::RefCell<crate::usage::UsageTable>);

impl UsageCounter for Counted {
    fn count(&self, digest: &Digest, allowed: bool) {
        self.0.borrow_mut().record(digest, allowed);
    }
}

#[test]
fn usage_counts_each_known_keys_requests_and_nothing_else() {
    let f = fixture("", false);
    let usage = Counted(core::cell::RefCell::new(crate::usage::UsageTable::new(64)));
    let mut worker = Worker::new(None);
    let mut run = |key: &str, method: &str, path: &str| {
        let auth = format!("token {key}");
        let mut h = host(&request(method, path, &auth));
        f.gate
            .on_request_headers(&mut h, None::<&KeyMap>, &mut worker, &Unlimited, &usage)
    };
    let [sk_test, pk_test, ..] = &f.keys;
    run(sk_test, "GET", "/v3/devices");
    run(sk_test, "DELETE", "/v3/devices/1");
    run(pk_test, "GET", "/v3/devices"); // forbidden: counted as refused
    run(&f.expired, "GET", "/"); // expired: refused
    run("sk_test_unknownunknownunknownunknownXXXXXX", "GET", "/"); // unknown: not counted
    run("nonsense", "GET", "/"); // malformed: not counted
    let (mut usage, unattributed) = usage.0.borrow_mut().drain();
    usage.sort_by_key(|u| u.digest);
    let mut want = vec![
        crate::usage::KeyUsage {
            digest: Digest::of_key(sk_test),
            allowed: 2,
            refused: 0,
        },
        crate::usage::KeyUsage {
            digest: Digest::of_key(pk_test),
            allowed: 0,
            refused: 1,
        },
        crate::usage::KeyUsage {
            digest: Digest::of_key(&f.expired),
            allowed: 0,
            refused: 1,
        },
    ];
    want.sort_by_key(|u| u.digest);
    assert_eq!(usage, want);
    assert_eq!(unattributed, 0);
}

#[test]
fn with_rate_limit_headers_an_admitted_request_keeps_them_for_its_response() {
    let (gate, limited, other) = limited_fixture_with(r#","rate_limit_headers":true"#);
    let limits = Limits::shared_by(1);
    let mut worker = Worker::new(None);
    let mut run = |key: &str| send_limited(&gate, key, &mut worker, &limits);
    let pairs = |policy: &str, state: &str| {
        vec![
            ("ratelimit-policy".to_owned(), policy.to_owned()),
            ("ratelimit".to_owned(), state.to_owned()),
        ]
    };
    // 2 a minute: one left after the first (whole again in 30 s), none after the second.
    let (verdict, first) = run(&limited);
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(
        first.response,
        pairs("\"keygate\";q=2;w=60", "\"keygate\";r=1;t=30")
    );
    let (_, second) = run(&limited);
    assert_eq!(
        second.response,
        pairs("\"keygate\";q=2;w=60", "\"keygate\";r=0;t=60")
    );
    // Refused: the headers are on the 429 itself, none kept for a response.
    let (verdict, third) = run(&limited);
    assert_eq!(verdict, Verdict::Stop);
    assert!(third.response.is_empty());
    // A key without a limit gets none.
    let (verdict, free) = run(&other);
    assert_eq!(verdict, Verdict::Continue);
    assert!(free.response.is_empty());
}

#[test]
fn without_rate_limit_headers_an_admitted_request_keeps_none() {
    let (gate, limited, _) = limited_fixture();
    let limits = Limits::shared_by(1);
    let (verdict, effects) = send_limited(&gate, &limited, &mut Worker::new(None), &limits);
    assert_eq!(verdict, Verdict::Continue);
    assert!(effects.response.is_empty());
}
