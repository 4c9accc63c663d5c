//! `UsageStore` on SQLite: one write transaction per report (SQLite takes one writer at a
//! time, so reports from many Envoys simply queue).

use super::usage::{plan, DailyUsage, UsageReport, UsageStore, UsageStored, MAX_COUNT};
use super::{SqliteStore, StoreResult};
use rusqlite::{params, OptionalExtension};
use std::collections::HashMap;

impl UsageStore for SqliteStore {
    fn record_usage(&self, report: &UsageReport, now: u64) -> StoreResult<UsageStored> {
        let rows = plan(report, now);
        self.write(|tx| {
            let fresh = tx.execute(
                "INSERT INTO usage_reports (id, received_at) VALUES (?1, ?2) \
                 ON CONFLICT (id) DO NOTHING",
                params![report.report_id, now],
            )?;
            if fresh == 0 {
                return Ok(UsageStored::Duplicate);
            }
            let mut known = tx.prepare_cached("SELECT 1 FROM keys WHERE id = ?1")?;
            // Totals saturate at the integer's largest (SQLite would turn an overflowing sum
            // into a float).
            let mut count = tx.prepare_cached(
                "INSERT INTO key_usage_days (key_id, day, allowed, refused) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key_id, day) DO UPDATE SET \
                 allowed = CASE WHEN allowed > ?5 - excluded.allowed THEN ?5 \
                           ELSE allowed + excluded.allowed END, \
                 refused = CASE WHEN refused > ?5 - excluded.refused THEN ?5 \
                           ELSE refused + excluded.refused END",
            )?;
            let mut last_used = tx.prepare_cached(
                "INSERT INTO key_last_used (key_id, last_used_at) VALUES (?1, ?2) \
                 ON CONFLICT (key_id) DO UPDATE SET \
                 last_used_at = MAX(last_used_at, excluded.last_used_at)",
            )?;
            let mut keys = 0;
            for row in &rows {
                if known
                    .query_row([&row.key_id], |_| Ok(()))
                    .optional()?
                    .is_none()
                {
                    continue;
                }
                keys += 1;
                if row.allowed > 0 || row.refused > 0 {
                    count.execute(params![
                        row.key_id,
                        row.day,
                        row.allowed,
                        row.refused,
                        MAX_COUNT
                    ])?;
                }
                if let Some(minute) = row.last_used_minute {
                    last_used.execute(params![row.key_id, minute])?;
                }
            }
            Ok(UsageStored::Stored { keys })
        })
    }

    fn prune_usage(&self, before_day: u64, reports_before: u64) -> StoreResult<u64> {
        self.write(|tx| {
            let days = tx.execute("DELETE FROM key_usage_days WHERE day < ?1", [before_day])?;
            let reports = tx.execute(
                "DELETE FROM usage_reports WHERE received_at < ?1",
                [reports_before],
            )?;
            Ok((days + reports) as u64)
        })
    }

    fn last_used(&self, account_id: Option<&str>) -> StoreResult<HashMap<String, u64>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT u.key_id, u.last_used_at FROM key_last_used u JOIN keys k \
                 ON k.id = u.key_id WHERE ?1 IS NULL OR k.account_id = ?1",
            )?;
            let found = stmt
                .query_map([account_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<HashMap<_, _>, _>>()?;
            Ok(found)
        })
    }

    fn daily_usage(&self, account_id: &str, from_day: u64) -> StoreResult<Vec<DailyUsage>> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT d.key_id, d.day, d.allowed, d.refused FROM key_usage_days d \
                 JOIN keys k ON k.id = d.key_id WHERE k.account_id = ?1 AND d.day >= ?2 \
                 ORDER BY d.key_id, d.day",
            )?;
            let days = stmt
                .query_map(params![account_id, from_day], |r| {
                    Ok(DailyUsage {
                        key_id: r.get(0)?,
                        day: r.get(1)?,
                        allowed: r.get(2)?,
                        refused: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(days)
        })
    }

    fn last_report_at(&self) -> StoreResult<Option<u64>> {
        self.read(|tx| {
            Ok(
                tx.query_row("SELECT MAX(received_at) FROM usage_reports", [], |r| {
                    r.get(0)
                })?,
            )
        })
    }
}
