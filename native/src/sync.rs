//! Sync mode: a thread of the module's own polls keygatectl's key map (ETag and `since`
//! deltas, binary full maps, as the wasm fetcher does), validates each answer whole, and
//! publishes each new version to every worker at once (`SyncedMap`). Any failure keeps the
//! last good map.
//!
//! Configurations with the same `sync` block share one thread and one map (a `Group`): an
//! update pushed to the filter (or a listener drained and re-added) serves the map it had at
//! once instead of answering 503 until its first poll, and several listeners hold one copy.
//!
//! Why a thread and not Envoy's HTTP callout: a full map of a million keys is 58 MB, which
//! would be parsed on Envoy's main thread (stalling xDS and the admin API) and exceed
//! Envoy's 32 MiB buffer for callout answers; a thread also keeps keygate off the parts of
//! the dynamic-module ABI that change most between Envoy releases.

#![forbid(unsafe_code)]

use crate::abi::{ConfigBeingCreated, ConfigStats, MetricId, MetricKind};
use crate::synced_map::{Buckets, SyncedMap};
use keygate_core::config::ConfigError;
use keygate_core::service_config::PollConfig;
use keygate_core::sync::{
    parse_message, Applied, BinaryError, Refusal, SyncState, BINARY_CONTENT_TYPE,
};
use log::{info, warn};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Retry delay after a failed poll, capped by the configured interval.
const RETRY: Duration = Duration::from_millis(1000);
/// Largest answer accepted; anything bigger is refused unread.
const MAX_BODY_BYTES: u64 = 512 << 20;
/// The age gauge is refreshed at least this often between polls.
const AGE_REFRESH: Duration = Duration::from_millis(1000);

/// The sync thread's stats: Envoy counters and gauges of the filter configuration, written
/// from the thread (Envoy's stats are atomic) until the configuration is destroyed.
#[derive(Default)]
pub struct SyncStats {
    config: Option<ConfigStats>,
    fetches: Option<MetricId>,
    updates: Option<MetricId>,
    not_modified: Option<MetricId>,
    errors: Option<MetricId>,
    refused: Option<MetricId>,
    version: Option<MetricId>,
    keys: Option<MetricId>,
    age_ms: Option<MetricId>,
}

impl SyncStats {
    pub fn define(config: &mut ConfigBeingCreated<'_>) -> SyncStats {
        let mut counter = |name| config.define_metric(MetricKind::Counter, name);
        let (fetches, updates, not_modified, errors, refused) = (
            counter("keygate.sync.fetches"),
            counter("keygate.sync.updates"),
            counter("keygate.sync.not_modified"),
            counter("keygate.sync.errors"),
            counter("keygate.sync.refused"),
        );
        let mut gauge = |name| config.define_metric(MetricKind::Gauge, name);
        let (version, keys, age_ms) = (
            gauge("keygate.sync.version"),
            gauge("keygate.sync.keys"),
            gauge("keygate.sync.age_ms"),
        );
        SyncStats {
            config: Some(config.stats()),
            fetches,
            updates,
            not_modified,
            errors,
            refused,
            version,
            keys,
            age_ms,
        }
    }

    fn bump(&self, id: Option<MetricId>) {
        if let (Some(config), Some(id)) = (&self.config, id) {
            config.increment_counter(id, 1);
        }
    }

    fn set(&self, id: Option<MetricId>, value: u64) {
        if let (Some(config), Some(id)) = (&self.config, id) {
            config.set_gauge(id, value);
        }
    }
}

/// What a group's configurations and its sync thread share.
struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
    /// The stats handles of the configurations subscribed, by subscription id. Each leaves
    /// when Envoy destroys its configuration: the thread must not touch one after that. The
    /// stats have the same names in every configuration (so they are the same Envoy stats):
    /// the thread writes through the first.
    stats: Mutex<Vec<(u64, SyncStats)>>,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, Vec<(u64, SyncStats)>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
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
}

