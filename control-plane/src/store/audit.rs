//! The audit trail: who changed what, when, from where. Every change the store makes for a
//! person (an account or key created, rolled, revoked, disabled, enabled, renamed, imported;
//! a token rotated; a customer signing in or out, resetting a password, disabled) writes one
//! event in the same transaction as the change, so the trail holds exactly the changes that
//! happened. Events name ids and never a plaintext key or token.

use super::{Account, KeyRecord, Rolled};
use crate::clock::format_utc;
use keygate_core::config::RawLimit;

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// The HTTP API with the admin token (also the CLI's `--server` mode).
    AdminToken,
    /// The operator's web page, signed in with the admin token.
    Operator,
    /// A customer signed in to their own account.
    Customer,
    /// The CLI working on the database directly.
    Cli,
    /// `keygatectl serve` itself (setting up tokens on its first start).
    Server,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::AdminToken => "admin_token",
            ActorKind::Operator => "operator",
            ActorKind::Customer => "customer",
            ActorKind::Cli => "cli",
            ActorKind::Server => "server",
        }
    }

    pub fn parse(text: &str) -> Option<ActorKind> {
        [
            ActorKind::AdminToken,
            ActorKind::Operator,
            ActorKind::Customer,
            ActorKind::Cli,
            ActorKind::Server,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// Who made a change and from which client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    /// The customer's user id, the operator session's tag, or the OS user running the CLI.
    pub id: Option<String>,
    /// The client's address (IP), as the connection gave it; none for the CLI.
    pub client: Option<String>,
}

impl Actor {
    pub fn admin_token(client: std::net::IpAddr) -> Actor {
        Actor {
            kind: ActorKind::AdminToken,
            id: None,
            client: Some(client.to_string()),
        }
    }

    /// An operator's web session, named by a tag of its id (never the id itself).
    pub fn operator(session_tag: &str, client: std::net::IpAddr) -> Actor {
        Actor {
            kind: ActorKind::Operator,
            id: Some(session_tag.to_string()),
            client: Some(client.to_string()),
        }
    }

    pub fn customer(user_id: &str, client: std::net::IpAddr) -> Actor {
        Actor {
            kind: ActorKind::Customer,
            id: Some(user_id.to_string()),
            client: Some(client.to_string()),
        }
    }

    /// The CLI on the database, named by the OS user when the environment says who.
    pub fn cli() -> Actor {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
            .map(|user| user.chars().filter(|c| !c.is_control()).take(64).collect())
            .filter(|user: &String| !user.is_empty());
        Actor {
            kind: ActorKind::Cli,
            id: user,
            client: None,
        }
    }

    pub fn server() -> Actor {
        Actor {
            kind: ActorKind::Server,
            id: None,
            client: None,
        }
    }
}

/// What a change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    AccountCreated,
    AccountDisabled,
    AccountEnabled,
    AccountRateLimited,
    KeyCreated,
    KeyRolled,
    KeyRevoked,
    KeyDisabled,
    KeyEnabled,
    KeyRenamed,
    KeyRateLimited,
    KeysImported,
    AdminTokenSet,
    AdminTokenRotated,
    SyncTokenSet,
    SyncTokenRotated,
    /// A customer's sign-up was confirmed: their user, account and keys were created.
    UserSignedUp,
    UserSignedIn,
    UserSignedOut,
    UserSignedOutEverywhere,
    UserPasswordReset,
    UserDisabled,
    UserEnabled,
}

