//! What the CLI's account and key commands act on: the database file directly, or a running
//! server through its admin API. Both answer the same views. Changes on the database are
//! audited as the CLI's (with the OS user), changes through the server as the admin token's.

use crate::client::Client;
use crate::clock::now_unix;
use crate::error::CliError;
use crate::model::{
    AccountDetailView, AccountView, AuditListView, BulkImportRequest, BulkImportView,
    CreatedAccountView, ImportKeyRequest, IssuedKeyView, KeyView, RolledView,
};
use crate::service::{KeyChange, KeySpec, Service};
use crate::store::{Actor, AuditQuery};
use keygate_core::config::RawLimit;
use keygate_sync_core::message::KeyMapMessage;

pub enum Admin {
    Local(Service),
    Remote(Client),
}

impl Admin {
    pub fn create_account(&self, name: Option<&str>) -> Result<CreatedAccountView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.create_account(name, now_unix(), &Actor::cli())?.value),
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

    pub fn create_key(&self, account_id: &str, spec: &KeySpec) -> Result<IssuedKeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s
                .create_key(account_id, spec, now_unix(), &Actor::cli())?
                .value),
            Admin::Remote(c) => Ok(c.create_key(account_id, spec)?),
        }
    }

    pub fn import_key(&self, request: &ImportKeyRequest) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.import_key(request, now_unix(), &Actor::cli())?.value),
            Admin::Remote(c) => Ok(c.import_key(request)?),
        }
    }

    pub fn import_keys(&self, request: &BulkImportRequest) -> Result<BulkImportView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.import_keys(request, now_unix(), &Actor::cli())?),
            Admin::Remote(c) => Ok(c.import_keys(request)?),
        }
    }

    pub fn roll_key(
        &self,
        key_id: &str,
        grace_seconds: u64,
        name: Option<&str>,
    ) -> Result<RolledView, CliError> {
        match self {
            Admin::Local(s) => Ok(s
                .roll_key(key_id, grace_seconds, name, now_unix(), &Actor::cli())?
                .value),
            Admin::Remote(c) => Ok(c.roll_key(key_id, grace_seconds, name)?),
        }
    }

    pub fn change_key(&self, key_id: &str, change: KeyChange) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s
                .change_key(key_id, change, now_unix(), &Actor::cli())?
                .value),
            Admin::Remote(c) => Ok(c.change_key(key_id, change)?),
        }
    }

    pub fn set_rate_limit(
        &self,
        key_id: &str,
        limit: Option<&RawLimit>,
    ) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s
                .set_rate_limit(key_id, limit, now_unix(), &Actor::cli())?
                .value),
            Admin::Remote(c) => Ok(c.set_rate_limit(key_id, limit)?),
        }
    }

    pub fn set_account_rate_limit(
        &self,
        account_id: &str,
        limit: Option<&RawLimit>,
    ) -> Result<AccountView, CliError> {
        match self {
            Admin::Local(s) => Ok(s
                .set_account_rate_limit(account_id, limit, now_unix(), &Actor::cli())?
                .value),
            Admin::Remote(c) => Ok(c.set_account_rate_limit(account_id, limit)?),
        }
    }

    pub fn rename_key(&self, key_id: &str, name: Option<&str>) -> Result<KeyView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.rename_key(key_id, name, now_unix(), &Actor::cli())?),
            Admin::Remote(c) => Ok(c.rename_key(key_id, name)?),
        }
    }

    pub fn audit(&self, query: &AuditQuery) -> Result<AuditListView, CliError> {
        match self {
            Admin::Local(s) => Ok(s.audit(query)?),
            Admin::Remote(c) => Ok(c.audit(query)?),
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