/// One sync thread and the map it keeps, shared by the configurations with its `sync`
/// block; dropped with the last of them, which stops the thread (it lets go of the map when
/// its poll in flight ends).
struct Group {
    config: PollConfig,
    map: Arc<SyncedMap>,
    shared: Arc<Shared>,
}

impl Drop for Group {
    fn drop(&mut self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
    }
}

impl Group {
    fn start(config: PollConfig) -> std::io::Result<Group> {
        let map = Arc::new(SyncedMap::default());
        let shared = Arc::new(Shared {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            stats: Mutex::new(Vec::new()),
        });
        let fetcher = Fetcher::new(config.clone(), map.clone(), shared.clone());
        std::thread::Builder::new()
            .name("keygate-sync".into())
            .spawn(move || fetcher.run())?;
        Ok(Group {
            config,
            map,
            shared,
        })
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
        let group = match running {
            Some(group) => group,
            None => {
                let group = Arc::new(Group::start(config)?);
                groups.push(Arc::downgrade(&group));
                group
            }
        };
        let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        group.shared.stats().push((id, stats));
        Ok(Subscription { group, id })
    }

    pub fn map(&self) -> &SyncedMap {
        &self.group.map
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Before Envoy frees this configuration (and its stats handle) after we return.
        self.group.shared.stats().retain(|(id, _)| *id != self.id);
    }
}

/// Why a poll did not update the map.
#[derive(Debug)]
pub enum PollError {
    Transport(ureq::Error),
    Status(u16),
    Body(ureq::Error),
    Invalid(ConfigError),
    Refused(Refusal),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Transport(e) => write!(f, "the call failed: {e}"),
            PollError::Status(status) => write!(f, "answer status {status}"),
            PollError::Body(e) => write!(f, "cannot read the answer: {e}"),
            PollError::Invalid(e) => write!(f, "answer refused: {e}"),
            PollError::Refused(r) => write!(f, "answer refused: {r}"),
        }
    }
}

impl PollError {
    /// The replica could not answer (down, unreachable, failing): another one may.
    fn is_unavailable(&self) -> bool {
        match self {
            PollError::Transport(_) | PollError::Body(_) => true,
            PollError::Status(status) => *status >= 500,
            PollError::Invalid(_) | PollError::Refused(_) => false,
        }
    }
}

impl From<BinaryError> for PollError {
    fn from(e: BinaryError) -> Self {
        match e {
            BinaryError::Invalid(e) => PollError::Invalid(e),
            BinaryError::Refused(r) => PollError::Refused(r),
        }
    }
}

struct Fetcher {
    config: PollConfig,
    agent: ureq::Agent,
    state: SyncState,
    /// The map as last applied: the next version is built on it.
    work: Buckets,
    /// After a refused answer, ask for the whole map.
    want_full: bool,
    rng: u64,
    map: Arc<SyncedMap>,
    shared: Arc<Shared>,
    last_success: Option<Instant>,
    /// The replica (index into `config.urls`) that answered last.
    current_url: usize,
}