impl AuditAction {
    pub const ALL: [AuditAction; 23] = [
        AuditAction::AccountCreated,
        AuditAction::AccountDisabled,
        AuditAction::AccountEnabled,
        AuditAction::AccountRateLimited,
        AuditAction::KeyCreated,
        AuditAction::KeyRolled,
        AuditAction::KeyRevoked,
        AuditAction::KeyDisabled,
        AuditAction::KeyEnabled,
        AuditAction::KeyRenamed,
        AuditAction::KeyRateLimited,
        AuditAction::KeysImported,
        AuditAction::AdminTokenSet,
        AuditAction::AdminTokenRotated,
        AuditAction::SyncTokenSet,
        AuditAction::SyncTokenRotated,
        AuditAction::UserSignedUp,
        AuditAction::UserSignedIn,
        AuditAction::UserSignedOut,
        AuditAction::UserSignedOutEverywhere,
        AuditAction::UserPasswordReset,
        AuditAction::UserDisabled,
        AuditAction::UserEnabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::AccountCreated => "account.created",
            AuditAction::AccountDisabled => "account.disabled",
            AuditAction::AccountEnabled => "account.enabled",
            AuditAction::AccountRateLimited => "account.rate_limit_set",
            AuditAction::KeyCreated => "key.created",
            AuditAction::KeyRolled => "key.rolled",
            AuditAction::KeyRevoked => "key.revoked",
            AuditAction::KeyDisabled => "key.disabled",
            AuditAction::KeyEnabled => "key.enabled",
            AuditAction::KeyRenamed => "key.renamed",
            AuditAction::KeyRateLimited => "key.rate_limit_set",
            AuditAction::KeysImported => "key.imported",
            AuditAction::AdminTokenSet => "admin_token.set",
            AuditAction::AdminTokenRotated => "admin_token.rotated",
            AuditAction::SyncTokenSet => "sync_token.set",
            AuditAction::SyncTokenRotated => "sync_token.rotated",
            AuditAction::UserSignedUp => "user.signed_up",
            AuditAction::UserSignedIn => "user.signed_in",
            AuditAction::UserSignedOut => "user.signed_out",
            AuditAction::UserSignedOutEverywhere => "user.signed_out_everywhere",
            AuditAction::UserPasswordReset => "user.password_reset",
            AuditAction::UserDisabled => "user.disabled",
            AuditAction::UserEnabled => "user.enabled",
        }
    }

    pub fn parse(text: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// One event to write, in the transaction of its change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    pub action: AuditAction,
    pub account_id: Option<String>,
    /// The person the change was about (a customer), if any.
    pub user_id: Option<String>,
    pub key_ids: Vec<String>,
    /// A few words more: a grace period, a new name, how many keys.
    pub detail: Option<String>,
}

impl NewAuditEvent {
    pub fn new(action: AuditAction) -> NewAuditEvent {
        NewAuditEvent {
            action,
            account_id: None,
            user_id: None,
            key_ids: Vec::new(),
            detail: None,
        }
    }

    pub fn account(mut self, account_id: &str) -> NewAuditEvent {
        self.account_id = Some(account_id.to_string());
        self
    }

    pub fn user(mut self, user_id: &str) -> NewAuditEvent {
        self.user_id = Some(user_id.to_string());
        self
    }

