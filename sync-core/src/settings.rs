//! How the fetchers poll keygatectl: the wasm fetcher service's configuration (the singleton
//! `envoy.bootstrap.wasm` service that polls once per Envoy process and publishes the map to
//! every worker) and the native module's `sync` block.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::state::Guard;
use keygate_core::config::{check_version, read_document, ConfigError, Problem};
use keygate_core::fields::{as_f64, Fields, Path};
use keygate_core::json::Value;
use keygate_core::shared_data::{is_valid_name, DEFAULT_NAMESPACE};

/// A watch's wait unless configured: under the 30-second idle timeouts some load balancers
/// keep, so that nothing between a fetcher and keygatectl cuts it.
pub const DEFAULT_WAIT_S: u64 = 25;
/// The longest wait keygatectl holds a watch for (it takes a longer one as this).
pub const MAX_WAIT_S: u64 = 60;

/// How a fetcher polls keygatectl: shared by the wasm fetcher service and the native module.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    /// Watch (the default): each request is held by keygatectl until the map changes or
    /// `wait_s` ends, and the next goes out at once; `interval_ms` is then the retry delay
    /// after a failure. Off: poll every `interval_ms`.
    pub watch: bool,
    /// How long keygatectl may hold a watch, in whole seconds.
    pub wait_s: u64,
    pub interval_ms: u64,
    /// Time allowed for an answer beyond the wait (all of it for a poll).
    pub timeout_ms: u64,
    /// Each wait is the interval less up to this share of it, so fleets do not poll in step
    /// and a poll never comes later than one interval after the last.
    pub jitter: f64,
    /// Sent as `Authorization: Bearer …` when keygatectl requires a sync token.
    pub bearer_token: Option<String>,
    pub guard: Guard,
    /// How often per-key usage is reported to keygatectl; `None` when reports are off.
    pub usage_interval_ms: Option<u64>,
}

/// The wasm fetcher service's whole configuration (host and fetcher builds only: the filter
/// reads just the namespace from its own config).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub namespace: String,
    /// The Envoy cluster of keygatectl, and the request's path and authority.
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub fetch: FetchSettings,
}

/// The native module's `sync` block: keygatectl's key-map URL, polled from a thread of the
/// module's own (no Envoy cluster: see `native/src/sync.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// `http://host:port/v1/keymap` or `https://…`: one keygatectl, or several replicas
    /// tried in turn (`"url"` is a string or a list of them).
    pub urls: Vec<String>,
    /// An HTTP proxy to reach keygatectl through. Only this one: the proxy variables of
    /// Envoy's environment are never used (they would see the sync token and the map).
    pub proxy: Option<String>,
    pub fetch: FetchSettings,
}

/// A field list: the given names with every field `FetchSettings::read` takes, named once here.
macro_rules! with_fetch_fields {
    ($($name:literal),* $(,)?) => {
        &[
            $($name,)*
            "watch",
            "wait",
            "interval_ms",
            "timeout_ms",
            "jitter",
            "bearer_token",
            "allow_empty_map",
            "max_removed_fraction",
            "usage_reports",
            "usage_interval_ms",
        ]
    };
}

const FIELDS: &[&str] = with_fetch_fields!("version", "namespace", "cluster", "path", "authority");

/// The `sync` block of a filter that fetches for itself: the service's fields but `version`,
/// and an environment variable as the token's other source.
const OWN_FETCH_FIELDS: &[&str] = with_fetch_fields!(
    "namespace",
    "cluster",
    "path",
    "authority",
    "bearer_token_env"
);

const POLL_FIELDS: &[&str] = with_fetch_fields!("url", "proxy");

