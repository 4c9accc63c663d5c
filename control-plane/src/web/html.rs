//! What pages share besides their templates: ids made safe for URLs, times and key kinds in
//! words, and the static assets (linked by a content hash).

use keygate_core::digest::Digest;
use keygate_core::key::{Environment, KeyKind, KeyType};
use std::fmt::Write as _;
use std::sync::OnceLock;

pub const APP_CSS: &str = include_str!("assets/app.css");
pub const APP_JS: &str = include_str!("assets/app.js");

/// Percent-encodes everything but `[A-Za-z0-9_-]`, for an id placed in a URL path.
pub fn url_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `in 23 h 59 min`, `in 40 s`, `5 min ago`: coarse, for people.
pub fn relative(unix: u64, now: u64) -> String {
    let (secs, future) = if unix >= now {
        (unix - now, true)
    } else {
        (now - unix, false)
    };
    let text = if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs / 60)
    } else if secs < 2 * 86_400 {
        let (h, m) = (secs / 3600, secs % 3600 / 60);
        if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        }
    } else {
        let (d, h) = (secs / 86_400, secs % 86_400 / 3600);
        if h == 0 {
            format!("{d} d")
        } else {
            format!("{d} d {h} h")
        }
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// When a key was last used, for people: `just now`, `3 min ago`, `2 d 4 h ago`. Times are
/// minute precision, so under a minute is "just now".
pub fn used_ago(last_used_at: u64, now: u64) -> String {
    if now < last_used_at.saturating_add(60) {
        "just now".to_string()
    } else {
        relative(last_used_at, now)
    }
}

/// `Secret test key`, as HyperTrack names them.
pub fn kind_label(kind: KeyKind) -> String {
    format!(
        "{} {} key",
        type_label(kind.key_type),
        env_word(kind.environment)
    )
}

pub fn type_label(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Secret => "Secret",
        KeyType::Publishable => "Publishable",
    }
}

pub fn env_word(environment: Environment) -> &'static str {
    match environment {
        Environment::Test => "test",
        Environment::Production => "production",
    }
}

/// A short content hash for an asset URL, so assets can be cached for good.
pub fn asset_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut both = String::with_capacity(APP_CSS.len() + APP_JS.len());
        both.push_str(APP_CSS);
        both.push_str(APP_JS);
        Digest::of_key(&both).to_hex()[..12].to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_keep_only_safe_characters() {
        assert_eq!(url_segment("acct_AbC-09"), "acct_AbC-09");
        assert_eq!(url_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(url_segment("é"), "%C3%A9");
    }

    #[test]
    fn times_are_relative_for_people() {
        assert_eq!(relative(1_000 + 86_400, 1_000), "in 24 h");
        assert_eq!(relative(1_000 + 7 * 86_400, 1_000), "in 7 d");
        assert_eq!(relative(1_000 + 3_599, 1_000), "in 59 min");
        assert_eq!(relative(1_000, 1_030), "30 s ago");
        assert_eq!(used_ago(1_020, 1_030), "just now");
        assert_eq!(used_ago(1_200, 1_030), "just now");
        assert_eq!(used_ago(1_000, 1_000 + 185), "3 min ago");
    }
}
