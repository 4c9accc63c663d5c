//! Customers: the people who sign up with an email and a password, verify the address by a
//! link, and then sign in to their own account's keys. This module holds what the pages do
//! with the store (sign-up, verification, password reset) and the mails they send; the pages
//! are in `web/customer/`, passwords in `password.rs`.
//!
//! Every link carries a random 256-bit token; the store keeps its SHA-256 only. A sign-up
//! link works once, for 24 hours; a reset link once, for 1 hour.

pub mod email;
pub mod password;

use crate::mail::Mail;
use crate::model::{AccountView, IssuedKeyView, KeyView};
use crate::random::{new_account_id, new_user_id, random_bytes, RandomError};
use crate::service::{issue, Changed, Service, ServiceResult};
use crate::store::customers::{NewUser, Signup, TokenRefusal, User};
use crate::store::{Account, Actor, Versioned};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use std::fmt::Write as _;

pub const SIGNUP_TTL_SECONDS: u64 = 24 * 3600;
pub const RESET_TTL_SECONDS: u64 = 3600;
/// How long a customer's session lasts from sign-in (and its cookie's Max-Age).
pub const SESSION_TTL_SECONDS: u64 = 8 * 3600;

/// A new link token: the text for the link (64 hex characters), and its digest for the store.
pub fn new_token() -> Result<(String, Digest), RandomError> {
    let mut token = String::with_capacity(64);
    for b in random_bytes::<32>()? {
        let _ = write!(token, "{b:02x}");
    }
    let digest = Digest::of_key(&token);
    Ok((token, digest))
}

/// The digest of a token as a link carries it, if it has the shape of one (64 lower-case
/// hex characters); anything else is refused before the store is asked.
pub fn parse_token(text: &str) -> Option<Digest> {
    let ok = text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| Digest::of_key(text))
}

/// What a sign-up led to. Both answer the same page: whether the address has an account is
/// told only to its mailbox.
pub enum SignupStarted {
    /// A new sign-up: the link's token, to mail.
    New { token: String },
    /// The address already has a user: mail its owner instead.
    Existing,
}

/// Records a sign-up (the password already hashed), unless the email has a user already.
pub fn start_signup(
    service: &Service,
    email: &str,
    password_hash: String,
    now: u64,
) -> ServiceResult<SignupStarted> {
    let store = service.store();
    if store.user_by_email(email)?.is_some() {
        return Ok(SignupStarted::Existing);
    }
    let (token, digest) = new_token()?;
    store.add_signup(
        &digest,
        &Signup {
            email: email.to_string(),
            password_hash,
            created_at: now,
            expires_at: now + SIGNUP_TTL_SECONDS,
            used_at: None,
        },
    )?;
    Ok(SignupStarted::New { token })
}

/// A verified sign-up: the user, the account, and its four keys with their plaintexts (to
/// be shown once).
pub struct Welcomed {
    pub user: User,
    pub account: AccountView,
    pub keys: Vec<IssuedKeyView>,
}

/// Spends a sign-up link: creates the user, its account and the account's four keys.
/// `client` is the address the link's form came from (for the audit trail).
pub fn complete_signup(
    service: &Service,
    token: &Digest,
    now: u64,
    client: std::net::IpAddr,
) -> ServiceResult<Result<Changed<Welcomed>, TokenRefusal>> {
    let account = Account {
        id: new_account_id()?,
        name: None,
        created_at: now,
        disabled_at: None,
        rate_limit: None,
    };
    let user = NewUser {
        id: new_user_id()?,
        account_id: account.id.clone(),
    };
    let issued = KeyKind::ALL
        .iter()
        .map(|&kind| issue(&account.id, kind))
        .collect::<ServiceResult<Vec<_>>>()?;
    let new_keys: Vec<_> = issued.iter().map(|(k, _)| k.clone()).collect();
    let done = service.store().complete_signup(
        token,
        &user,
        &account,
        &new_keys,
        now,
        &Actor::customer(&user.id, client),
    )?;
    let verified = match done {
        Ok(verified) => verified,
        Err(refused) => return Ok(Err(refused)),
    };
    let keys = verified
        .value
        .account
        .keys
        .iter()
        .zip(issued)
        .map(|(record, (_, plaintext))| IssuedKeyView {
            record: KeyView::new(record, now),
            plaintext,
        })
        .collect();
    Ok(Ok(Versioned {
        value: Welcomed {
            user: verified.value.user,
            account: AccountView::from(&verified.value.account.account),
            keys,
        },
        version: verified.version,
    }))
}