impl FetchSettings {
    /// The polling fields of `raw` (an object that allowed `FETCH_FIELDS`).
    fn read(raw: &Fields) -> Result<FetchSettings, ConfigError> {
        let number = |name: &'static str| {
            raw.get(name)
                .map(|v| as_f64(v, &raw.path(name)))
                .transpose()
        };
        let out_of_range = |name: &'static str, low: &'static str, high: &'static str| {
            raw.path(name).error(Problem::OutOfRange(low, high))
        };
        let watch = raw.bool("watch")?.unwrap_or(true);
        let wait_s = raw.u64("wait", u64::MAX)?.unwrap_or(DEFAULT_WAIT_S);
        if !(1..=MAX_WAIT_S).contains(&wait_s) {
            return Err(out_of_range("wait", "1", "60"));
        }
        let interval_ms = raw.u64("interval_ms", u64::MAX)?.unwrap_or(1000);
        if !(100..=3_600_000).contains(&interval_ms) {
            return Err(out_of_range("interval_ms", "100", "3600000"));
        }
        // Never 0: Envoy reads a zero timeout as "no timeout", and a hung control plane
        // would then stall syncing for good.
        let timeout_ms = raw.u64("timeout_ms", u64::MAX)?.unwrap_or(5000);
        if !(10..=60_000).contains(&timeout_ms) {
            return Err(out_of_range("timeout_ms", "10", "60000"));
        }
        let jitter = number("jitter")?.unwrap_or(0.1);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(out_of_range("jitter", "0", "0.5"));
        }
        let bearer_token = raw.string("bearer_token")?;
        if let Some(token) = bearer_token {
            if !is_valid_token(token) {
                return Err(raw.path("bearer_token").error(Problem::BadIdentifier));
            }
        }
        let max_removed_fraction = number("max_removed_fraction")?.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&max_removed_fraction) {
            return Err(out_of_range("max_removed_fraction", "0", "1"));
        }
        let usage_interval_ms = raw.u64("usage_interval_ms", u64::MAX)?.unwrap_or(10_000);
        if !(1000..=600_000).contains(&usage_interval_ms) {
            return Err(out_of_range("usage_interval_ms", "1000", "600000"));
        }
        let usage_reports = raw.bool("usage_reports")?.unwrap_or(true);
        Ok(FetchSettings {
            watch,
            wait_s,
            interval_ms,
            timeout_ms,
            jitter,
            bearer_token: bearer_token.map(str::to_owned),
            guard: Guard {
                allow_empty_map: raw.bool("allow_empty_map")?.unwrap_or(false),
                max_removed_fraction,
            },
            usage_interval_ms: usage_reports.then_some(usage_interval_ms),
        })
    }
}

impl ServiceConfig {
    pub fn parse(json: &[u8]) -> Result<ServiceConfig, ConfigError> {
        let doc = read_document(json)?;
        let root = Path::Root;
        let raw = Fields::of(&doc, &root, FIELDS)?;
        check_version(&raw)?;
        ServiceConfig::read(&raw)
    }

    /// The service's fields of `raw` (an object that allowed them), errors naming each one
    /// by its path in the document.
    fn read(raw: &Fields) -> Result<ServiceConfig, ConfigError> {
        let namespace = raw.string("namespace")?.unwrap_or(DEFAULT_NAMESPACE);
        if !is_valid_name(namespace) {
            return Err(raw.path("namespace").error(Problem::BadName));
        }
        let cluster = keygate_core::fields::as_str(raw.required("cluster")?, &raw.path("cluster"))?;
        if !is_valid_cluster(cluster) {
            return Err(raw.path("cluster").error(Problem::Message(CLUSTER_RULE)));
        }
        // Without one, the cluster's name: right for a plain name, never for an Istio
        // outbound cluster (`outbound|8080||host`), whose host is its last part.
        let authority = match raw.string("authority")? {
            Some(authority) => authority,
            None => default_authority(cluster),
        };
        if !is_valid_name(authority) {
            return Err(raw.path("authority").error(Problem::BadName));
        }
        let path = raw.string("path")?.unwrap_or("/v1/keymap");
        if !path.starts_with('/')
            || path.contains(['?', '#'])
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(raw.path("path").error(Problem::BadSyncPath));
        }
        Ok(ServiceConfig {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            fetch: FetchSettings::read(raw)?,
        })
    }
}

/// What an Envoy cluster name may be here: Istio's (`outbound|8080||keygatectl.keygate.svc.
/// cluster.local`), Envoy Gateway's (`httproute/ns/name/rule/0`) and plain names all fit.
const CLUSTER_RULE: &str = "must be 1-255 visible ASCII characters (an Envoy cluster name)";

pub fn is_valid_cluster(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// The authority a poll names when none is configured: the cluster's name, or the host of
/// an Istio-style `direction|port|subset|host` name.
fn default_authority(cluster: &str) -> &str {
    match cluster.rsplit_once('|') {
        Some((_, host)) if !host.is_empty() => host,
        _ => cluster,
    }
}

/// A sync token as keygatectl issues them: visible ASCII, not empty.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The `sync` block of a filter that polls keygatectl itself (`keygate-standalone.wasm`):
/// the `keygate_sync` service's settings, read by the same code, under `sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnFetchConfig {
    pub service: ServiceConfig,
    /// An environment variable of the VM that holds the sync token instead of
    /// `bearer_token` (Envoy's `vm_config.environment_variables`: Istio's `vmConfig.env`,
    /// Envoy Gateway's `env.hostKeys`), so the token stays out of the plugin configuration.
    pub bearer_token_env: Option<String>,
}

