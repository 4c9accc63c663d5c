//! What the askama templates (`control-plane/templates/`) are given: page structs and the
//! small view models they show. Templates escape every value (askama escapes `.html`
//! templates by default), so nothing here is HTML.

use super::html::{asset_version, kind_label, relative, type_label};
use super::session::{NewKeys, Notice};
use super::usage_chart::{chart, last_used_words, safe_to_revoke, UsageChart};
use crate::clock::format_utc;
use crate::model::KeyUsageView;
use crate::model::KeyView;
use crate::rate_limits::describe;
use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;
use keygate_core::config::RawLimit;

/// The page's frame: its title, which header it has, and the session's CSRF token (for the
/// sign-out form) when signed in.
pub struct Chrome {
    pub title: String,
    pub asset_version: &'static str,
    pub operator: bool,
    pub csrf: Option<String>,
}

impl Chrome {
    pub fn operator(title: &str, csrf: Option<&str>) -> Chrome {
        Chrome {
            operator: true,
            ..Chrome::customer(title, csrf)
        }
    }

    pub fn customer(title: &str, csrf: Option<&str>) -> Chrome {
        Chrome {
            title: title.to_string(),
            asset_version: asset_version(),
            operator: false,
            csrf: csrf.map(String::from),
        }
    }
}

/// An instant: `2026-11-28T12:35:00Z` for machines, `2026-11-28 12:35 UTC` for people.
pub struct Stamp {
    pub iso: String,
    pub shown: String,
}

impl Stamp {
    pub fn new(unix: u64) -> Stamp {
        let iso = format_utc(unix);
        let shown = format!("{} {} UTC", &iso[..10], &iso[11..16]);
        Stamp { iso, shown }
    }
}

pub struct NoticeView {
    pub text: String,
    pub error: bool,
}

impl NoticeView {
    pub fn info(text: impl Into<String>) -> NoticeView {
        NoticeView {
            text: text.into(),
            error: false,
        }
    }

    pub fn error(text: impl Into<String>) -> NoticeView {
        NoticeView {
            text: text.into(),
            error: true,
        }
    }
}

impl From<Notice> for NoticeView {
    fn from(notice: Notice) -> NoticeView {
        match notice {
            Notice::Info(text) => NoticeView::info(text),
            Notice::Error(text) => NoticeView::error(text),
        }
    }
}

/// A key shown once, in full.
pub struct ShownKeyView {
    pub key_id: String,
    pub label: String,
    pub plaintext: String,
}

pub fn shown_keys(keys: Option<NewKeys>) -> Vec<ShownKeyView> {
    keys.map(|k| k.keys)
        .unwrap_or_default()
        .into_iter()
        .map(|k| ShownKeyView {
            key_id: k.key_id,
            label: kind_label(k.kind),
            plaintext: k.plaintext,
        })
        .collect()
}

/// One key as a table row shows it.
pub struct KeyRow {
    pub key_id: String,
    pub label: String,
    /// `secret test key sk_test_…a1B2`, for button labels and confirmations.
    pub what: String,
    pub hint: String,
    pub status: String,
    pub created: Stamp,
    pub rolled: Option<Stamp>,
    pub state_word: String,
    pub state_at: Option<Stamp>,
    pub state_relative: Option<String>,
    pub also_expires: Option<Stamp>,
    pub rollable: bool,
    pub no_roll_reason: String,
    /// The operator page's extras: the key that replaced this one, the enable/disable
    /// toggle, and the kind in words (for the history table).
    pub replaced_by: Option<String>,
    pub toggle: &'static str,
    pub toggle_label: &'static str,
    pub kind_label: String,
    /// The key's name, if it has one (never in the key map or logs).
    pub name: Option<String>,
    /// `last used 3 min ago` or `never used`.
    pub last_used: String,
    pub last_used_at: Option<Stamp>,
    /// Requests a day over the last 30 days (pages that show usage).
    pub chart: Option<UsageChart>,
    /// An old key in its grace period that nobody used since the roll.
    pub safe_to_revoke: bool,
    /// When its roll began (for the safe-to-revoke note).
    pub rolled_stamp: Option<Stamp>,
    /// The key's rate limit in words (`10 per second, burst 20`), and its numbers for the
    /// operator page's form (empty: no limit).
    pub rate_limit: Option<String>,
    pub rate_requests: String,
    pub rate_per: &'static str,
    pub rate_burst: String,
}

/// A rate limit for a form: in words (`10 per second, burst 20`) and its numbers (empty:
/// no limit).
pub struct LimitForm {
    pub words: Option<String>,
    pub requests: String,
    pub per: &'static str,
    pub burst: String,
}

impl LimitForm {
    pub fn new(limit: Option<&RawLimit>) -> LimitForm {
        LimitForm {
            words: limit.map(describe),
            requests: limit.map_or(String::new(), |l| l.requests.to_string()),
            per: limit.map_or("second", |l| l.per.as_str()),
            burst: limit
                .and_then(|l| l.burst)
                .map_or(String::new(), |b| b.to_string()),
        }
    }
}

