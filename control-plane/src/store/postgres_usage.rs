//! `UsageStore` on PostgreSQL. Reports from many Envoys reach many replicas at once: the
//! report id's primary key makes a retried report a no-op whichever replica takes it (the
//! second insert waits for the first to commit, then finds it), and counts are added with
//! `ON CONFLICT … DO UPDATE` in key-id order, so concurrent reports never lose an update
//! nor deadlock on each other. Usage never takes the key map's row lock.

use super::postgres::{signed, unsigned, WRITE_BEGIN};
use super::usage::{plan, DailyUsage, UsageReport, UsageStore, UsageStored, MAX_COUNT};
use super::{PostgresStore, StoreResult};
use std::collections::HashMap;

impl UsageStore for PostgresStore {
    fn record_usage(&self, report: &UsageReport, now: u64) -> StoreResult<UsageStored> {
        let rows = plan(report, now);
        let now = signed(now)?;
        let max = signed(MAX_COUNT)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut days = Vec::with_capacity(rows.len());
        let mut allowed = Vec::with_capacity(rows.len());
        let mut refused = Vec::with_capacity(rows.len());
        let mut used_ids = Vec::new();
        let mut used_at = Vec::new();
        for row in &rows {
            if row.allowed > 0 || row.refused > 0 {
                ids.push(row.key_id.as_str());
                days.push(signed(row.day)?);
                allowed.push(signed(row.allowed)?);
                refused.push(signed(row.refused)?);
            }
            if let Some(minute) = row.last_used_minute {
                used_ids.push(row.key_id.as_str());
                used_at.push(signed(minute)?);
            }
        }
        let all_ids: Vec<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
        self.transaction(WRITE_BEGIN, |c| {
            let fresh = c.execute(
                "INSERT INTO usage_reports (id, received_at) VALUES ($1, $2) \
                 ON CONFLICT (id) DO NOTHING",
                &[&report.report_id, &now],
            )?;
            if fresh == 0 {
                return Ok(UsageStored::Duplicate);
            }
            let known: i64 = c
                .query_one("SELECT count(*) FROM keys WHERE id = ANY($1)", &[&all_ids])?
                .try_get(0)?;
            // Unknown ids fall out in the join; the sums saturate at BIGINT's largest.
            c.execute(
                "INSERT INTO key_usage_days (key_id, day, allowed, refused) \
                 SELECT u.key_id, u.day, u.allowed, u.refused \
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                   AS u(key_id, day, allowed, refused) \
                 JOIN keys k ON k.id = u.key_id ORDER BY u.key_id \
                 ON CONFLICT (key_id, day) DO UPDATE SET \
                 allowed = CASE WHEN key_usage_days.allowed > $5 - excluded.allowed THEN $5 \
                           ELSE key_usage_days.allowed + excluded.allowed END, \
                 refused = CASE WHEN key_usage_days.refused > $5 - excluded.refused THEN $5 \
                           ELSE key_usage_days.refused + excluded.refused END",
                &[&ids, &days, &allowed, &refused, &max],
            )?;
            c.execute(
                "INSERT INTO key_last_used (key_id, last_used_at) \
                 SELECT u.key_id, u.at FROM UNNEST($1::text[], $2::bigint[]) AS u(key_id, at) \
                 JOIN keys k ON k.id = u.key_id ORDER BY u.key_id \
                 ON CONFLICT (key_id) DO UPDATE SET \
                 last_used_at = GREATEST(key_last_used.last_used_at, excluded.last_used_at)",
                &[&used_ids, &used_at],
            )?;
            Ok(UsageStored::Stored {
                keys: usize::try_from(known).unwrap_or(0),
            })
        })
    }

    fn prune_usage(&self, before_day: u64, reports_before: u64) -> StoreResult<u64> {
        let before_day = signed(before_day)?;
        let reports_before = signed(reports_before)?;
        self.transaction(WRITE_BEGIN, |c| {
            let days = c.execute("DELETE FROM key_usage_days WHERE day < $1", &[&before_day])?;
            let reports = c.execute(
                "DELETE FROM usage_reports WHERE received_at < $1",
                &[&reports_before],
            )?;
            Ok(days + reports)
        })
    }

    fn last_used(&self, account_id: Option<&str>) -> StoreResult<HashMap<String, u64>> {
        self.read(|c| {
            c.query(
                "SELECT u.key_id, u.last_used_at FROM key_last_used u JOIN keys k \
                 ON k.id = u.key_id WHERE $1::text IS NULL OR k.account_id = $1",
                &[&account_id],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, unsigned(row.try_get(1)?)?)))
            .collect()
        })
    }

    fn daily_usage(&self, account_id: &str, from_day: u64) -> StoreResult<Vec<DailyUsage>> {
        let from_day = signed(from_day)?;
        self.read(|c| {
            c.query(
                "SELECT d.key_id, d.day, d.allowed, d.refused FROM key_usage_days d \
                 JOIN keys k ON k.id = d.key_id WHERE k.account_id = $1 AND d.day >= $2 \
                 ORDER BY d.key_id COLLATE \"C\", d.day",
                &[&account_id, &from_day],
            )?
            .iter()
            .map(|row| {
                Ok(DailyUsage {
                    key_id: row.try_get(0)?,
                    day: unsigned(row.try_get(1)?)?,
                    allowed: unsigned(row.try_get(2)?)?,
                    refused: unsigned(row.try_get(3)?)?,
                })
            })
            .collect()
        })
    }

    fn last_report_at(&self) -> StoreResult<Option<u64>> {
        self.read(|c| {
            let at: Option<i64> = c
                .query_one("SELECT MAX(received_at) FROM usage_reports", &[])?
                .try_get(0)?;
            at.map(unsigned).transpose()
        })
    }
}