impl OwnFetchConfig {
    /// Reads a `sync` block (`value`, found at `path`).
    pub fn read(value: &Value, path: &Path) -> Result<OwnFetchConfig, ConfigError> {
        let raw = Fields::of(value, path, OWN_FETCH_FIELDS)?;
        let service = ServiceConfig::read(&raw)?;
        let env = raw.string("bearer_token_env")?;
        if let Some(name) = env {
            if !is_env_name(name) {
                return Err(raw.path("bearer_token_env").error(Problem::Message(
                    "must be an environment variable name: 1-128 letters, digits and '_', not starting with a digit",
                )));
            }
            if service.fetch.bearer_token.is_some() {
                return Err(raw.path("bearer_token_env").error(Problem::Message(
                    "give either bearer_token or bearer_token_env, not both",
                )));
            }
        }
        Ok(OwnFetchConfig {
            service,
            bearer_token_env: env.map(str::to_owned),
        })
    }
}

fn is_env_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PollConfig {
    /// Reads a `sync` block (`value`, found at `path`) as the native module reads it.
    pub fn read(value: &Value, path: &Path) -> Result<PollConfig, ConfigError> {
        let raw = Fields::of(value, path, POLL_FIELDS)?;
        let url_path = raw.path("url");
        let given = raw.required("url")?;
        let urls: Vec<&str> = match given {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(url_path.error(Problem::NoSyncUrl));
                }
                keygate_core::fields::strings(items, &url_path)?
            }
            single => vec![keygate_core::fields::as_str(single, &url_path)?],
        };
        for (i, url) in urls.iter().enumerate() {
            if !is_valid_sync_url(url) {
                let at = match given {
                    Value::Array(_) => Path::Index(&url_path, i),
                    _ => url_path,
                };
                return Err(at.error(Problem::BadSyncUrl));
            }
        }
        let proxy = raw.string("proxy")?;
        if let Some(proxy) = proxy {
            if !is_valid_sync_url(proxy) {
                return Err(raw.path("proxy").error(Problem::BadSyncUrl));
            }
        }
        Ok(PollConfig {
            urls: urls.into_iter().map(str::to_owned).collect(),
            proxy: proxy.map(str::to_owned),
            fetch: FetchSettings::read(&raw)?,
        })
    }
}

