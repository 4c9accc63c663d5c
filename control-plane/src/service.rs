//! The key lifecycle over any `Store`: issue plaintext keys, hand the store only their digests
//! and hints, and answer the views that show each plaintext exactly once.
//!
//! Both the HTTP API and the CLI's local mode go through here, so they validate alike.

use crate::duration::MAX_SECONDS;
use crate::model::{
    AccountDetailView, AccountView, CreatedAccountView, ImportKeyRequest, IssuedKeyView, KeyView,
    RolledView,
};
use crate::random::{new_account_id, new_api_key, new_key_id, RandomError};
use crate::store::import::ImportProblem;
use crate::store::rules::check_rate_limit;
use crate::store::{Account, Actor, KeyOrigin, NewKey, Store, StoreError, Versioned};
use keygate_core::config::RawLimit;
use keygate_core::digest::Digest;
use keygate_core::key::{is_issued_key, key_hint, KeyKind};
use keygate_sync_core::message::KeyMapMessage;
use std::sync::Arc;

/// The longest account or key name accepted.
pub const MAX_NAME_CHARS: usize = 100;
/// The latest expiry a key may be given: the end of year 9999 (what RFC 3339 can write).
pub const MAX_EXPIRES_AT: u64 = 253_402_300_799;
/// Problems an import's refusal lists at most in its message (all are in the error).
const PROBLEMS_SHOWN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong (400): the message says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// An import with problems: nothing was written. Each names its line and field.
    #[error("{}", describe_problems(.0))]
    ImportRefused(Vec<ImportProblem>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// A change's answer and the key-map version it produced.
pub type Changed<T> = Versioned<T>;

/// The one-word changes of a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Revoke,
    Disable,
    Enable,
}

impl KeyChange {
    /// The verb, as in the API path `/v1/keys/{key_id}/<action>`.
    pub fn action(self) -> &'static str {
        match self {
            KeyChange::Revoke => "revoke",
            KeyChange::Disable => "disable",
            KeyChange::Enable => "enable",
        }
    }

    pub fn past_tense(self) -> &'static str {
        match self {
            KeyChange::Revoke => "revoked",
            KeyChange::Disable => "disabled",
            KeyChange::Enable => "enabled",
        }
    }
}

/// The import's problems as one message: how many, then the first few, one a line.
pub fn describe_problems(problems: &[ImportProblem]) -> String {
    let mut text = format!(
        "the import was refused, nothing was written: {} {}",
        problems.len(),
        if problems.len() == 1 {
            "problem"
        } else {
            "problems"
        }
    );
    for problem in problems.iter().take(PROBLEMS_SHOWN) {
        text.push_str(&format!("\n  {problem}"));
    }
    if problems.len() > PROBLEMS_SHOWN {
        text.push_str(&format!(
            "\n  … and {} more",
            problems.len() - PROBLEMS_SHOWN
        ));
    }
    text
}

/// What a new key is to be: its kind, and optionally a name and an expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub kind: KeyKind,
    pub name: Option<String>,
    pub expires_at: Option<u64>,
}

#[derive(Clone)]
pub struct Service {
    store: Arc<dyn Store>,
}

