//! `decision`: a request's headers through `request_scan::scan` and `decision::decide`, as the
//! filter runs them, with small fixed configs and arbitrary header values.
//!
//! Input: one header per `\n`-separated line, `name:value` (split at the first ':' after the
//! first byte, so `:method:GET` and `:path:/v3/x` are the pseudo-headers), e.g.
//! `:method:GET\n:path:/v3/devices/1\nauthorization:token pk_test_…`. Repeated headers stay
//! repeated; `x-http-method-override` and its kin are method overrides.
//!
//! The configs hold the sample keys of [`crate::sample_keys`] (one of each kind, account
//! `acct_1`), a legacy-shaped key, an expired key and a disabled key, with the default
//! publishable policy plus `POST /v3/devices/{id}/events`. One config accepts every scheme on
//! any environment; the other Bearer and Basic only, on production.
//!
//! Invariants: the answer is the same whether keys are looked up in the config's key map or
//! in the sync buckets `bucket::encode_entry` makes of it. An Allow only ever happens for one of the configured live keys: the presented
//! credential parses, its key is one of the configured plaintexts, the entry is that key's own
//! (same key id, kind, account), not disabled or expired, of the listener's environment, and
//! for Basic the account matches; a publishable key is allowed only what the policy model
//! allows (GET/HEAD by id under a prefix, or the POST rule), for the method and for every
//! method override, and never when the overrides were too many to judge. A Deny has a status
//! of 401/403/503 and a non-empty code and message. The scan keeps what the headers say: the
//! last `:method`/`:path`, up to 2 authorization values counted right, method and URL
//! overrides up to 4 each (else none), and which identity header names (of either form) were
//! sent. A publishable key is allowed only when every URL override and every `_method` query
//! value names an allowed call too.

use crate::invariant;
use crate::oracle;
use keygate_core::bucket::{bucket_of, encode_entry, find};
use keygate_core::config::FilterConfig;
use keygate_core::credentials::parse_authorization;
use keygate_core::decision::{decide, Decision, Request, Sources};
use keygate_core::digest::Digest;
use keygate_core::digest_cache::{identify, DigestCache};
use keygate_core::key::{KeyKind, KeyType};
use keygate_core::path::normalize;
use keygate_core::request_scan::{scan, METHOD_OVERRIDE_HEADERS, URL_OVERRIDE_HEADERS};
use std::cell::OnceCell;
use std::collections::HashMap;

/// The clock the fuzzed decisions see.
pub const NOW: u64 = 1_000;

/// A configured key: its plaintext and what the config says of it.
pub struct Known {
    pub key: String,
    pub key_id: String,
    pub kind: KeyKind,
    pub expires_at: Option<u64>,
    pub disabled: bool,
}

pub struct Fixture {
    pub configs: Vec<FilterConfig>,
    pub known: Vec<Known>,
    /// Each config's keys as sync buckets (bucket index → bytes), as the fetcher publishes them.
    pub buckets: Vec<HashMap<usize, Vec<u8>>>,
}

/// A key map as the sync buckets that `bucket::encode_entry` writes.
pub fn to_buckets(config: &FilterConfig) -> HashMap<usize, Vec<u8>> {
    let mut buckets: HashMap<usize, Vec<u8>> = HashMap::new();
    for (digest, entry) in config.keys.iter() {
        encode_entry(
            buckets.entry(bucket_of(digest)).or_default(),
            digest,
            &entry.info(),
        );
    }
    buckets
}

/// Every plaintext key the configs know.
pub fn known_keys() -> Vec<Known> {
    let mut known: Vec<Known> = crate::sample_keys()
        .into_iter()
        .zip(KeyKind::ALL)
        .map(|(key, kind)| Known {
            key_id: format!("key_{}", kind.prefix().trim_end_matches('_')),
            key,
            kind,
            expires_at: None,
            disabled: false,
        })
        .collect();
    let extra = |key: &str, id: &str, kind: KeyKind, expires_at, disabled| Known {
        key: key.to_owned(),
        key_id: id.to_owned(),
        kind,
        expires_at,
        disabled,
    };
    let [sk_test, pk_test, _, pk] = KeyKind::ALL;
    known.push(extra(
        "pk_test_legacy0123",
        "key_legacy",
        pk_test,
        None,
        false,
    ));
    known.push(extra(
        "sk_test_expired0123",
        "key_expired",
        sk_test,
        Some(NOW),
        false,
    ));
    known.push(extra(
        "sk_test_later0123",
        "key_later",
        sk_test,
        Some(NOW + 1),
        false,
    ));
    known.push(extra("pk_disabled0123", "key_disabled", pk, None, true));
    known
}

