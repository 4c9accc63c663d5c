//! The identity headers a verified request goes upstream with. The combined form holds the
//! four identity fields as one RFC 8941 structured-field dictionary, so upstreams can read
//! it with any structured-field parser, e.g.
//! `account-id="acct_1", key-id="key_1", key-type=secret, environment=test`.

use crate::prelude::*;

use crate::bucket::KeyInfo;
use crate::config::IdentityHeaders;

/// Calls `set(slot, name, value)` for each identity header `entry` gets in the configured
/// form; `slot` indexes `ScannedRequest::identity_sent` (whether the client sent that name).
pub fn for_each_header(
    headers: &IdentityHeaders,
    entry: &KeyInfo<'_>,
    mut set: impl FnMut(usize, &str, &str),
) {
    match headers {
        IdentityHeaders::Separate(names) => {
            let values = [
                entry.account_id,
                entry.key_id,
                entry.kind.key_type.as_str(),
                entry.kind.environment.as_str(),
            ];
            for (slot, (name, value)) in names.iter().zip(values).enumerate() {
                set(slot, name, value);
            }
        }
        IdentityHeaders::Combined(name) => set(0, name, &combined_value(entry)),
    }
}

/// The dictionary for `entry`. Ids are sf-strings (quoted, `"` and `\` escaped: config
/// validation already limits them to visible ASCII); type and environment are tokens.
pub fn combined_value(entry: &KeyInfo<'_>) -> String {
    let mut value = String::with_capacity(64 + entry.account_id.len() + entry.key_id.len());
    value.push_str("account-id=");
    push_sf_string(&mut value, entry.account_id);
    value.push_str(", key-id=");
    push_sf_string(&mut value, entry.key_id);
    value.push_str(", key-type=");
    value.push_str(entry.kind.key_type.as_str());
    value.push_str(", environment=");
    value.push_str(entry.kind.environment.as_str());
    value
}

fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    if s.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    } else {
        // Ids rarely hold either: copy in one go.
        out.push_str(s);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyKind;

    fn entry<'a>(account_id: &'a str, key_id: &'a str, kind: usize) -> KeyInfo<'a> {
        KeyInfo {
            account_id,
            key_id,
            kind: KeyKind::ALL[kind],
            expires_at: None,
            disabled: false,
            limit: None,
        }
    }

    #[test]
    fn names_every_field() {
        assert_eq!(
            combined_value(&entry("acct_1", "key_1", 0)),
            r#"account-id="acct_1", key-id="key_1", key-type=secret, environment=test"#
        );
        assert_eq!(
            combined_value(&entry("acct_2", "key_9", 3)),
            r#"account-id="acct_2", key-id="key_9", key-type=publishable, environment=production"#
        );
    }

    #[test]
    fn quotes_and_backslashes_cannot_break_out_of_a_string() {
        assert_eq!(
            combined_value(&entry(r#"a",x="1"#, r"k\", 0)),
            r#"account-id="a\",x=\"1", key-id="k\\", key-type=secret, environment=test"#
        );
    }
}
