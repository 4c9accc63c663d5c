//! The key-map fetcher: runs once per Envoy process as a singleton bootstrap service. It
//! polls keygatectl (ETag and `since` deltas), validates each answer whole, and publishes
//! the map into shared data for every worker. Any failure keeps the last good map.

use keygate_core::service_config::{bucket_key, version_key, ServiceConfig};
use keygate_core::sync::{
    parse_message, Applied, BodyReader, BucketStore, SyncState, BINARY_CONTENT_TYPE,
};
use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::{Duration, UNIX_EPOCH};

/// How often the service wakes to check its schedule.
const TICK: Duration = Duration::from_millis(100);
/// Retry delay after a failed fetch, capped by the configured interval.
const RETRY_MS: u64 = 1000;
/// Largest answer accepted; anything bigger is refused unread.
const MAX_BODY_BYTES: usize = 512 << 20;

pub struct SyncService {
    config: ServiceConfig,
    state: SyncState,
    in_flight: Option<u32>,
    next_fetch_ms: u64,
    last_success_ms: Option<u64>,
    /// After a refused delta, ask for the whole map.
    want_full: bool,
    rng: u64,
    metrics: ServiceMetrics,
}

struct ServiceMetrics {
    version: Option<u32>,
    keys: Option<u32>,
    age_ms: Option<u32>,
    fetches: Option<u32>,
    updates: Option<u32>,
    not_modified: Option<u32>,
    errors: Option<u32>,
    refused: Option<u32>,
}

impl ServiceMetrics {
    fn define() -> ServiceMetrics {
        let gauge = |n: &str| hostcalls::define_metric(MetricType::Gauge, n).ok();
        let counter = |n: &str| hostcalls::define_metric(MetricType::Counter, n).ok();
        ServiceMetrics {
            version: gauge("keygate.sync.version"),
            keys: gauge("keygate.sync.keys"),
            age_ms: gauge("keygate.sync.age_ms"),
            fetches: counter("keygate.sync.fetches"),
            updates: counter("keygate.sync.updates"),
            not_modified: counter("keygate.sync.not_modified"),
            errors: counter("keygate.sync.errors"),
            refused: counter("keygate.sync.refused"),
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

fn set(id: Option<u32>, value: u64) {
    if let Some(id) = id {
        let _ = hostcalls::record_metric(id, value);
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_response(start: usize, len: usize) -> Vec<u8> {
    match hostcalls::get_buffer(BufferType::HttpCallResponseBody, start, len) {
        Ok(Some(bytes)) => bytes,
        _ => Vec::new(),
    }
}

/// The answer body, read from Envoy piece by piece.
struct ResponseBody;

impl BodyReader for ResponseBody {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
        read_response(start, len)
    }
}

/// Buckets in Envoy's shared data, under the service's namespace.
struct SharedData<'a> {
    namespace: &'a str,
}

impl BucketStore for SharedData<'_> {
    fn read(&mut self, bucket: usize) -> Vec<u8> {
        match hostcalls::get_shared_data(&bucket_key(self.namespace, bucket)) {
            Ok((Some(bytes), _)) => bytes,
            _ => Vec::new(),
        }
    }

    fn write(&mut self, bucket: usize, bytes: &[u8]) {
        if let Err(status) =
            hostcalls::set_shared_data(&bucket_key(self.namespace, bucket), Some(bytes), None)
        {
            warn!("keygate sync: cannot write bucket {bucket}: {status:?}");
        }
    }
}

impl SyncService {
    pub fn start(config: ServiceConfig) -> SyncService {
        if let Err(status) = hostcalls::set_tick_period(TICK) {
            warn!("keygate sync: cannot start the timer: {status:?}");
        }
        let now = now_ms();
        info!(
            "keygate sync: polling cluster {} path {} every {} ms",
            config.cluster, config.path, config.fetch.interval_ms
        );
        SyncService {
            config,
            state: SyncState::default(),
            in_flight: None,
            next_fetch_ms: now,
            last_success_ms: None,
            want_full: true,
            rng: now | 1,
            metrics: ServiceMetrics::define(),
        }
    }

    pub fn on_tick(&mut self) {
        let now = now_ms();
        if let Some(at) = self.last_success_ms {
            set(self.metrics.age_ms, now.saturating_sub(at));
        }
        if self.in_flight.is_none() && now >= self.next_fetch_ms {
            self.fetch(now);
        }
    }

    fn fetch(&mut self, now: u64) {
        let since = if self.want_full {
            None
        } else {
            self.state.version()
        };
        let path = match since {
            Some(v) => format!("{}?since={v}", self.config.path),
            None => self.config.path.clone(),
        };
        let etag = since.map(|v| format!("\"{v}\""));
        let bearer = self
            .config
            .fetch
            .bearer_token
            .as_ref()
            .map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", &path),
            (":authority", &self.config.authority),
            // A full map comes binary when keygatectl can (a million keys), deltas as JSON.
            ("accept", "application/x-keygate-map, application/json"),
            // Envoy retries a poll on another endpoint of the cluster (keygatectl replicas)
            // when a connection fails or is reset, instead of waiting a whole interval.
            ("x-envoy-retry-on", "connect-failure,refused-stream,reset"),
            ("x-envoy-max-retries", "2"),
        ];
        if let Some(etag) = &etag {
            headers.push(("if-none-match", etag));
        }
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        bump(self.metrics.fetches);
        match hostcalls::dispatch_http_call(
            &self.config.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(self.config.fetch.timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                warn!(
                    "keygate sync: cannot call cluster {}: {status:?}",
                    self.config.cluster
                );
                self.failed(now);
            }
        }
    }

    pub fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let now = now_ms();
        // A reset or timed-out call has no headers; reading one would trap the VM.
        if num_headers == 0 {
            warn!("keygate sync: the call failed (reset or timeout)");
            return self.failed(now);
        }
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        match status.as_deref() {
            Some(b"304") => {
                bump(self.metrics.not_modified);
                self.succeeded(now);
            }
            Some(b"200") => self.apply_body(now, body_size),
            other => {
                let shown = other.map(String::from_utf8_lossy).unwrap_or_default();
                warn!("keygate sync: answer status {shown}");
                self.failed(now);
            }
        }
    }

