//! The whole authentication decision for one request, from what the filter read off it.
//! Pure: the filter supplies the header values, method, path and a clock.

use crate::bucket::KeyInfo;
use crate::config::Settings;
use crate::credentials::{parse_authorization, CredentialError};
use crate::denial::Denial;
use crate::digest::Digest;
use crate::key::{KeyFormatError, KeyKind, KeyType};
use crate::path::normalize;
use crate::prelude::*;
use crate::query;

/// What the filter read off a request.
pub struct Request<'a> {
    /// Every value of the `authorization` header, in order.
    pub authorization: &'a [&'a [u8]],
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// Values of method-override headers; `None` when there were too many to judge.
    pub method_overrides: Option<&'a [&'a [u8]]>,
    /// Values of URL-override headers (`x-original-url`, `x-rewrite-url`); `None` when
    /// there were too many to judge.
    pub url_overrides: Option<&'a [&'a [u8]]>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'m> {
    Allow(KeyInfo<'m>),
    Deny(Denial),
}

/// The steps of a decision that reach outside the request: how a key becomes its kind and
/// digest (`digest_cache::identify`, or a cache of it), where digests are looked up
/// (plugin config or synced map), and the clock (Unix seconds), asked only when a key has an
/// expiry, so the common path makes no clock call.
pub struct Sources<I, L, N> {
    pub identify: I,
    pub lookup: L,
    pub now: N,
}

/// Decides one request.
pub fn decide<'m, I, L, N>(
    settings: &Settings,
    sources: Sources<I, L, N>,
    request: &Request<'_>,
) -> Decision<'m>
where
    I: FnOnce(&str) -> Result<(KeyKind, Digest), KeyFormatError>,
    L: FnOnce(&Digest) -> Option<KeyInfo<'m>>,
    N: FnOnce() -> u64,
{
    match authenticate(settings, sources, request) {
        Ok(entry) => match authorize(settings, &entry, request) {
            Ok(()) => Decision::Allow(entry),
            Err(denial) => Decision::Deny(denial),
        },
        Err(denial) => Decision::Deny(denial),
    }
}

/// Who is calling: a known, live key whose prefix and account agree with its entry.
fn authenticate<'m, I, L, N>(
    settings: &Settings,
    sources: Sources<I, L, N>,
    request: &Request<'_>,
) -> Result<KeyInfo<'m>, Denial>
where
    I: FnOnce(&str) -> Result<(KeyKind, Digest), KeyFormatError>,
    L: FnOnce(&Digest) -> Option<KeyInfo<'m>>,
    N: FnOnce() -> u64,
{
    let credential = parse_authorization(
        request.authorization,
        settings.schemes,
        settings.max_key_length,
    )
    .map_err(|e| match e {
        CredentialError::Missing => Denial::MissingCredentials,
        _ => Denial::MalformedCredentials,
    })?;
    let (kind, digest) = (sources.identify)(&credential.key).map_err(|e| match e {
        KeyFormatError::UnknownPrefix | KeyFormatError::BadChecksum => Denial::InvalidApiKey,
        KeyFormatError::EmptyBody | KeyFormatError::BadCharacter => Denial::MalformedCredentials,
    })?;
    let entry = (sources.lookup)(&digest).ok_or(Denial::InvalidApiKey)?;
    // A prefix that disagrees with the entry, or a key of another account, is answered
    // exactly as an unknown key: nothing tells the caller the key exists.
    if entry.kind != kind {
        return Err(Denial::InvalidApiKey);
    }
    if let Some(account) = &credential.account_id {
        if account.as_bytes() != entry.account_id.as_bytes() {
            return Err(Denial::InvalidApiKey);
        }
    }
    if entry.disabled {
        return Err(Denial::DisabledApiKey);
    }
    if let Some(expires_at) = entry.expires_at {
        if (sources.now)() >= expires_at {
            return Err(Denial::ExpiredApiKey);
        }
    }
    Ok(entry)
}