    pub fn keys<'a>(mut self, key_ids: impl IntoIterator<Item = &'a str>) -> NewAuditEvent {
        self.key_ids.extend(key_ids.into_iter().map(String::from));
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> NewAuditEvent {
        self.detail = Some(detail.into());
        self
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing with each event (the listing's order and its paging cursor).
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    pub actor: Actor,
    pub action: AuditAction,
    pub account_id: Option<String>,
    pub user_id: Option<String>,
    pub key_ids: Vec<String>,
    pub detail: Option<String>,
}

/// Which events to list: newest first, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub account_id: Option<String>,
    /// Events at or after this time (unix seconds).
    pub since: Option<u64>,
    /// Events older than this one (`seq`), for the next page.
    pub before: Option<u64>,
    pub limit: usize,
}

/// The most events one listing answers.
pub const MAX_AUDIT_LIMIT: usize = 1000;

/// `secret test key sk_test_…a1B2 “iOS app”`: a key as an event's detail names it.
fn key_words(key: &KeyRecord) -> String {
    let mut words = format!("{} key {}", key.kind, key.hint);
    if let Some(name) = &key.name {
        words.push_str(&format!(" “{name}”"));
    }
    words
}

pub fn account_created(account: &Account, keys: &[KeyRecord]) -> NewAuditEvent {
    let mut detail = format!("{} keys", keys.len());
    if let Some(name) = &account.name {
        detail = format!("“{name}”, {detail}");
    }
    NewAuditEvent::new(AuditAction::AccountCreated)
        .account(&account.id)
        .keys(keys.iter().map(|k| k.key_id.as_str()))
        .detail(detail)
}

pub fn key_event(action: AuditAction, key: &KeyRecord) -> NewAuditEvent {
    NewAuditEvent::new(action)
        .account(&key.account_id)
        .keys([key.key_id.as_str()])
        .detail(key_words(key))
}

pub fn key_created(key: &KeyRecord) -> NewAuditEvent {
    let mut event = key_event(AuditAction::KeyCreated, key);
    if let Some(at) = key.expires_at {
        event.detail = Some(format!("{}; expires {}", key_words(key), format_utc(at)));
    }
    event
}

pub fn key_rolled(rolled: &Rolled, now: u64) -> NewAuditEvent {
    let old = &rolled.old;
    let fate = match old.expires_at {
        Some(at) if at > now => format!("the old key works until {}", format_utc(at)),
        _ => "the old key stopped at once".to_string(),
    };
    NewAuditEvent::new(AuditAction::KeyRolled)
        .account(&old.account_id)
        .keys([old.key_id.as_str(), rolled.new.key_id.as_str()])
        .detail(format!(
            "{} rolled to {}; {fate}",
            key_words(old),
            rolled.new.hint
        ))
}

pub fn key_renamed(key: &KeyRecord) -> NewAuditEvent {
    let mut event = key_event(AuditAction::KeyRenamed, key);
    if key.name.is_none() {
        event.detail = Some(format!("{}; name removed", key_words(key)));
    }
    event
}

/// A key's rate limit set, changed or removed; the detail says which limit.
pub fn key_rate_limit(key: &KeyRecord) -> NewAuditEvent {
    let mut event = key_event(AuditAction::KeyRateLimited, key);
    event.detail = Some(format!(
        "{}; {}",
        key_words(key),
        limit_words(key.rate_limit.as_ref())
    ));
    event
}

/// An account's default rate limit set, changed or removed; the detail says which limit.
pub fn account_rate_limit(account: &Account) -> NewAuditEvent {
    NewAuditEvent::new(AuditAction::AccountRateLimited)
        .account(&account.id)
        .detail(format!(
            "default {}",
            limit_words(account.rate_limit.as_ref())
        ))
}

/// `rate limit 10 per second, burst 20`, or `rate limit removed`.
fn limit_words(limit: Option<&RawLimit>) -> String {
    match limit {
        Some(l) => format!(
            "rate limit {} per {}, burst {}",
            l.requests,
            l.per.as_str(),
            l.burst.unwrap_or(l.requests)
        ),
        None => "rate limit removed".to_string(),
    }
}

/// Key ids as the store keeps them: one text, space-separated (ids hold no spaces).
pub fn join_key_ids(ids: &[String]) -> String {
    ids.join(" ")
}

pub fn split_key_ids(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// The actor tests make their changes as.
#[cfg(test)]
pub(crate) fn who() -> Actor {
    Actor {
        kind: ActorKind::Cli,
        id: Some("tester".into()),
        client: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_actor_kinds_read_back_as_written() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
        for kind in [
            ActorKind::AdminToken,
            ActorKind::Operator,
            ActorKind::Customer,
            ActorKind::Cli,
            ActorKind::Server,
        ] {
            assert_eq!(ActorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AuditAction::parse("key.eaten"), None);
    }

    #[test]
    fn key_ids_round_trip() {
        let ids = vec!["key_a".to_string(), "key_b".to_string()];
        assert_eq!(split_key_ids(&join_key_ids(&ids)), ids);
        assert!(split_key_ids("").is_empty());
    }
}
