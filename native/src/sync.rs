//! Sync mode: a thread of the module's own runs the poller (keygate-sync-core's, shared with
//! the wasm fetcher) against keygatectl and publishes each new version to every worker at
//! once (`SyncedMap`). Any failure keeps the last good map.
//!
//! Configurations with the same `sync` block share one thread and one map (a `Group`): an
//! update pushed to the filter (or a listener drained and re-added) serves the map it had at
//! once instead of answering 503 until its first poll, and several listeners hold one copy.
//!
//! Why a thread and not Envoy's HTTP callout: a full map of a million keys is 58 MB, which
//! would be parsed on Envoy's main thread (stalling xDS and the admin API) and exceed
//! Envoy's 32 MiB buffer for callout answers; a thread also keeps keygate off the parts of
//! the dynamic-module ABI that change most between Envoy releases.
//!
//! A second, small thread keeps `keygate.sync.age_ms` growing whatever the fetching thread
//! does, so a stuck poll still shows as a stale map.

#![forbid(unsafe_code)]

use crate::abi::{ConfigBeingCreated, ConfigStats, MetricId, MetricKind};
use crate::fetch::{Exchange, Fetch};
use crate::synced_map::{Buckets, SyncedMap};
use crate::usage::UsageTables;
use keygate_sync_core::poller::{Outcome, Poller, SyncCounter, SyncGauge};
use keygate_sync_core::settings::PollConfig;
use keygate_sync_core::usage_report::UsageStat;
use log::{info, warn};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The age gauge is refreshed this often.
const AGE_REFRESH: Duration = Duration::from_millis(1000);

/// The sync stats of one filter configuration: Envoy counters and gauges, written from the
/// sync threads (Envoy's stats are atomic) while the configuration lives.
#[derive(Default)]
pub struct SyncStats {
    config: Option<ConfigStats>,
    counters: [Option<MetricId>; SyncCounter::ALL.len()],
    gauges: [Option<MetricId>; SyncGauge::ALL.len()],
    usage: [Option<MetricId>; UsageStat::ALL.len()],
}

impl SyncStats {
    pub fn define(config: &mut ConfigBeingCreated<'_>) -> SyncStats {
        SyncStats {
            config: Some(config.stats()),
            counters: SyncCounter::ALL.map(|c| config.define_metric(MetricKind::Counter, c.name())),
            gauges: SyncGauge::ALL.map(|g| config.define_metric(MetricKind::Gauge, g.name())),
            usage: UsageStat::ALL.map(|s| config.define_metric(MetricKind::Counter, s.name())),
        }
    }

    fn add_usage(&self, stat: UsageStat, n: u64) {
        let at = UsageStat::ALL.iter().position(|s| *s == stat);
        if let (Some(config), Some(Some(id)), true) =
            (&self.config, at.and_then(|i| self.usage.get(i)), n > 0)
        {
            config.increment_counter(*id, n);
        }
    }

    fn bump(&self, counter: SyncCounter) {
        let at = SyncCounter::ALL.iter().position(|c| *c == counter);
        if let (Some(config), Some(Some(id))) =
            (&self.config, at.and_then(|i| self.counters.get(i)))
        {
            config.increment_counter(*id, 1);
        }
    }

    fn set(&self, gauge: SyncGauge, value: u64) {
        let at = SyncGauge::ALL.iter().position(|g| *g == gauge);
        if let (Some(config), Some(Some(id))) = (&self.config, at.and_then(|i| self.gauges.get(i)))
        {
            config.set_gauge(*id, value);
        }
    }
}

/// What a group's configurations and its threads share.
pub(crate) struct Shared {
    stopped: Mutex<bool>,
    /// `stopped` without the lock, for the fetch's read loop.
    stopping: AtomicBool,
    wake: Condvar,
    /// The stats handles of the configurations subscribed, by subscription id. Each leaves
    /// when Envoy destroys its configuration. The stats have the same names in every
    /// configuration (so they are the same Envoy stats): the threads write through the first.
    stats: Mutex<Vec<(u64, SyncStats)>>,
    /// Unix milliseconds of the last poll that left the map current; of the group's start
    /// before the first.
    current_at_ms: AtomicU64,
    /// While a watch is out: when its wait ends (Unix milliseconds), else 0. Until then the
    /// map counts as current: keygatectl would have answered a change.
    watch_until_ms: AtomicU64,
    /// Set by the fetching thread as it ends.
    ended: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stopped: Mutex::new(false),
            stopping: AtomicBool::new(false),
            wake: Condvar::new(),
            stats: Mutex::new(Vec::new()),
            current_at_ms: AtomicU64::new(now_ms()),
            watch_until_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// Adds `n` to a usage-reporting counter.
    pub(crate) fn add_usage(&self, stat: UsageStat, n: u64) {
        if let Some((_, stats)) = self.stats().first() {
            stats.add_usage(stat, n);
        }
    }

