//! The whole authentication decision for one request, from what the filter read off it.
//! Pure: the filter supplies the header values, method, path and a clock.

use crate::config::Settings;
use crate::credentials::{parse_authorization, CredentialError};
use crate::denial::Denial;
use crate::digest::Digest;
use crate::key::{check_key, KeyFormatError, KeyType};
use crate::keymap::{KeyEntry, KeyMap};
use crate::path::normalize;

/// What the filter read off a request.
pub struct Request<'a> {
    /// Every value of the `authorization` header, in order.
    pub authorization: &'a [&'a [u8]],
    pub method: &'a [u8],
    pub path: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'m> {
    Allow(&'m KeyEntry),
    Deny(Denial),
}

/// Decides one request. `now` (Unix seconds) is asked only when a key has an expiry, so the
/// common path makes no clock call.
pub fn decide<'m>(
    settings: &Settings,
    keys: &'m KeyMap,
    request: &Request<'_>,
    now: impl FnOnce() -> u64,
) -> Decision<'m> {
    match authenticate(settings, keys, request, now) {
        Ok(entry) => match authorize(settings, entry, request) {
            Ok(()) => Decision::Allow(entry),
            Err(denial) => Decision::Deny(denial),
        },
        Err(denial) => Decision::Deny(denial),
    }
}

/// Who is calling: a known, live key whose prefix and account agree with its entry.
fn authenticate<'m>(
    settings: &Settings,
    keys: &'m KeyMap,
    request: &Request<'_>,
    now: impl FnOnce() -> u64,
) -> Result<&'m KeyEntry, Denial> {
    let credential = parse_authorization(
        request.authorization,
        settings.schemes,
        settings.max_key_length,
    )
    .map_err(|e| match e {
        CredentialError::Missing => Denial::MissingCredentials,
        _ => Denial::MalformedCredentials,
    })?;
    let kind = check_key(&credential.key).map_err(|e| match e {
        KeyFormatError::UnknownPrefix | KeyFormatError::BadChecksum => Denial::InvalidApiKey,
        KeyFormatError::EmptyBody | KeyFormatError::BadCharacter => Denial::MalformedCredentials,
    })?;
    let entry = keys
        .get(&Digest::of_key(&credential.key))
        .ok_or(Denial::InvalidApiKey)?;
    // A prefix that disagrees with the entry, or a key of another account, is answered
    // exactly as an unknown key: nothing tells the caller the key exists.
    if entry.kind != kind {
        return Err(Denial::InvalidApiKey);
    }
    if let Some(account) = &credential.account_id {
        if account.as_bytes() != entry.account_id.as_bytes() {
            return Err(Denial::InvalidApiKey);
        }
    }
    if entry.disabled {
        return Err(Denial::DisabledApiKey);
    }
    if let Some(expires_at) = entry.expires_at {
        if now() >= expires_at {
            return Err(Denial::ExpiredApiKey);
        }
    }
    Ok(entry)
}

/// What the caller may do: the listener's environment, then the publishable-key rules.
fn authorize(settings: &Settings, entry: &KeyEntry, request: &Request<'_>) -> Result<(), Denial> {
    if let Some(environment) = settings.environment {
        if entry.kind.environment != environment {
            return Err(Denial::WrongEnvironment);
        }
    }
    match entry.kind.key_type {
        KeyType::Secret => Ok(()),
        KeyType::Publishable => match normalize(request.path) {
            Ok(path) if settings.policy.allows(request.method, &path) => Ok(()),
            _ => Err(Denial::InsufficientPermissions),
        },
    }
}
