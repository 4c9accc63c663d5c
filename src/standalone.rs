//! `keygate-standalone.wasm` (cargo feature `standalone-sync`): the filter polls keygatectl
//! itself, for platforms that add an HTTP filter but no bootstrap extension (Istio's
//! `WasmPlugin`, Envoy Gateway's `EnvoyExtensionPolicy`), so the `keygate_sync` service
//! cannot run there.
//!
//! Every VM of the filter (one per worker, one on the main thread) ticks; exactly one polls:
//! the holder of the lease in shared data (`lease.rs`). It runs the same poller as the
//! fetcher service (keygate-sync-core's, through its public API) and publishes the map the
//! same way, buckets and generation, under the same namespace, so every VM reads it with the
//! same code as in the service's mode: the request path does not change. When the leader's
//! VM traps or goes away, its lease runs out and another VM takes it over and starts afresh
//! with a whole map.
//!
//! The configuration is the filter's `sync` block with the `keygate_sync` service's fields
//! (read by keygate-sync-core's parser), e.g.
//! `{"cluster": "outbound|8080||keygatectl.keygate.svc.cluster.local", "bearer_token_env":
//! "KEYGATE_SYNC_TOKEN"}`; a block naming only `namespace` reads a map the fetcher service
//! publishes, as the lean filter does.

// `#[no_mangle]` on the callout's callback is an export, hence not `forbid(unsafe_code)`.
#![deny(unsafe_code)]

use crate::abi::{self, LogLevel};
use crate::callout;
use crate::leader_usage::LeaderUsage;
use crate::lease::{self, Change, Lease, LeaseKeeper, LeaseStore, Seen};
use crate::vm_global::VmGlobal;
use alloc::borrow::ToOwned;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use keygate_core::config::{read_sync_namespace, ConfigError, FilterConfig};
use keygate_core::fields::Path;
use keygate_core::header_pairs;
use keygate_core::json::Value;
use keygate_core::shared_data::{bucket_key, version_key};
use keygate_sync_core::binary::BodyReader;
use keygate_sync_core::poller::{
    AnswerHead, Outcome, Poller, SyncCounter, SyncGauge, SyncMetricIds, SyncStats, STORE_HEADER,
};
use keygate_sync_core::settings::{is_valid_token, OwnFetchConfig, ServiceConfig};
use keygate_sync_core::state::BucketStore;

/// How long the lease lasts unrenewed. The leader renews it on every tick (50 ms); when it
/// stops, another VM takes over within this and one tick. Long enough that a main thread
/// busy for a few hundred milliseconds (a large configuration push) keeps its lease.
pub const LEASE_MS: u64 = 500;

/// Envoy answers every callout by its timeout (with no headers if nothing came); a poll
/// still unanswered this long after its timeout is given up, so the poller can never stall.
const LOST_CALL_GRACE_MS: u64 = 1000;

/// How the poller is looked at: on every tick of the filter's timer.
const TICK_MS: u64 = 50;

/// The `sync` block of this module: where to read the map, and whether to fetch it.
enum SyncBlock {
    /// Only `namespace`: a fetcher service publishes the map (as for the lean filter).
    Read(String),
    /// The fetcher's settings: this filter polls keygatectl itself.
    Fetch(OwnFetchConfig),
}

fn read_sync(block: &Value, path: &Path) -> Result<SyncBlock, ConfigError> {
    let only_namespace = matches!(block, Value::Object(members)
        if members.0.iter().all(|(name, _)| name == "namespace"));
    if only_namespace {
        return read_sync_namespace(block, path).map(SyncBlock::Read);
    }
    OwnFetchConfig::read(block, path).map(SyncBlock::Fetch)
}

/// The plugin configuration, and the fetcher's settings when this filter polls (with the
/// sync token read from the VM's environment if so configured). Errors name the field.
pub fn parse_config(bytes: &[u8]) -> Result<(FilterConfig, Option<ServiceConfig>), String> {
    let (mut config, block) =
        FilterConfig::parse_with_sync(bytes, read_sync).map_err(|e| e.to_string())?;
    match block {
        None => Ok((config, None)),
        Some(SyncBlock::Read(namespace)) => {
            config.sync_namespace = Some(namespace);
            Ok((config, None))
        }
        Some(SyncBlock::Fetch(own)) => {
            config.sync_namespace = Some(own.service.namespace.clone());
            Ok((config, Some(with_token_from_env(own)?)))
        }
    }
}

