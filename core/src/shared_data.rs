//! Where the wasm fetcher service publishes the synced map in Envoy's shared data, and
//! where the filter's workers read it: the names both sides use.

use crate::prelude::*;

/// Shared-data namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "keygate";

/// True for a namespace, cluster or authority name: visible ASCII without '/' or spaces.
pub fn is_valid_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Shared-data key of the published map's generation (8 bytes, little-endian): it changes
/// whenever the fetcher publishes, so workers drop the buckets they cached.
pub fn version_key(namespace: &str) -> String {
    format!("{namespace}/version")
}

/// Shared-data key where worker VMs leave their drained usage counts for the fetcher
/// (`usage::encode_records`, appended with compare-and-swap).
pub fn usage_inbox_key(namespace: &str) -> String {
    format!("{namespace}/usage")
}

/// Shared-data key the fetcher sets (one byte, 1) when it reports usage: workers count
/// only then.
pub fn usage_on_key(namespace: &str) -> String {
    format!("{namespace}/usage-on")
}

/// Shared-data key of one bucket.
pub fn bucket_key(namespace: &str, bucket: usize) -> String {
    format!("{namespace}/b/{bucket:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_keys_are_namespaced() {
        assert_eq!(version_key("kg"), "kg/version");
        assert_eq!(bucket_key("kg", 0xab), "kg/b/00ab");
    }
}
