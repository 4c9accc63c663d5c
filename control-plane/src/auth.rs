//! Bearer tokens: the admin token (and the optional sync token) are held only as SHA-256
//! digests and compared in constant time.

use keygate_core::digest::Digest;
use std::path::{Path, PathBuf};

/// Environment variable that carries the admin token (`--admin-token-file` wins over it).
pub const ADMIN_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";
/// Short tokens are guessable; generated ones are far longer.
pub const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} is empty")]
    Empty { what: &'static str },
    #[error("the {what} is shorter than {MIN_TOKEN_CHARS} characters")]
    TooShort { what: &'static str },
    #[error("the {what} has characters outside visible ASCII")]
    BadCharacter { what: &'static str },
}

/// Reads a token from a file, ignoring surrounding whitespace (a trailing newline above all).
pub fn read_token_file(path: &Path, what: &'static str) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    validate_token(text.trim(), what)
}

/// The admin token from `--admin-token-file`, else from `KEYGATE_ADMIN_TOKEN`, else none.
pub fn admin_token_from(file: Option<&Path>) -> Result<Option<String>, TokenError> {
    const WHAT: &str = "admin token";
    if let Some(path) = file {
        return read_token_file(path, WHAT).map(Some);
    }
    match std::env::var(ADMIN_TOKEN_ENV) {
        Ok(value) => validate_token(value.trim(), WHAT).map(Some),
        Err(_) => Ok(None),
    }
}

pub fn validate_token(token: &str, what: &'static str) -> Result<String, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty { what });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::BadCharacter { what });
    }
    if token.len() < MIN_TOKEN_CHARS {
        return Err(TokenError::TooShort { what });
    }
    Ok(token.to_string())
}

/// The token of an `Authorization: Bearer <token>` header value, if it is one.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// True when `presented` hashes to `expected`. Hashing first and comparing digests in
/// constant time leaks neither the token's length nor where it differs.
pub fn token_matches(presented: &str, expected: &Digest) -> bool {
    Digest::of_key(presented).ct_eq(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_values_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn tokens_are_checked_by_digest() {
        let token = "a-long-enough-admin-token";
        let digest = Digest::of_key(token);
        assert!(token_matches(token, &digest));
        assert!(!token_matches("a-long-enough-admin-tokeN", &digest));
        assert!(!token_matches("", &digest));
    }

    #[test]
    fn weak_or_odd_tokens_are_refused() {
        assert!(matches!(
            validate_token("", "t"),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            validate_token("short", "t"),
            Err(TokenError::TooShort { .. })
        ));
        assert!(matches!(
            validate_token("with a space in it ok", "t"),
            Err(TokenError::BadCharacter { .. })
        ));
        assert!(validate_token("0123456789abcdef", "t").is_ok());
    }

    #[test]
    fn token_files_are_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdefXYZ\n").expect("write");
        assert_eq!(
            read_token_file(&path, "t").expect("read"),
            "0123456789abcdefXYZ"
        );
        assert!(matches!(
            read_token_file(&dir.path().join("missing"), "t"),
            Err(TokenError::Unreadable { .. })
        ));
    }
}
