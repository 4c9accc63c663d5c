//! `credentials`: `parse_authorization` over 0-3 header values, every scheme set, four key
//! length caps.
//!
//! Input: one control byte `c`, then the values. `c & 7` picks the accepted schemes (bit 0
//! token, bit 1 bearer, bit 2 basic: all eight sets, none included), `(c >> 3) & 3` the
//! max key length (16, 64, 128, 1024), `(c >> 5) & 3` the number of values (0-3); the rest
//! is split at `\n` into that many values, the last keeping any further `\n`. So `7token
//! sk_test_abc` is one value, all schemes, max 128; `W` is the same with two values.
//!
//! Invariants, for an `Ok` credential: the scheme is accepted; the key is non-empty, at most
//! the max length and has no whitespace or control character (ASCII or Unicode); an account id
//! (Basic only) has no control character or ':'; exactly one value was given; the result does
//! not depend on surrounding spaces/tabs; `Debug` never shows the key. For an `Err`: its
//! `Display` is non-empty and never holds a plaintext key. No panic.

use crate::invariant;
use keygate_core::credentials::{parse_authorization, AcceptedSchemes, CredentialError, Scheme};

pub const MAX_KEY_LENGTHS: [usize; 4] = [16, 64, 128, 1024];

pub fn schemes_from_bits(bits: u8) -> AcceptedSchemes {
    AcceptedSchemes {
        token: bits & 1 != 0,
        bearer: bits & 2 != 0,
        basic: bits & 4 != 0,
    }
}

/// The `base64` crate configured as Basic credentials are read: core's own decoder must
/// agree with it on every input.
const BASE64_INDIFFERENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub fn check(data: &[u8]) {
    {
        use base64::Engine;
        let ours = keygate_core::base64::decode(data);
        invariant!(
            ours == BASE64_INDIFFERENT.decode(data).ok(),
            "core's base64 decodes {:?} as {ours:?}",
            String::from_utf8_lossy(data)
        );
    }
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let accepted = schemes_from_bits(control);
    let max_key_len = MAX_KEY_LENGTHS[usize::from((control >> 3) & 3)];
    let count = usize::from((control >> 5) & 3);
    let values = crate::split_n(rest, b'\n', count);

    let result = parse_authorization(&values, accepted, max_key_len);
    match &result {
        Ok(credential) => {
            invariant!(values.len() == 1, "Ok from {} header values", values.len());
            invariant!(
                accepted.accepts(credential.scheme),
                "scheme {:?} not accepted",
                credential.scheme
            );
            let key: &str = &credential.key;
            invariant!(!key.is_empty(), "empty key");
            invariant!(
                key.len() <= max_key_len,
                "key of {} bytes over the max {max_key_len}",
                key.len()
            );
            let bad = |c: char| c.is_whitespace() || c.is_control();
            invariant!(
                !key.chars().any(|c| c.is_ascii() && bad(c)),
                "key {key:?} holds ASCII whitespace or a control character"
            );
            crate::known_finding!(
                "KF2",
                !key.chars().any(bad),
                "key {key:?} holds non-ASCII whitespace or a control character"
            );
            match (&credential.account_id, credential.scheme) {
                (None, _) => {}
                (Some(account), Scheme::Basic) => {
                    invariant!(!account.is_empty(), "empty account id");
                    invariant!(
                        !account.contains(':') && !account.chars().any(|c| c.is_ascii_control()),
                        "account id {account:?} holds ':' or a control character"
                    );
                    crate::known_finding!(
                        "KF2",
                        !account.chars().any(char::is_control),
                        "account id {account:?} holds a non-ASCII control character"
                    );
                }
                (Some(_), scheme) => invariant!(false, "account id with scheme {scheme:?}"),
            }
            if credential.scheme != Scheme::Basic {
                // Token/Bearer keys are the header's own text.
                let text = String::from_utf8_lossy(values[0]);
                invariant!(text.contains(key), "key is not a substring of the header");
            }
            // The account id is shown (it is no secret); keys of 12+ bytes cannot be found in
            // the fixed text (whose space-free runs are shorter).
            let mut debug = format!("{credential:?}");
            if let Some(account) = &credential.account_id {
                debug = debug.replace(&format!("{account:?}"), "");
            }
            invariant!(
                key.len() < 12 || !debug.contains(key),
                "Debug shows the key: {debug}"
            );
        }
        Err(e) => {
            let shown = e.to_string();
            invariant!(!shown.is_empty(), "empty Display for {e:?}");
            invariant!(
                crate::issued_keys_in(&shown).is_empty(),
                "error message holds a key: {shown}"
            );
            invariant!(
                !values.is_empty() || *e == CredentialError::Missing,
                "no value gives {e:?}, not Missing"
            );
            invariant!(
                values.len() < 2 || *e == CredentialError::Repeated,
                "{} values give {e:?}, not Repeated",
                values.len()
            );
        }
    }

    // Optional whitespace around the value never changes the outcome.
    if let [one] = values.as_slice() {
        let padded = [b" \t".as_slice(), one, b"\t "].concat();
        let again = parse_authorization(&[&padded], accepted, max_key_len);
        let flat = |r: &Result<keygate_core::credentials::Credential<'_>, CredentialError>| {
            r.as_ref()
                .map(|c| (c.scheme, c.key.to_string(), c.account_id.clone()))
                .map_err(|e| *e)
        };
        invariant!(
            flat(&result) == flat(&again),
            "padding with spaces and tabs changed the result"
        );
    }
}
