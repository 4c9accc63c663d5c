//! Growing delays keyed by anything (an email's digest, for customer sign-in): the same rule
//! as the per-address sign-in throttle (`throttle.rs`), whose delays and memory it shares.
//! Each failure in a row doubles the wait (0.5 s, 1 s, 2 s, … up to 30 s); attempts while
//! the wait runs are refused unchecked; a success, or 15 minutes without a failure, clears it.

use super::throttle::{delay_after, Failure, FORGET_AFTER};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; past it the longest-quiet ones go first.
const MAX_KEYS: usize = 4096;

struct Failures {
    count: u32,
    last: Instant,
    locked_until: Instant,
}

pub struct Backoff<K> {
    inner: Mutex<HashMap<K, Failures>>,
}

impl<K> Default for Backoff<K> {
    fn default() -> Self {
        Backoff {
            inner: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Failures>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` while `key` must wait before its next attempt.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        match self.lock().get(key) {
            Some(f) if f.locked_until > now && now.duration_since(f.last) < FORGET_AFTER => {
                Err(f.locked_until - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure; the caller waits `delay` before answering.
    pub fn failed(&self, key: &K) -> Failure {
        let now = Instant::now();
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= MAX_KEYS {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            while map.len() >= MAX_KEYS {
                let quietest = map
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone());
                match quietest {
                    Some(k) => map.remove(&k),
                    None => break,
                };
            }
        }
        let entry = map.entry(key.clone()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let delay = delay_after(entry.count);
        entry.locked_until = now + delay;
        Failure {
            count: entry.count,
            delay,
        }
    }

    pub fn succeeded(&self, key: &K) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_the_key_and_success_clears_it() {
        let backoff = Backoff::<String>::default();
        let (a, b) = ("ann@example.com".to_string(), "bob@example.com".to_string());
        assert_eq!(backoff.failed(&a).delay, Duration::from_millis(500));
        let second = backoff.failed(&a);
        assert_eq!((second.count, second.delay), (2, Duration::from_secs(1)));
        assert!(backoff.check(&a).is_err());
        assert_eq!(backoff.check(&b), Ok(()));
        backoff.succeeded(&a);
        assert_eq!(backoff.check(&a), Ok(()));
        assert_eq!(backoff.failed(&a).count, 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let backoff = Backoff::<u32>::default();
        for i in 0..(MAX_KEYS as u32 + 10) {
            backoff.failed(&i);
        }
        assert!(backoff.lock().len() <= MAX_KEYS);
    }
}