/// What the caller may do: the listener's environment, then the publishable-key rules.
fn authorize(
    settings: &Settings,
    entry: &KeyInfo<'_>,
    request: &Request<'_>,
) -> Result<(), Denial> {
    if let Some(environment) = settings.environment {
        if entry.kind.environment != environment {
            return Err(Denial::WrongEnvironment);
        }
    }
    match entry.kind.key_type {
        KeyType::Secret => Ok(()),
        KeyType::Publishable => {
            if publishable_call_allowed(settings, request) {
                Ok(())
            } else {
                Err(Denial::InsufficientPermissions)
            }
        }
    }
}

/// Every call the upstream could make of the request must be allowed: the method, each
/// method override (headers and `_method` in a query string), on `:path` and on each URL a
/// URL-override header names. Otherwise a framework that honours an override would turn an
/// allowed `GET /v3/devices/1` into a forbidden `DELETE` or another path.
fn publishable_call_allowed(settings: &Settings, request: &Request<'_>) -> bool {
    let (Some(header_methods), Some(url_overrides)) =
        (request.method_overrides, request.url_overrides)
    else {
        return false;
    };
    let urls = || core::iter::once(request.path).chain(url_overrides.iter().copied());
    let mut query_methods = Vec::new();
    for url in urls() {
        match query::method_overrides(url) {
            Some(found) => query_methods.extend(found),
            None => return false,
        }
    }
    let methods = || {
        core::iter::once(request.method)
            .chain(header_methods.iter().copied())
            .chain(query_methods.iter().map(Vec::as_slice))
    };
    urls().all(|url| match normalize(url) {
        Ok(path) => methods().all(|method| settings.policy.allows(method, &path)),
        Err(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FilterConfig;
    use crate::digest_cache::{identify, DigestCache};
    use crate::key::{issue_key, KeyKind};

    struct Fixture {
        config: FilterConfig,
        keys: [String; 4],
    }

    /// Keys of the four kinds for `acct_1`, plus whatever extra entries `extra` adds.
    fn fixture(options: &str, extra: &[(&str, &str)]) -> Fixture {
        let keys = KeyKind::ALL.map(|kind| issue_key(kind, &[kind.prefix().len() as u8; 32]));
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
        for (key, fields) in extra {
            entries.push(format!(
                r#"{{"digest":"{}","account_id":"acct_1","key_id":"key_x",{fields}}}"#,
                Digest::of_key(key).to_hex()
            ));
        }
        let json = format!(r#"{{"version":1{options},"keys":[{}]}}"#, entries.join(","));
        Fixture {
            config: FilterConfig::parse(json.as_bytes()).expect("valid config"),
            keys,
        }
    }

    fn run(f: &Fixture, auth: &[&str], method: &str, path: &str) -> Result<String, Denial> {
        let values: Vec<&[u8]> = auth.iter().map(|a| a.as_bytes()).collect();
        let request = Request {
            authorization: &values,
            method: method.as_bytes(),
            path: path.as_bytes(),
            method_overrides: Some(&[]),
            url_overrides: Some(&[]),
        };
        let judge = |identify: &mut dyn FnMut(&str) -> _| {
            let sources = Sources {
                identify,
                lookup: |d: &Digest| f.config.keys.get(d).map(|e| e.info()),
                now: || 1_000,
            };
            match decide(&f.config.settings, sources, &request) {
                Decision::Allow(entry) => Ok(entry.key_id.to_string()),
                Decision::Deny(d) => Err(d),
            }
        };
        // A cached identify must decide exactly as the plain one, on a miss and on a hit.
        let plain = judge(&mut |key: &str| identify(key));
        let mut cache = DigestCache::new([3; 16], 8);
        assert_eq!(judge(&mut |key: &str| cache.identify(key)), plain);
        assert_eq!(judge(&mut |key: &str| cache.identify(key)), plain);
        plain
    }

    #[test]
    fn each_kind_of_key_gets_what_it_may_do() {
        let f = fixture("", &[]);
        let [sk_test, pk_test, sk, pk] = &f.keys;
        let token = |k: &str| format!("token {k}");
        let allowed = |k: &str, m, p| run(&f, &[&token(k)], m, p).is_ok();
        for secret in [sk_test, sk] {
            for (m, p) in [
                ("GET", "/v3/devices"),
                ("POST", "/v3/devices"),
                ("DELETE", "/v3/devices/1"),
                ("PATCH", "/anything"),
            ] {
                assert!(allowed(secret, m, p), "{m} {p}");
            }
        }
        for publishable in [pk_test, pk] {
            assert!(allowed(publishable, "GET", "/v3/devices/abc"));
            assert!(allowed(publishable, "HEAD", "/api/v1/users/42/"));
            for (m, p) in [
                ("GET", "/v3/devices"),
                ("POST", "/v3/devices"),
                ("DELETE", "/v3/devices/1"),
                ("PUT", "/v3/devices/1"),
            ] {
                assert_eq!(
                    run(&f, &[&token(publishable)], m, p),
                    Err(Denial::InsufficientPermissions),
                    "{m} {p}"
                );
            }
        }
    }

    #[test]
    fn credentials_map_to_the_right_refusal() {
        let f = fixture("", &[]);
        let sk_test = &f.keys[0];
        let typo = format!("{}x", &sk_test[..sk_test.len() - 1]);
        let unknown = issue_key(KeyKind::ALL[0], &[99; 32]);
        let cases: Vec<(Vec<String>, Result<&str, Denial>)> = vec![
            (vec![], Err(Denial::MissingCredentials)),
            (vec!["".into()], Err(Denial::MissingCredentials)),
            (vec!["token".into()], Err(Denial::MalformedCredentials)),
            (
                vec![format!("token {sk_test}"), format!("token {sk_test}")],
                Err(Denial::MalformedCredentials),
            ),
            (
                vec![format!("token {sk_test}, token {sk_test}")],
                Err(Denial::MalformedCredentials),
            ),
            (
                vec![format!("Digest {sk_test}")],
                Err(Denial::MalformedCredentials),
            ),
            (
                vec![format!("token {}", "sk_".repeat(50))],
                Err(Denial::MalformedCredentials),
            ),
            (vec![format!("token {typo}")], Err(Denial::InvalidApiKey)),
            (vec![format!("token {unknown}")], Err(Denial::InvalidApiKey)),
            (vec!["token xk_abc".into()], Err(Denial::InvalidApiKey)),
            (vec![format!("TOKEN   {sk_test}")], Ok("key_sk_test")),
            (vec![format!("Bearer {sk_test}")], Ok("key_sk_test")),
        ];
        for (auth, expected) in cases {
            let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
            let got = run(&f, &auth, "GET", "/v3/devices");
            assert_eq!(got.as_deref().map_err(|d| *d), expected, "{auth:?}");
        }
    }

    #[test]
    fn basic_needs_the_keys_own_account() {
        use base64::Engine as _;
        let f = fixture("", &[]);
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let key = &f.keys[0];
        let basic = |user_pass: String| format!("Basic {}", b64(user_pass));
        assert!(run(&f, &[&basic(format!("{key}:"))], "GET", "/").is_ok());
        assert!(run(&f, &[&basic(format!("acct_1:{key}"))], "GET", "/").is_ok());
        assert_eq!(
            run(&f, &[&basic(format!("acct_2:{key}"))], "GET", "/"),
            Err(Denial::InvalidApiKey)
        );
    }

    #[test]
    fn entry_state_and_prefix_are_checked() {
        let expired = issue_key(KeyKind::ALL[0], &[1; 32]);
        let live = issue_key(KeyKind::ALL[0], &[2; 32]);
        let disabled = issue_key(KeyKind::ALL[0], &[3; 32]);
        let mislabeled = issue_key(KeyKind::ALL[1], &[4; 32]);
        let f = fixture(
            "",
            &[
                (
                    &expired,
                    r#""type":"secret","environment":"test","expires_at":1000"#,
                ),
                (
                    &live,
                    r#""type":"secret","environment":"test","expires_at":1001"#,
                ),
                (
                    &disabled,
                    r#""type":"secret","environment":"test","disabled":true"#,
                ),
                (&mislabeled, r#""type":"secret","environment":"test""#),
            ],
        );
        let check = |k: &str| run(&f, &[&format!("token {k}")], "GET", "/v3/x");
        assert_eq!(check(&expired), Err(Denial::ExpiredApiKey));
        assert!(check(&live).is_ok());
        assert_eq!(check(&disabled), Err(Denial::DisabledApiKey));
        assert_eq!(check(&mislabeled), Err(Denial::InvalidApiKey));
    }

    #[test]
    fn a_method_override_must_be_allowed_too() {
        let f = fixture("", &[]);
        let auth = format!("token {}", f.keys[1]);
        let values: Vec<&[u8]> = vec![auth.as_bytes()];
        let judge = |overrides: Option<&[&[u8]]>| {
            let request = Request {
                authorization: &values,
                method: b"GET",
                path: b"/v3/devices/abc",
                method_overrides: overrides,
                url_overrides: Some(&[]),
            };
            let sources = Sources {
                identify,
                lookup: |d: &Digest| f.config.keys.get(d).map(|e| e.info()),
                now: || 0,
            };
            decide(&f.config.settings, sources, &request)
        };
        assert!(matches!(judge(Some(&[b"GET"])), Decision::Allow(_)));
        assert_eq!(
            judge(Some(&[b"DELETE"])),
            Decision::Deny(Denial::InsufficientPermissions)
        );
        assert_eq!(judge(None), Decision::Deny(Denial::InsufficientPermissions));
    }

    #[test]
    fn url_overrides_and_query_methods_must_name_allowed_calls_too() {
        let f = fixture("", &[]);
        let auth = format!("token {}", f.keys[1]);
        let values: Vec<&[u8]> = vec![auth.as_bytes()];
        let judge = |path: &str, urls: Option<&[&[u8]]>| {
            let request = Request {
                authorization: &values,
                method: b"GET",
                path: path.as_bytes(),
                method_overrides: Some(&[]),
                url_overrides: urls,
            };
            let sources = Sources {
                identify,
                lookup: |d: &Digest| f.config.keys.get(d).map(|e| e.info()),
                now: || 0,
            };
            decide(&f.config.settings, sources, &request)
        };
        let allowed = |d: Decision<'_>| matches!(d, Decision::Allow(_));
        let forbidden = Decision::Deny(Denial::InsufficientPermissions);
        assert!(allowed(judge("/v3/devices/abc", Some(&[b"/v3/users/7"]))));
        assert_eq!(judge("/v3/devices/abc", Some(&[b"/v3/devices"])), forbidden);
        assert_eq!(
            judge("/v3/devices/abc", Some(&[b"https://x/v3/a/b"])),
            forbidden
        );
        assert_eq!(judge("/v3/devices/abc", None), forbidden);
        assert!(allowed(judge("/v3/devices/abc?_method=HEAD", Some(&[]))));
        assert_eq!(
            judge("/v3/devices/abc?_method=DELETE", Some(&[])),
            forbidden
        );
        assert_eq!(judge("/v3/devices/abc?%5Fmethod=put", Some(&[])), forbidden);
        assert_eq!(
            judge(
                "/v3/devices/abc",
                Some(&[b"/v3/devices/abc?_method=DELETE"])
            ),
            forbidden
        );
        // Secret keys may make every call: overrides change nothing for them.
        let secret = format!("token {}", f.keys[0]);
        let secret_values: Vec<&[u8]> = vec![secret.as_bytes()];
        let request = Request {
            authorization: &secret_values,
            method: b"GET",
            path: b"/v3/devices?_method=DELETE",
            method_overrides: None,
            url_overrides: None,
        };
        let sources = Sources {
            identify,
            lookup: |d: &Digest| f.config.keys.get(d).map(|e| e.info()),
            now: || 0,
        };
        assert!(allowed(decide(&f.config.settings, sources, &request)));
    }

    #[test]
    fn a_production_listener_refuses_test_keys() {
        let f = fixture(r#","environment":"production""#, &[]);
        let check = |k: &str| run(&f, &[&format!("token {k}")], "GET", "/v3/devices/1");
        assert_eq!(check(&f.keys[0]), Err(Denial::WrongEnvironment));
        assert_eq!(check(&f.keys[1]), Err(Denial::WrongEnvironment));
        assert!(check(&f.keys[2]).is_ok());
        assert!(check(&f.keys[3]).is_ok());
    }
}