/// Records a password reset for the address's user, if it has one that may sign in; the
/// token to mail.
pub fn start_reset(service: &Service, email: &str, now: u64) -> ServiceResult<Option<String>> {
    let store = service.store();
    let Some(user) = store.user_by_email(email)? else {
        return Ok(None);
    };
    if user.disabled_at.is_some() || store.account(&user.account_id)?.disabled_at.is_some() {
        return Ok(None);
    }
    let (token, digest) = new_token()?;
    store.add_password_reset(&digest, &user.id, now, now + RESET_TTL_SECONDS)?;
    Ok(Some(token))
}

// ---------------------------------------------------------------------------------------
// The mails. Plain text; each says what the link does, how long it works, and what to do
// when the reader did not ask for it.

pub fn signup_mail(public_url: &str, email: &str, token: &str) -> Mail {
    let mut body = String::new();
    let _ = write!(
        body,
        "Hello,\n\nsomeone (we hope you) signed up for API keys with this address.\n\
         Open this link to confirm it and get your keys:\n\n  {public_url}/verify?token={token}\n\n\
         The link works once, for 24 hours. If you did not sign up, ignore this mail: \
         nothing happens without the link.\n"
    );
    Mail {
        to: email.to_string(),
        subject: "Confirm your email to get your API keys".into(),
        body,
    }
}

pub fn existing_account_mail(public_url: &str, email: &str) -> Mail {
    Mail {
        to: email.to_string(),
        subject: "You already have an account".into(),
        body: format!(
            "Hello,\n\nsomeone (we hope you) tried to sign up with this address, which already \
             has an account. Nothing was changed.\n\nSign in: {public_url}/login\n\
             Forgot your password? {public_url}/forgot\n"
        ),
    }
}

pub fn reset_mail(public_url: &str, email: &str, token: &str) -> Mail {
    Mail {
        to: email.to_string(),
        subject: "Reset your password".into(),
        body: format!(
            "Hello,\n\nsomeone (we hope you) asked to reset the password of the account with \
             this address. Open this link to choose a new one:\n\n  \
             {public_url}/reset?token={token}\n\nThe link works once, for 1 hour. Choosing a \
             new password signs you out everywhere. If you did not ask, ignore this mail: \
             your password stays as it is.\n"
        ),
    }
}

pub fn password_changed_mail(public_url: &str, email: &str) -> Mail {
    Mail {
        to: email.to_string(),
        subject: "Your password was changed".into(),
        body: format!(
            "Hello,\n\nthe password of your account was just changed, and every session was \
             signed out. If this was not you, reset it now: {public_url}/forgot\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_parsed_strictly() {
        let (a, digest) = new_token().expect("random");
        let (b, _) = new_token().expect("random");
        assert_ne!(a, b);
        assert_eq!(parse_token(&a), Some(digest));
        assert_eq!(parse_token(&a.to_uppercase()), None);
        assert_eq!(parse_token(&a[..63]), None);
        assert_eq!(parse_token(&format!("{a}0")), None);
        assert_eq!(parse_token("<script>"), None);
    }

    #[test]
    fn mails_carry_the_link_and_say_how_long_it_works() {
        let m = signup_mail("https://keys.example.com", "ann@example.com", "abc123");
        assert!(m
            .body
            .contains("https://keys.example.com/verify?token=abc123"));
        assert!(m.body.contains("24 hours"));
        let m = reset_mail("https://keys.example.com", "ann@example.com", "abc123");
        assert!(m.body.contains("/reset?token=abc123") && m.body.contains("1 hour"));
        let m = existing_account_mail("https://keys.example.com", "ann@example.com");
        assert!(m.body.contains("already has an account") && !m.body.contains("token"));
    }
}
