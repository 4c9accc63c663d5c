//! Everything secret or unique comes from here: the OS's secure random source (`getrandom`).

use keygate_core::key::{issue_key, KeyKind};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Prefix of generated admin tokens: recognisable, and unlike any API key prefix.
pub const ADMIN_TOKEN_PREFIX: &str = "kgadm_";
/// Prefix of generated sync tokens.
pub const SYNC_TOKEN_PREFIX: &str = "kgsync_";

#[derive(Debug, thiserror::Error)]
#[error("the operating system's secure random source failed: {0}")]
pub struct RandomError(getrandom::Error);

pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(RandomError)?;
    Ok(bytes)
}

/// A new API key of `kind` in the format `keygate-core` owns (~190 bits of randomness).
pub fn new_api_key(kind: KeyKind) -> Result<String, RandomError> {
    Ok(issue_key(kind, &random_bytes::<32>()?))
}

/// `prefix` and `N` base62 characters. Rejection sampling keeps every character uniform.
fn random_base62<const N: usize>(prefix: &str) -> Result<String, RandomError> {
    let mut out = String::with_capacity(prefix.len() + N);
    out.push_str(prefix);
    let mut filled = 0;
    while filled < N {
        for b in random_bytes::<64>()? {
            // 248 = 4 × 62: bytes at or above it would favour the first characters.
            if b < 248 && filled < N {
                out.push(BASE62[(b % 62) as usize] as char);
                filled += 1;
            }
        }
    }
    Ok(out)
}

/// A new account id: `acct_` and 20 base62 characters (~119 bits; unique without a lookup).
pub fn new_account_id() -> Result<String, RandomError> {
    random_base62::<20>("acct_")
}

/// A new key id: `key_` and 20 base62 characters. Not secret: it is shown in logs and headers.
pub fn new_key_id() -> Result<String, RandomError> {
    random_base62::<20>("key_")
}

/// A new user id: `usr_` and 20 base62 characters.
pub fn new_user_id() -> Result<String, RandomError> {
    random_base62::<20>("usr_")
}

/// A new admin token: 40 base62 characters (~238 bits).
pub fn new_admin_token() -> Result<String, RandomError> {
    random_base62::<40>(ADMIN_TOKEN_PREFIX)
}

/// A new sync token: 40 base62 characters (~238 bits).
pub fn new_sync_token() -> Result<String, RandomError> {
    random_base62::<40>(SYNC_TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::key::{check_key, is_issued_key};

    #[test]
    fn api_keys_have_their_kind_and_a_valid_checksum() {
        for kind in KeyKind::ALL {
            let key = new_api_key(kind).expect("random");
            assert_eq!(check_key(&key), Ok(kind));
            assert!(is_issued_key(&key));
        }
    }

    #[test]
    fn ids_and_tokens_have_their_prefix_length_and_differ() {
        let a = new_account_id().expect("random");
        let b = new_account_id().expect("random");
        assert!(a.starts_with("acct_") && a.len() == 25 && a != b);
        let k = new_key_id().expect("random");
        assert!(k.starts_with("key_") && k.len() == 24);
        let t = new_admin_token().expect("random");
        assert!(t.starts_with(ADMIN_TOKEN_PREFIX) && t.len() == ADMIN_TOKEN_PREFIX.len() + 40);
        assert!(t
            .bytes()
            .skip(ADMIN_TOKEN_PREFIX.len())
            .all(|c| c.is_ascii_alphanumeric()));
    }
}