    fn stats(&self) -> MutexGuard<'_, Vec<(u64, SyncStats)>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps `wait` or until stopped; true when stopped.
    pub(crate) fn sleep_for(&self, wait: Duration) -> bool {
        self.sleep(wait)
    }

    /// Sleeps `wait` or until stopped; true when stopped.
    fn sleep(&self, wait: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, wait, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *stopped
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stopping.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }
}

/// The poller's stats, through the group's first subscription.
struct GroupStats<'a>(&'a Shared);

impl keygate_sync_core::poller::SyncStats for GroupStats<'_> {
    fn bump(&mut self, counter: SyncCounter) {
        if let Some((_, stats)) = self.0.stats().first() {
            stats.bump(counter);
        }
    }

    fn set(&mut self, gauge: SyncGauge, value: u64) {
        if let Some((_, stats)) = self.0.stats().first() {
            stats.set(gauge, value);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One sync thread and the map it keeps, shared by the configurations with its `sync`
/// block; dropped with the last of them, which stops the threads (the fetching one notices
/// between two reads of an answer, and lets go of the map then).
struct Group {
    config: PollConfig,
    map: Arc<SyncedMap>,
    shared: Arc<Shared>,
    /// The workers' usage counts, reported by a thread of the group (when reports are on).
    usage: Option<Arc<UsageTables>>,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Group {
    /// Starts the group's threads; `first`, the first subscription's stats, is in place
    /// before they start, so that the first answer's gauges and counts are not lost.
    fn start(config: PollConfig, first: Option<(u64, SyncStats)>) -> std::io::Result<Group> {
        let map = Arc::new(SyncedMap::default());
        let shared = Arc::new(Shared::new());
        shared.stats().extend(first);
        let fetcher = Fetcher::new(config.clone(), map.clone(), shared.clone());
        std::thread::Builder::new()
            .name("keygate-sync".into())
            .spawn(move || fetcher.run())?;
        let ager = shared.clone();
        std::thread::Builder::new()
            .name("keygate-sync-age".into())
            .spawn(move || report_age(&ager))?;
        let usage = match config.fetch.usage_interval_ms {
            None => None,
            Some(interval_ms) => {
                let tables = Arc::new(UsageTables::new());
                let (t, m, s) = (tables.clone(), map.clone(), shared.clone());
                let (fetch, urls) = (Fetch::new(&config), config.urls.clone());
                let token = config.fetch.bearer_token.clone();
                std::thread::Builder::new()
                    .name("keygate-usage".into())
                    .spawn(move || {
                        crate::usage::report(t, m, s, fetch, urls, interval_ms, token)
                    })?;
                Some(tables)
            }
        };
        Ok(Group {
            config,
            map,
            shared,
            usage,
        })
    }
}

/// Sets the age gauge every second from the last time the map was current, until stopped.
fn report_age(shared: &Shared) {
    while !shared.sleep(AGE_REFRESH) {
        let age = age_ms(
            now_ms(),
            shared.current_at_ms.load(Ordering::Relaxed),
            shared.watch_until_ms.load(Ordering::Relaxed),
        );
        GroupStats(shared).set_age(age);
    }
}

/// Time since the map was last known current: its last answer, or now while a watch is held
/// within its wait (`watch_until`, 0 for none).
fn age_ms(now: u64, answered: u64, watch_until: u64) -> u64 {
    now.saturating_sub(answered.max(now.min(watch_until)))
}

impl GroupStats<'_> {
    fn set_age(&mut self, age: u64) {
        keygate_sync_core::poller::SyncStats::set(self, SyncGauge::AgeMs, age);
    }
}

/// The groups alive in this process.
static GROUPS: Mutex<Vec<Weak<Group>>> = Mutex::new(Vec::new());
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);

/// One configuration's hold on the group that syncs its map.
pub struct Subscription {
    group: Arc<Group>,
    id: u64,
}

impl Subscription {
    /// Joins the group syncing `config`'s block, starting one if there is none.
    pub fn start(config: PollConfig, stats: SyncStats) -> std::io::Result<Subscription> {
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        groups.retain(|g| g.strong_count() > 0);
        let running = groups
            .iter()
            .filter_map(Weak::upgrade)
            .find(|g| g.config == config);
        let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        let group = match running {
            Some(group) => {
                group.shared.stats().push((id, stats));
                group
            }
            None => {
                let group = Arc::new(Group::start(config, Some((id, stats)))?);
                groups.push(Arc::downgrade(&group));
                group
            }
        };
        Ok(Subscription { group, id })
    }

    pub fn map(&self) -> &SyncedMap {
        &self.group.map
    }

    /// Where this group's workers count usage, when it reports usage.
    pub fn usage(&self) -> Option<&UsageTables> {
        self.group.usage.as_deref()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Before Envoy frees this configuration (and its stats handle) after we return.
        self.group.shared.stats().retain(|(id, _)| *id != self.id);
    }
}

struct Fetcher {
    config: PollConfig,
    fetch: Fetch,
    poller: Poller,
    /// The map as last applied: the next version is built on it.
    work: Buckets,
    map: Arc<SyncedMap>,
    shared: Arc<Shared>,
}

impl Fetcher {
    fn new(config: PollConfig, map: Arc<SyncedMap>, shared: Arc<Shared>) -> Fetcher {
        let now = now_ms();
        let poller = Poller::new(config.fetch.clone(), config.urls.len(), 0, now, now);
        Fetcher {
            fetch: Fetch::new(&config),
            config,
            poller,
            work: Buckets::default(),
            map,
            shared,
        }
    }

    fn run(mut self) {
        let fetch = &self.config.fetch;
        if fetch.watch {
            info!(
                "keygate sync: watching {} ({} s at a time; retrying after {} ms)",
                self.config.urls.join(", "),
                fetch.wait_s,
                fetch.interval_ms
            );
        } else {
            info!(
                "keygate sync: polling {} every {} ms",
                self.config.urls.join(", "),
                fetch.interval_ms
            );
        }
        while !self.shared.is_stopped() {
            let now = now_ms();
            let request = self.poller.next_request(now, &mut GroupStats(&self.shared));
            let Some(request) = request else {
                let wait = self.poller.next_at_ms().saturating_sub(now);
                if self.shared.sleep(Duration::from_millis(wait)) {
                    break;
                }
                continue;
            };
            let base = self
                .config
                .urls
                .get(request.replica)
                .cloned()
                .unwrap_or_default();
            let held_until = match request.wait_ms {
                0 => 0,
                wait => now.saturating_add(wait),
            };
            self.shared
                .watch_until_ms
                .store(held_until, Ordering::Relaxed);
            let exchange = self.fetch.exchange(&base, &request, &self.shared);
            self.shared.watch_until_ms.store(0, Ordering::Relaxed);
            let outcome = match exchange {
                Exchange::Answered(answer) => {
                    let mut body = answer.body.as_slice();
                    self.poller.on_answer(
                        now_ms(),
                        answer.head(),
                        &mut body,
                        &mut self.work,
                        &mut GroupStats(&self.shared),
                    )
                }
                Exchange::Failed(why) => {
                    self.poller
                        .on_failure(now_ms(), &why, &mut GroupStats(&self.shared))
                }
                Exchange::Stopped => break,
            };
            self.report(outcome);
            if let Some(notice) = self.poller.take_notice() {
                warn!("keygate sync: {notice}");
            }
        }
        self.shared.ended.store(true, Ordering::Relaxed);
    }

    fn report(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Updated {
                version,
                keys,
                new_lineage,
            } => {
                self.map.publish(self.work.clone());
                self.shared.current_at_ms.store(now_ms(), Ordering::Relaxed);
                if new_lineage {
                    info!(
                        "keygate sync: the map comes from another store now ({}): taken as a new lineage",
                        self.poller.state().lineage()
                    );
                }
                info!("keygate sync: serving version {version} ({keys} keys)");
            }
            Outcome::Unchanged => {
                self.shared.current_at_ms.store(now_ms(), Ordering::Relaxed);
            }
            Outcome::Refused(why) => warn!("keygate sync: answer refused: {why}"),
            Outcome::Failed(why) => warn!("keygate sync: {why}"),
        }
    }
}

#[cfg(test)]
mod tests;
