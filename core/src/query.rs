//! Method overrides hidden in a URL's query string: `_method=DELETE`, which Laravel,
//! Symfony and Rails read as the request's "real" method. A publishable key's call is
//! allowed only if each of them names an allowed call too.
//!
//! Names are read as PHP reads them, since that is where `_method` matters most: percent
//! escapes and `+` decoded (a malformed escape kept as it is), leading spaces dropped, and
//! ` ` and `.` taken as `_`; `_method[…]` counts too. Values are compared upper-cased, as
//! Laravel and Symfony upper-case them.

use crate::prelude::*;

/// The most `_method` values judged; a query with more is refused whole.
pub const MAX_QUERY_OVERRIDES: usize = 4;

/// The `_method` values in `url`'s query string, upper-cased; `None` when there are more
/// than [`MAX_QUERY_OVERRIDES`]. No allocation when the query names none.
pub fn method_overrides(url: &[u8]) -> Option<Vec<Vec<u8>>> {
    let Some(start) = url.iter().position(|&b| b == b'?') else {
        return Some(Vec::new());
    };
    let query = url.get(start + 1..).unwrap_or_default();
    let query = query.split(|&b| b == b'#').next().unwrap_or_default();
    let mut found = Vec::new();
    for pair in query.split(|&b| b == b'&' || b == b';') {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (
                pair.get(..at).unwrap_or_default(),
                pair.get(at + 1..).unwrap_or_default(),
            ),
            None => (pair, &b""[..]),
        };
        // Most names are plain and not ours: skip them before decoding anything.
        if !name.iter().any(|&b| b == b'%' || b == b'+') && !might_be_method(name) {
            continue;
        }
        if !names_method(&decode(name)) {
            continue;
        }
        if found.len() == MAX_QUERY_OVERRIDES {
            return None;
        }
        let mut value = decode(value);
        value.make_ascii_uppercase();
        found.push(value);
    }
    Some(found)
}

/// A quick look at an undecoded name: could PHP read it as `_method`?
fn might_be_method(name: &[u8]) -> bool {
    let trimmed = name
        .iter()
        .position(|&b| b != b' ')
        .map_or(&[][..], |i| &name[i..]);
    trimmed.len() >= 7 && trimmed.get(1..7) == Some(&b"method"[..])
}

/// Whether a decoded name is `_method` as PHP reads names.
fn names_method(name: &[u8]) -> bool {
    let start = name.iter().position(|&b| b != b' ').unwrap_or(name.len());
    let name = name.get(start..).unwrap_or_default();
    let Some((&first, rest)) = name.split_first() else {
        return false;
    };
    let first_is_underscore = matches!(first, b'_' | b' ' | b'.');
    let Some(tail) = rest.strip_prefix(b"method") else {
        return false;
    };
    first_is_underscore && (tail.is_empty() || tail.first() == Some(&b'['))
}

/// Percent-decodes, `+` as a space; a malformed escape stays as written (as PHP keeps it).
fn decode(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let hex = |at: usize| raw.get(at).and_then(|&h| (h as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(url: &str) -> Option<Vec<String>> {
        method_overrides(url.as_bytes()).map(|values| {
            values
                .into_iter()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .collect()
        })
    }

    #[test]
    fn finds_method_parameters_as_frameworks_read_them() {
        let none: Vec<String> = Vec::new();
        assert_eq!(found("/v3/devices/1"), Some(none.clone()));
        assert_eq!(found("/v3/devices/1?limit=5&method=x"), Some(none.clone()));
        assert_eq!(found("/v3/devices/1#_method=DELETE"), Some(none.clone()));
        assert_eq!(found("/v3/devices/1?_methods=DELETE"), Some(none.clone()));
        // PHP drops leading spaces before it turns the others into '_'.
        assert_eq!(found("/v3/devices/1?+method=DELETE"), Some(none));
        for url in [
            "/v3/devices/1?_method=DELETE",
            "/v3/devices/1?a=1&_method=delete",
            "/v3/devices/1?%5Fmethod=DELETE",
            "/v3/devices/1?%5fmethod=%44ELETE",
            "/v3/devices/1?+_method=DELETE",
            "/v3/devices/1?.method=DELETE",
            "/v3/devices/1?%20_method=DELETE",
            "/v3/devices/1?_method[]=DELETE",
            "/v3/devices/1?x=1;_method=DELETE",
        ] {
            assert_eq!(found(url), Some(vec!["DELETE".to_owned()]), "{url}");
        }
        assert_eq!(found("/x?_method"), Some(vec![String::new()]));
        assert_eq!(found("/x?_method=%zz"), Some(vec!["%ZZ".to_owned()]));
    }

    #[test]
    fn too_many_to_judge_is_none() {
        let url = format!("/x?{}", ["_method=GET"; MAX_QUERY_OVERRIDES + 1].join("&"));
        assert_eq!(found(&url), None);
    }
}
