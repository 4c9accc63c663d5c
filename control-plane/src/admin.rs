//! What the CLI's account and key commands act on: the database file directly, or a running
//! server through its admin API. Both answer the same views.

use crate::client::Client;
use crate::clock::now_unix;
use crate::error::CliError;
use crate::model::{
    AccountDetailView, AccountView, CreatedAccountView, ImportKeyRequest, IssuedKeyView, KeyView,
    RolledView,
};
use crate::service::{KeyChange, Service};
use keygate_core::key::KeyKind;
use keygate_sync_core::message::KeyMapMessage;

pub enum Admin {
    Local(Service),
    Remote(Client),
}

impl Admin {
    pub fn create_account(&self, name: Option<&str>) -> Result<CreatedAccountView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.create_account(name, now_unix())?.value),
            Admin::Remote(c) => Ok(c.create_account(name)?),
        }
    }

    pub fn accounts(&self) -> Result<Vec<AccountView>, CliError> {
        match self {
            Admin::Local(s) => Ok(s.accounts()?),
            Admin::Remote(c) => Ok(c.accounts()?.accounts),
        }
    }

    pub fn account(&self, account_id: &str) -> Result<AccountDetailView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.account(account_id, now_unix())?),
            Admin::Remote(c) => Ok(c.account(account_id)?),
        }
    }

    pub fn keys(&self, account_id: Option<&str>) -> Result<Vec<KeyView>, CliError> {
        match self {
            Admin::Local(s) => Ok(s.keys(account_id, now_unix())?),
            Admin::Remote(c) => Ok(c.keys(account_id)?.keys),
        }
    }

    pub fn create_key(&self, account_id: &str, kind: KeyKind) -> Result<IssuedKeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.create_key(account_id, kind, now_unix())?.value),
            Admin::Remote(c) => Ok(c.create_key(account_id, kind)?),
        }
    }

    pub fn import_key(&self, request: &ImportKeyRequest) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.import_key(request, now_unix())?.value),
            Admin::Remote(c) => Ok(c.import_key(request)?),
        }
    }

    pub fn roll_key(&self, key_id: &str, grace_seconds: u64) -> Result<RolledView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.roll_key(key_id, grace_seconds, now_unix())?.value),
            Admin::Remote(c) => Ok(c.roll_key(key_id, grace_seconds)?),
        }
    }

    pub fn change_key(&self, key_id: &str, change: KeyChange) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.change_key(key_id, change, now_unix())?.value),
            Admin::Remote(c) => Ok(c.change_key(key_id, change)?),
        }
    }

    /// The whole key map, expired keys purged first.
    pub fn key_map(&self) -> Result<KeyMapMessage, CliError> {
        match self {
            Admin::Local(s) => Ok(s.key_map(None, now_unix())?),
            Admin::Remote(c) => Ok(c.key_map()?),
        }
    }
}
