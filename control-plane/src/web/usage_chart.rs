//! A key's use as the pages show it: "last used 3 min ago", a 30-day bar chart of its
//! requests (an inline SVG the templates draw from these numbers: no script, no style
//! attribute, nothing fetched), and whether an old key in its grace period is safe to revoke
//! early.

use super::html::used_ago;
use crate::clock::format_day;
use crate::model::{KeyUsageView, KeyView};
use crate::store::usage::day_of;
use std::collections::HashMap;

/// Days the chart covers, today included.
pub const CHART_DAYS: u64 = 30;
const BAR_WIDTH: u32 = 3;
const BAR_STEP: u32 = 4;
const CHART_HEIGHT: u32 = 28;
/// The tallest bar; the rest of the height is the base line's.
const MAX_BAR: u32 = 26;
/// How long after a roll usage reports must have kept arriving before "not used since the
/// roll" is believed: every filter reports within seconds, and times are to the minute.
pub const SETTLE_SECONDS: u64 = 120;

/// One day's bar: requests allowed (bottom) and refused (stacked on top), in pixels.
pub struct Bar {
    pub x: u32,
    pub allowed_y: u32,
    pub allowed_h: u32,
    pub refused_y: u32,
    pub refused_h: u32,
    /// `2026-05-01: 120 allowed, 3 refused`.
    pub title: String,
}

pub struct UsageChart {
    pub width: u32,
    pub height: u32,
    pub bar_width: u32,
    pub base_y: u32,
    pub bars: Vec<Bar>,
    /// `Requests in the last 30 days: 1,234 allowed, 5 refused`.
    pub summary: String,
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The chart of `usage` over the `CHART_DAYS` days up to today.
pub fn chart(usage: Option<&KeyUsageView>, now: u64) -> UsageChart {
    let first = day_of(now).saturating_sub(CHART_DAYS - 1);
    let mut by_date: HashMap<&str, (u64, u64)> = HashMap::new();
    if let Some(usage) = usage {
        for day in &usage.days {
            by_date.insert(day.date.as_str(), (day.allowed, day.refused));
        }
    }
    let days: Vec<(String, u64, u64)> = (0..CHART_DAYS)
        .map(|i| {
            let date = format_day(first + i);
            let (allowed, refused) = by_date.get(date.as_str()).copied().unwrap_or_default();
            (date, allowed, refused)
        })
        .collect();
    let tallest = days
        .iter()
        .map(|(_, a, r)| a.saturating_add(*r))
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut allowed_total, mut refused_total) = (0u64, 0u64);
    let bars = days
        .into_iter()
        .enumerate()
        .map(|(i, (date, allowed, refused))| {
            allowed_total = allowed_total.saturating_add(allowed);
            refused_total = refused_total.saturating_add(refused);
            let total_h = scale(allowed.saturating_add(refused), tallest);
            let allowed_h = if refused == 0 {
                total_h
            } else {
                scale(allowed, tallest).min(total_h.saturating_sub(1))
            };
            let refused_h = total_h - allowed_h;
            let base = MAX_BAR;
            Bar {
                x: i as u32 * BAR_STEP,
                allowed_y: base - allowed_h,
                allowed_h,
                refused_y: base - total_h,
                refused_h,
                title: format!(
                    "{date}: {} allowed, {} refused",
                    thousands(allowed),
                    thousands(refused)
                ),
            }
        })
        .collect();
    UsageChart {
        width: CHART_DAYS as u32 * BAR_STEP,
        height: CHART_HEIGHT,
        bar_width: BAR_WIDTH,
        base_y: MAX_BAR + 1,
        bars,
        summary: format!(
            "Requests in the last {CHART_DAYS} days: {} allowed, {} refused",
            thousands(allowed_total),
            thousands(refused_total)
        ),
    }
}

/// Pixels for `value` of `tallest`: at least one for any request, so a quiet day shows.
fn scale(value: u64, tallest: u64) -> u32 {
    if value == 0 {
        return 0;
    }
    let h = (u128::from(value) * u128::from(MAX_BAR) / u128::from(tallest)) as u32;
    h.clamp(1, MAX_BAR)
}

/// `last used 3 min ago`, or `never used` (as far as the filters reported).
pub fn last_used_words(key: &KeyView, now: u64) -> String {
    match key.last_used_at {
        Some(at) => format!("last used {}", used_ago(at, now)),
        None => "never used".to_string(),
    }
}

