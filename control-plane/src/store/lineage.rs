//! Where a key map comes from and how its versions move: the store's identity (one per
//! database, shared by every replica over it, kept in its backups) and versions on a hybrid
//! clock, so that a restored or replaced database never hands out a version a filter already
//! holds with other contents.

use super::{StoreError, StoreResult};
use crate::random::{random_bytes, RandomError};
use std::fmt;
use std::sync::Arc;

/// The largest version a database integer (SQL `INTEGER` / `BIGINT`) holds.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// A store's identity: 128 random bits as 32 lowercase hex characters. Created once per
/// database (schema version 2), replaced only by `keygatectl keymap new-lineage`. Shared, not
/// copied: every key-map answer names it, and a clone is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreId(Arc<str>);

impl StoreId {
    pub const LEN: usize = 32;

    /// A store id as it is written: exactly 32 lowercase hex characters.
    pub fn parse(text: &str) -> Option<StoreId> {
        let valid = text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| StoreId(Arc::from(text)))
    }

    /// A new identity from the OS's secure random source.
    pub fn random() -> Result<StoreId, RandomError> {
        let bytes = random_bytes::<16>()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(StoreId(Arc::from(hex)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The clock versions follow, in unix milliseconds. The system clock, except in tests.
pub type VersionClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> VersionClock {
    Arc::new(crate::clock::now_unix_ms)
}

/// The version a change after `current` gets: one more, or the clock if that is later. So
/// versions strictly rise within a lineage, and a database restored from an older copy (or
/// one that starts counting again) moves past every version issued before the copy was
/// made as soon as it changes. A clock beyond the integer range is ignored; a counter at its
/// end is refused rather than wrapped.
pub fn next_version(current: u64, now_ms: u64) -> StoreResult<u64> {
    match current.checked_add(1) {
        Some(next) if next <= MAX_VERSION => Ok(next.max(now_ms.min(MAX_VERSION))),
        _ => Err(StoreError::VersionExhausted { current }),
    }
}

/// The first version of a new lineage: now.
pub fn lineage_start(now_ms: u64) -> u64 {
    now_ms.min(MAX_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_ids_are_32_lowercase_hex_characters() {
        let id = StoreId::random().expect("random");
        assert_eq!(StoreId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(StoreId::random().expect("random"), id);
        assert!(StoreId::parse(&"a".repeat(32)).is_some());
        for bad in ["", "abc", &"A".repeat(32), &"g".repeat(32), &"a".repeat(33)] {
            assert_eq!(StoreId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_follow_the_clock_and_never_go_back_or_wrap() {
        assert_eq!(next_version(0, 0).expect("next"), 1);
        assert_eq!(
            next_version(5, 1_700_000_000_000).expect("next"),
            1_700_000_000_000
        );
        // A clock behind the counter (set back, or many changes in one millisecond).
        assert_eq!(
            next_version(1_700_000_000_005, 1_700_000_000_000).expect("next"),
            1_700_000_000_006
        );
        assert_eq!(next_version(7, u64::MAX).expect("next"), MAX_VERSION);
        assert_eq!(next_version(MAX_VERSION - 1, 0).expect("next"), MAX_VERSION);
        assert!(matches!(
            next_version(MAX_VERSION, 0),
            Err(StoreError::VersionExhausted {
                current: MAX_VERSION
            })
        ));
        assert!(next_version(u64::MAX, 0).is_err());
    }
}