impl Fetcher {
    fn new(config: PollConfig, map: Arc<SyncedMap>, shared: Arc<Shared>) -> Fetcher {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(config.fetch.timeout_ms)))
            .build()
            .into();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Fetcher {
            config,
            agent,
            state: SyncState::default(),
            work: Buckets::default(),
            want_full: true,
            rng: seed | 1,
            map,
            shared,
            last_success: None,
            current_url: 0,
        }
    }

    fn run(mut self) {
        info!(
            "keygate sync: polling {} every {} ms",
            self.config.urls.join(", "),
            self.config.fetch.interval_ms
        );
        loop {
            let interval = Duration::from_millis(self.config.fetch.interval_ms);
            let wait = match self.poll() {
                Ok(()) => self.jittered(interval),
                Err(error) => {
                    warn!("keygate sync: {error}");
                    self.with_stats(|s| s.bump(s.errors));
                    if matches!(error, PollError::Invalid(_) | PollError::Refused(_)) {
                        self.with_stats(|s| s.bump(s.refused));
                        self.want_full = true;
                    }
                    self.jittered(interval.min(RETRY))
                }
            };
            if self.sleep_until(Instant::now() + wait) {
                return;
            }
        }
    }

    /// Sleeps until `until`, refreshing the age gauge on the way; true when stopped.
    fn sleep_until(&self, until: Instant) -> bool {
        loop {
            self.report_age();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.shared.sleep(left.min(AGE_REFRESH)) {
                return true;
            }
        }
    }

    fn report_age(&self) {
        if let Some(at) = self.last_success {
            let age = at.elapsed().as_millis() as u64;
            self.with_stats(|s| s.set(s.age_ms, age));
        }
    }

    fn with_stats(&self, f: impl FnOnce(&SyncStats)) {
        if let Some((_, stats)) = self.shared.stats().first() {
            f(stats);
        }
    }

    /// One poll: the URL that answered last, then (when it cannot be reached or fails
    /// with a 5xx) each other replica in turn, so a dead replica costs no interval.
    fn poll(&mut self) -> Result<(), PollError> {
        let count = self.config.urls.len();
        let mut attempt = 0;
        loop {
            let at = (self.current_url + attempt) % count.max(1);
            let Some(base) = self.config.urls.get(at).cloned() else {
                return Ok(());
            };
            match self.poll_url(&base) {
                Err(error) if error.is_unavailable() && attempt + 1 < count => {
                    warn!("keygate sync: {error}; trying the next URL");
                    self.with_stats(|s| s.bump(s.errors));
                    attempt += 1;
                }
                result => {
                    if result.is_ok() {
                        self.current_url = at;
                    }
                    return result;
                }
            }
        }
    }

    fn poll_url(&mut self, base: &str) -> Result<(), PollError> {
        let since = if self.want_full {
            None
        } else {
            self.state.version()
        };
        let url = match since {
            Some(v) => format!("{base}?since={v}"),
            None => base.to_owned(),
        };
        // A full map comes binary when keygatectl can (a million keys), deltas as JSON.
        let mut request = self
            .agent
            .get(&url)
            .header("accept", "application/x-keygate-map, application/json");
        if let Some(v) = since {
            request = request.header("if-none-match", format!("\"{v}\""));
        }
        if let Some(token) = &self.config.fetch.bearer_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.with_stats(|s| s.bump(s.fetches));
        let mut response = request.call().map_err(PollError::Transport)?;
        match response.status().as_u16() {
            304 => {
                self.with_stats(|s| s.bump(s.not_modified));
                self.succeeded();
                return Ok(());
            }
            200 => {}
            other => return Err(PollError::Status(other)),
        }
        let binary = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(BINARY_CONTENT_TYPE.as_bytes()));
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(PollError::Body)?;
        let guard = self.config.fetch.guard;
        let applied = if binary {
            self.state
                .apply_binary_full(&mut body.as_slice(), body.len(), &mut self.work, guard)?
        } else {
            let message = parse_message(&body).map_err(PollError::Invalid)?;
            self.state
                .apply(message, &mut self.work, guard)
                .map_err(PollError::Refused)?
        };
        if let Applied::Updated { version, keys } = applied {
            // Stats first: a request that sees the new map finds them already set.
            self.with_stats(|s| {
                s.bump(s.updates);
                s.set(s.version, version);
                s.set(s.keys, keys as u64);
            });
            self.map.publish(self.work.clone());
            info!("keygate sync: serving version {version} ({keys} keys)");
        }
        self.want_full = false;
        self.succeeded();
        Ok(())
    }

    fn succeeded(&mut self) {
        self.last_success = Some(Instant::now());
    }

    /// The interval less up to the jitter share of it (xorshift: no need for a secure
    /// source), so fleets do not poll in step and a poll never comes later than one
    /// interval after the last answer.
    fn jittered(&mut self, base: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng % 10_001) as f64 / 10_000.0;
        base.mul_f64(1.0 - self.config.fetch.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::fields::Path;

    fn fetcher(json: &str) -> Fetcher {
        let doc = keygate_core::json::parse(json.as_bytes()).expect("json");
        let config = PollConfig::read(&doc, &Path::Root).expect("valid sync block");
        let shared = Arc::new(Shared {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            stats: Mutex::new(Vec::new()),
        });
        Fetcher::new(config, Arc::new(SyncedMap::default()), shared)
    }

    #[test]
    fn a_poll_never_waits_longer_than_one_interval() {
        let mut f = fetcher(r#"{"url":"http://127.0.0.1:9/v1/keymap","jitter":0.2}"#);
        let interval = Duration::from_millis(1000);
        for _ in 0..1000 {
            let wait = f.jittered(interval);
            assert!(wait <= interval, "{wait:?}");
            assert!(wait >= Duration::from_millis(800), "{wait:?}");
        }
    }

    #[test]
    fn an_unreachable_replica_is_skipped_and_the_map_is_kept() {
        // Nothing listens on port 9 of loopback (discard): both polls fail fast.
        let mut f = fetcher(
            r#"{"url":["http://127.0.0.1:9/v1/keymap","http://127.0.0.1:9/v2/keymap"],"timeout_ms":500}"#,
        );
        let error = f.poll().expect_err("no keygatectl");
        assert!(error.is_unavailable(), "{error}");
        assert!(f.map.current().is_none(), "no map was published");
        assert!(f.want_full, "the next poll still asks for the whole map");
    }

    #[test]
    fn a_bad_answer_is_not_worth_another_replica() {
        assert!(PollError::Status(503).is_unavailable());
        assert!(!PollError::Status(401).is_unavailable());
        assert!(!PollError::Refused(Refusal::EmptyMap { have: 3 }).is_unavailable());
    }

    fn block(json: &str) -> PollConfig {
        let doc = keygate_core::json::parse(json.as_bytes()).expect("json");
        PollConfig::read(&doc, &Path::Root).expect("valid sync block")
    }

    fn stopped(shared: &Shared) -> bool {
        *shared.stopped.lock().expect("lock")
    }

    #[test]
    fn configurations_with_the_same_sync_block_share_one_map_until_the_last_goes() {
        let url = r#"{"url":"http://127.0.0.1:9/shared-test","interval_ms":60000}"#;
        let first = Subscription::start(block(url), SyncStats::default()).expect("thread");
        let second = Subscription::start(block(url), SyncStats::default()).expect("thread");
        let other = Subscription::start(
            block(r#"{"url":"http://127.0.0.1:9/other-test","interval_ms":60000}"#),
            SyncStats::default(),
        )
        .expect("thread");
        assert!(
            Arc::ptr_eq(&first.group, &second.group),
            "one group per sync block"
        );
        assert!(
            !Arc::ptr_eq(&first.group, &other.group),
            "another block, another group"
        );
        assert_eq!(first.group.shared.stats().len(), 2);

        let shared = first.group.shared.clone();
        drop(first);
        assert_eq!(
            shared.stats().len(),
            1,
            "a destroyed configuration's stats leave"
        );
        assert!(!stopped(&shared), "one configuration still syncs");
        drop(second);
        assert!(stopped(&shared), "the last one stops the thread");
        assert!(!stopped(&other.group.shared));
    }

    #[test]
    fn stopping_wakes_a_sleeping_thread() {
        let group = Group::start(block(
            r#"{"url":"http://127.0.0.1:9/sleep-test","interval_ms":3600000}"#,
        ))
        .expect("thread");
        let shared = group.shared.clone();
        let sleeper = std::thread::spawn(move || shared.sleep(Duration::from_secs(60)));
        drop(group);
        assert!(
            sleeper.join().expect("no panic"),
            "woken as stopped, not timed out"
        );
    }
}
