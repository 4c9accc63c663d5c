//! The JSON shapes of the HTTP API, written by the server, read by `--server` clients and
//! printed by `--json`. A plaintext key appears only in `IssuedKeyView`, at creation.

use crate::store::{Account, KeyRecord};
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
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            id: a.id.clone(),
            name: a.name.clone(),
            created_at: a.created_at,
            disabled_at: a.disabled_at,
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
        }
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollKeyRequest {
    /// Grace period of the old key; absent or 0: it stops working at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_seconds: Option<u64>,
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
