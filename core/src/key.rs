//! The API-key format: `sk_test_…`, `pk_test_…`, `sk_…`, `pk_…`.
//!
//! A key issued by keygate is `<prefix><random><checksum>`: 32 base62 characters of
//! randomness (about 190 bits) and 6 base62 characters of CRC-32 over prefix and random part,
//! as GitHub's tokens do, so a typo or garbage is refused before any lookup. Keys of any other
//! body shape (issued before the checksum existed, or imported) carry no checksum and are
//! only looked up by digest.

use crate::prelude::*;

use core::fmt;
use serde::{Deserialize, Serialize};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Secret,
    Publishable,
}

/// Which environment a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Test,
    Production,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Secret => "secret",
            KeyType::Publishable => "publishable",
        }
    }
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }
}

/// The four kinds of key, by prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyKind {
    pub key_type: KeyType,
    pub environment: Environment,
}

impl KeyKind {
    pub const ALL: [KeyKind; 4] = [
        KeyKind::new(KeyType::Secret, Environment::Test),
        KeyKind::new(KeyType::Publishable, Environment::Test),
        KeyKind::new(KeyType::Secret, Environment::Production),
        KeyKind::new(KeyType::Publishable, Environment::Production),
    ];

    pub const fn new(key_type: KeyType, environment: Environment) -> Self {
        KeyKind {
            key_type,
            environment,
        }
    }

    pub fn prefix(self) -> &'static str {
        match (self.key_type, self.environment) {
            (KeyType::Secret, Environment::Test) => "sk_test_",
            (KeyType::Publishable, Environment::Test) => "pk_test_",
            (KeyType::Secret, Environment::Production) => "sk_",
            (KeyType::Publishable, Environment::Production) => "pk_",
        }
    }

    /// The kind a key's prefix names, and the body after it. The test prefixes are tried
    /// first: `sk_test_x` is a test key, never a production key with body `test_x`.
    pub fn split(key: &str) -> Option<(KeyKind, &str)> {
        const ORDER: [usize; 4] = [0, 1, 2, 3];
        ORDER.iter().find_map(|&i| {
            let kind = KeyKind::ALL[i];
            key.strip_prefix(kind.prefix()).map(|body| (kind, body))
        })
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.key_type.as_str(),
            self.environment.as_str()
        )
    }
}

/// Characters of randomness in an issued key's body.
pub const RANDOM_LEN: usize = 32;
/// Characters of checksum at the end of an issued key's body.
pub const CHECKSUM_LEN: usize = 6;
/// Body length of a key issued with a checksum.
pub const BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented key is refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormatError {
    /// None of the four prefixes.
    UnknownPrefix,
    /// Nothing after the prefix.
    EmptyBody,
    /// A character outside the visible ASCII range.
    BadCharacter,
    /// The shape of an issued key with a checksum that does not match.
    BadChecksum,
}

impl fmt::Display for KeyFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyFormatError::UnknownPrefix => {
                "the key has none of the prefixes sk_test_, pk_test_, sk_, pk_"
            }
            KeyFormatError::EmptyBody => "the key has nothing after its prefix",
            KeyFormatError::BadCharacter => "the key has a character outside visible ASCII",
            KeyFormatError::BadChecksum => "the key's checksum does not match",
        })
    }
}

/// Checks a presented key's prefix, characters and (for issued-shape keys) checksum, and
/// returns its kind. Cheap: no hashing, no lookup.
pub fn check_key(key: &str) -> Result<KeyKind, KeyFormatError> {
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyFormatError::BadCharacter);
    }
    let (kind, body) = KeyKind::split(key).ok_or(KeyFormatError::UnknownPrefix)?;
    if body.is_empty() {
        return Err(KeyFormatError::EmptyBody);
    }
    if has_checksum_shape(body) {
        // Checked splits and gets, here and below: an unchecked one would bring the slice
        // panic's formatting (about 4 KB) into the filter module.
        let (signed, checksum) = key
            .as_bytes()
            .split_at_checked(key.len() - CHECKSUM_LEN)
            .ok_or(KeyFormatError::BadChecksum)?;
        if encode_checksum(crc32(signed)).as_slice() != checksum {
            return Err(KeyFormatError::BadChecksum);
        }
    }
    Ok(kind)
}

