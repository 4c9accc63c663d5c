//! The JSON shapes of the HTTP API, written by the server, read by `--server` clients and
//! printed by `--json`. A plaintext key appears only in `IssuedKeyView`, at creation.

use crate::store::{Account, AuditEvent, KeyRecord};
use keygate_core::config::RawLimit;
use keygate_core::key::{Environment, KeyKind, KeyType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: String,
    pub name: Option<String>,
    pub created_at: u64,
    /// Set while the operator has disabled the account (its users cannot sign in).
    #[serde(default)]
    pub disabled_at: Option<u64>,
    /// The account's default rate limit (`null`: none): the key map gives it to each of
    /// its keys without a limit of their own.
    #[serde(default)]
    pub rate_limit: Option<RawLimit>,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
            created_at: a.created_at,
            disabled_at: a.disabled_at,
            rate_limit: a.rate_limit,
        }
    }
}

/// A stored key: its digest and hint, its state and its history. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key_id: String,
    pub account_id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    /// Prefix and last four characters, e.g. `sk_test_…a1B2`.
    pub hint: String,
    /// SHA-256 of the key, hex: what the filters hold.
    pub digest: String,
    /// `issued` or `imported`.
    pub origin: String,
    /// `active`, `expiring`, `disabled`, `expired` or `revoked`.
    pub status: String,
    pub created_at: u64,
    pub disabled_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub rolled_at: Option<u64>,
    pub replaced_by: Option<String>,
    pub revoked_at: Option<u64>,
    /// When the key left the key map.
    pub removed_at: Option<u64>,
    /// A name for people ("iOS app 2.3"); never in the key map.
    #[serde(default)]
    pub name: Option<String>,
    /// When the filters last saw the key (minute precision), as they reported it.
    #[serde(default)]
    pub last_used_at: Option<u64>,
    /// The key's rate limit, as the key map carries it (`null`: none).
    #[serde(default)]
    pub rate_limit: Option<RawLimit>,
}

impl KeyView {
    pub fn new(k: &KeyRecord, now: u64) -> KeyView {
        KeyView {
            key_id: k.key_id.clone(),
            account_id: k.account_id.clone(),
            key_type: k.kind.key_type,
            environment: k.kind.environment,
            hint: k.hint.clone(),
            digest: k.digest.to_hex(),
            origin: k.origin.as_str().to_string(),
            status: k.status(now).as_str().to_string(),
            created_at: k.created_at,
            disabled_at: k.disabled_at,
            expires_at: k.expires_at,
            rolled_at: k.rolled_at,
            replaced_by: k.replaced_by.clone(),
            revoked_at: k.revoked_at,
            removed_at: k.removed_at,
            name: k.name.clone(),
            last_used_at: None,
            rate_limit: k.rate_limit,
        }
    }

    /// The same view with the key's last use.
    pub fn used_at(mut self, last_used_at: Option<u64>) -> KeyView {
        self.last_used_at = last_used_at;
        self
    }

    pub fn kind(&self) -> KeyKind {
        KeyKind::new(self.key_type, self.environment)
    }
}

/// A key just created: the only answer that carries the plaintext, in `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKeyView {
    #[serde(flatten)]
    pub record: KeyView,
    #[serde(rename = "key")]
    pub plaintext: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAccountView {
    pub account: AccountView,
    pub keys: Vec<IssuedKeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDetailView {
    pub account: AccountView,
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountListView {
    pub accounts: Vec<AccountView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyListView {
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledView {
    pub new_key: IssuedKeyView,
    pub old_key: KeyView,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub account_id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key stops working this long after it is created (at most 366 days)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// …or at this time (unix seconds). Not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A key known only by its digest (issued elsewhere, or before the checksum existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKeyRequest {
    pub account_id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    /// SHA-256 of the key, 64 hex characters.
    pub digest: String,
    /// The key's hint (`key_hint`), when the importer had the plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the key stops working (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// Many keys known by their digests, checked whole and imported in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkImportRequest {
    /// Only report what would change.
    #[serde(default)]
    pub dry_run: bool,
    pub keys: Vec<BulkImportKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkImportKey {
    /// Where the key came from (a file's line), for messages; default: its place in `keys`,
    /// from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub account_id: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub environment: Environment,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedLine {
    pub line: u64,
    pub key_id: String,
}

/// What an import did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkImportView {
    pub dry_run: bool,
    /// Keys added (a dry run: keys that would be, with the ids they would get).
    pub added: Vec<ImportedLine>,
    /// Keys already stored as asked: left as they are.
    pub unchanged: Vec<ImportedLine>,
    /// The key-map version after the import.
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRequest {
    /// `{"requests": N, "per": "second"|"minute", "burst": B}`, or null to remove the limit;
    /// read field by field (`rate_limits::limit_from_json`) so a refusal names the field.
    pub rate_limit: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameKeyRequest {
    /// The new name; absent, null or empty: no name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorView {
    /// `admin_token`, `operator`, `customer`, `cli` or `server`.
    pub kind: String,
    /// The customer's user id, the operator session's tag, the OS user of the CLI.
    pub id: Option<String>,
    /// The client's IP address (none for the CLI on the database).
    pub client: Option<String>,
}

/// One change in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEventView {
    pub seq: u64,
    pub at: u64,
    pub actor: ActorView,
    /// e.g. `key.rolled`, `user.signed_in`.
    pub action: String,
    pub account_id: Option<String>,
    pub user_id: Option<String>,
    pub key_ids: Vec<String>,
    pub detail: Option<String>,
}

impl From<&AuditEvent> for AuditEventView {
    fn from(e: &AuditEvent) -> Self {
        AuditEventView {
            seq: e.seq,
            at: e.at,
            actor: ActorView {
                kind: e.actor.kind.as_str().to_string(),
                id: e.actor.id.clone(),
                client: e.actor.client.clone(),
            },
            action: e.action.as_str().to_string(),
            account_id: e.account_id.clone(),
            user_id: e.user_id.clone(),
            key_ids: e.key_ids.clone(),
            detail: e.detail.clone(),
        }
    }
}

/// A page of the audit trail, newest first; `next_before` asks for the page after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditListView {
    pub events: Vec<AuditEventView>,
    pub next_before: Option<u64>,
}

/// One day's requests with a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDayView {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub allowed: u64,
    pub refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsageView {
    pub key_id: String,
    pub last_used_at: Option<u64>,
    pub allowed: u64,
    pub refused: u64,
    /// The days with requests, oldest first.
    pub days: Vec<UsageDayView>,
}

/// An account's keys' use over the last `days` days (today included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountUsageView {
    pub account_id: String,
    pub days: u64,
    /// The first day counted, `YYYY-MM-DD`.
    pub from: String,
    pub keys: Vec<KeyUsageView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollKeyRequest {
    /// Grace period of the old key; absent or 0: it stops working at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
    /// The new key's name; absent: the old key's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The body of every error answer: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
