//! One-time things a customer's next page shows, held in memory by session digest: a notice
//! ("Password changed") and keys just issued, whose plaintext the page shows once and the
//! server then forgets. Never stored in the database; gone after 5 minutes or a restart.

use super::session::{NewKeys, Notice, FLASH_TTL};
use keygate_core::digest::{Digest, DigestBuildHasher};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Sessions with something waiting, at most; past it the oldest go first.
const MAX_WAITING: usize = 1000;

struct Waiting {
    since: Instant,
    notice: Option<Notice>,
    keys: Option<NewKeys>,
}

#[derive(Default)]
pub struct Flash {
    inner: Mutex<HashMap<Digest, Waiting, DigestBuildHasher>>,
}

impl Flash {
    fn with_entry(&self, session: &Digest, f: impl FnOnce(&mut Waiting)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, w| now.duration_since(w.since) < FLASH_TTL);
        while map.len() >= MAX_WAITING && !map.contains_key(session) {
            let oldest = map.iter().min_by_key(|(_, w)| w.since).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        let entry = map.entry(*session).or_insert(Waiting {
            since: now,
            notice: None,
            keys: None,
        });
        entry.since = now;
        f(entry);
    }

    pub fn notice(&self, session: &Digest, notice: Notice) {
        self.with_entry(session, |w| w.notice = Some(notice));
    }

    pub fn keys(&self, session: &Digest, keys: NewKeys) {
        self.with_entry(session, |w| w.keys = Some(keys));
    }

    /// Takes whatever waits for the session: it is then gone from the server.
    pub fn take(&self, session: &Digest) -> (Option<Notice>, Option<NewKeys>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match map.remove(session) {
            Some(w) if w.since.elapsed() < FLASH_TTL => (w.notice, w.keys),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_things_are_taken_once() {
        let flash = Flash::default();
        let (a, b) = (Digest::of_key("a"), Digest::of_key("b"));
        flash.notice(&a, Notice::Info("hello".into()));
        flash.keys(&a, NewKeys::new("acct".into(), Vec::new()));
        let (notice, keys) = flash.take(&a);
        assert_eq!(notice, Some(Notice::Info("hello".into())));
        assert_eq!(keys.map(|k| k.account_id), Some("acct".to_string()));
        assert!(matches!(flash.take(&a), (None, None)));
        assert!(matches!(flash.take(&b), (None, None)));
    }
}
