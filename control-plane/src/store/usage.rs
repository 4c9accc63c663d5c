//! Usage the filters report: per key, requests allowed and refused, and when it was last
//! used. The store keeps each key's `last_used_at` (minute precision, never going back) and
//! per-day counts (UTC days), and every report id it took, so a retried report is never
//! counted twice. Counts and report ids older than the retention period are pruned.
//!
//! What a report becomes (`plan`) is decided here, once, for both backends.

use super::StoreResult;
use std::collections::{BTreeMap, HashMap};

/// A report as the endpoint accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub report_id: String,
    pub entries: Vec<UsageEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    pub key_id: String,
    pub allowed: u64,
    pub refused: u64,
    /// Unix seconds; 0 when the reporter did not say.
    pub last_used: u64,
}

/// What the store writes for one key of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    /// Days since 1970-01-01 (UTC) the counts belong to.
    pub day: u64,
    pub allowed: u64,
    pub refused: u64,
    /// Minute-precision last use, if the report gave one.
    pub last_used_minute: Option<u64>,
}

/// How a report was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStored {
    /// Stored; `keys` of its keys are known (the others were ignored: revoked meanwhile,
    /// or not ours).
    Stored { keys: usize },
    /// A report with this id was stored before: nothing was counted again.
    Duplicate,
}

/// One key's counts on one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyUsage {
    pub key_id: String,
    pub day: u64,
    pub allowed: u64,
    pub refused: u64,
}

/// The largest total a day's counter holds (the SQL integer's largest): totals saturate
/// there rather than overflow.
pub const MAX_COUNT: u64 = i64::MAX as u64;

/// How long usage is kept unless `serve --usage-retention` says otherwise.
pub const DEFAULT_RETENTION_DAYS: u64 = 90;

pub const SECONDS_PER_DAY: u64 = 86_400;

pub fn day_of(unix: u64) -> u64 {
    unix / SECONDS_PER_DAY
}

/// How far back a report's last use may date its counts: a report that arrives late (a
/// retry across midnight) still counts on the day of its requests; older or missing times
/// (a reporter's wrong clock) count on the day the report arrives.
pub const LATE_REPORT_SECONDS: u64 = 2 * SECONDS_PER_DAY;

/// Turns a report into one row per key: entries for the same key are merged (counts added,
/// the latest use kept), a use in the future (a reporter's clock ahead of ours) counts as
/// now, and the counts go to the day of the last use when it is recent
/// (`LATE_REPORT_SECONDS`), else of `now`. Rows are sorted by key id, so that concurrent
/// writers lock rows in the same order.
pub fn plan(report: &UsageReport, now: u64) -> Vec<UsageRow> {
    let mut merged: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for entry in &report.entries {
        let slot = merged.entry(entry.key_id.as_str()).or_default();
        slot.0 = slot.0.saturating_add(entry.allowed).min(MAX_COUNT);
        slot.1 = slot.1.saturating_add(entry.refused).min(MAX_COUNT);
        slot.2 = slot.2.max(entry.last_used.min(now));
    }
    merged
        .into_iter()
        .map(|(key_id, (allowed, refused, last_used))| {
            let used = (last_used > 0).then_some(last_used);
            let dated = used.filter(|&t| t.saturating_add(LATE_REPORT_SECONDS) >= now);
            UsageRow {
                key_id: key_id.to_string(),
                day: day_of(dated.unwrap_or(now)),
                allowed,
                refused,
                last_used_minute: used.map(|t| t - t % 60),
            }
        })
        .collect()
}

/// What the store keeps of the filters' usage reports. Writes are one transaction each and
/// safe to run concurrently from many replicas.
pub trait UsageStore {
    /// Stores a report unless its id was stored before (then `Duplicate`, nothing counted).
    /// Unknown key ids are ignored.
    fn record_usage(&self, report: &UsageReport, now: u64) -> StoreResult<UsageStored>;
    /// Deletes per-day counts of days before `before_day` and report ids received before
    /// `reports_before` (unix seconds). Answers how many rows went.
    fn prune_usage(&self, before_day: u64, reports_before: u64) -> StoreResult<u64>;
    /// The last use of each key that has one (one account's keys, or all).
    fn last_used(&self, account_id: Option<&str>) -> StoreResult<HashMap<String, u64>>;
    /// One account's per-day counts from `from_day` on.
    fn daily_usage(&self, account_id: &str, from_day: u64) -> StoreResult<Vec<DailyUsage>>;
    /// When the last report was stored (any reporter), if any.
    fn last_report_at(&self) -> StoreResult<Option<u64>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_id: &str, allowed: u64, refused: u64, last_used: u64) -> UsageEntry {
        UsageEntry {
            key_id: key_id.into(),
            allowed,
            refused,
            last_used,
        }
    }

    #[test]
    fn entries_of_one_key_merge_and_land_on_the_day_of_their_last_use() {
        let now = 10 * SECONDS_PER_DAY + 500;
        let report = UsageReport {
            report_id: "r".repeat(16),
            entries: vec![
                entry("key_b", 1, 0, now - SECONDS_PER_DAY),
                entry("key_a", 2, 1, now - 30),
                entry("key_a", 3, 4, now - 100),
            ],
        };
        let rows = plan(&report, now);
        assert_eq!(
            rows,
            vec![
                UsageRow {
                    key_id: "key_a".into(),
                    day: 10,
                    allowed: 5,
                    refused: 5,
                    last_used_minute: Some(now - 30 - (now - 30) % 60),
                },
                UsageRow {
                    key_id: "key_b".into(),
                    day: 9,
                    allowed: 1,
                    refused: 0,
                    last_used_minute: Some((now - SECONDS_PER_DAY) / 60 * 60),
                },
            ]
        );
    }

    #[test]
    fn a_future_use_counts_as_now_and_a_missing_one_sets_no_time() {
        let now = 3 * SECONDS_PER_DAY + 7;
        let report = UsageReport {
            report_id: "r".repeat(16),
            entries: vec![entry("key_a", 1, 0, u64::MAX), entry("key_b", 0, 2, 0)],
        };
        let rows = plan(&report, now);
        assert_eq!(rows[0].last_used_minute, Some(now - now % 60));
        assert_eq!(rows[0].day, 3);
        assert_eq!(rows[1].last_used_minute, None);
        assert_eq!(rows[1].day, 3);
    }

    #[test]
    fn counts_of_an_old_or_wrong_last_use_go_to_today() {
        let now = 30 * SECONDS_PER_DAY + 5;
        let report = UsageReport {
            report_id: "r".repeat(16),
            entries: vec![
                entry("key_a", 1, 0, 1),
                entry("key_b", 1, 0, now - 3 * SECONDS_PER_DAY),
            ],
        };
        let rows = plan(&report, now);
        assert_eq!((rows[0].day, rows[1].day), (30, 30));
        assert_eq!(rows[0].last_used_minute, Some(0), "the time itself is kept");
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let report = UsageReport {
            report_id: "r".repeat(16),
            entries: vec![entry("k", u64::MAX, 0, 1), entry("k", u64::MAX, 0, 1)],
        };
        assert_eq!(plan(&report, 100)[0].allowed, MAX_COUNT);
    }
}