/// True when `key` is an old key in its roll's grace period that nobody has used since the
/// grace began: revoking it now breaks nothing. Needs proof that usage was being reported
/// after the roll (a report received `SETTLE_SECONDS` after it), and a last use whose whole
/// minute ended before the roll.
pub fn safe_to_revoke(key: &KeyView, last_report_at: Option<u64>) -> bool {
    let Some(rolled_at) = key.rolled_at else {
        return false;
    };
    let reported_since = last_report_at.is_some_and(|at| at >= rolled_at + SETTLE_SECONDS);
    let unused_since = match key.last_used_at {
        None => true,
        Some(minute) => minute.saturating_add(60) <= rolled_at,
    };
    key.status == "expiring" && reported_since && unused_since
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UsageDayView;
    use keygate_core::key::{Environment, KeyType};

    const NOW: u64 = 19_675 * 86_400 + 3600; // 2023-11-14 01:00 UTC

    fn usage(days: &[(&str, u64, u64)]) -> KeyUsageView {
        KeyUsageView {
            key_id: "key_a".into(),
            last_used_at: None,
            allowed: 0,
            refused: 0,
            days: days
                .iter()
                .map(|&(date, allowed, refused)| UsageDayView {
                    date: date.into(),
                    allowed,
                    refused,
                })
                .collect(),
        }
    }

    #[test]
    fn the_chart_has_a_bar_a_day_scaled_to_the_busiest() {
        let chart = chart(
            Some(&usage(&[
                ("2023-11-14", 100, 0),
                ("2023-11-13", 50, 50),
                ("2023-10-01", 9, 9),
            ])),
            NOW,
        );
        assert_eq!(chart.bars.len(), 30);
        assert_eq!(chart.width, 120);
        let today = &chart.bars[29];
        assert_eq!((today.allowed_h, today.refused_h), (26, 0));
        assert_eq!(today.allowed_y, 0);
        let yesterday = &chart.bars[28];
        assert_eq!((yesterday.allowed_h, yesterday.refused_h), (13, 13));
        assert_eq!(yesterday.refused_y, 0);
        assert!(chart.bars[0].title.starts_with("2023-10-16: 0 allowed"));
        assert_eq!(
            chart.summary, "Requests in the last 30 days: 150 allowed, 50 refused",
            "days before the chart's first are not counted"
        );
        // A single request still shows.
        let chart = super::chart(Some(&usage(&[("2023-11-14", 1_000_000, 1)])), NOW);
        assert_eq!(
            (chart.bars[29].allowed_h, chart.bars[29].refused_h),
            (25, 1)
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    fn rolled_key(rolled_at: u64, last_used_at: Option<u64>) -> KeyView {
        KeyView {
            key_id: "key_old".into(),
            account_id: "acct_a".into(),
            key_type: KeyType::Secret,
            environment: Environment::Test,
            hint: "sk_test_…abcd".into(),
            digest: "00".into(),
            origin: "issued".into(),
            status: "expiring".into(),
            created_at: 0,
            disabled_at: None,
            expires_at: Some(rolled_at + 86_400),
            rolled_at: Some(rolled_at),
            replaced_by: Some("key_new".into()),
            revoked_at: None,
            removed_at: None,
            name: None,
            last_used_at,
            rate_limit: None,
        }
    }

    #[test]
    fn an_old_key_is_safe_to_revoke_only_when_unused_since_its_roll_and_reports_kept_coming() {
        let roll = 10_000;
        let settled = Some(roll + SETTLE_SECONDS);
        assert!(safe_to_revoke(&rolled_key(roll, None), settled));
        assert!(safe_to_revoke(&rolled_key(roll, Some(roll - 120)), settled));
        // Used in the minute of the roll: maybe after it.
        assert!(!safe_to_revoke(&rolled_key(roll, Some(roll - 30)), settled));
        assert!(!safe_to_revoke(&rolled_key(roll, Some(roll + 60)), settled));
        // No report since the roll: nothing is known.
        assert!(!safe_to_revoke(&rolled_key(roll, None), Some(roll + 10)));
        assert!(!safe_to_revoke(&rolled_key(roll, None), None));
        // Not a rolled key in its grace.
        let mut key = rolled_key(roll, None);
        key.status = "active".into();
        assert!(!safe_to_revoke(&key, settled));
        key.rolled_at = None;
        key.status = "expiring".into();
        assert!(!safe_to_revoke(&key, settled));
    }
}
