//! Parsing the HTTP `authorization` header into a key (and, for Basic, an account id).
//!
//! This decides what reaches the key lookup, so it is strict: anything ambiguous (repeated
//! or comma-joined headers, control characters, whitespace inside the key, non-canonical
//! base64) is refused rather than guessed at.

use crate::prelude::*;

use alloc::borrow::Cow;
use core::fmt;

/// An authorization scheme keygate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Token,
    Bearer,
    Basic,
}

impl Scheme {
    /// The scheme a config or header names, ignoring ASCII case.
    pub fn parse_name(name: &str) -> Option<Scheme> {
        [Scheme::Token, Scheme::Bearer, Scheme::Basic]
            .into_iter()
            .find(|s| s.challenge_name().eq_ignore_ascii_case(name))
    }

    /// The name used in a `www-authenticate` challenge.
    pub fn challenge_name(self) -> &'static str {
        match self {
            Scheme::Token => "Token",
            Scheme::Bearer => "Bearer",
            Scheme::Basic => "Basic",
        }
    }
}

/// Which schemes a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedSchemes {
    pub token: bool,
    pub bearer: bool,
    pub basic: bool,
}

impl AcceptedSchemes {
    pub const ALL: AcceptedSchemes = AcceptedSchemes {
        token: true,
        bearer: true,
        basic: true,
    };

    pub fn accepts(&self, s: Scheme) -> bool {
        match s {
            Scheme::Token => self.token,
            Scheme::Bearer => self.bearer,
            Scheme::Basic => self.basic,
        }
    }

    /// The accepted schemes, in the order token, bearer, basic.
    pub fn iter(&self) -> impl Iterator<Item = Scheme> {
        [
            (self.token, Scheme::Token),
            (self.bearer, Scheme::Bearer),
            (self.basic, Scheme::Basic),
        ]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
    }
}

/// A presented credential. Debug redacts the key so that logging it never leaks a secret.
#[derive(PartialEq, Eq)]
pub struct Credential<'a> {
    pub scheme: Scheme,
    pub key: Cow<'a, str>,
    pub account_id: Option<String>,
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("scheme", &self.scheme)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("account_id", &self.account_id)
            .finish()
    }
}

/// Why no credential could be taken from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    Missing,
    Repeated,
    CommaJoined,
    NotUtf8,
    ControlCharacter,
    UnknownScheme,
    SchemeNotAccepted,
    NoKey,
    /// A space inside the key (keys never contain one).
    InnerWhitespace,
    BadBase64,
    NoColon,
    TooLong,
}

impl CredentialError {
    /// No credential at all, as opposed to a malformed one (the two get different answers).
    pub fn is_missing(self) -> bool {
        self == CredentialError::Missing
    }
}

impl fmt::Display for CredentialError {
    // Never includes the header value: it may hold a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialError::Missing => "no credentials",
            CredentialError::Repeated => "more than one authorization header",
            CredentialError::CommaJoined => "the authorization header contains a comma",
            CredentialError::NotUtf8 => "the credentials are not valid UTF-8",
            CredentialError::ControlCharacter => "the credentials contain a control character",
            CredentialError::UnknownScheme => "unknown authorization scheme",
            CredentialError::SchemeNotAccepted => "authorization scheme not accepted here",
            CredentialError::NoKey => "no key after the authorization scheme",
            CredentialError::InnerWhitespace => "the key contains whitespace",
            CredentialError::BadBase64 => "the Basic credentials are not valid base64",
            CredentialError::NoColon => "the Basic credentials have no ':'",
            CredentialError::TooLong => "the key is too long",
        })
    }
}

