//! The synced key map, one copy per Envoy process, read by every worker thread: the sync
//! thread builds each new version beside the one being served and swaps it in whole, so a
//! request sees one version from start to end and never waits for an update.

#![forbid(unsafe_code)]

use keygate_core::bucket::{self, KeyInfo, BUCKETS};
use keygate_core::digest::Digest;
use keygate_sync_core::state::BucketStore;
use std::sync::{Arc, RwLock};

/// Buckets of the map (keygate's compact bucket encoding; `None` holds no key). Versions
/// share the buckets a change did not touch.
#[derive(Clone)]
pub struct Buckets(Vec<Option<Arc<[u8]>>>);

impl Default for Buckets {
    fn default() -> Self {
        Buckets(vec![None; BUCKETS])
    }
}

impl BucketStore for Buckets {
    fn read(&mut self, bucket: usize) -> Vec<u8> {
        self.0
            .get(bucket)
            .and_then(|b| b.as_deref())
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn write(&mut self, bucket: usize, bytes: &[u8]) {
        if let Some(slot) = self.0.get_mut(bucket) {
            *slot = (!bytes.is_empty()).then(|| Arc::from(bytes));
        }
    }
}

/// One published version of the map.
pub struct Snapshot {
    buckets: Buckets,
}

impl Snapshot {
    pub fn find(&self, digest: &Digest) -> Option<KeyInfo<'_>> {
        let bytes = self.buckets.0.get(bucket::bucket_of(digest))?.as_deref()?;
        bucket::find(bytes, digest)
    }
}

/// The version being served: none until the first map arrives.
#[derive(Default)]
pub struct SyncedMap {
    current: RwLock<Option<Arc<Snapshot>>>,
}

impl SyncedMap {
    /// The version to serve a request with (held by the request, not locked).
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        // A panic while holding the lock cannot leave a half-written map (the swap is
        // one assignment), so a poisoned lock is still good to read.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn publish(&self, buckets: Buckets) {
        let snapshot = Arc::new(Snapshot { buckets });
        let old = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(snapshot);
        // The old version is freed here, outside the lock (or by its last request).
        drop(old);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::bucket::encode_entry;
    use keygate_core::key::{Environment, KeyKind, KeyType};

    fn info(account_id: &str) -> KeyInfo<'_> {
        KeyInfo {
            account_id,
            key_id: "key_1",
            kind: KeyKind {
                key_type: KeyType::Secret,
                environment: Environment::Test,
            },
            expires_at: None,
            disabled: false,
            limit: None,
        }
    }

    #[test]
    fn a_request_keeps_its_version_while_a_new_one_is_published() {
        let map = SyncedMap::default();
        assert!(
            map.current().is_none(),
            "nothing is served before the first map"
        );
        let digest = Digest([7; 32]);
        let mut buckets = Buckets::default();
        let mut bytes = Vec::new();
        encode_entry(&mut bytes, &digest, &info("acct_a"));
        buckets.write(bucket::bucket_of(&digest), &bytes);
        map.publish(buckets.clone());
        let held = map.current().expect("published");

        buckets.write(bucket::bucket_of(&digest), &[]);
        map.publish(buckets);

        assert_eq!(
            held.find(&digest).map(|i| i.account_id),
            Some("acct_a"),
            "a request holding the old version still finds the key"
        );
        let now = map.current().expect("published");
        assert_eq!(
            now.find(&digest),
            None,
            "the removed key is gone from the new version"
        );
    }
}
