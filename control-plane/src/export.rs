//! `keygatectl export`: the key map as the filter's plugin configuration, or wrapped as an
//! Envoy extension-config resource for file-based config discovery (ECDS), the push path.

use keygate_core::config::{ConfigError, FilterConfig, RawKey, CONFIG_VERSION};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where `make` puts the filter; the default `code.local.filename` of an extension config.
pub const DEFAULT_WASM_PATH: &str = "target/wasm32-wasip1/release/keygate.wasm";
/// The filter's name, root id and VM id in the extension config.
const FILTER_NAME: &str = "keygate";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the base config is not valid JSON: {0}")]
    Base(#[source] serde_json::Error),
    #[error("the base config must be a JSON object")]
    BaseNotObject,
    #[error("the exported configuration would not load in the filter: {0}")]
    Invalid(#[source] ConfigError),
    #[error("cannot encode the configuration: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a base config file's text.
pub fn parse_base(text: &str) -> Result<Map<String, Value>, ExportError> {
    match serde_json::from_str(text).map_err(ExportError::Base)? {
        Value::Object(map) => Ok(map),
        _ => Err(ExportError::BaseNotObject),
    }
}

/// The plugin configuration: the base object (if any) with `keys` set to the key map, and
/// `version` 1 unless the base says otherwise. Checked with the filter's own parser, so
/// what is written is what the filter loads.
pub fn plugin_config(
    keys: &[RawKey],
    base: Option<Map<String, Value>>,
) -> Result<Value, ExportError> {
    let mut config = base.unwrap_or_default();
    config
        .entry("version")
        .or_insert_with(|| json!(CONFIG_VERSION));
    config.insert(
        "keys".into(),
        serde_json::to_value(keys).map_err(ExportError::Encode)?,
    );
    let config = Value::Object(config);
    let bytes = serde_json::to_vec(&config).map_err(ExportError::Encode)?;
    FilterConfig::parse(&bytes).map_err(ExportError::Invalid)?;
    Ok(config)
}

/// A `resources:` document for Envoy's file-based extension config discovery: the Wasm
/// filter's configuration with the plugin config as its string `configuration`.
pub fn extension_config(plugin_config: &Value, wasm_path: &str) -> Result<Value, ExportError> {
    let plugin_json = serde_json::to_string(plugin_config).map_err(ExportError::Encode)?;
    Ok(json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER_NAME,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": FILTER_NAME,
                    "root_id": FILTER_NAME,
                    "vm_config": {
                        "vm_id": FILTER_NAME,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm_path}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": plugin_json
                    },
                    "failure_policy": "FAIL_RELOAD"
                }
            }
        }]
    }))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// a reader (Envoy watching the file) sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let write_error = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().ok_or_else(|| {
        write_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temp file is ours and useless now.
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::digest::Digest;
    use keygate_core::key::{Environment, KeyType};

    fn sample_keys() -> Vec<RawKey> {
        vec![RawKey {
            digest: Digest::of_key("sk_test_abc").to_hex(),
            account_id: "acct_1".into(),
            key_id: "key_1".into(),
            key_type: KeyType::Secret,
            environment: Environment::Test,
            expires_at: Some(2_000_000_000),
            disabled: false,
            rate_limit: None,
        }]
    }

    #[test]
    fn plugin_config_merges_into_the_base_and_loads_in_the_filter() {
        let base = parse_base(r#"{"realm":"api","keys":[]}"#).expect("base");
        let config = plugin_config(&sample_keys(), Some(base)).expect("config");
        assert_eq!(config["version"], 1);
        assert_eq!(config["realm"], "api");
        assert_eq!(config["keys"][0]["key_id"], "key_1");
        let parsed = FilterConfig::parse(config.to_string().as_bytes()).expect("parses");
        assert_eq!(parsed.keys.len(), 1);
    }

    #[test]
    fn a_base_the_filter_would_refuse_is_refused() {
        assert!(matches!(parse_base("[1]"), Err(ExportError::BaseNotObject)));
        assert!(matches!(parse_base("{"), Err(ExportError::Base(_))));
        let base = parse_base(r#"{"version":2}"#).expect("json");
        assert!(matches!(
            plugin_config(&[], Some(base)),
            Err(ExportError::Invalid(_))
        ));
        let base = parse_base(r#"{"no_such_field":true}"#).expect("json");
        assert!(matches!(
            plugin_config(&[], Some(base)),
            Err(ExportError::Invalid(_))
        ));
    }

    #[test]
    fn extension_config_carries_the_plugin_config_as_a_string() {
        let config = plugin_config(&sample_keys(), None).expect("config");
        let ecds = extension_config(&config, "/w/keygate.wasm").expect("ecds");
        let wasm = &ecds["resources"][0]["typed_config"]["config"];
        assert_eq!(
            wasm["vm_config"]["code"]["local"]["filename"],
            "/w/keygate.wasm"
        );
        assert_eq!(wasm["failure_policy"], "FAIL_RELOAD");
        let value = wasm["configuration"]["value"].as_str().expect("string");
        assert_eq!(serde_json::from_str::<Value>(value).expect("json"), config);
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keygate.json");
        std::fs::write(&path, "old").expect("write");
        write_atomically(&path, b"new").expect("atomic write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(write_atomically(&dir.path().join("missing/x.json"), b"x").is_err());
    }
}