/// The service settings with `bearer_token` set from `bearer_token_env`'s variable.
fn with_token_from_env(own: OwnFetchConfig) -> Result<ServiceConfig, String> {
    let mut service = own.service;
    let Some(name) = own.bearer_token_env else {
        return Ok(service);
    };
    let value = callout::env_var(&name).ok_or_else(|| {
        format!(
            "invalid keygate config: sync.bearer_token_env: {name} is not in the VM's environment \
             (Envoy: vm_config.environment_variables; Istio: vmConfig.env; Envoy Gateway: env.hostKeys)"
        )
    })?;
    // A token mounted from a file often ends with a newline: not part of it.
    let token = core::str::from_utf8(&value)
        .ok()
        .map(str::trim)
        .filter(|token| is_valid_token(token))
        .ok_or_else(|| {
            format!(
                "invalid keygate config: sync.bearer_token_env: the value of {name} is not a sync token (visible ASCII, not empty)"
            )
        })?;
    service.fetch.bearer_token = Some(token.to_owned());
    Ok(service)
}

/// This VM's id in leases, logs and the leader gauge: random, so that a reloaded VM never
/// takes a dead one's id; never 0.
static VM_ID: VmGlobal<u32> = VmGlobal::new(|| {
    let random = abi::random_bytes::<4>().map(u32::from_le_bytes);
    let fallback = || callout::now_ms().map_or(1, |ms| ms as u32);
    random.unwrap_or_else(|_| fallback()).max(1)
});

/// The fetchers of this VM, by root context (one per filter configuration that polls).
/// Each in a RefCell of its own, taken with `try_borrow_mut`: a callback Envoy delivered
/// while that fetcher is busy is ignored rather than allowed to trap the VM.
type Fetchers = Vec<(u32, Rc<RefCell<OwnSync>>)>;
static FETCHERS: VmGlobal<Fetchers> = VmGlobal::new(Vec::new);

fn fetcher(root: u32) -> Option<Rc<RefCell<OwnSync>>> {
    FETCHERS.with_borrow(|all| {
        all.iter()
            .find(|(id, _)| *id == root)
            .map(|(_, f)| Rc::clone(f))
    })
}

/// After `root` was configured: starts (or keeps, when its settings did not change) its
/// fetcher, or stops the one it had.
pub fn install(root: u32, config: Option<ServiceConfig>) {
    if let (Some(current), Some(config)) = (fetcher(root), &config) {
        if current.try_borrow().is_ok_and(|f| f.config == *config) {
            return;
        }
    }
    forget(&[root]);
    if let Some(config) = config {
        let sync = OwnSync::new(root, config);
        FETCHERS.with_borrow_mut(|all| all.push((root, Rc::new(RefCell::new(sync)))));
    }
}

/// Drops the fetchers of ended roots, giving up a lease they hold.
pub fn forget(roots: &[u32]) {
    let gone: Fetchers = FETCHERS.with_borrow_mut(|all| {
        let (gone, kept) = core::mem::take(all)
            .into_iter()
            .partition(|(id, _)| roots.contains(id));
        *all = kept;
        gone
    });
    for (_, sync) in gone {
        if let Ok(mut sync) = sync.try_borrow_mut() {
            sync.stop();
        }
    }
}

pub fn on_tick(root: u32) {
    if let Some(sync) = fetcher(root) {
        if let Ok(mut sync) = sync.try_borrow_mut() {
            sync.tick();
        }
    }
}

/// The answer to a poll (or its failure: no headers), on the root that sent it.
#[allow(unsafe_code)] // an export Envoy calls, like those of exports.rs
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    context_id: u32,
    token: u32,
    num_headers: usize,
    body_size: usize,
    _num_trailers: usize,
) {
    if let Some(sync) = fetcher(context_id) {
        if let Ok(mut sync) = sync.try_borrow_mut() {
            sync.on_response(token, num_headers, body_size);
        }
    }
}

/// One filter configuration's fetcher: its lease, and its poller while it leads.
struct OwnSync {
    config: ServiceConfig,
    vm: u32,
    lease_key: String,
    keeper: LeaseKeeper,
    leading: Option<Leading>,
    metrics: FetchMetrics,
}

/// What only the leader has: the poller, and the Envoy's usage reporter.
struct Leading {
    poller: Poller,
    in_flight: Option<InFlight>,
    usage: Option<LeaderUsage>,
}

#[derive(Clone, Copy)]
struct InFlight {
    token: u32,
    sent_ms: u64,
    /// The call's own timeout (a watch's sits above its wait).
    timeout_ms: u64,
}