/// Room for an account id in Basic credentials, on top of the key.
const MAX_ACCOUNT_ID_LEN: usize = 256;

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Takes the credential from every value of the `authorization` header in the request.
pub fn parse_authorization<'a>(
    values: &[&'a [u8]],
    accepted: AcceptedSchemes,
    max_key_len: usize,
) -> Result<Credential<'a>, CredentialError> {
    let raw: &'a [u8] = match values {
        [] => return Err(CredentialError::Missing),
        [one] => one,
        _ => return Err(CredentialError::Repeated),
    };
    let value = trim_ows(raw);
    if value.is_empty() {
        return Err(CredentialError::Missing);
    }
    let value = core::str::from_utf8(value).map_err(|_| CredentialError::NotUtf8)?;
    // One pass for both: no valid credential holds either. Real credentials are ASCII, so
    // that case is checked byte by byte; anything else char by char (C1 controls too).
    let ascii = value.is_ascii();
    if ascii {
        for b in value.bytes() {
            if b < 0x20 || b == 0x7f {
                return Err(CredentialError::ControlCharacter);
            }
            if b == b',' {
                return Err(CredentialError::CommaJoined);
            }
        }
    } else {
        for c in value.chars() {
            if c.is_control() {
                return Err(CredentialError::ControlCharacter);
            }
            if c == ',' {
                return Err(CredentialError::CommaJoined);
            }
        }
    }

    // Only spaces separate scheme and credential (RFC 9110 `1*SP`); tabs were refused above.
    let (name, rest) = crate::ascii::split_once(value, b' ').unwrap_or((value, ""));
    let scheme = Scheme::parse_name(name).ok_or(CredentialError::UnknownScheme)?;
    if !accepted.accepts(scheme) {
        return Err(CredentialError::SchemeNotAccepted);
    }
    let rest = crate::ascii::trim_start(rest, b' ');
    if rest.is_empty() {
        return Err(CredentialError::NoKey);
    }

    match scheme {
        Scheme::Token | Scheme::Bearer => {
            // Length first: cheap, and bounds the scan below.
            if rest.len() > max_key_len {
                return Err(CredentialError::TooLong);
            }
            // In ASCII the only whitespace left after the control check is ' '.
            let whitespace = if ascii {
                rest.bytes().any(|b| b == b' ')
            } else {
                rest.chars().any(char::is_whitespace)
            };
            if whitespace {
                return Err(CredentialError::InnerWhitespace);
            }
            Ok(Credential {
                scheme,
                key: Cow::Borrowed(rest),
                account_id: None,
            })
        }
        Scheme::Basic => parse_basic(rest, max_key_len),
    }
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [first, tail @ ..] = b {
        if !is_ows(*first) {
            break;
        }
        b = tail;
    }
    while let [head @ .., last] = b {
        if !is_ows(*last) {
            break;
        }
        b = head;
    }
    b
}