/// An absolute http(s) URL with a host, in visible ASCII, with no query, fragment or
/// credentials (the fetcher adds `?since=`; a token goes in `bearer_token`).
pub fn is_valid_sync_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return false;
    };
    let host_len = rest.find('/').unwrap_or(rest.len());
    url.len() <= 2048
        && host_len > 0
        && !rest.starts_with(':')
        && !url.contains(['?', '#', '@'])
        && url.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2021::*;

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = ServiceConfig::parse(br#"{"version":1,"cluster":"keygatectl"}"#).expect("valid");
        assert_eq!(c.namespace, "keygate");
        assert_eq!(c.path, "/v1/keymap");
        assert_eq!(c.authority, "keygatectl");
        assert_eq!(c.fetch.interval_ms, 1000);
        assert_eq!(c.fetch.timeout_ms, 5000);
        assert!(c.fetch.watch, "watching is the default");
        assert_eq!(c.fetch.wait_s, DEFAULT_WAIT_S);
        assert_eq!(c.fetch.guard, Guard::default());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"version":1}"#,
                "invalid keygate config: cluster: required field missing",
            ),
            (
                r#"{"version":1,"cluster":"a b"}"#,
                "invalid keygate config: cluster: ",
            ),
            (
                r#"{"version":1,"cluster":"c","timeout_ms":0}"#,
                "invalid keygate config: timeout_ms: must be between 10 and 60000",
            ),
            (
                r#"{"version":1,"cluster":"c","interval_ms":5}"#,
                "invalid keygate config: interval_ms: must be between 100 and 3600000",
            ),
            (
                r#"{"version":1,"cluster":"c","wait":0}"#,
                "invalid keygate config: wait: must be between 1 and 60",
            ),
            (
                r#"{"version":1,"cluster":"c","wait":61}"#,
                "invalid keygate config: wait: must be between 1 and 60",
            ),
            (
                r#"{"version":1,"cluster":"c","wait":2.5}"#,
                "invalid keygate config: wait: ",
            ),
            (
                r#"{"version":1,"cluster":"c","watch":"yes"}"#,
                "invalid keygate config: watch: ",
            ),
            (
                r#"{"version":1,"cluster":"c","path":"v1"}"#,
                "invalid keygate config: path: ",
            ),
            (
                r#"{"version":1,"cluster":"c","jitter":2}"#,
                "invalid keygate config: jitter: ",
            ),
            (
                r#"{"version":1,"cluster":"c","nope":2}"#,
                "invalid keygate config: nope: unknown field",
            ),
            (
                r#"{"version":1,"cluster":"c","jitter":"0.2"}"#,
                "invalid keygate config: jitter: expected a number, got a string",
            ),
            (
                r#"{"version":1,"cluster":"c","jitter":1e400}"#,
                "invalid keygate config: jitter: number too large",
            ),
        ];
        for (json, want) in cases {
            let got = ServiceConfig::parse(json.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(got.starts_with(want), "{json}: got {got}");
        }
    }

    fn poll(json: &str) -> Result<PollConfig, String> {
        let doc = keygate_core::json::parse(json.as_bytes()).map_err(|e| e.to_string())?;
        let sync = Path::Root;
        let sync = Path::Field(&sync, "sync");
        PollConfig::read(&doc, &sync).map_err(|e| e.to_string())
    }

    #[test]
    fn a_poll_config_takes_one_url_or_several() {
        let one = poll(r#"{"url":"http://127.0.0.1:8080/v1/keymap"}"#).expect("valid");
        assert_eq!(one.urls, ["http://127.0.0.1:8080/v1/keymap"]);
        assert_eq!(one.fetch.interval_ms, 1000);
        let two =
            poll(r#"{"url":["http://a:1/v1/keymap","https://b/v1/keymap"],"interval_ms":200}"#)
                .expect("valid");
        assert_eq!(two.urls, ["http://a:1/v1/keymap", "https://b/v1/keymap"]);
        assert_eq!(two.fetch.interval_ms, 200);
        let polling =
            poll(r#"{"url":"http://a/v1/keymap","watch":false,"wait":5}"#).expect("valid");
        assert!(!polling.fetch.watch);
        assert_eq!(polling.fetch.wait_s, 5);
        assert_eq!(two.proxy, None, "no proxy unless one is named");
        let proxied =
            poll(r#"{"url":"http://a/v1/keymap","proxy":"http://proxy:3128"}"#).expect("valid");
        assert_eq!(proxied.proxy.as_deref(), Some("http://proxy:3128"));
    }

    #[test]
    fn poll_config_errors_name_the_field() {
        let cases = [
            (
                r#"{}"#,
                "invalid keygate config: sync.url: required field missing",
            ),
            (
                r#"{"url":"ftp://a/x"}"#,
                "invalid keygate config: sync.url: must be an http",
            ),
            (
                r#"{"url":"http://"}"#,
                "invalid keygate config: sync.url: must be an http",
            ),
            (
                r#"{"url":"http://a/x?since=1"}"#,
                "invalid keygate config: sync.url: must be",
            ),
            (
                r#"{"url":"http://u:p@a/x"}"#,
                "invalid keygate config: sync.url: must be",
            ),
            (
                r#"{"url":["http://a/x","b"]}"#,
                "invalid keygate config: sync.url[1]: must be",
            ),
            (
                r#"{"url":[]}"#,
                "invalid keygate config: sync.url: must list at least one URL",
            ),
            (
                r#"{"url":"http://a/x","cluster":"c"}"#,
                "invalid keygate config: sync.cluster: unknown field",
            ),
            (
                r#"{"url":"http://a/x","proxy":"socks://p"}"#,
                "invalid keygate config: sync.proxy: must be an http",
            ),
            (
                r#"{"url":"http://a/x","interval_ms":5}"#,
                "invalid keygate config: sync.interval_ms: must be between 100",
            ),
        ];
        for (json, want) in cases {
            let got = poll(json).err().unwrap_or_default();
            assert!(got.starts_with(want), "{json}: got {got}");
        }
    }
    fn own(json: &str) -> Result<OwnFetchConfig, String> {
        let doc = keygate_core::json::parse(json.as_bytes()).map_err(|e| e.to_string())?;
        let root = Path::Root;
        let sync = Path::Field(&root, "sync");
        OwnFetchConfig::read(&doc, &sync).map_err(|e| e.to_string())
    }

    #[test]
    fn istio_and_gateway_cluster_names_are_taken() {
        let istio = own(r#"{"cluster":"outbound|8080||keygatectl.keygate.svc.cluster.local"}"#)
            .expect("valid");
        assert_eq!(
            istio.service.cluster,
            "outbound|8080||keygatectl.keygate.svc.cluster.local"
        );
        // The authority defaults to the host of an Istio-style name, not the whole name.
        assert_eq!(
            istio.service.authority,
            "keygatectl.keygate.svc.cluster.local"
        );
        assert_eq!(istio.service.namespace, "keygate");
        let eg =
            own(r#"{"cluster":"httproute/keygate/keygatectl/rule/0","authority":"localhost"}"#)
                .expect("valid");
        assert_eq!(eg.service.authority, "localhost");
        let service = ServiceConfig::parse(br#"{"version":1,"cluster":"outbound|8080||k.ns"}"#)
            .expect("the fetcher service takes them too");
        assert_eq!(service.authority, "k.ns");
    }

    #[test]
    fn a_filter_s_fetch_block_reads_the_service_s_settings() {
        let c = own(
            r#"{"cluster":"kg","path":"/v1/keymap","authority":"localhost","interval_ms":250,
                "timeout_ms":400,"jitter":0,"bearer_token":"kgsync_x","allow_empty_map":true,
                "max_removed_fraction":0.25,"namespace":"ns1"}"#,
        )
        .expect("valid");
        assert_eq!(c.service.fetch.interval_ms, 250);
        assert_eq!(c.service.fetch.timeout_ms, 400);
        assert_eq!(c.service.fetch.jitter, 0.0);
        assert_eq!(c.service.fetch.bearer_token.as_deref(), Some("kgsync_x"));
        assert!(c.service.fetch.guard.allow_empty_map);
        assert_eq!(c.service.namespace, "ns1");
        assert_eq!(c.bearer_token_env, None);
        let env =
            own(r#"{"cluster":"kg","bearer_token_env":"KEYGATE_SYNC_TOKEN"}"#).expect("valid");
        assert_eq!(env.bearer_token_env.as_deref(), Some("KEYGATE_SYNC_TOKEN"));
        assert_eq!(env.service.fetch.bearer_token, None);
    }

    #[test]
    fn a_filter_s_fetch_block_errors_name_the_field_under_sync() {
        let cases = [
            (r#"{}"#, "invalid keygate config: sync.cluster: required field missing"),
            (r#"{"cluster":""}"#, "invalid keygate config: sync.cluster: must be 1-255 visible"),
            (r#"{"cluster":"a b"}"#, "invalid keygate config: sync.cluster: must be 1-255 visible"),
            (r#"{"cluster":"c","version":1}"#, "invalid keygate config: sync.version: unknown field"),
            (r#"{"cluster":"c","url":"http://a/"}"#, "invalid keygate config: sync.url: unknown field"),
            (r#"{"cluster":"c","interval_ms":5}"#, "invalid keygate config: sync.interval_ms: must be between 100"),
            (r#"{"cluster":"c","timeout_ms":0}"#, "invalid keygate config: sync.timeout_ms: must be between 10"),
            (r#"{"cluster":"c","path":"x"}"#, "invalid keygate config: sync.path: must start with '/'"),
            (r#"{"cluster":"c","authority":"a|b"}"#, "invalid keygate config: sync.authority: must be 1-128"),
            (r#"{"cluster":"c","namespace":"a b"}"#, "invalid keygate config: sync.namespace: must be 1-128"),
            (r#"{"cluster":"c","bearer_token":""}"#, "invalid keygate config: sync.bearer_token: must be"),
            (r#"{"cluster":"c","bearer_token_env":"1X"}"#, "invalid keygate config: sync.bearer_token_env: must be an environment variable name"),
            (r#"{"cluster":"c","bearer_token_env":"A-B"}"#, "invalid keygate config: sync.bearer_token_env: must be an environment variable name"),
            (
                r#"{"cluster":"c","bearer_token_env":"T","bearer_token":"kgsync_x"}"#,
                "invalid keygate config: sync.bearer_token_env: give either bearer_token or bearer_token_env, not both",
            ),
            (r#"{"cluster":"c","jitter":"0.1"}"#, "invalid keygate config: sync.jitter: expected a number"),
        ];
        for (json, want) in cases {
            let got = own(json).err().unwrap_or_default();
            assert!(got.starts_with(want), "{json}: got {got}");
        }
    }
}
