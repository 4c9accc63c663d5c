//! Reference models the targets compare keygate-core against: the publishable-key policy of
//! the fuzzed configs, written out by hand, and a path re-serializer.

use keygate_core::path::NormalizedPath;
use keygate_core::policy::{Policy, RetrieveById, Rule, Template};

/// The rule every fuzzed config adds to the default publishable policy.
pub const EVENTS_RULE: &str = "/v3/devices/{id}/events";

/// The default policy (GET/HEAD on `/v3/{c}/{id}` and `/api/v1/{c}/{id}`) plus
/// `POST /v3/devices/{id}/events`, built through keygate-core's own API.
pub fn policy() -> Policy {
    let template = |s: &str| Template::parse(s).expect("fixed template");
    let prefixes: Vec<Template> = keygate_core::config::DEFAULT_API_PREFIXES
        .iter()
        .map(|p| template(p))
        .collect();
    let events = Rule {
        methods: vec!["POST".to_owned()],
        template: template(EVENTS_RULE),
    };
    Policy::new(Some(RetrieveById::any_id(prefixes)), vec![events])
}

/// The characters a plain segment may hold (keygate-core keeps its own copy crate-private).
pub fn is_plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '@')
}

/// What [`policy`] should decide, written without keygate-core's matcher.
pub fn expected_allow(method: &[u8], path: &NormalizedPath) -> bool {
    if !path.segments.iter().all(|s| s.plain) {
        return false;
    }
    let segs: Vec<&str> = path.segments.iter().map(|s| s.text.as_str()).collect();
    matches!(
        (method, segs.as_slice()),
        (b"GET" | b"HEAD", ["v3", _, _] | ["api", "v1", _, _])
            | (b"POST", ["v3", "devices", _, "events"])
    )
}

/// A `:path` that normalises back to `path`: every byte that is not a plain character is
/// percent-encoded, so a decoded '/', '%', '?' or '#' stays inside its segment.
pub fn serialize(path: &NormalizedPath) -> String {
    let mut out = String::new();
    for segment in &path.segments {
        out.push('/');
        for b in segment.text.bytes() {
            if b.is_ascii() && is_plain_char(char::from(b)) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    if path.segments.is_empty() || path.trailing_slash {
        out.push('/');
    }
    out
}
