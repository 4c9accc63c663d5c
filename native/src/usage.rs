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
            let table = match mine.iter().find(|(id, _)| *id == self.id) {
                Some((_, table)) => table.clone(),
                None => {
                    let table = Arc::new(Mutex::new(UsageTable::new(DEFAULT_SLOTS)));
                    lock(&self.tables).push(table.clone());
                    mine.push((self.id, table.clone()));
                    table
                }
            };
            lock(&table).record(digest, allowed);
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