impl OwnSync {
    fn new(root: u32, config: ServiceConfig) -> OwnSync {
        let vm = VM_ID.with_borrow(|id| *id);
        abi::log(
            LogLevel::Info,
            &format!(
                "keygate sync: VM {vm} polls cluster {} path {} every {} ms while it holds the lease {}",
                config.cluster,
                config.path,
                config.fetch.interval_ms,
                lease::lease_key(&config.namespace)
            ),
        );
        OwnSync {
            lease_key: lease::lease_key(&config.namespace),
            keeper: LeaseKeeper::new(lease::holder_id(vm, root), LEASE_MS),
            vm,
            config,
            leading: None,
            metrics: FetchMetrics::define(),
        }
    }

    fn tick(&mut self) {
        let Ok(now) = callout::now_ms() else {
            return;
        };
        let change = self.keeper.tick(
            &mut SharedLease {
                key: &self.lease_key,
            },
            now,
        );
        self.on_change(change);
        if !self.keeper.leading() {
            return;
        }
        let OwnSync {
            config,
            vm,
            leading,
            metrics,
            ..
        } = self;
        let leading = leading.get_or_insert_with(|| Leading {
            // A new leader knows nothing of what an earlier one published: it asks for the
            // whole map and rewrites every bucket.
            poller: Poller::new(config.fetch.clone(), 1, TICK_MS, now, u64::from(*vm)),
            in_flight: None,
            usage: LeaderUsage::start(config, now, u64::from(*vm) ^ now),
        });
        if let Some(usage) = &mut leading.usage {
            usage.on_tick(config, now);
        }
        if let Some(age) = leading.poller.age_ms(now) {
            metrics.set(SyncGauge::AgeMs, age);
        }
        if let Some(call) = leading.in_flight {
            let limit = call
                .sent_ms
                .saturating_add(call.timeout_ms)
                .saturating_add(LOST_CALL_GRACE_MS);
            if now < limit {
                return;
            }
            leading.in_flight = None;
            let outcome = leading
                .poller
                .on_failure(now, "the poll was never answered", metrics);
            report(&leading.poller, outcome);
        }
        let Some(request) = leading.poller.next_request(now, metrics) else {
            return;
        };
        let path = format!("{}{}", config.path, request.query);
        let mut pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":path", path.as_bytes()),
            (b":authority", config.authority.as_bytes()),
            // As the fetcher service: Envoy retries on another endpoint of the cluster
            // (keygatectl replicas) when a connection fails or is reset.
            (b"x-envoy-retry-on", b"connect-failure,refused-stream,reset"),
            (b"x-envoy-max-retries", b"2"),
        ];
        pairs.extend(
            request
                .headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
        );
        let headers = header_pairs::serialize(&pairs);
        // A watch's timeout sits above its wait (together at most 120 s: it fits).
        let timeout = u32::try_from(request.timeout_ms).unwrap_or(u32::MAX);
        match callout::http_call(&config.cluster, &headers, &[], timeout) {
            Ok(token) => {
                leading.in_flight = Some(InFlight {
                    token,
                    sent_ms: now,
                    timeout_ms: request.timeout_ms,
                })
            }
            Err(status) => {
                let why = format!(
                    "cannot call cluster {}: status {}",
                    config.cluster, status.0
                );
                let outcome = leading.poller.on_failure(now, &why, metrics);
                report(&leading.poller, outcome);
            }
        }
    }

    fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let OwnSync {
            config,
            lease_key,
            keeper,
            leading: leading_slot,
            metrics,
            vm,
        } = self;
        let Some(leading) = leading_slot.as_mut() else {
            return;
        };
        if let Some(usage) = &mut leading.usage {
            if usage.on_response(token, num_headers) {
                return;
            }
        }
        if leading.in_flight.map(|call| call.token) != Some(token) {
            return;
        }
        leading.in_flight = None;
        #[cfg(feature = "fault-injection")]
        fault::on_answer(num_headers);
        let now = callout::now_ms().unwrap_or(0);
        // The poll took a while: another VM may lead by now (this one's thread was held up
        // past the lease). Then the answer is not this VM's to apply.
        if !keeper.keep(&mut SharedLease { key: lease_key }, now) {
            *leading_slot = None;
            log_lost(*vm, None);
            return;
        }
        // A failed callout (reset, timeout, no upstream) has no headers, and reading one
        // would trap the VM.
        if num_headers == 0 {
            let outcome = leading.poller.on_failure(
                now,
                "the poll failed (reset, timeout or no upstream)",
                metrics,
            );
            return report(&leading.poller, outcome);
        }
        let status = callout::response_header(":status")
            .and_then(|s| core::str::from_utf8(&s).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let content_type = callout::response_header("content-type");
        let store_id = callout::response_header(STORE_HEADER);
        let head = AnswerHead {
            status,
            content_type: content_type.as_deref(),
            store: store_id.as_deref(),
            body_len: body_size,
        };
        let guard = LeaseGuard {
            keeper: RefCell::new(keeper),
            key: lease_key,
            calls: Cell::new(0),
            lost: Cell::new(false),
        };
        let outcome = leading.poller.on_answer(
            now,
            head,
            &mut GuardedBody(&guard),
            &mut GuardedBuckets {
                guard: &guard,
                namespace: &config.namespace,
            },
            metrics,
        );
        if guard.lost.get() {
            // Whatever it wrote before it lost the lease, the new leader rewrites whole.
            *leading_slot = None;
            log_lost(*vm, None);
            return;
        }
        if let Outcome::Updated { .. } = outcome {
            publish(&config.namespace);
        }
        report(&leading.poller, outcome);
    }

    fn on_change(&mut self, change: Option<Change>) {
        match change {
            Some(Change::Took { term, from }) => {
                self.metrics.took_lease(self.vm);
                let was = match from {
                    Some(holder) => format!(", after VM {}", lease::vm_of(holder)),
                    None => String::new(),
                };
                abi::log(
                    LogLevel::Info,
                    &format!(
                        "keygate sync: VM {} leads the key-map sync now (lease term {term}{was})",
                        self.vm
                    ),
                );
            }
            Some(Change::Lost { to }) => {
                self.leading = None;
                log_lost(self.vm, to);
            }
            None => {}
        }
    }

    /// The configuration is going away: another VM takes the lease at its next tick.
    fn stop(&mut self) {
        if self.keeper.leading() {
            self.keeper.release(&mut SharedLease {
                key: &self.lease_key,
            });
            self.leading = None;
            log_lost(self.vm, None);
        }
    }
}