    fn apply_body(&mut self, now: u64, body_size: usize) {
        if body_size > MAX_BODY_BYTES {
            warn!("keygate sync: answer of {body_size} bytes refused (limit {MAX_BODY_BYTES})");
            return self.failed(now);
        }
        let binary =
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, "content-type")
                .ok()
                .flatten()
                .is_some_and(|v| v.starts_with(BINARY_CONTENT_TYPE.as_bytes()));
        let mut store = SharedData {
            namespace: &self.config.namespace,
        };
        let guard = self.config.fetch.guard;
        let applied = if binary {
            // Read in chunks straight from Envoy's buffer: the VM never holds the whole map.
            self.state
                .apply_binary_full(&mut ResponseBody, body_size, &mut store, guard)
                .map_err(|e| e.to_string())
        } else {
            let body = read_response(0, body_size);
            match parse_message(&body) {
                Ok(message) => self
                    .state
                    .apply(message, &mut store, guard)
                    .map_err(|refusal| refusal.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        match applied {
            Ok(Applied::Updated { version, keys }) => {
                let published = hostcalls::set_shared_data(
                    &version_key(&self.config.namespace),
                    Some(&version.to_le_bytes()),
                    None,
                );
                if let Err(status) = published {
                    warn!("keygate sync: cannot publish version {version}: {status:?}");
                }
                info!("keygate sync: serving version {version} ({keys} keys)");
                bump(self.metrics.updates);
                set(self.metrics.version, version);
                set(self.metrics.keys, keys as u64);
                self.want_full = false;
                self.succeeded(now);
            }
            Ok(Applied::Unchanged) => {
                self.want_full = false;
                self.succeeded(now);
            }
            Err(why) => {
                warn!("keygate sync: answer refused: {why}");
                bump(self.metrics.refused);
                self.want_full = true;
                self.failed(now);
            }
        }
    }

    fn succeeded(&mut self, _started: u64) {
        // Schedule from now, not from when the answer arrived: a big map takes a while to
        // apply, and the next poll must still wait a whole interval.
        let now = now_ms();
        self.last_success_ms = Some(now);
        set(self.metrics.age_ms, 0);
        self.next_fetch_ms = now + self.jittered(self.config.fetch.interval_ms);
    }

    fn failed(&mut self, _started: u64) {
        let now = now_ms();
        bump(self.metrics.errors);
        self.next_fetch_ms = now + self.jittered(self.config.fetch.interval_ms.min(RETRY_MS));
    }

    /// The wait before the next poll (see `poll_wait`); xorshift: no need for a secure source.
    fn jittered(&mut self, base: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng % 10_001) as f64 / 10_000.0; // 0..=1
        poll_wait(base, self.config.fetch.jitter, unit)
    }
}

/// How long to wait before the next poll: `base` less `unit` (0..=1) of the jitter share (so
/// fleets do not poll in step), less one tick. A poll starts on the first tick at or after
/// its time, so it starts within `base` of the last answer, never later: a roll is seen
/// within one interval plus a poll's round trip and the workers' tick.
fn poll_wait(base: u64, jitter: f64, unit: f64) -> u64 {
    let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
    let tick = TICK.as_millis() as u64;
    ((base as f64 * factor) as u64).saturating_sub(tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_is_never_scheduled_later_than_one_interval_less_a_tick() {
        let tick = TICK.as_millis() as u64;
        for unit in [0.0, 0.25, 0.5, 1.0, 7.0] {
            let wait = poll_wait(1000, 0.1, unit);
            assert!(wait <= 1000 - tick, "unit {unit}: {wait}");
            assert!(wait >= 900 - tick, "unit {unit}: {wait}");
        }
        assert_eq!(poll_wait(1000, 0.0, 0.7), 1000 - tick);
        assert_eq!(
            poll_wait(50, 0.5, 1.0),
            0,
            "a wait shorter than a tick polls on the next tick"
        );
    }
}
