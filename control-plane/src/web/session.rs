//! Web sessions, held in memory: a random 256-bit session id goes to the browser in a cookie;
//! the server keeps only its SHA-256 digest, with the session's CSRF token, its expiry, the
//! admin token digest it was opened with, and one-time messages ("flash").
//!
//! A session ends at its expiry, at sign-out, when the admin token is rotated, or when the
//! server restarts.

use crate::random::{random_bytes, RandomError};
use keygate_core::digest::{Digest, DigestBuildHasher};
use keygate_core::key::KeyKind;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a session lasts from sign-in (and the cookie's Max-Age).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a just-issued key waits in memory for the page that shows it.
pub const FLASH_TTL: Duration = Duration::from_secs(300);
/// Sessions kept at most; past it the oldest go first.
const MAX_SESSIONS: usize = 1000;

/// 32 random bytes as 64 hex characters.
pub fn random_token() -> Result<String, RandomError> {
    let bytes = random_bytes::<32>()?;
    let mut out = String::with_capacity(64);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// Constant-time equality of two secrets of any length (their digests are compared).
pub fn secrets_match(presented: &str, expected: &str) -> bool {
    Digest::of_key(presented).ct_eq(&Digest::of_key(expected))
}

/// A plaintext key just issued, to be shown once.
#[derive(Clone)]
pub struct ShownKey {
    pub key_id: String,
    pub kind: KeyKind,
    pub plaintext: String,
}

impl std::fmt::Debug for ShownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShownKey")
            .field("key_id", &self.key_id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Keys issued for one account, waiting for that account's page.
#[derive(Debug, Clone)]
pub struct NewKeys {
    pub account_id: String,
    pub keys: Vec<ShownKey>,
    created: Instant,
}

impl NewKeys {
    pub fn new(account_id: String, keys: Vec<ShownKey>) -> NewKeys {
        NewKeys {
            account_id,
            keys,
            created: Instant::now(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Info(String),
    Error(String),
}

struct Session {
    csrf: String,
    expires: Instant,
    /// The admin token this session was opened with: a rotated token ends the session.
    admin: Digest,
    notice: Option<Notice>,
    new_keys: Option<NewKeys>,
}

/// What a request learns about its session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The digest of the session id: how the store knows the session.
    pub id: Digest,
    pub csrf: String,
    /// Seconds until the session ends.
    pub remaining: Duration,
}

impl SessionInfo {
    /// A short tag naming the session in the audit trail: the start of its id's digest
    /// (which cannot be turned back into the id).
    pub fn tag(&self) -> String {
        format!("session {}", &self.id.to_hex()[..8])
    }
}

/// A new session: the id for the cookie (never stored) and what the server keeps.
pub struct Opened {
    pub cookie_value: String,
    pub info: SessionInfo,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<Digest, Session, DigestBuildHasher>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Session, DigestBuildHasher>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for someone who just gave the admin token with digest `admin`.
    pub fn open(&self, admin: Digest) -> Result<Opened, RandomError> {
        let cookie_value = random_token()?;
        let csrf = random_token()?;
        let id = Digest::of_key(&cookie_value);
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id,
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
                admin,
                notice: None,
                new_keys: None,
            },
        );
        Ok(Opened {
            cookie_value,
            info: SessionInfo {
                id,
                csrf,
                remaining: SESSION_TTL,
            },
        })
    }

    /// The live session named by a cookie value. Expired sessions, and sessions opened with
    /// an admin token that is no longer current, are ended here.
    pub fn get(&self, cookie_value: &str, current_admin: Option<Digest>) -> Option<SessionInfo> {
        let id = Digest::of_key(cookie_value);
        let now = Instant::now();
        let mut sessions = self.lock();
        let session = sessions.get(&id)?;
        let valid = session.expires > now && current_admin.is_some_and(|a| a.ct_eq(&session.admin));
        if !valid {
            sessions.remove(&id);
            return None;
        }
        Some(SessionInfo {
            id,
            csrf: session.csrf.clone(),
            remaining: session.expires - now,
        })
    }

    pub fn close(&self, id: &Digest) {
        self.lock().remove(id);
    }

    pub fn set_notice(&self, id: &Digest, notice: Notice) {
        if let Some(session) = self.lock().get_mut(id) {
            session.notice = Some(notice);
        }
    }

    /// Holds just-issued keys for the next view of their account's page (replacing any
    /// earlier ones not yet shown).
    pub fn set_new_keys(&self, id: &Digest, keys: NewKeys) {
        if let Some(session) = self.lock().get_mut(id) {
            session.new_keys = Some(keys);
        }
    }

    /// Takes the notice (whatever page asks).
    pub fn take_notice(&self, id: &Digest) -> Option<Notice> {
        self.lock().get_mut(id).and_then(|s| s.notice.take())
    }

    /// Takes the waiting keys if they belong to `account_id`: they are then gone from the
    /// server, so no later request can show them. Keys left waiting too long are dropped.
    pub fn take_new_keys(&self, id: &Digest, account_id: &str) -> Option<NewKeys> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id)?;
        if session
            .new_keys
            .as_ref()
            .is_some_and(|k| k.created.elapsed() > FLASH_TTL)
        {
            session.new_keys = None;
        }
        if session
            .new_keys
            .as_ref()
            .is_some_and(|k| k.account_id == account_id)
        {
            session.new_keys.take()
        } else {
            None
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::key::{Environment, KeyType};

    fn admin() -> Digest {
        Digest::of_key("the-admin-token-0123")
    }

    #[test]
    fn ids_are_random_and_only_their_digest_is_kept() {
        let sessions = Sessions::default();
        let a = sessions.open(admin()).expect("open");
        let b = sessions.open(admin()).expect("open");
        assert_eq!(a.cookie_value.len(), 64);
        assert_ne!(a.cookie_value, b.cookie_value);
        assert_ne!(a.info.csrf, b.info.csrf);
        assert_ne!(a.info.csrf, a.cookie_value);
        assert_eq!(a.info.id, Digest::of_key(&a.cookie_value));
        let found = sessions.get(&a.cookie_value, Some(admin())).expect("live");
        assert_eq!(found.csrf, a.info.csrf);
        assert!(sessions.get("not-a-session", Some(admin())).is_none());
        // The digest itself is no cookie.
        assert!(sessions.get(&a.info.id.to_hex(), Some(admin())).is_none());
        sessions.close(&a.info.id);
        assert!(sessions.get(&a.cookie_value, Some(admin())).is_none());
        assert!(sessions.get(&b.cookie_value, Some(admin())).is_some());
    }

    #[test]
    fn a_rotated_admin_token_ends_sessions() {
        let sessions = Sessions::default();
        let a = sessions.open(admin()).expect("open");
        assert!(sessions
            .get(&a.cookie_value, Some(Digest::of_key("another-token-0123")))
            .is_none());
        // Ended for good, even if the old token came back.
        assert!(sessions.get(&a.cookie_value, Some(admin())).is_none());
        let b = sessions.open(admin()).expect("open");
        assert!(sessions.get(&b.cookie_value, None).is_none());
    }

    #[test]
    fn new_keys_are_taken_once_and_only_by_their_account() {
        let sessions = Sessions::default();
        let s = sessions.open(admin()).expect("open");
        let key = ShownKey {
            key_id: "key_1".into(),
            kind: KeyKind::new(KeyType::Secret, Environment::Test),
            plaintext: "sk_test_secret".into(),
        };
        sessions.set_new_keys(&s.info.id, NewKeys::new("acct_a".into(), vec![key]));
        assert!(sessions.take_new_keys(&s.info.id, "acct_b").is_none());
        let taken = sessions
            .take_new_keys(&s.info.id, "acct_a")
            .expect("shown once");
        assert_eq!(taken.keys[0].plaintext, "sk_test_secret");
        assert!(sessions.take_new_keys(&s.info.id, "acct_a").is_none());
        sessions.set_notice(&s.info.id, Notice::Info("done".into()));
        assert_eq!(
            sessions.take_notice(&s.info.id),
            Some(Notice::Info("done".into()))
        );
        assert_eq!(sessions.take_notice(&s.info.id), None);
    }

    #[test]
    fn the_session_table_is_bounded() {
        let sessions = Sessions::default();
        for _ in 0..MAX_SESSIONS + 5 {
            sessions.open(admin()).expect("open");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_match("abc", "abc"));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("", "abc"));
    }
}