/// `Basic base64(user:pass)`: `key:` or `:key` give a bare key, `account:key` an account too.
fn parse_basic(encoded: &str, max_key_len: usize) -> Result<Credential<'static>, CredentialError> {
    // Bound the work before decoding: base64 of account id, ':' and key, rounded up.
    let max_encoded = max_key_len
        .saturating_add(MAX_ACCOUNT_ID_LEN)
        .saturating_mul(4)
        / 3
        + 4;
    if encoded.len() > max_encoded {
        return Err(CredentialError::TooLong);
    }
    if crate::ascii::contains(encoded, b' ') {
        return Err(CredentialError::InnerWhitespace);
    }
    // Standard alphabet, padding optional (clients differ), non-canonical bits refused.
    let decoded = crate::base64::decode(encoded.as_bytes()).ok_or(CredentialError::BadBase64)?;
    let mut decoded = String::from_utf8(decoded).map_err(|_| CredentialError::NotUtf8)?;
    if decoded.chars().any(char::is_control) {
        return Err(CredentialError::ControlCharacter);
    }
    let colon = crate::ascii::find(&decoded, b':').ok_or(CredentialError::NoColon)?;
    // Reuse the decoded buffer; only the account form allocates again. `colon` and
    // `colon + 1` are char boundaries (':' is one byte), so none of these can panic.
    let (key, account_id) = if colon + 1 == decoded.len() {
        decoded.truncate(colon);
        (decoded, None)
    } else if colon == 0 {
        decoded.drain(..=colon);
        (decoded, None)
    } else {
        let key = decoded.split_off(colon + 1);
        decoded.truncate(colon);
        (key, Some(decoded))
    };
    if key.is_empty() {
        return Err(CredentialError::NoKey);
    }
    if key.len() > max_key_len {
        return Err(CredentialError::TooLong);
    }
    if key.chars().any(char::is_whitespace) {
        return Err(CredentialError::InnerWhitespace);
    }
    Ok(Credential {
        scheme: Scheme::Basic,
        key: Cow::Owned(key),
        account_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;

    const MAX: usize = 128;

    /// A parse result flattened for comparison: scheme, key, account id.
    type Parsed = Result<(Scheme, String, Option<String>), CredentialError>;

    fn parse(v: &[u8]) -> Result<Credential<'_>, CredentialError> {
        parse_authorization(&[v], AcceptedSchemes::ALL, MAX)
    }

    fn ok(scheme: Scheme, key: &str, account: Option<&str>) -> Parsed {
        Ok((scheme, key.to_owned(), account.map(str::to_owned)))
    }

    fn flat(r: Result<Credential<'_>, CredentialError>) -> Parsed {
        r.map(|c| (c.scheme, c.key.into_owned(), c.account_id))
    }

    fn basic(plain: &str) -> String {
        format!("Basic {}", STANDARD.encode(plain))
    }

    #[test]
    fn header_values() {
        use CredentialError::*;
        use Scheme::*;
        let long_key = "k".repeat(MAX);
        let too_long_key = "k".repeat(MAX + 1);
        let cases: Vec<(String, Parsed)> = vec![
            ("Token sk_test_abc".into(), ok(Token, "sk_test_abc", None)),
            ("Bearer sk_test_abc".into(), ok(Bearer, "sk_test_abc", None)),
            ("TOKEN sk_test_abc".into(), ok(Token, "sk_test_abc", None)),
            ("bEaReR sk_test_abc".into(), ok(Bearer, "sk_test_abc", None)),
            (
                "token    sk_test_abc".into(),
                ok(Token, "sk_test_abc", None),
            ),
            (
                " \tToken sk_test_abc\t ".into(),
                ok(Token, "sk_test_abc", None),
            ),
            (format!("Token {long_key}"), ok(Token, &long_key, None)),
            (format!("Token {too_long_key}"), Err(TooLong)),
            (format!("Token {}", "k".repeat(100_000)), Err(TooLong)),
            ("".into(), Err(Missing)),
            ("   ".into(), Err(Missing)),
            (" \t ".into(), Err(Missing)),
            ("Token".into(), Err(NoKey)),
            ("Token   ".into(), Err(NoKey)),
            ("Basic".into(), Err(NoKey)),
            ("Digest abc".into(), Err(UnknownScheme)),
            ("Tokenabc".into(), Err(UnknownScheme)),
            ("sk_test_abc".into(), Err(UnknownScheme)),
            (" Token".into(), Err(NoKey)),
            ("Token\tsk_test_abc".into(), Err(ControlCharacter)),
            ("Token sk_test\tabc".into(), Err(ControlCharacter)),
            ("Token sk_test\0abc".into(), Err(ControlCharacter)),
            ("Token sk_test\x7fabc".into(), Err(ControlCharacter)),
            ("Token sk_test\r\nabc".into(), Err(ControlCharacter)),
            ("Token sk_test abc".into(), Err(InnerWhitespace)),
            ("Token a,Token b".into(), Err(CommaJoined)),
            ("Token a, Token b".into(), Err(CommaJoined)),
            ("Token ,".into(), Err(CommaJoined)),
            // Basic: `curl -u key:`, `:key`, account form, padding optional.
            (basic("sk_test_abc:"), ok(Basic, "sk_test_abc", None)),
            (basic(":sk_test_abc"), ok(Basic, "sk_test_abc", None)),
            (
                basic("acct_1:sk_test_abc"),
                ok(Basic, "sk_test_abc", Some("acct_1")),
            ),
            (
                basic("acct_1:sk:test"),
                ok(Basic, "sk:test", Some("acct_1")),
            ),
            (
                format!("basic   {}", STANDARD.encode("sk_test_ab:")),
                ok(Basic, "sk_test_ab", None),
            ),
            (
                format!("BASIC {}", STANDARD_NO_PAD.encode("sk_test_ab:")),
                ok(Basic, "sk_test_ab", None),
            ),
            (basic(":"), Err(NoKey)),
            (basic("sk_test_abc"), Err(NoColon)),
            (basic("sk test:"), Err(InnerWhitespace)),
            (basic("acct:sk\0x"), Err(ControlCharacter)),
            (basic("acct:sk\x7fx"), Err(ControlCharacter)),
            (basic(&format!("{long_key}:")), ok(Basic, &long_key, None)),
            (basic(&format!("{too_long_key}:")), Err(TooLong)),
            (format!("Basic {}", "QUFB".repeat(10_000)), Err(TooLong)),
            ("Basic !!!!".into(), Err(BadBase64)),
            ("Basic YWJj=".into(), Err(BadBase64)),
            // `?` is 0x3f → `/` standard, `_` URL-safe: `Pz8_` and `Pz8-` are URL-safe only.
            ("Basic Pz8_".into(), Err(BadBase64)),
            ("Basic Pz8-".into(), Err(BadBase64)),
            ("Basic YQ== YQ==".into(), Err(InnerWhitespace)),
            // Non-canonical trailing bits ("YR" decodes like "YQ" when lenient).
            ("Basic YR==".into(), Err(BadBase64)),
            (
                format!("Basic {}", STANDARD.encode(b"\xe9t\xe9:")),
                Err(NotUtf8),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(flat(parse(value.as_bytes())), want, "{value:?}");
        }
    }

    #[test]
    fn raw_bytes() {
        use CredentialError::*;
        let cases: [(&[u8], CredentialError); 4] = [
            (b"Token sk_\xe9", NotUtf8),
            (b"Token \xff\xfe", NotUtf8),
            (b"\xc3", NotUtf8),
            (b"Token sk\x00", ControlCharacter),
        ];
        for (value, want) in cases {
            assert_eq!(flat(parse(value)), Err(want), "{value:?}");
        }
    }

    #[test]
    fn header_count() {
        type Values<'a> = &'a [&'a [u8]];
        let one: &[u8] = b"Token a";
        let cases: [(Values, Result<(), CredentialError>); 4] = [
            (&[], Err(CredentialError::Missing)),
            (&[one], Ok(())),
            (&[one, one], Err(CredentialError::Repeated)),
            (&[b"", b""], Err(CredentialError::Repeated)),
        ];
        for (values, want) in cases {
            let got = parse_authorization(values, AcceptedSchemes::ALL, MAX).map(|_| ());
            assert_eq!(got, want, "{values:?}");
        }
    }

    #[test]
    fn accepted_schemes() {
        use CredentialError::SchemeNotAccepted;
        let only_bearer = AcceptedSchemes {
            token: false,
            bearer: true,
            basic: false,
        };
        let b = basic("k:");
        let cases: [(&str, Result<Scheme, CredentialError>); 4] = [
            ("Bearer k", Ok(Scheme::Bearer)),
            ("Token k", Err(SchemeNotAccepted)),
            ("Token", Err(SchemeNotAccepted)),
            (&b, Err(SchemeNotAccepted)),
        ];
        for (value, want) in cases {
            let got = parse_authorization(&[value.as_bytes()], only_bearer, MAX).map(|c| c.scheme);
            assert_eq!(got, want, "{value:?}");
        }
        assert_eq!(only_bearer.iter().collect::<Vec<_>>(), [Scheme::Bearer]);
        assert_eq!(
            AcceptedSchemes::ALL.iter().collect::<Vec<_>>(),
            [Scheme::Token, Scheme::Bearer, Scheme::Basic]
        );
    }

    #[test]
    fn borrowed_for_token_owned_for_basic() {
        let token = parse(b"Token abc").map(|c| matches!(c.key, Cow::Borrowed(_)));
        assert_eq!(token, Ok(true));
        let b = basic("abc:");
        let basic = parse(b.as_bytes()).map(|c| matches!(c.key, Cow::Owned(_)));
        assert_eq!(basic, Ok(true));
    }

    #[test]
    fn scheme_names() {
        let cases = [
            ("token", Some(Scheme::Token)),
            ("Bearer", Some(Scheme::Bearer)),
            ("BASIC", Some(Scheme::Basic)),
            ("digest", None),
            ("", None),
            ("tokens", None),
        ];
        for (name, want) in cases {
            assert_eq!(Scheme::parse_name(name), want, "{name:?}");
        }
        assert_eq!(Scheme::Bearer.challenge_name(), "Bearer");
    }

    #[test]
    fn errors_display_without_value_and_debug_redacts() {
        assert!(CredentialError::Missing.is_missing());
        assert!(!CredentialError::NoKey.is_missing());
        assert_eq!(
            CredentialError::NoColon.to_string(),
            "the Basic credentials have no ':'"
        );
        let debug = parse(b"Token sk_secret").map(|c| format!("{c:?}"));
        assert_eq!(
            debug,
            Ok("Credential { scheme: Token, key: <9 bytes>, account_id: None }".to_owned())
        );
    }
}
