//! HTML building blocks: escaping, the page layout, times, and the static assets.
//!
//! Everything that comes from the store or the request goes through `esc` (text and
//! attribute values alike); ids that go into URLs go through `url_segment` first.

use crate::clock::format_utc;
use keygate_core::digest::Digest;
use keygate_core::key::{Environment, KeyKind, KeyType};
use std::fmt::Write as _;
use std::sync::OnceLock;

pub const APP_CSS: &str = include_str!("assets/app.css");
pub const APP_JS: &str = include_str!("assets/app.js");

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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

/// `2026-11-28 12:35 UTC` in a `<time>` element carrying the exact instant.
pub fn time(unix: u64) -> String {
    let iso = format_utc(unix);
    let shown = format!("{} {} UTC", &iso[..10], &iso[11..16]);
    format!("<time datetime=\"{iso}\" title=\"{iso}\">{shown}</time>")
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

/// What the page header shows: the sign-out form needs the session's CSRF token.
pub struct Chrome<'a> {
    pub title: &'a str,
    /// Set when signed in.
    pub csrf: Option<&'a str>,
}

/// The whole document around `main`.
pub fn page(chrome: &Chrome<'_>, main: &str) -> String {
    let version = asset_version();
    let mut out = String::with_capacity(main.len() + 1500);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"same-origin\">\n\
         <title>{title} · keygate</title>\n\
         <link rel=\"stylesheet\" href=\"/ui/app.css?v={version}\">\n\
         <script src=\"/ui/app.js?v={version}\" defer></script>\n</head>\n<body>\n\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header class=\"top\">\n<a class=\"brand\" href=\"/ui/accounts\">keygate</a>\n",
        title = esc(chrome.title),
    );
    if let Some(csrf) = chrome.csrf {
        let _ = write!(
            out,
            "<nav aria-label=\"Main\"><a href=\"/ui/accounts\">Accounts</a>\n\
             <form method=\"post\" action=\"/ui/logout\" class=\"inline\">{}\
             <button type=\"submit\" class=\"link\">Sign out</button></form></nav>\n",
            csrf_field(csrf)
        );
    }
    let _ = write!(
        out,
        "</header>\n<main id=\"main\" tabindex=\"-1\">\n{main}</main>\n</body>\n</html>\n"
    );
    out
}

pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A message box: `role="status"` for news, `role="alert"` for errors.
pub fn notice(text: &str, error: bool) -> String {
    if error {
        format!(
            "<div class=\"notice error\" role=\"alert\">{}</div>\n",
            esc(text)
        )
    } else {
        format!(
            "<div class=\"notice ok\" role=\"status\">{}</div>\n",
            esc(text)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(esc("Acme · ünïcode"), "Acme · ünïcode");
    }

    #[test]
    fn url_segments_keep_only_safe_characters() {
        assert_eq!(url_segment("acct_AbC-09"), "acct_AbC-09");
        assert_eq!(url_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(url_segment("é"), "%C3%A9");
    }

    #[test]
    fn times_are_utc_and_relative() {
        assert_eq!(
            time(1_700_000_000),
            "<time datetime=\"2023-11-14T22:13:20Z\" title=\"2023-11-14T22:13:20Z\">\
             2023-11-14 22:13 UTC</time>"
        );
        assert_eq!(relative(1_000 + 86_400, 1_000), "in 24 h");
        assert_eq!(relative(1_000 + 7 * 86_400, 1_000), "in 7 d");
        assert_eq!(relative(1_000 + 3_599, 1_000), "in 59 min");
        assert_eq!(relative(1_000, 1_030), "30 s ago");
    }

    #[test]
    fn pages_link_assets_by_version_and_carry_csrf_when_signed_in() {
        let signed_in = page(
            &Chrome {
                title: "A<b>",
                csrf: Some("tok\"en"),
            },
            "<p>x</p>",
        );
        assert!(signed_in.contains("<title>A&lt;b&gt; · keygate</title>"));
        assert!(signed_in.contains("name=\"csrf\" value=\"tok&quot;en\""));
        assert!(signed_in.contains("/ui/app.js?v="));
        assert!(!signed_in.contains("<script>"));
        let signed_out = page(
            &Chrome {
                title: "Sign in",
                csrf: None,
            },
            "",
        );
        assert!(!signed_out.contains("/ui/logout"));
    }
}
