//! One pass over a request's header map picks out what the decision needs, and notes which
//! of our identity headers the client sent (so they are removed whatever the outcome: the
//! access log reads request headers too).

use crate::config::IdentityHeaders;
use crate::decision::Request;

/// Headers some frameworks read as the "real" method. A publishable key's call is allowed
/// only if each of them names an allowed method too.
pub const METHOD_OVERRIDE_HEADERS: [&[u8]; 3] = [
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
];

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
    /// Which identity headers (in `IdentityHeaders::names()` order) the client sent.
    pub identity_sent: [bool; 4],
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

    /// What the decision needs of the request.
    pub fn request(&self) -> Request<'_> {
        Request {
            authorization: self.authorization(),
            method: self.method,
            path: self.path,
            method_overrides: self.method_overrides(),
        }
    }
}

/// Scans `(name, value)` pairs (names are lower-case, as Envoy gives them).
pub fn scan<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    identity: &IdentityHeaders,
) -> ScannedRequest<'a> {
    let names = identity.names();
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
            if let Some(slot) = scanned.authorization.get_mut(scanned.authorization_count) {
                *slot = value;
            }
            scanned.authorization_count += 1;
        } else if METHOD_OVERRIDE_HEADERS.contains(&name) {
            if let Some(slot) = scanned.overrides.get_mut(scanned.override_count) {
                *slot = value;
            }
            scanned.override_count += 1;
        } else {
            for (sent, identity_name) in scanned.identity_sent.iter_mut().zip(names) {
                *sent |= name == identity_name.as_bytes();
            }
        }
    }
    scanned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_pairs<'a>(pairs: &'a [(&'a str, &'a str)]) -> ScannedRequest<'a> {
        scan(
            pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &IdentityHeaders::default(),
        )
    }

    #[test]
    fn picks_out_what_the_decision_needs() {
        let pairs = [
            (":method", "GET"),
            (":path", "/v3/devices/1"),
            ("authorization", "token a"),
            ("x-keygate-key-id", "spoof"),
            ("x-http-method-override", "DELETE"),
        ];
        let s = scan_pairs(&pairs);
        assert_eq!(s.method, b"GET");
        assert_eq!(s.path, b"/v3/devices/1");
        assert_eq!(s.authorization(), &[&b"token a"[..]]);
        assert_eq!(s.identity_sent, [false, true, false, false]);
        assert_eq!(s.method_overrides(), Some(&[&b"DELETE"[..]][..]));
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
        assert!(scan_pairs(&[]).authorization().is_empty());
    }
}
