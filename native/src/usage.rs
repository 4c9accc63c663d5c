//! Per-key usage for sync mode: each worker thread counts in a table of its own (an
//! uncontended lock per request; the reporter takes it only to drain), and a thread of the
//! sync group drains them all every `usage_interval_ms`, names each key by the map being
//! served, and reports to keygatectl (`POST /v1/usage`, the sync token, the same proxy
//! rules as the poll), resending a report until keygatectl has it.

#![forbid(unsafe_code)]

use crate::fetch::Fetch;
use crate::sync::Shared;
use crate::synced_map::SyncedMap;
use keygate_core::digest::Digest;
use keygate_core::gate::UsageCounter;
use keygate_core::usage::{UsageTable, DEFAULT_SLOTS};
use keygate_sync_core::usage_report::{usage_url_of, ReportFate, UsageReporter, UsageStat};
use log::warn;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every worker thread's table for one sync group.
pub struct UsageTables {
    id: usize,
    tables: Mutex<Vec<Arc<Mutex<UsageTable>>>>,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's table of each group it counted for (usually one).
    static MINE: RefCell<Vec<(usize, Arc<Mutex<UsageTable>>)>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UsageTables {
    pub fn new() -> UsageTables {
        UsageTables {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tables: Mutex::new(Vec::new()),
        }
    }

    /// Takes every worker's counts.
    fn drain(&self) -> (Vec<keygate_core::usage::KeyUsage>, u64) {
        let tables: Vec<_> = lock(&self.tables).clone();
        let mut all = Vec::new();
        let mut unattributed = 0;
        for table in tables {
            let (usage, lost) = lock(&table).drain();
            all.extend(usage);
            unattributed += lost;
        }
        (all, unattributed)
    }
}

impl UsageCounter for UsageTables {
    fn count(&self, digest: &Digest, allowed: bool) {
        MINE.with_borrow_mut(|mine| {
            if let Some((_, table)) = mine.iter().find(|(id, _)| *id == self.id) {
                lock(table).record(digest, allowed);
                return;
            }
            // A group ended by a config reload keeps no other holder of its tables: drop
            // this thread's, so reloads do not pile tables up on every worker.
            mine.retain(|(_, table)| Arc::strong_count(table) > 1);
            let table = Arc::new(Mutex::new(UsageTable::new(DEFAULT_SLOTS)));
            lock(&self.tables).push(table.clone());
            lock(&table).record(digest, allowed);
            mine.push((self.id, table));
        });
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The reporting thread's loop: until the group stops.
pub fn report(
    tables: Arc<UsageTables>,
    map: Arc<SyncedMap>,
    shared: Arc<Shared>,
    fetch: Fetch,
    urls: Vec<String>,
    interval_ms: u64,
    bearer_token: Option<String>,
) {
    let start = now();
    let mut reporter = UsageReporter::new(
        interval_ms,
        start.as_millis() as u64,
        start.as_nanos() as u64,
    );
    let targets: Vec<String> = urls.iter().map(|u| usage_url_of(u)).collect();
    let mut target = 0usize;
    while !shared.sleep_for(Duration::from_millis(interval_ms)) {
        let now = now();
        let (usage, unattributed) = tables.drain();
        shared.add_usage(UsageStat::Unattributed, unattributed);
        if let Some(snapshot) = map.current() {
            for u in usage {
                if let Some(info) = snapshot.find(&u.digest) {
                    reporter.add(
                        info.key_id,
                        u64::from(u.allowed),
                        u64::from(u.refused),
                        now.as_secs(),
                    );
                }
            }
        }
        let Some(pending) = reporter.due(now.as_millis() as u64) else {
            continue;
        };
        let body = pending.body.clone();
        let url = targets.get(target).cloned().unwrap_or_default();
        match fetch.post_json(&url, &body, bearer_token.as_deref()) {
            Ok(status) => match reporter.on_answer(status) {
                ReportFate::Taken => shared.add_usage(UsageStat::Reports, 1),
                ReportFate::Dropped => {
                    shared.add_usage(UsageStat::Errors, 1);
                    warn!("keygate usage: report refused ({status}); dropped");
                }
                ReportFate::Kept => {
                    shared.add_usage(UsageStat::Errors, 1);
                    warn!("keygate usage: report answered {status}; it is sent again");
                    target = (target + 1) % targets.len().max(1);
                }
            },
            Err(why) => {
                reporter.on_answer(0);
                shared.add_usage(UsageStat::Errors, 1);
                warn!("keygate usage: {why}; the report is sent again");
                target = (target + 1) % targets.len().max(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables_held_by_this_thread() -> usize {
        MINE.with_borrow(|mine| mine.len())
    }

    #[test]
    fn a_thread_counts_into_one_table_per_group_and_drops_those_of_ended_groups() {
        std::thread::spawn(|| {
            let digest = Digest([7u8; 32]);
            let first = UsageTables::new();
            first.count(&digest, true);
            first.count(&digest, false);
            assert_eq!(tables_held_by_this_thread(), 1);
            let (usage, lost) = first.drain();
            assert_eq!(lost, 0);
            assert_eq!(
                usage
                    .iter()
                    .map(|u| (u.allowed, u.refused))
                    .collect::<Vec<_>>(),
                [(1, 1)]
            );
            drop(first);
            for _ in 0..100 {
                let reloaded = UsageTables::new();
                reloaded.count(&digest, true);
                assert_eq!(tables_held_by_this_thread(), 1);
            }
        })
        .join()
        .map_err(|_| "the counting thread failed")
        .unwrap();
    }
}