fn log_lost(vm: u32, to: Option<u64>) {
    let now = match to {
        Some(holder) => format!(" (VM {} does)", lease::vm_of(holder)),
        None => String::new(),
    };
    abi::log(
        LogLevel::Info,
        &format!("keygate sync: VM {vm} no longer leads the key-map sync{now}"),
    );
}

/// Tells every VM a new map is in shared data, as the fetcher service does: the generation
/// goes on from whatever was published before (by an earlier leader too).
fn publish(namespace: &str) {
    let key = version_key(namespace);
    let published = abi::shared_data(&key)
        .ok()
        .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    let generation = published.wrapping_add(1);
    if let Err(status) = abi::set_shared_data(&key, &generation.to_le_bytes(), 0) {
        abi::log(
            LogLevel::Warn,
            &format!(
                "keygate sync: cannot publish the new map: status {}",
                status.0
            ),
        );
    }
}

fn report(poller: &Poller, outcome: Outcome) {
    let (level, message) = match outcome {
        Outcome::Updated {
            version,
            keys,
            new_lineage,
        } => {
            if new_lineage {
                abi::log(
                    LogLevel::Info,
                    &format!(
                        "keygate sync: the map comes from another store now ({}): taken as a new lineage",
                        poller.state().lineage()
                    ),
                );
            }
            (
                LogLevel::Info,
                format!("keygate sync: serving version {version} ({keys} keys)"),
            )
        }
        Outcome::Unchanged => return,
        Outcome::Refused(why) => (
            LogLevel::Warn,
            format!("keygate sync: answer refused: {why}"),
        ),
        Outcome::Failed(why) => (LogLevel::Warn, format!("keygate sync: {why}")),
    };
    abi::log(level, &message);
}

/// The lease key in Envoy's shared data.
struct SharedLease<'a> {
    key: &'a str,
}

impl LeaseStore for SharedLease<'_> {
    fn read(&mut self) -> Seen {
        match abi::shared_data_with_cas(self.key) {
            Ok((bytes, cas)) => Seen::Held {
                lease: Lease::decode(&bytes),
                cas,
            },
            Err(abi::NOT_FOUND) => Seen::Absent,
            Err(_) => Seen::Unreadable,
        }
    }

    fn write(&mut self, lease: &Lease, cas: Option<u32>) -> bool {
        abi::set_shared_data(self.key, &lease.encode(), cas.unwrap_or(0)).is_ok()
    }
}