impl Service {
    pub fn new(store: Arc<dyn Store>) -> Service {
        Service { store }
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Creates an account and its four keys (secret and publishable, test and production).
    pub fn create_account(
        &self,
        name: Option<&str>,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<CreatedAccountView>> {
        let account = Account {
            id: new_account_id()?,
            name: name.map(validate_account_name).transpose()?,
            created_at: now,
            disabled_at: None,
            rate_limit: None,
        };
        let issued = KeyKind::ALL
            .iter()
            .map(|&kind| issue(&account.id, kind))
            .collect::<ServiceResult<Vec<_>>>()?;
        let new_keys: Vec<NewKey> = issued.iter().map(|(k, _)| k.clone()).collect();
        let created = self.store.create_account(&account, &new_keys, actor)?;
        let keys = created
            .value
            .keys
            .iter()
            .zip(issued)
            .map(|(record, (_, plaintext))| IssuedKeyView {
                record: KeyView::new(record, now),
                plaintext,
            })
            .collect();
        Ok(Versioned {
            value: CreatedAccountView {
                account: AccountView::from(&created.value.account),
                keys,
            },
            version: created.version,
        })
    }

    pub fn accounts(&self) -> ServiceResult<Vec<AccountView>> {
        Ok(self
            .store
            .accounts()?
            .iter()
            .map(AccountView::from)
            .collect())
    }

    pub fn account(&self, account_id: &str, now: u64) -> ServiceResult<AccountDetailView> {
        let account = self.store.account(account_id)?;
        let keys = self.keys(Some(account_id), now)?;
        Ok(AccountDetailView {
            account: AccountView::from(&account),
            keys,
        })
    }

    /// Keys with their names and when each was last used.
    pub fn keys(&self, account_id: Option<&str>, now: u64) -> ServiceResult<Vec<KeyView>> {
        let keys = self.store.keys(account_id)?;
        let last_used = self.store.last_used(account_id)?;
        Ok(keys
            .iter()
            .map(|k| KeyView::new(k, now).used_at(last_used.get(&k.key_id).copied()))
            .collect())
    }

    /// Issues a key; its plaintext is in the answer only.
    pub fn create_key(
        &self,
        account_id: &str,
        spec: &KeySpec,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<IssuedKeyView>> {
        let (mut new_key, plaintext) = issue(account_id, spec.kind)?;
        new_key.name = spec.name.as_deref().map(validate_key_name).transpose()?;
        new_key.expires_at = spec
            .expires_at
            .map(|at| validate_expiry(at, now))
            .transpose()?;
        let added = self.store.add_key(&new_key, now, actor)?;
        Ok(Versioned {
            value: IssuedKeyView {
                record: KeyView::new(&added.value, now),
                plaintext,
            },
            version: added.version,
        })
    }

    /// Stores a key known only by its digest; no plaintext is ever shown for it.
    pub fn import_key(
        &self,
        request: &ImportKeyRequest,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<KeyView>> {
        let kind = KeyKind::new(request.key_type, request.environment);
        let digest = parse_digest(&request.digest)?;
        let hint = match &request.hint {
            Some(hint) => validate_hint(hint, kind)?,
            None => format!("{}…????", kind.prefix()),
        };
        let new_key = NewKey {
            key_id: new_key_id()?,
            account_id: request.account_id.clone(),
            kind,
            digest,
            hint,
            origin: KeyOrigin::Imported,
            name: request.name.as_deref().map(validate_key_name).transpose()?,
            expires_at: request
                .expires_at
                .map(|at| validate_expiry(at, now))
                .transpose()?,
        };
        let added = self.store.add_key(&new_key, now, actor)?;
        Ok(Versioned {
            value: KeyView::new(&added.value, now),
            version: added.version,
        })
    }

    /// Issues a new key of the same kind; the old one stops working after `grace_seconds`,
    /// at least and less than a second more (at once for 0). The new key takes `name`, or
    /// the old key's name when none is given, and any expiry the old key was created with.
    pub fn roll_key(
        &self,
        key_id: &str,
        grace_seconds: u64,
        name: Option<&str>,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<RolledView>> {
        if grace_seconds > MAX_SECONDS {
            return Err(ServiceError::Invalid(format!(
                "expires_in_seconds must be at most {MAX_SECONDS} (366 days)"
            )));
        }
        let name = name.map(validate_key_name).transpose()?;
        let old = self.store.key(key_id)?;
        let (mut replacement, plaintext) = issue(&old.account_id, old.kind)?;
        replacement.name = name.or_else(|| old.name.clone());
        replacement.expires_at = old.expires_at;
        // Expiries are whole unix seconds and `now` is truncated, so `now + grace` could end
        // the old key up to a second early (a 1 s grace could last 10 ms): one more second
        // makes the grace at least what was asked.
        let grace = if grace_seconds == 0 {
            0
        } else {
            grace_seconds + 1
        };
        let rolled = self
            .store
            .roll_key(key_id, &replacement, grace, now, actor)?;
        Ok(Versioned {
            value: RolledView {
                new_key: IssuedKeyView {
                    record: KeyView::new(&rolled.value.new, now),
                    plaintext,
                },
                old_key: KeyView::new(&rolled.value.old, now),
            },
            version: rolled.version,
        })
    }

    /// Revokes, disables or enables a key. Asking for the state a key is already in
    /// changes nothing.
    pub fn change_key(
        &self,
        key_id: &str,
        change: KeyChange,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<KeyView>> {
        let store = &self.store;
        let changed = match change {
            KeyChange::Revoke => store.revoke_key(key_id, now, actor)?,
            KeyChange::Disable => store.set_key_disabled(key_id, true, now, actor)?,
            KeyChange::Enable => store.set_key_disabled(key_id, false, now, actor)?,
        };
        Ok(view_of(changed, now))
    }

    /// Sets a key's rate limit, or removes it (`None`); a new key-map version ships it.
    pub fn set_rate_limit(
        &self,
        key_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<KeyView>> {
        if let Some(limit) = limit {
            check_rate_limit(limit).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        Ok(view_of(
            self.store.set_rate_limit(key_id, limit, now, actor)?,
            now,
        ))
    }

    /// Sets an account's default rate limit, or removes it (`None`); a new key-map version
    /// ships it to the account's keys without a limit of their own.
    pub fn set_account_rate_limit(
        &self,
        account_id: &str,
        limit: Option<&RawLimit>,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<Changed<AccountView>> {
        if let Some(limit) = limit {
            check_rate_limit(limit).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        }
        let changed = self
            .store
            .set_account_rate_limit(account_id, limit, now, actor)?;
        Ok(Versioned {
            value: AccountView::from(&changed.value),
            version: changed.version,
        })
    }

    /// Names a key, or removes its name (`None`, or only spaces).
    pub fn rename_key(
        &self,
        key_id: &str,
        name: Option<&str>,
        now: u64,
        actor: &Actor,
    ) -> ServiceResult<KeyView> {
        let name = name
            .filter(|n| !n.trim().is_empty())
            .map(validate_key_name)
            .transpose()?;
        let renamed = self.store.rename_key(key_id, name.as_deref(), now, actor)?;
        Ok(KeyView::new(&renamed, now))
    }

    pub fn key_map(&self, since: Option<u64>, now: u64) -> ServiceResult<KeyMapMessage> {
        Ok(self.store.key_map(since, now)?)
    }
}

fn view_of(changed: Versioned<crate::store::KeyRecord>, now: u64) -> Changed<KeyView> {
    Versioned {
        value: KeyView::new(&changed.value, now),
        version: changed.version,
    }
}

/// A fresh key of `kind` for `account_id`: what the store keeps, and the plaintext to show.
/// No name, no expiry.
pub(crate) fn issue(account_id: &str, kind: KeyKind) -> ServiceResult<(NewKey, String)> {
    let plaintext = new_api_key(kind)?;
    let new_key = NewKey {
        key_id: new_key_id()?,
        account_id: account_id.to_string(),
        kind,
        digest: Digest::of_key(&plaintext),
        hint: key_hint(&plaintext),
        origin: KeyOrigin::Issued,
        name: None,
        expires_at: None,
    };
    Ok((new_key, plaintext))
}

fn validate_account_name(name: &str) -> ServiceResult<String> {
    check_name(name, "the account name").map_err(ServiceError::Invalid)
}

/// A key's name: trimmed, 1 to 100 characters, no control characters, not a key.
pub fn validate_key_name(name: &str) -> ServiceResult<String> {
    check_name(name, "the key name").map_err(ServiceError::Invalid)
}

/// A name for people, or what is wrong with it (never quoting it: it may be a pasted key).
pub fn check_name(name: &str, what: &str) -> Result<String, String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(format!("{what} is longer than {MAX_NAME_CHARS} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(format!("{what} has a control character"));
    }
    if is_issued_key(trimmed) || trimmed.split_whitespace().any(is_issued_key) {
        return Err(format!(
            "{what} looks like an API key; keys are never stored in plaintext"
        ));
    }
    Ok(trimmed.to_string())
}

/// An expiry must be in the future (a key created expired would never work).
pub fn validate_expiry(expires_at: u64, now: u64) -> ServiceResult<u64> {
    check_expiry(expires_at, now).map_err(ServiceError::Invalid)
}

pub fn check_expiry(expires_at: u64, now: u64) -> Result<u64, String> {
    if expires_at <= now {
        return Err("the expiry is not in the future".into());
    }
    if expires_at > MAX_EXPIRES_AT {
        return Err("the expiry is after the year 9999".into());
    }
    Ok(expires_at)
}

/// Parses a digest, refusing a plaintext key pasted in its place.
pub fn parse_digest(text: &str) -> ServiceResult<Digest> {
    let text = text.trim();
    if KeyKind::split(text).is_some() {
        return Err(ServiceError::Invalid(
            "digest looks like a plaintext API key; give its SHA-256 (see `keygatectl hash`)"
                .into(),
        ));
    }
    Digest::from_hex(text).map_err(|e| ServiceError::Invalid(format!("digest: {e}")))
}

/// A hint must be what `key_hint` makes for a key of `kind`: prefix, `…`, at most four
/// visible characters. Anything longer could leak the key.
fn validate_hint(hint: &str, kind: KeyKind) -> ServiceResult<String> {
    let tail = hint
        .strip_prefix(kind.prefix())
        .and_then(|rest| rest.strip_prefix('…'));
    match tail {
        Some(tail) if tail.len() <= 4 && tail.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(hint.to_string())
        }
        _ => Err(ServiceError::Invalid(format!(
            "hint must be the key's prefix {}, '…' and at most its last 4 characters",
            kind.prefix()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit::who;
    use crate::store::SqliteStore;
    use keygate_core::key::{check_key, Environment, KeyType};

    fn service() -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("keygate.db")).expect("open");
        (dir, Service::new(Arc::new(store)))
    }

    #[test]
    fn an_account_comes_with_four_keys_shown_once() {
        let (_dir, service) = service();
        let created = service
            .create_account(Some(" Acme "), 100, &who())
            .expect("create");
        assert_eq!(created.value.account.name.as_deref(), Some("Acme"));
        let kinds: Vec<KeyKind> = created.value.keys.iter().map(|k| k.record.kind()).collect();
        assert_eq!(kinds, KeyKind::ALL.to_vec());
        for key in &created.value.keys {
            assert_eq!(check_key(&key.plaintext), Ok(key.record.kind()));
            assert_eq!(key.record.digest, Digest::of_key(&key.plaintext).to_hex());
            assert_eq!(key.record.hint, key_hint(&key.plaintext));
        }
        // Listing shows digests and hints, never a plaintext.
        let listed = service
            .keys(Some(&created.value.account.id), 100)
            .expect("list");
        let listed_json = serde_json::to_string(&listed).expect("json");
        for key in &created.value.keys {
            assert!(!listed_json.contains(&key.plaintext));
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let (_dir, service) = service();
        for name in ["", "   ", "a\u{7}b", &"x".repeat(101)] {
            assert!(matches!(
                service.create_account(Some(name), 1, &who()),
                Err(ServiceError::Invalid(_))
            ));
        }
        let account = service
            .create_account(None, 1, &who())
            .expect("create")
            .value;
        let key = &account.keys[0].plaintext;
        assert!(matches!(
            service.create_account(Some(key), 1, &who()),
            Err(ServiceError::Invalid(_))
        ));
        let import = |digest: &str, hint: Option<&str>| ImportKeyRequest {
            account_id: account.account.id.clone(),
            key_type: KeyType::Secret,
            environment: Environment::Test,
            digest: digest.into(),
            hint: hint.map(String::from),
            name: None,
            expires_at: None,
        };
        assert!(matches!(
            service.import_key(&import(key, None), 1, &who()),
            Err(ServiceError::Invalid(_))
        ));
        assert!(matches!(
            service.import_key(&import("abc", None), 1, &who()),
            Err(ServiceError::Invalid(_))
        ));
        let digest = Digest::of_key("sk_test_legacy1234").to_hex();
        assert!(matches!(
            service.import_key(&import(&digest, Some("sk_test_…legacy1234")), 1, &who()),
            Err(ServiceError::Invalid(_))
        ));
        assert!(matches!(
            service.roll_key(
                &account.keys[0].record.key_id,
                MAX_SECONDS + 1,
                None,
                1,
                &who()
            ),
            Err(ServiceError::Invalid(_))
        ));
    }

    #[test]
    fn imported_keys_join_the_map_by_digest() {
        let (_dir, service) = service();
        let account = service
            .create_account(None, 1, &who())
            .expect("create")
            .value
            .account;
        let legacy = "sk_test_4f6b2a0c9d8e7f6a5b4c3d2e1f0a9b8c";
        let request = ImportKeyRequest {
            account_id: account.id.clone(),
            key_type: KeyType::Secret,
            environment: Environment::Test,
            digest: Digest::of_key(legacy).to_hex(),
            hint: Some(key_hint(legacy)),
            name: None,
            expires_at: None,
        };
        let imported = service
            .import_key(&request, 2, &who())
            .expect("import")
            .value;
        assert_eq!(imported.origin, "imported");
        assert_eq!(imported.hint, "sk_test_…9b8c");
        let KeyMapMessage::Full { keys, .. } = service.key_map(None, 2).expect("map") else {
            panic!("expected a full map");
        };
        assert!(keys.iter().any(|k| k.digest == request.digest));
        // The same digest twice is a conflict, not a second key.
        assert!(matches!(
            service.import_key(&request, 3, &who()),
            Err(ServiceError::Store(StoreError::DuplicateDigest(_)))
        ));
    }
}