/// True when a key body has the shape keygate issues: exactly `BODY_LEN` base62 characters.
fn has_checksum_shape(body: &str) -> bool {
    body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// True when `s` is a key keygate issued (valid prefix and checksum). Used to refuse
/// plaintext keys pasted where a digest or a name belongs.
pub fn is_issued_key(s: &str) -> bool {
    match KeyKind::split(s) {
        Some((_, body)) if has_checksum_shape(body) => check_key(s).is_ok(),
        _ => false,
    }
}

/// Builds a new key of `kind` from `random` bytes (at least 24 of them, from the OS's secure
/// source): the caller owns randomness so this stays pure and testable.
pub fn issue_key(kind: KeyKind, random: &[u8; 32]) -> String {
    let mut key = String::with_capacity(kind.prefix().len() + BODY_LEN);
    key.push_str(kind.prefix());
    // 32 bytes → 32 base62 characters: each byte picks one character; the slight modulo bias
    // (256 mod 62) still leaves well over 128 bits of entropy (32 × log2(62) ≈ 190 bits
    // before bias, ≥ 180 after).
    for &b in random.iter().take(RANDOM_LEN) {
        key.push(BASE62[(b % 62) as usize] as char);
    }
    let checksum = encode_checksum(crc32(key.as_bytes()));
    for c in checksum {
        key.push(c as char);
    }
    key
}

/// The display hint for a key: its prefix and last four characters, never more.
pub fn key_hint(key: &str) -> String {
    let prefix = KeyKind::split(key).map(|(k, _)| k.prefix()).unwrap_or("");
    let tail_start = key
        .char_indices()
        .rev()
        .nth(3)
        .map(|(i, _)| i)
        .unwrap_or(0)
        .max(prefix.len());
    format!("{prefix}…{}", key.get(tail_start..).unwrap_or_default())
}

/// Replaces every token in `text` that starts like a key (`sk_`, `pk_`) with its hint, so
/// that a message quoting what it was given (serde's errors do) never carries a key.
pub fn redact_keys(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, from)) = rest
        .find(['s', 'p'])
        .and_then(|at| rest.split_at_checked(at))
    {
        out.push_str(before);
        let starts_token = !out.chars().next_back().is_some_and(is_token_char);
        if starts_token && (from.starts_with("sk_") || from.starts_with("pk_")) {
            let end = from.find(|c: char| !is_token_char(c)).unwrap_or(from.len());
            let (token, after) = from.split_at_checked(end).unwrap_or((from, ""));
            out.push_str(&key_hint(token));
            rest = after;
        } else {
            let mut chars = from.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    out.push_str(rest);
    out
}

fn encode_checksum(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// CRC-32 (IEEE), the checksum GitHub's tokens use. A byte-at-a-time table (1 KB): faster
/// tables cost 16 KB of the filter module, and the filter only checks a key's checksum when
/// its digest cache misses (a key not seen before), not on every request.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

pub fn crc32(data: &[u8]) -> u32 {
    CRC32.checksum(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: KeyKind) -> String {
        let mut random = [0u8; 32];
        for (i, b) in random.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        issue_key(kind, &random)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn issued_keys_have_their_prefix_and_pass_the_check() {
        for kind in KeyKind::ALL {
            let key = sample(kind);
            assert!(key.starts_with(kind.prefix()), "{key}");
            assert_eq!(key.len(), kind.prefix().len() + BODY_LEN);
            assert_eq!(check_key(&key), Ok(kind));
            assert!(is_issued_key(&key));
        }
    }

    #[test]
    fn test_prefixes_win_over_production_prefixes() {
        let (kind, body) = KeyKind::split("sk_test_abc").expect("prefix");
        assert_eq!(kind.environment, Environment::Test);
        assert_eq!(body, "abc");
        let (kind, _) = KeyKind::split("pk_abc").expect("prefix");
        assert_eq!(
            kind,
            KeyKind::new(KeyType::Publishable, Environment::Production)
        );
    }

    #[test]
    fn a_typo_in_an_issued_key_fails_the_checksum() {
        let key = sample(KeyKind::ALL[0]);
        let mut bytes = key.into_bytes();
        let i = 12;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).expect("ascii");
        assert_eq!(check_key(&typo), Err(KeyFormatError::BadChecksum));
        assert!(!is_issued_key(&typo));
    }

    #[test]
    fn legacy_keys_pass_without_checksum() {
        assert!(check_key("sk_4f6b2a0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a").is_ok());
        assert!(check_key("pk_test_short").is_ok());
        assert!(!is_issued_key("pk_test_short"));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(check_key("xk_abc"), Err(KeyFormatError::UnknownPrefix));
        assert_eq!(check_key("sk_"), Err(KeyFormatError::EmptyBody));
        assert_eq!(check_key("sk_test_"), Err(KeyFormatError::EmptyBody));
        assert_eq!(check_key("sk_a b"), Err(KeyFormatError::BadCharacter));
        assert_eq!(check_key("sk_a\u{7f}"), Err(KeyFormatError::BadCharacter));
        assert_eq!(check_key("sk_é"), Err(KeyFormatError::BadCharacter));
    }

    #[test]
    fn messages_never_carry_a_key() {
        let key = sample(KeyKind::ALL[0]);
        let message = format!("unknown field `{key}`, near \"{key}\" and sk_x; ask_y psk_z");
        let redacted = redact_keys(&message);
        assert!(!redacted.contains(&key), "{redacted}");
        assert!(redacted.contains(&key_hint(&key)));
        assert!(redacted.ends_with("sk_…x; ask_y psk_z"), "{redacted}");
        assert_eq!(redact_keys("nothing here"), "nothing here");
    }

    #[test]
    fn hints_show_prefix_and_last_four_only() {
        let key = sample(KeyKind::ALL[1]);
        let hint = key_hint(&key);
        assert!(hint.starts_with("pk_test_…"));
        assert!(hint.ends_with(&key[key.len() - 4..]));
        assert_eq!(hint.chars().count(), "pk_test_…".chars().count() + 4);
        assert_eq!(key_hint("sk_ab"), "sk_…ab");
    }
}