impl KeyRow {
    /// `last_rolled`: when the key this one replaced was rolled, if it replaced one.
    pub fn new(key: &KeyView, last_rolled: Option<u64>, now: u64) -> KeyRow {
        let (state_word, state_at, state_relative, also_expires) = match key.status.as_str() {
            "expiring" => (
                "expiring at",
                key.expires_at,
                key.expires_at.map(|at| relative(at, now)),
                None,
            ),
            "disabled" => ("disabled since", key.disabled_at, None, key.expires_at),
            "revoked" => ("revoked at", key.revoked_at, None, None),
            "expired" => ("expired at", key.expires_at.or(key.removed_at), None, None),
            _ => ("active", None, None, None),
        };
        let (rollable, no_roll_reason) = if key.replaced_by.is_some() {
            (false, "Rolled: its replacement is listed above.")
        } else if matches!(key.status.as_str(), "active" | "disabled" | "expiring") {
            (true, "")
        } else {
            (false, "No longer in use.")
        };
        KeyRow {
            key_id: key.key_id.clone(),
            label: type_label(key.key_type).to_string(),
            what: format!("{} {}", kind_label(key.kind()).to_lowercase(), key.hint),
            hint: key.hint.clone(),
            status: key.status.clone(),
            created: Stamp::new(key.created_at),
            rolled: key.rolled_at.or(last_rolled).map(Stamp::new),
            state_word: state_word.to_string(),
            state_at: state_at.map(Stamp::new),
            state_relative,
            also_expires: also_expires.map(Stamp::new),
            rollable,
            no_roll_reason: no_roll_reason.to_string(),
            replaced_by: key.replaced_by.clone(),
            toggle: if key.status == "disabled" {
                "enable"
            } else {
                "disable"
            },
            toggle_label: if key.status == "disabled" {
                "Enable"
            } else {
                "Disable"
            },
            kind_label: kind_label(key.kind()),
            name: key.name.clone(),
            rate_limit: key.rate_limit.as_ref().map(describe),
            rate_requests: key
                .rate_limit
                .map_or(String::new(), |l| l.requests.to_string()),
            rate_per: key.rate_limit.map_or("second", |l| l.per.as_str()),
            rate_burst: key
                .rate_limit
                .and_then(|l| l.burst)
                .map_or(String::new(), |b| b.to_string()),
            last_used: last_used_words(key, now),
            last_used_at: key.last_used_at.map(Stamp::new),
            chart: None,
            safe_to_revoke: false,
            rolled_stamp: key.rolled_at.map(Stamp::new),
        }
    }

    /// The row with the key's 30-day chart and, for an old key in its grace period, whether
    /// it is safe to revoke early.
    pub fn with_usage(
        mut self,
        key: &KeyView,
        usage: Option<&KeyUsageView>,
        last_report_at: Option<u64>,
        now: u64,
    ) -> KeyRow {
        self.chart = Some(chart(usage, now));
        self.safe_to_revoke = safe_to_revoke(key, last_report_at);
        self
    }
}

/// Renders a template as an HTML answer; a template that fails to render (it cannot, short
/// of a bug) is a 500 with the detail in the log.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => super::html(status, body),
        Err(e) => {
            crate::log::log_event(&format!("internal error (page template): {e}"));
            super::html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Internal error</title><p>Internal error; see the server log.</p>"
                    .into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Template)]
    #[template(
        source = "{% extends \"base.html\" %}{% block content %}<p>{{ text }}</p>{% endblock %}",
        ext = "html"
    )]
    struct Probe {
        chrome: Chrome,
        text: String,
    }

    #[test]
    fn pages_escape_values_link_assets_by_version_and_carry_csrf_when_signed_in() {
        let signed_in = Probe {
            chrome: Chrome::operator("A<b>", Some("tok\"en")),
            text: "<script>alert('x')</script> & \"y\"".into(),
        }
        .render()
        .expect("render");
        assert!(signed_in.contains("<title>A&lt;b&gt; · keygate</title>"));
        assert!(
            signed_in.contains(
                "&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt; &amp; &quot;y&quot;"
            ) || signed_in.contains("&lt;script&gt;"),
            "{signed_in}"
        );
        assert!(!signed_in.contains("<script>alert"));
        assert!(signed_in.contains("name=\"csrf\" value=\"tok&quot;en\""));
        assert!(signed_in.contains("/ui/app.js?v="));
        assert!(signed_in.contains("action=\"/ui/logout\""));
        let signed_out = Probe {
            chrome: Chrome::customer("Sign in", None),
            text: String::new(),
        }
        .render()
        .expect("render");
        assert!(!signed_out.contains("/logout"));
        assert!(signed_out.contains("href=\"/signup\""));
        let customer = Probe {
            chrome: Chrome::customer("Settings", Some("t")),
            text: String::new(),
        }
        .render()
        .expect("render");
        assert!(customer.contains("action=\"/logout\"") && !customer.contains("/ui/logout"));
    }

    #[test]
    fn stamps_are_utc_for_machines_and_people() {
        let stamp = Stamp::new(1_700_000_000);
        assert_eq!(stamp.iso, "2023-11-14T22:13:20Z");
        assert_eq!(stamp.shown, "2023-11-14 22:13 UTC");
    }
}
