//! Configuration of the key-map fetcher: the singleton `envoy.bootstrap.wasm` service that
//! polls keygatectl once per Envoy process and publishes the map to every worker.

use crate::config::{json_error_field, ConfigError, Problem, CONFIG_VERSION};
use crate::sync::Guard;
use serde::Deserialize;

/// Shared-data namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "keygate";

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub namespace: String,
    /// The Envoy cluster of keygatectl, and the request's path and authority.
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Each wait is the interval ± this share of it, so fleets do not poll in step.
    pub jitter: f64,
    /// Sent as `Authorization: Bearer …` when keygatectl requires a sync token.
    pub bearer_token: Option<String>,
    pub guard: Guard,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceConfig {
    version: u32,
    namespace: Option<String>,
    cluster: String,
    path: Option<String>,
    authority: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    jitter: Option<f64>,
    bearer_token: Option<String>,
    allow_empty_map: Option<bool>,
    max_removed_fraction: Option<f64>,
}

fn err(field: &str, problem: Problem) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem,
    }
}

/// True for a namespace, cluster or authority name: visible ASCII without '/' or spaces.
pub fn is_valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl ServiceConfig {
    pub fn parse(json: &[u8]) -> Result<ServiceConfig, ConfigError> {
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(err("", Problem::NotAnObject));
        }
        let mut de = serde_json::Deserializer::from_slice(json);
        let raw: RawServiceConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            err(
                &json_error_field(e.path()),
                Problem::Json(e.into_inner().to_string()),
            )
        })?;
        de.end()
            .map_err(|e| err("", Problem::Json(e.to_string())))?;
        if raw.version != CONFIG_VERSION {
            return Err(err("version", Problem::UnsupportedVersion(raw.version)));
        }
        let namespace = raw.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        if !is_valid_name(&namespace) {
            return Err(err("namespace", Problem::BadName));
        }
        if !is_valid_name(&raw.cluster) {
            return Err(err("cluster", Problem::BadName));
        }
        let authority = raw.authority.unwrap_or_else(|| raw.cluster.clone());
        if !is_valid_name(&authority) {
            return Err(err("authority", Problem::BadName));
        }
        let path = raw.path.unwrap_or_else(|| "/v1/keymap".into());
        if !path.starts_with('/')
            || path.contains(['?', '#'])
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(err("path", Problem::BadSyncPath));
        }
        let interval_ms = raw.interval_ms.unwrap_or(1000);
        if !(100..=3_600_000).contains(&interval_ms) {
            return Err(err("interval_ms", Problem::OutOfRange("100", "3600000")));
        }
        // Never 0: Envoy reads a zero timeout as "no timeout", and a hung control plane
        // would then stall syncing for good.
        let timeout_ms = raw.timeout_ms.unwrap_or(5000);
        if !(10..=60_000).contains(&timeout_ms) {
            return Err(err("timeout_ms", Problem::OutOfRange("10", "60000")));
        }
        let jitter = raw.jitter.unwrap_or(0.1);
        if !(0.0..=0.5).contains(&jitter) {
            return Err(err("jitter", Problem::OutOfRange("0", "0.5")));
        }
        if let Some(token) = &raw.bearer_token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("bearer_token", Problem::BadIdentifier));
            }
        }
        let max_removed_fraction = raw.max_removed_fraction.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&max_removed_fraction) {
            return Err(err("max_removed_fraction", Problem::OutOfRange("0", "1")));
        }
        Ok(ServiceConfig {
            namespace,
            cluster: raw.cluster,
            path,
            authority,
            interval_ms,
            timeout_ms,
            jitter,
            bearer_token: raw.bearer_token,
            guard: Guard {
                allow_empty_map: raw.allow_empty_map.unwrap_or(false),
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
                "invalid keygate config: missing field `cluster`",
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