/// Keeps the lease while an answer is read and applied (a large map takes longer than the
/// lease lasts), and stops the writes once it is lost.
struct LeaseGuard<'a> {
    keeper: RefCell<&'a mut LeaseKeeper>,
    key: &'a str,
    calls: Cell<u32>,
    lost: Cell<bool>,
}

impl LeaseGuard<'_> {
    /// Renews when due; looks at the clock on every `every`th call only.
    fn check(&self, every: u32) -> bool {
        if self.lost.get() {
            return false;
        }
        let calls = self.calls.get().wrapping_add(1);
        self.calls.set(calls);
        if !calls.is_multiple_of(every) {
            return true;
        }
        let Ok(now) = callout::now_ms() else {
            return true;
        };
        let Ok(mut keeper) = self.keeper.try_borrow_mut() else {
            return true;
        };
        if !keeper.keep(&mut SharedLease { key: self.key }, now) {
            self.lost.set(true);
        }
        !self.lost.get()
    }
}

/// The answer's body, read from Envoy a piece at a time (the VM never holds a large map
/// whole). Each piece is up to a megabyte: the lease is looked at before every one.
struct GuardedBody<'g, 'a>(&'g LeaseGuard<'a>);

impl BodyReader for GuardedBody<'_, '_> {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
        self.0.check(1);
        callout::response_body(start, len)
    }
}

/// The map's buckets in shared data, written only while this VM holds the lease.
struct GuardedBuckets<'g, 'a> {
    guard: &'g LeaseGuard<'a>,
    namespace: &'g str,
}

/// Bucket reads and writes between two looks at the lease.
const BUCKETS_PER_CHECK: u32 = 256;

impl BucketStore for GuardedBuckets<'_, '_> {
    fn read(&mut self, bucket: usize) -> Vec<u8> {
        self.guard.check(BUCKETS_PER_CHECK);
        abi::shared_data(&bucket_key(self.namespace, bucket)).unwrap_or_default()
    }

    fn write(&mut self, bucket: usize, bytes: &[u8]) {
        if !self.guard.check(BUCKETS_PER_CHECK) {
            return;
        }
        if let Err(status) = abi::set_shared_data(&bucket_key(self.namespace, bucket), bytes, 0) {
            abi::log(
                LogLevel::Warn,
                &format!(
                    "keygate sync: cannot write bucket {bucket}: status {}",
                    status.0
                ),
            );
        }
    }
}

/// The sync stats (the fetcher service's names) and the lease's: which VM leads
/// (`keygate.sync.leader`, its id) and how often the lease changed hands
/// (`keygate.sync.lease_changes`). Envoy gives every VM the same stat for a name, so these
/// are the Envoy's totals whichever VM counts.
struct FetchMetrics {
    sync: SyncMetricIds<u32>,
    leader: Option<u32>,
    lease_changes: Option<u32>,
}

impl FetchMetrics {
    fn define() -> FetchMetrics {
        FetchMetrics {
            sync: SyncMetricIds::define(
                |name| abi::define_counter(name).ok(),
                |name| callout::define_gauge(name).ok(),
            ),
            leader: callout::define_gauge("keygate.sync.leader").ok(),
            lease_changes: abi::define_counter("keygate.sync.lease_changes").ok(),
        }
    }

    fn took_lease(&mut self, vm: u32) {
        if let Some(id) = self.leader {
            let _ = callout::record_metric(id, u64::from(vm));
        }
        if let Some(id) = self.lease_changes {
            let _ = abi::increment_metric(id, 1);
        }
    }
}

impl SyncStats for FetchMetrics {
    fn bump(&mut self, counter: SyncCounter) {
        if let Some(id) = self.sync.counter(counter) {
            let _ = abi::increment_metric(id, 1);
        }
    }

    fn set(&mut self, gauge: SyncGauge, value: u64) {
        if let Some(id) = self.sync.gauge(gauge) {
            let _ = callout::record_metric(id, value);
        }
    }
}

/// Test-only (`fault-injection`): a poll answer carrying `x-keygate-fault: trap` traps the
/// VM that leads, so the suites can check that another VM takes the sync over.
#[cfg(feature = "fault-injection")]
mod fault {
    use crate::abi::{self, LogLevel};
    use crate::callout;

    pub fn on_answer(num_headers: usize) {
        if num_headers > 0
            && callout::response_header("x-keygate-fault").as_deref() == Some(b"trap")
        {
            abi::log(
                LogLevel::Critical,
                "keygate sync: fault injection: the leading VM traps",
            );
            trap();
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn trap() -> ! {
        core::arch::wasm32::unreachable()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn trap() -> ! {
        std::process::abort()
    }
}
