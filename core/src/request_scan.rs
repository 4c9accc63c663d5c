//! One pass over a request's header map picks out what the decision needs, and notes which
//! identity header names the client sent (so they are removed whatever the outcome: the
//! access log reads request headers too).

use crate::decision::Request;
use crate::prelude::*;

/// Headers some frameworks read as the "real" method. A publishable key's call is allowed
/// only if each of them names an allowed method too.
pub const METHOD_OVERRIDE_HEADERS: [&[u8]; 3] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

/// Headers some servers and frameworks (IIS URL Rewrite, Symfony, Zend) read as the "real"
/// URL. A publishable key's call is allowed only if each of them names an allowed call too.
pub const URL_OVERRIDE_HEADERS: [&[u8]; 2] = [b"x-original-url", b"x-rewrite-url"];

/// Values kept per repeated header; one more than allowed is enough to refuse.
const MAX_AUTHORIZATION: usize = 2;
const MAX_OVERRIDES: usize = 4;

#[derive(Debug, Default)]
pub struct ScannedRequest<'a> {
    authorization: [&'a [u8]; MAX_AUTHORIZATION],
    authorization_count: usize,
    pub method: &'a [u8],
    pub path: &'a [u8],
    overrides: [&'a [u8]; MAX_OVERRIDES],
    override_count: usize,
    url_overrides: [&'a [u8]; MAX_OVERRIDES],
    url_override_count: usize,
    /// Which of `Settings::stripped_headers` the client sent: bit `i` for name `i`.
    pub identity_sent: u16,
}

impl<'a> ScannedRequest<'a> {
    /// Every `authorization` value, up to one more than a valid request has.
    pub fn authorization(&self) -> &[&'a [u8]] {
        &self.authorization[..self.authorization_count.min(MAX_AUTHORIZATION)]
    }

    /// Method-override values; `None` when there are more than can be judged.
    pub fn method_overrides(&self) -> Option<&[&'a [u8]]> {
        (self.override_count <= MAX_OVERRIDES).then(|| &self.overrides[..self.override_count])
    }

    /// URL-override values; `None` when there are more than can be judged.
    pub fn url_overrides(&self) -> Option<&[&'a [u8]]> {
        (self.url_override_count <= MAX_OVERRIDES)
            .then(|| &self.url_overrides[..self.url_override_count])
    }

    /// Whether the client sent stripped header `slot`.
    pub fn sent(&self, slot: usize) -> bool {
        slot < 16 && self.identity_sent & (1 << slot) != 0
    }

    /// What the decision needs of the request.
    pub fn request(&self) -> Request<'_> {
        Request {
            authorization: self.authorization(),
            method: self.method,
            path: self.path,
            method_overrides: self.method_overrides(),
            url_overrides: self.url_overrides(),
        }
    }
}

/// Keeps `value` in the next free slot, counting values past the last slot too.
fn keep<'a, const N: usize>(slots: &mut [&'a [u8]; N], count: &mut usize, value: &'a [u8]) {
    if let Some(slot) = slots.get_mut(*count) {
        *slot = value;
    }
    *count = count.saturating_add(1);
}

/// Scans `(name, value)` pairs (names are lower-case, as Envoy gives them); `stripped` is
/// `Settings::stripped_headers` (at most 16 names).
pub fn scan<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    stripped: &[String],
) -> ScannedRequest<'a> {
    let mut scanned = ScannedRequest::default();
    for (name, value) in pairs {
        // Pseudo-headers first: only two of them matter, and no other header starts with ':'.
        if name.first() == Some(&b':') {
            match name {
                b":method" => scanned.method = value,
                b":path" => scanned.path = value,
                _ => {}
            }
            continue;
        }
        if name == b"authorization" {
            keep(
                &mut scanned.authorization,
                &mut scanned.authorization_count,
                value,
            );
        } else if METHOD_OVERRIDE_HEADERS.contains(&name) {
            keep(&mut scanned.overrides, &mut scanned.override_count, value);
        } else if URL_OVERRIDE_HEADERS.contains(&name) {
            keep(
                &mut scanned.url_overrides,
                &mut scanned.url_override_count,
                value,
            );
        } else {
            for (slot, stripped_name) in stripped.iter().enumerate().take(16) {
                if name == stripped_name.as_bytes() {
                    scanned.identity_sent |= 1 << slot;
                }
            }
        }
    }
    scanned
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::IdentityHeaders;

    fn scan_pairs<'a>(pairs: &'a [(&'a str, &'a str)]) -> ScannedRequest<'a> {
        let stripped = IdentityHeaders::default().stripped();
        scan(
            pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &stripped,
        )
    }

    #[test]
    fn picks_out_what_the_decision_needs() {
        let pairs = [
            (":method", "GET"),
            (":path", "/v3/devices/1"),
            ("authorization", "token a"),
            ("x-keygate-key-id", "spoof"),
            ("x-keygate-identity", "spoof"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/v3/devices"),
        ];
        let s = scan_pairs(&pairs);
        assert_eq!(s.method, b"GET");
        assert_eq!(s.path, b"/v3/devices/1");
        assert_eq!(s.authorization(), &[&b"token a"[..]]);
        // Per-field names first, then the combined form's name: both forms are seen.
        assert_eq!(s.identity_sent, 0b1_0010);
        assert!(s.sent(1) && s.sent(4) && !s.sent(0));
        assert_eq!(s.method_overrides(), Some(&[&b"DELETE"[..]][..]));
        assert_eq!(s.url_overrides(), Some(&[&b"/v3/devices"[..]][..]));
    }

    #[test]
    fn repeated_headers_are_counted_not_lost() {
        let pairs = [
            ("authorization", "a"),
            ("authorization", "b"),
            ("authorization", "c"),
        ];
        assert_eq!(scan_pairs(&pairs).authorization().len(), 2);
        let many = [("x-http-method", "GET"); 5];
        assert_eq!(scan_pairs(&many).method_overrides(), None);
        let urls = [("x-rewrite-url", "/"); 5];
        assert_eq!(scan_pairs(&urls).url_overrides(), None);
        assert!(scan_pairs(&[]).authorization().is_empty());
    }
}
