//! What happened to keys, for the API, the CLI and the pages: the audit trail, and each
//! key's use as the filters reported it.

use crate::clock::format_day;
use crate::model::{AccountUsageView, AuditEventView, AuditListView, KeyUsageView, UsageDayView};
use crate::service::{Service, ServiceError, ServiceResult};
use crate::store::audit::MAX_AUDIT_LIMIT;
use crate::store::usage::{day_of, UsageReport, UsageStored};
use crate::store::AuditQuery;
use std::collections::BTreeMap;

/// The longest span of days a usage query covers.
pub const MAX_USAGE_DAYS: u64 = 366;

impl Service {
    /// A page of the audit trail, newest first.
    pub fn audit(&self, query: &AuditQuery) -> ServiceResult<AuditListView> {
        if query.limit == 0 || query.limit > MAX_AUDIT_LIMIT {
            return Err(ServiceError::Invalid(format!(
                "limit must be 1 to {MAX_AUDIT_LIMIT}"
            )));
        }
        if let Some(account_id) = &query.account_id {
            // An unknown account is an error, not an empty trail.
            self.store().account(account_id)?;
        }
        let events = self.store().audit_events(query)?;
        let next_before = (events.len() == query.limit)
            .then(|| events.last().map(|e| e.seq))
            .flatten();
        Ok(AuditListView {
            events: events.iter().map(AuditEventView::from).collect(),
            next_before,
        })
    }

    /// An account's keys' requests over the last `days` days (today included): every key of
    /// the account, with its last use and its days with requests.
    pub fn account_usage(
        &self,
        account_id: &str,
        days: u64,
        now: u64,
    ) -> ServiceResult<AccountUsageView> {
        if days == 0 || days > MAX_USAGE_DAYS {
            return Err(ServiceError::Invalid(format!(
                "days must be 1 to {MAX_USAGE_DAYS}"
            )));
        }
        let keys = self.store().keys(Some(account_id))?;
        let last_used = self.store().last_used(Some(account_id))?;
        let from = day_of(now).saturating_sub(days - 1);
        let mut by_key: BTreeMap<String, Vec<UsageDayView>> = BTreeMap::new();
        let mut totals: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for day in self.store().daily_usage(account_id, from)? {
            let total = totals.entry(day.key_id.clone()).or_default();
            total.0 = total.0.saturating_add(day.allowed);
            total.1 = total.1.saturating_add(day.refused);
            by_key.entry(day.key_id).or_default().push(UsageDayView {
                date: format_day(day.day),
                allowed: day.allowed,
                refused: day.refused,
            });
        }
        Ok(AccountUsageView {
            account_id: account_id.to_string(),
            days,
            from: format_day(from),
            keys: keys
                .iter()
                .map(|k| {
                    let (allowed, refused) = totals.get(&k.key_id).copied().unwrap_or_default();
                    KeyUsageView {
                        key_id: k.key_id.clone(),
                        last_used_at: last_used.get(&k.key_id).copied(),
                        allowed,
                        refused,
                        days: by_key.remove(&k.key_id).unwrap_or_default(),
                    }
                })
                .collect(),
        })
    }

    /// Stores a filter's usage report (once per report id).
    pub fn record_usage(&self, report: &UsageReport, now: u64) -> ServiceResult<UsageStored> {
        Ok(self.store().record_usage(report, now)?)
    }
}
