//! Normalising a request's `:path` before it is matched against policy rules.
//!
//! Matching works on decoded segments after dot resolution, so that `/v3/./x`, `/v3//x` and
//! `/v3/%78` are judged as the same call as `/v3/x`. What cannot be made unambiguous (an
//! encoded slash, a path parameter) is kept but marked not `plain`, and never matches a rule.

use crate::prelude::*;

use core::fmt;

/// One path segment, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    /// May match a `{placeholder}` or a literal: non-empty, only `[A-Za-z0-9-_.~:@]`.
    pub plain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    pub segments: Vec<Segment>,
    pub trailing_slash: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    NotUtf8,
    ControlCharacter,
    EscapesRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with '/'",
            PathError::BadPercentEncoding => "the path has a bad '%' escape",
            PathError::NotUtf8 => "the decoded path is not valid UTF-8",
            PathError::ControlCharacter => "the decoded path contains a control character",
            PathError::EscapesRoot => "the path's '..' segments go above the root",
        })
    }
}

/// Characters a plain segment (and a template literal) may hold: RFC 3986 unreserved
/// characters plus ':' and '@', never '/', '\\', ';', '%' or anything outside ASCII.
pub(crate) fn is_plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '@')
}

/// Normalises Envoy's `:path` pseudo-header.
pub fn normalize(raw: &[u8]) -> Result<NormalizedPath, PathError> {
    // The query string and fragment never change a decision.
    let path = raw
        .split(|&b| b == b'?' || b == b'#')
        .next()
        .unwrap_or_default();
    let Some((b'/', rest)) = path.split_first() else {
        return Err(PathError::NotAbsolute);
    };

    let mut segments: Vec<Segment> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in rest.split(|&b| b == b'/') {
        // Empty (duplicate or final slash) and dot segments both leave a directory path.
        trailing_slash = true;
        if raw_segment.is_empty() {
            continue;
        }
        let text = decode_segment(raw_segment)?;
        match text.as_str() {
            "." => {}
            ".." => {
                segments.pop().ok_or(PathError::EscapesRoot)?;
            }
            _ => {
                trailing_slash = false;
                let plain = text.chars().all(is_plain_char);
                segments.push(Segment { text, plain });
            }
        }
    }
    Ok(NormalizedPath {
        segments,
        trailing_slash,
    })
}

/// Percent-decodes one segment. A decoded '/' stays inside the segment: it is never a separator.
fn decode_segment(raw: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b == b'%' {
            let hi = bytes.next().and_then(|&h| hex_value(h));
            let lo = bytes.next().and_then(|&l| hex_value(l));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push((hi << 4) | lo),
                _ => return Err(PathError::BadPercentEncoding),
            }
        } else {
            out.push(b);
        }
    }
    let text = String::from_utf8(out).map_err(|_| PathError::NotUtf8)?;
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(PathError::ControlCharacter);
    }
    Ok(text)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments as `text` for plain ones and `!text` for the others, and the trailing slash.
    fn show(p: &NormalizedPath) -> (Vec<String>, bool) {
        let segments = p
            .segments
            .iter()
            .map(|s| {
                if s.plain {
                    s.text.clone()
                } else {
                    format!("!{}", s.text)
                }
            })
            .collect();
        (segments, p.trailing_slash)
    }

    #[test]
    fn normalizes() {
        use PathError::*;
        type Want = Result<(&'static [&'static str], bool), PathError>;
        let cases: &[(&[u8], Want)] = &[
            (b"/v3/devices/abc", Ok((&["v3", "devices", "abc"], false))),
            (
                b"//v3///devices//abc",
                Ok((&["v3", "devices", "abc"], false)),
            ),
            (b"/v3/./devices/abc", Ok((&["v3", "devices", "abc"], false))),
            (
                b"/v3/x/../devices/abc",
                Ok((&["v3", "devices", "abc"], false)),
            ),
            (b"/v3/devices/abc/..", Ok((&["v3", "devices"], true))),
            (b"/v3/devices/abc/.", Ok((&["v3", "devices", "abc"], true))),
            (b"/v3/devices/abc/", Ok((&["v3", "devices", "abc"], true))),
            (b"/v3/devices/abc//", Ok((&["v3", "devices", "abc"], true))),
            (b"/v3/%64evices/abc", Ok((&["v3", "devices", "abc"], false))),
            (
                b"/v3/%64%65vices/abc",
                Ok((&["v3", "devices", "abc"], false)),
            ),
            (b"/v3/%4A%4a", Ok((&["v3", "JJ"], false))),
            (
                b"/v3/devices/a%2Fb",
                Ok((&["v3", "devices", "!a/b"], false)),
            ),
            (
                b"/v3/devices/a%2fb",
                Ok((&["v3", "devices", "!a/b"], false)),
            ),
            (
                b"/v3/devices/a%5Cb",
                Ok((&["v3", "devices", "!a\\b"], false)),
            ),
            (b"/v3/%2e%2e%2Fx", Ok((&["v3", "!../x"], false))),
            (b"/v3/devices/%2e%2e", Ok((&["v3"], true))),
            (b"/v3/devices/%2E", Ok((&["v3", "devices"], true))),
            (
                b"/v3/devices/abc;x=1",
                Ok((&["v3", "devices", "!abc;x=1"], false)),
            ),
            (b"/v3/a%20b", Ok((&["v3", "!a b"], false))),
            (b"/v3/caf%C3%A9", Ok((&["v3", "!caf\u{e9}"], false))),
            (b"/v3/...", Ok((&["v3", "..."], false))),
            (b"/v3/~u:x@y", Ok((&["v3", "~u:x@y"], false))),
            (b"/v3?x=/..", Ok((&["v3"], false))),
            (b"/v3#frag/..", Ok((&["v3"], false))),
            (b"/v3/?x", Ok((&["v3"], true))),
            (b"/", Ok((&[], true))),
            (b"//", Ok((&[], true))),
            (b"/a/..", Ok((&[], true))),
            (b"/..", Err(EscapesRoot)),
            (b"/a/../..", Err(EscapesRoot)),
            (b"/%2e%2e/v3", Err(EscapesRoot)),
            (b"/v3/%zz", Err(BadPercentEncoding)),
            (b"/v3/%4", Err(BadPercentEncoding)),
            (b"/v3/%", Err(BadPercentEncoding)),
            (b"/v3/%4/x", Err(BadPercentEncoding)),
            (b"/v3/%00", Err(ControlCharacter)),
            (b"/v3/%7f", Err(ControlCharacter)),
            (b"/v3/a\x01b", Err(ControlCharacter)),
            (b"/v3/%ff", Err(NotUtf8)),
            (b"/%ff", Err(NotUtf8)),
            (b"/v3/\xff", Err(NotUtf8)),
            (b"*", Err(NotAbsolute)),
            (b"http://host/x", Err(NotAbsolute)),
            (b"v3/x", Err(NotAbsolute)),
            (b"", Err(NotAbsolute)),
            (b"?/x", Err(NotAbsolute)),
        ];
        for (raw, want) in cases {
            let got = normalize(raw).map(|p| show(&p));
            let want = want.map(|(s, t)| (s.iter().map(|s| s.to_string()).collect(), t));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            PathError::EscapesRoot.to_string(),
            "the path's '..' segments go above the root"
        );
    }
}