pub fn fixture() -> Fixture {
    let known = known_keys();
    let entries: Vec<String> = known
        .iter()
        .map(|k| {
            let mut e = format!(
                r#"{{"digest":"{}","account_id":"acct_1","key_id":"{}","type":"{}","environment":"{}""#,
                Digest::of_key(&k.key).to_hex(),
                k.key_id,
                k.kind.key_type.as_str(),
                k.kind.environment.as_str()
            );
            if let Some(at) = k.expires_at {
                e.push_str(&format!(r#","expires_at":{at}"#));
            }
            if k.disabled {
                e.push_str(r#","disabled":true"#);
            }
            e.push('}');
            e
        })
        .collect();
    let publishable = format!(
        r#""publishable":{{"allow":[{{"methods":["post"],"path":"{}"}}]}}"#,
        oracle::EVENTS_RULE
    );
    let configs: Vec<FilterConfig> = [
        String::new(),
        r#","schemes":["bearer","basic"],"environment":"production","max_key_length":64"#.into(),
    ]
    .iter()
    .map(|options| {
        let json = format!(
            r#"{{"version":1{options},{publishable},"keys":[{}]}}"#,
            entries.join(",")
        );
        FilterConfig::parse(json.as_bytes()).expect("the fixture config is valid")
    })
    .collect();
    let buckets = configs.iter().map(to_buckets).collect();
    Fixture {
        configs,
        known,
        buckets,
    }
}

thread_local! {
    static FIXTURE: OnceCell<Fixture> = const { OnceCell::new() };
}

/// The input's header lines as `(name, value)` pairs.
pub fn header_lines(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == b'\n')
        .map(|line| {
            let colon = line.iter().skip(1).position(|&b| b == b':').map(|i| i + 1);
            match colon {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            }
        })
        .collect()
}

pub fn check(data: &[u8]) {
    let pairs = header_lines(data);
    FIXTURE.with(|cell| {
        let fixture = cell.get_or_init(fixture);
        for (config, buckets) in fixture.configs.iter().zip(&fixture.buckets) {
            check_one(config, buckets, &fixture.known, &pairs);
        }
    });
}

fn check_one(
    config: &FilterConfig,
    buckets: &HashMap<usize, Vec<u8>>,
    known: &[Known],
    pairs: &[(&[u8], &[u8])],
) {
    let settings = &config.settings;
    let scanned = scan(pairs.iter().copied(), &settings.stripped_headers);

    // The scan against the headers themselves.
    let values = |name: &[u8]| -> Vec<&[u8]> {
        pairs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect()
    };
    let authorization = values(b"authorization");
    let overrides: Vec<&[u8]> = pairs
        .iter()
        .filter(|(n, _)| METHOD_OVERRIDE_HEADERS.contains(n))
        .map(|(_, v)| *v)
        .collect();
    let url_overrides: Vec<&[u8]> = pairs
        .iter()
        .filter(|(n, _)| URL_OVERRIDE_HEADERS.contains(n))
        .map(|(_, v)| *v)
        .collect();
    invariant!(
        scanned.authorization() == &authorization[..authorization.len().min(2)],
        "scan kept {} of {} authorization values",
        scanned.authorization().len(),
        authorization.len()
    );
    invariant!(
        scanned.method == values(b":method").last().copied().unwrap_or_default()
            && scanned.path == values(b":path").last().copied().unwrap_or_default(),
        "scan took another :method or :path"
    );
    invariant!(
        scanned.method_overrides() == (overrides.len() <= 4).then_some(&overrides[..]),
        "scan kept {:?} overrides of {}",
        scanned.method_overrides().map(<[_]>::len),
        overrides.len()
    );
    invariant!(
        scanned.url_overrides() == (url_overrides.len() <= 4).then_some(&url_overrides[..]),
        "scan kept {:?} URL overrides of {}",
        scanned.url_overrides().map(<[_]>::len),
        url_overrides.len()
    );
    for (slot, name) in settings.stripped_headers.iter().enumerate() {
        let sent = scanned.sent(slot);
        invariant!(
            sent == pairs.iter().any(|(n, _)| *n == name.as_bytes()),
            "identity header {name} sent: scan says {sent}"
        );
    }
    for name in keygate_core::config::DEFAULT_IDENTITY_HEADERS
        .iter()
        .chain(&[keygate_core::config::DEFAULT_IDENTITY_HEADER])
    {
        invariant!(
            settings.stripped_headers.iter().any(|n| n == name),
            "{name} is not stripped"
        );
    }

    let request = Request {
        authorization: scanned.authorization(),
        method: scanned.method,
        path: scanned.path,
        method_overrides: scanned.method_overrides(),
        url_overrides: scanned.url_overrides(),
    };
    let (method, path) = (scanned.method, scanned.path);
    let lookup = |d: &Digest| config.keys.get(d).map(|e| e.info());
    let mut clock_asked = false;
    let sources = Sources {
        identify,
        lookup,
        now: || {
            clock_asked = true;
            NOW
        },
    };
    let decision = decide(settings, sources, &request);
    // Sync mode finds keys in buckets instead: the same request must get the same answer.
    let from_buckets = |d: &Digest| buckets.get(&bucket_of(d)).and_then(|b| find(b, d));
    let synced = decide(
        settings,
        Sources {
            identify,
            lookup: from_buckets,
            now: || NOW,
        },
        &request,
    );
    invariant!(
        decision == synced,
        "key map says {decision:?}, sync buckets say {synced:?}"
    );
    // The filter identifies keys through a cache: a miss and then a hit decide the same.
    let mut cache = DigestCache::new([0x5a; 16], 2);
    for round in ["miss", "hit"] {
        let cached = decide(
            settings,
            Sources {
                identify: |key: &str| cache.identify(key),
                lookup,
                now: || NOW,
            },
            &request,
        );
        invariant!(
            decision == cached,
            "uncached says {decision:?}, cached ({round}) says {cached:?}"
        );
    }
    match decision {
        Decision::Deny(denial) => {
            invariant!(
                matches!(denial.status(), 401 | 403 | 503),
                "{denial:?} has status {}",
                denial.status()
            );
            invariant!(
                !denial.code().is_empty() && !denial.message().is_empty(),
                "{denial:?} without code or message"
            );
        }
        Decision::Allow(info) => {
            invariant!(
                authorization.len() == 1,
                "Allow with {} authorization headers",
                authorization.len()
            );
            let credential =
                parse_authorization(&authorization, settings.schemes, settings.max_key_length);
            let Ok(credential) = credential else {
                invariant!(false, "Allow without a parsable credential");
                return;
            };
            let Some(k) = known.iter().find(|k| *k.key == *credential.key) else {
                invariant!(false, "Allow for a key that is not configured");
                return;
            };
            invariant!(
                info.key_id == k.key_id && info.kind == k.kind && info.account_id == "acct_1",
                "Allow for {} with the entry of {}",
                k.key_id,
                info.key_id
            );
            invariant!(!k.disabled && !info.disabled, "Allow for a disabled key");
            invariant!(
                k.expires_at.is_none_or(|at| NOW < at),
                "Allow for an expired key {}",
                k.key_id
            );
            invariant!(
                clock_asked == k.expires_at.is_some(),
                "clock asked {clock_asked} for a key with expiry {:?}",
                k.expires_at
            );
            invariant!(
                settings.environment.is_none_or(|e| e == k.kind.environment),
                "Allow for {} on a {:?} listener",
                k.key_id,
                settings.environment
            );
            invariant!(
                settings.schemes.accepts(credential.scheme),
                "Allow with scheme {:?}",
                credential.scheme
            );
            if let Some(account) = &credential.account_id {
                invariant!(account == "acct_1", "Allow with another account's id");
            }
            if k.kind.key_type == KeyType::Publishable {
                let allowed = |m: &[u8]| {
                    normalize(path)
                        .map(|p| oracle::expected_allow(m, &p))
                        .unwrap_or(false)
                };
                invariant!(
                    allowed(method),
                    "publishable key allowed {:?} {:?}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path)
                );
                invariant!(
                    overrides.len() <= 4 && overrides.iter().all(|m| allowed(m)),
                    "publishable key allowed {:?} {:?} with overrides {:?}",
                    String::from_utf8_lossy(method),
                    String::from_utf8_lossy(path),
                    overrides
                );
                invariant!(
                    matches!(method, b"GET" | b"HEAD" | b"POST"),
                    "publishable key allowed method {:?}",
                    String::from_utf8_lossy(method)
                );
                // Every URL the upstream could act on, with every method it could be told.
                for url in url_overrides.iter().chain(std::iter::once(&path)) {
                    let judged = |m: &[u8]| {
                        normalize(url)
                            .map(|p| oracle::expected_allow(m, &p))
                            .unwrap_or(false)
                    };
                    invariant!(
                        url_overrides.len() <= 4 && judged(method),
                        "publishable key allowed {:?} on URL override {:?}",
                        String::from_utf8_lossy(method),
                        String::from_utf8_lossy(url)
                    );
                    let query_methods = keygate_core::query::method_overrides(url);
                    invariant!(
                        query_methods
                            .as_ref()
                            .is_some_and(|found| found.iter().all(|m| allowed(m) && judged(m))),
                        "publishable key allowed {:?} with _method values {:?}",
                        String::from_utf8_lossy(url),
                        query_methods
                    );
                }
            }
        }
    }
}
