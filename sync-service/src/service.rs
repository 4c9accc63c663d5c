//! The key-map fetcher: runs once per Envoy process as a singleton bootstrap service. The
//! poller (keygate-sync-core's, shared with the native module) decides what to ask and what
//! an answer means; this file carries its requests out through Envoy's HTTP callout, its
//! answers back, and the map into shared data for every worker.

use crate::usage::UsageReports;
use keygate_core::shared_data::{bucket_key, version_key};
use keygate_sync_core::binary::BodyReader;
use keygate_sync_core::poller::{
    AnswerHead, Outcome, Poller, SyncCounter, SyncGauge, SyncMetricIds, SyncStats, STORE_HEADER,
};
use keygate_sync_core::settings::ServiceConfig;
use keygate_sync_core::state::BucketStore;
use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType};
use std::time::{Duration, UNIX_EPOCH};

/// How often the service wakes to check its schedule.
const TICK: Duration = Duration::from_millis(100);

pub struct SyncService {
    config: ServiceConfig,
    poller: Poller,
    /// Per-key usage reports, when on.
    usage: Option<UsageReports>,
    /// The callout under way, if any.
    in_flight: Option<u32>,
    metrics: ServiceMetrics,
}

/// Envoy's counters and gauges of the sync stats, by `SyncCounter`/`SyncGauge` order.
struct ServiceMetrics(SyncMetricIds<u32>);

impl ServiceMetrics {
    fn define() -> ServiceMetrics {
        let define = |kind, name| hostcalls::define_metric(kind, name).ok();
        ServiceMetrics(SyncMetricIds::define(
            |name| define(MetricType::Counter, name),
            |name| define(MetricType::Gauge, name),
        ))
    }
}

impl SyncStats for ServiceMetrics {
    fn bump(&mut self, counter: SyncCounter) {
        if let Some(id) = self.0.counter(counter) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn set(&mut self, gauge: SyncGauge, value: u64) {
        if let Some(id) = self.0.gauge(gauge) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The answer body, read from Envoy piece by piece (the VM never holds a whole large map).
struct ResponseBody;

impl BodyReader for ResponseBody {
    fn read(&mut self, start: usize, len: usize) -> Vec<u8> {
        match hostcalls::get_buffer(BufferType::HttpCallResponseBody, start, len) {
            Ok(Some(bytes)) => bytes,
            _ => Vec::new(),
        }
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

fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

impl SyncService {
    pub fn start(config: ServiceConfig) -> SyncService {
        if let Err(status) = hostcalls::set_tick_period(TICK) {
            warn!("keygate sync: cannot start the timer: {status:?}");
        }
        let fetch = &config.fetch;
        if fetch.watch {
            info!(
                "keygate sync: watching cluster {} path {} ({} s at a time; retrying after {} ms)",
                config.cluster, config.path, fetch.wait_s, fetch.interval_ms
            );
        } else {
            info!(
                "keygate sync: polling cluster {} path {} every {} ms",
                config.cluster, config.path, fetch.interval_ms
            );
        }
        let now = now_ms();
        // Envoy retries a poll on another endpoint of the cluster, so the poller sees one
        // replica: the cluster.
        let poller = Poller::new(config.fetch.clone(), 1, TICK.as_millis() as u64, now, now);
        SyncService {
            usage: UsageReports::start(&config, now),
            config,
            poller,
            in_flight: None,
            metrics: ServiceMetrics::define(),
        }
    }

    pub fn on_tick(&mut self) {
        let now = now_ms();
        if let Some(age) = self.poller.age_ms(now) {
            self.metrics.set(SyncGauge::AgeMs, age);
        }
        if let Some(usage) = &mut self.usage {
            usage.on_tick(&self.config, now);
        }
        self.send_due(now);
    }

    /// Sends the poller's next request if it is due and none is out.
    fn send_due(&mut self, now: u64) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(request) = self.poller.next_request(now, &mut self.metrics) else {
            return;
        };
        let path = format!("{}{}", self.config.path, request.query);
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", &path),
            (":authority", &self.config.authority),
            // Envoy retries a poll on another endpoint of the cluster (keygatectl replicas)
            // when a connection fails or is reset, instead of waiting a whole interval.
            ("x-envoy-retry-on", "connect-failure,refused-stream,reset"),
            ("x-envoy-max-retries", "2"),
        ];
        headers.extend(request.headers.iter().map(|(n, v)| (*n, v.as_str())));
        match hostcalls::dispatch_http_call(
            &self.config.cluster,
            headers,
            None,
            vec![],
            // A watch's timeout sits above its wait.
            Duration::from_millis(request.timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                let why = format!("cannot call cluster {}: {status:?}", self.config.cluster);
                let outcome = self.poller.on_failure(now, &why, &mut self.metrics);
                self.report(outcome);
            }
        }
    }

    pub fn on_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        if let Some(usage) = &mut self.usage {
            if usage.on_response(token, num_headers) {
                return;
            }
        }
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let now = now_ms();
        // A reset or timed-out call has no headers; reading one would trap the VM.
        if num_headers == 0 {
            let outcome = self.poller.on_failure(
                now,
                "the call failed (reset or timeout)",
                &mut self.metrics,
            );
            self.report(outcome);
            // A cut watch is asked again at once (the poller says when).
            return self.send_due(now);
        }
        let status = response_header(":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        let content_type = response_header("content-type");
        let store_id = response_header(STORE_HEADER);
        let head = AnswerHead {
            status,
            content_type: content_type.as_deref(),
            store: store_id.as_deref(),
            body_len: body_size,
        };
        let mut store = SharedData {
            namespace: &self.config.namespace,
        };
        let outcome =
            self.poller
                .on_answer(now, head, &mut ResponseBody, &mut store, &mut self.metrics);
        if let Outcome::Updated { .. } = outcome {
            self.publish();
        }
        self.report(outcome);
        // The next watch goes out now, not on the next tick.
        self.send_due(now);
    }

    /// Tells the workers a new map is in shared data: they drop the buckets they cached.
    fn publish(&mut self) {
        let key = version_key(&self.config.namespace);
        // Not the map's version: two stores' maps may share one. A count of publishes that
        // goes on from whatever an earlier fetcher (a reloaded VM) published.
        let published = match hostcalls::get_shared_data(&key) {
            Ok((Some(bytes), _)) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(u64::from_le_bytes)
                .unwrap_or_default(),
            _ => 0,
        };
        let generation = published.wrapping_add(1);
        if let Err(status) = hostcalls::set_shared_data(&key, Some(&generation.to_le_bytes()), None)
        {
            warn!("keygate sync: cannot publish the new map: {status:?}");
        }
    }

    fn report(&mut self, outcome: Outcome) {
        if let Some(notice) = self.poller.take_notice() {
            warn!("keygate sync: {notice}");
        }
        match outcome {
            Outcome::Updated {
                version,
                keys,
                new_lineage,
            } => {
                if new_lineage {
                    info!(
                        "keygate sync: the map comes from another store now ({}): taken as a new lineage",
                        self.poller.state().lineage()
                    );
                }
                info!("keygate sync: serving version {version} ({keys} keys)");
            }
            Outcome::Unchanged => {}
            Outcome::Refused(why) => warn!("keygate sync: answer refused: {why}"),
            Outcome::Failed(why) => warn!("keygate sync: {why}"),
        }
    }
}
