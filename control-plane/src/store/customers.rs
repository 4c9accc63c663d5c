//! What the store keeps for customers who sign in to their own account: users, sign-ups
//! waiting for their email link, password resets and web sessions. Tokens and session ids are
//! known only by their SHA-256 digests; passwords only by their Argon2id hash.
//!
//! Both backends implement `CustomerStore`; each call is one transaction, like `Store`'s.

use super::audit::{AuditAction, NewAuditEvent};
use super::{Account, AccountWithKeys, Actor, KeyRecord, NewKey, StoreResult, Versioned};
use keygate_core::digest::Digest;

/// A person who signs in to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    pub account_id: String,
    /// Argon2id, PHC string form.
    pub password_hash: String,
    pub created_at: u64,
    pub password_changed_at: u64,
    pub disabled_at: Option<u64>,
}

/// A user to create when a sign-up is verified.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub account_id: String,
}

/// A sign-up waiting for its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signup {
    pub email: String,
    pub password_hash: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub used_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordReset {
    pub user_id: String,
    pub email: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub used_at: Option<u64>,
}

/// What an emailed link's token is worth now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState<T> {
    Unknown,
    Used,
    Expired,
    Valid(T),
}

impl<T> TokenState<T> {
    /// The state of a stored token at `now`.
    pub fn of(
        found: Option<T>,
        used_at: impl Fn(&T) -> Option<u64>,
        expires_at: impl Fn(&T) -> u64,
        now: u64,
    ) -> TokenState<T> {
        match found {
            None => TokenState::Unknown,
            Some(t) if used_at(&t).is_some() => TokenState::Used,
            Some(t) if now >= expires_at(&t) => TokenState::Expired,
            Some(t) => TokenState::Valid(t),
        }
    }
}

/// A live web session, with who it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    pub user: User,
    pub account: Account,
    pub created_at: u64,
    pub expires_at: u64,
}

/// A verified sign-up: the new user, and its account with its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: User,
    pub account: AccountWithKeys,
}

/// Why a sign-up or reset could not be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Used,
    Expired,
    /// A user with the sign-up's email exists (verified through another link).
    EmailTaken,
}

/// How long used and expired tokens are kept (to tell a second click "already used") before
/// they are pruned.
pub const TOKEN_KEEP_SECONDS: u64 = 7 * 86_400;

// The audit events of customers' changes, alike on both backends.

pub(super) fn user_event(action: AuditAction, user: &User) -> NewAuditEvent {
    NewAuditEvent::new(action)
        .account(&user.account_id)
        .user(&user.id)
}

pub(super) fn signed_up(user: &User, keys: &[KeyRecord]) -> NewAuditEvent {
    user_event(AuditAction::UserSignedUp, user)
        .keys(keys.iter().map(|k| k.key_id.as_str()))
        .detail(format!("{} keys", keys.len()))
}

pub(super) fn user_switched(user: &User, disabled: bool) -> NewAuditEvent {
    let action = if disabled {
        AuditAction::UserDisabled
    } else {
        AuditAction::UserEnabled
    };
    user_event(action, user)
}

pub(super) fn account_switched(account_id: &str, disabled: bool) -> NewAuditEvent {
    let action = if disabled {
        AuditAction::AccountDisabled
    } else {
        AuditAction::AccountEnabled
    };
    NewAuditEvent::new(action).account(account_id)
}

pub(super) fn password_reset(user: &User, sessions: u64) -> NewAuditEvent {
    user_event(AuditAction::UserPasswordReset, user).detail(sessions_ended(sessions))
}

pub(super) fn sessions_ended(count: u64) -> String {
    match count {
        1 => "1 session ended".to_string(),
        n => format!("{n} sessions ended"),
    }
}

/// Changes made for a person take the `Actor` and write their audit event in the same
/// transaction (sign-ups waiting for their link and reset links are not changes yet).
pub trait CustomerStore {
    /// Records a sign-up waiting for the link with token digest `token`; prunes sign-ups
    /// expired more than `TOKEN_KEEP_SECONDS` ago.
    fn add_signup(&self, token: &Digest, signup: &Signup) -> StoreResult<()>;
    fn signup(&self, token: &Digest) -> StoreResult<Option<Signup>>;
    /// Uses the sign-up's token (once, before it expires) to create the user, its account and
    /// the account's keys, in one transaction and one key-map version.
    fn complete_signup(
        &self,
        token: &Digest,
        user: &NewUser,
        account: &Account,
        keys: &[NewKey],
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Result<Versioned<Verified>, TokenRefusal>>;

    fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// All users, or one account's, oldest first.
    fn users(&self, account_id: Option<&str>) -> StoreResult<Vec<User>>;
    /// Disabling also ends the user's sessions.
    fn set_user_disabled(
        &self,
        user_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<User>;
    /// Disabling also ends the sessions of every user of the account.
    fn set_account_disabled(
        &self,
        account_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Account>;
    /// Replaces a password hash (same password, stronger parameters).
    fn set_password_hash(&self, user_id: &str, password_hash: &str) -> StoreResult<()>;

    fn add_password_reset(
        &self,
        token: &Digest,
        user_id: &str,
        now: u64,
        expires_at: u64,
    ) -> StoreResult<()>;
    fn password_reset(&self, token: &Digest) -> StoreResult<Option<PasswordReset>>;
    /// Uses a reset token (once, before it expires): sets the new password hash, ends every
    /// session of the user and spends the user's other reset tokens.
    fn complete_password_reset(
        &self,
        token: &Digest,
        password_hash: &str,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Result<User, TokenRefusal>>;

    /// A sign-in: opens a session for the user.
    fn add_session(
        &self,
        id: &Digest,
        user_id: &str,
        now: u64,
        expires_at: u64,
        actor: &Actor,
    ) -> StoreResult<()>;
    /// The session's owner while the session, its user and its account are live.
    fn session(&self, id: &Digest, now: u64) -> StoreResult<Option<SessionOwner>>;
    /// A sign-out: ends the session (audited when there was one).
    fn delete_session(&self, id: &Digest, now: u64, actor: &Actor) -> StoreResult<()>;
    /// Ends every session of a user; answers how many there were.
    fn delete_user_sessions(&self, user_id: &str, now: u64, actor: &Actor) -> StoreResult<u64>;
}
