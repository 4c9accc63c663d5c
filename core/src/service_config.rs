//! Configuration of the key-map fetcher: the singleton `envoy.bootstrap.wasm` service that
//! polls keygatectl once per Envoy process and publishes the map to every worker.

use crate::prelude::*;

#[cfg(feature = "std")]
use crate::config::{check_version, err, read_document, ConfigError, Problem};
#[cfg(feature = "std")]
use crate::fields::{as_f64, Fields, Path};
#[cfg(feature = "std")]
use crate::sync::Guard;

/// Shared-data namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "keygate";

/// The fetcher's whole configuration (host and fetcher builds only: the filter reads just
/// the namespace from its own config).
#[cfg(feature = "std")]
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub namespace: String,
    /// The Envoy cluster of keygatectl, and the request's path and authority.
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Each wait is the interval less up to this share of it, so fleets do not poll in step
    /// and a poll never comes later than one interval after the last.
    pub jitter: f64,
    /// Sent as `Authorization: Bearer …` when keygatectl requires a sync token.
    pub bearer_token: Option<String>,
    pub guard: Guard,
}

#[cfg(feature = "std")]
const FIELDS: &[&str] = &[
    "version",
    "namespace",
    "cluster",
    "path",
    "authority",
    "interval_ms",
    "timeout_ms",
    "jitter",
    "bearer_token",
    "allow_empty_map",
    "max_removed_fraction",
];

/// True for a namespace, cluster or authority name: visible ASCII without '/' or spaces.
pub fn is_valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[cfg(feature = "std")]
impl ServiceConfig {
    pub fn parse(json: &[u8]) -> Result<ServiceConfig, ConfigError> {
        let doc = read_document(json)?;
        let root = Path::Root;
        let raw = Fields::of(&doc, &root, FIELDS)?;
        check_version(&raw)?;
        let number = |name: &'static str| {
            raw.get(name)
                .map(|v| as_f64(v, &raw.path(name)))
                .transpose()
        };
        let namespace = raw.string("namespace")?.unwrap_or(DEFAULT_NAMESPACE);
        if !is_valid_name(namespace) {
            return Err(err("namespace", Problem::BadName));
        }
        let cluster = crate::fields::as_str(raw.required("cluster")?, &raw.path("cluster"))?;
        if !is_valid_name(cluster) {
            return Err(err("cluster", Problem::BadName));
        }
        let authority = raw.string("authority")?.unwrap_or(cluster);
        if !is_valid_name(authority) {
            return Err(err("authority", Problem::BadName));
        }
        let path = raw.string("path")?.unwrap_or("/v1/keymap");
        if !path.starts_with('/')
            || path.contains(['?', '#'])
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(err("path", Problem::BadSyncPath));
        }
        let interval_ms = raw.u64("interval_ms", u64::MAX)?.unwrap_or(1000);
        if !(100..=3_600_000).contains(&interval_ms) {
            return Err(err("interval_ms", Problem::OutOfRange("100", "3600000")));
        }
        // Never 0: Envoy reads a zero timeout as "no timeout", and a hung control plane
        // would then stall syncing for good.
        let timeout_ms = raw.u64("timeout_ms", u64::MAX)?.unwrap_or(5000);
        if !(10..=60_000).contains(&timeout_ms) {
            return Err(err("timeout_ms", Problem::OutOfRange("10", "60000")));
        }
        let jitter = number("jitter")?.unwrap_or(0.1);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(err("jitter", Problem::OutOfRange("0", "0.5")));
        }
        let bearer_token = raw.string("bearer_token")?;
        if let Some(token) = bearer_token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("bearer_token", Problem::BadIdentifier));
            }
        }
        let max_removed_fraction = number("max_removed_fraction")?.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&max_removed_fraction) {
            return Err(err("max_removed_fraction", Problem::OutOfRange("0", "1")));
        }
        Ok(ServiceConfig {
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            interval_ms,
            timeout_ms,
            jitter,
            bearer_token: bearer_token.map(str::to_owned),
            guard: Guard {
                allow_empty_map: raw.bool("allow_empty_map")?.unwrap_or(false),
                max_removed_fraction,
            },
        })
    }
}

/// Shared-data key holding the published map's version (8 bytes, little-endian).
pub fn version_key(namespace: &str) -> String {
    format!("{namespace}/version")
}

/// Shared-data key of one bucket.
pub fn bucket_key(namespace: &str, bucket: usize) -> String {
    format!("{namespace}/b/{bucket:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = ServiceConfig::parse(br#"{"version":1,"cluster":"keygatectl"}"#).expect("valid");
        assert_eq!(c.namespace, "keygate");
        assert_eq!(c.path, "/v1/keymap");
        assert_eq!(c.authority, "keygatectl");
        assert_eq!(c.interval_ms, 1000);
        assert_eq!(c.timeout_ms, 5000);
        assert_eq!(c.guard, Guard::default());
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

    #[test]
    fn shared_data_keys_are_namespaced() {
        assert_eq!(version_key("kg"), "kg/version");
        assert_eq!(bucket_key("kg", 0xab), "kg/b/00ab");
    }
}
