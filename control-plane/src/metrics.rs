//! keygatectl's own metrics, served in Prometheus's text format at `/metrics` (`ops.rs`).
//!
//! One process-wide registry (the `prometheus` crate), so that any handler can count with a
//! one-line call and no state to thread through: `metrics::keymap_answer(…)`,
//! `metrics::watch_opened()`, … Labels take only values from fixed sets (route templates,
//! not paths; known methods; answer kinds), so a client cannot grow the series. Nothing here
//! holds a key, a token or a digest.

use axum::http::StatusCode;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::LazyLock;
use std::time::Duration;

/// What a key-map answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Full,
    Delta,
    NotModified,
}

impl Answer {
    fn label(self) -> &'static str {
        match self {
            Answer::Full => "full",
            Answer::Delta => "delta",
            Answer::NotModified => "not_modified",
        }
    }
}

/// Where a sign-in or token check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    /// The operator's page (`/ui/`), with the admin token.
    Operator,
    /// A customer's sign-in (`/login`), email and password.
    Customer,
    /// The admin API with a wrong admin token.
    AdminApi,
    /// The key map with a token that is neither the sync token nor the admin token.
    KeyMap,
    /// `/metrics` with a wrong metrics token.
    Metrics,
}

impl SignIn {
    fn label(self) -> &'static str {
        match self {
            SignIn::Operator => "operator",
            SignIn::Customer => "customer",
            SignIn::AdminApi => "admin_api",
            SignIn::KeyMap => "key_map",
            SignIn::Metrics => "metrics",
        }
    }
}

struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    keymap_answers: IntCounterVec,
    keymap_answer_bytes: HistogramVec,
    keymap_build_seconds: HistogramVec,
    store_seconds: HistogramVec,
    store_errors: IntCounterVec,
    watches: IntGauge,
    sign_in_failures: IntCounterVec,
    keymap_version: IntGauge,
    keymap_keys: IntGauge,
    keymap_built: IntGauge,
    ready: IntGauge,
    info: IntGaugeVec,
}

type Made<T> = Result<T, prometheus::Error>;

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> Made<HistogramVec> {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
}

fn counter(name: &str, help: &str, labels: &[&str]) -> Made<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn gauge(name: &str, help: &str) -> Made<IntGauge> {
    IntGauge::new(name, help)
}

/// The registry, or `None` if a definition were malformed (they are fixed; the hooks then
/// count nothing and `/metrics` says why).
static METRICS: LazyLock<Made<Metrics>> = LazyLock::new(build);

/// Runs `f` on the metrics, when they exist.
fn with(f: impl FnOnce(&Metrics)) {
    if let Ok(metrics) = METRICS.as_ref() {
        f(metrics);
    }
}

fn build() -> Made<Metrics> {
    let seconds = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let bytes = vec![
        256.0,
        1024.0,
        4096.0,
        16384.0,
        65536.0,
        262_144.0,
        1_048_576.0,
        4_194_304.0,
        16_777_216.0,
        67_108_864.0,
        268_435_456.0,
    ];
    let metrics = Metrics {
        registry: Registry::new(),
        http_requests: counter(
            "keygatectl_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            &["route", "method", "status"],
        )?,
        http_seconds: histogram(
            "keygatectl_http_request_duration_seconds",
            "Time to answer an HTTP request (to its headers), by route template.",
            &["route"],
            seconds.clone(),
        )?,
        keymap_answers: counter(
            "keygatectl_keymap_answers_total",
            "Key-map answers, by kind: full map, delta, or not_modified (304).",
            &["kind"],
        )?,
        keymap_answer_bytes: histogram(
            "keygatectl_keymap_answer_bytes",
            "Body sizes of key-map answers with a body, by kind.",
            &["kind"],
            bytes,
        )?,
        keymap_build_seconds: histogram(
            "keygatectl_keymap_build_seconds",
            "Time to read and encode a full key map, by encoding.",
            &["encoding"],
            seconds.clone(),
        )?,
        store_seconds: histogram(
            "keygatectl_store_transaction_seconds",
            "Store transactions (each store call is one), by backend and kind (read, write).",
            &["backend", "kind"],
            seconds,
        )?,
        store_errors: counter(
            "keygatectl_store_errors_total",
            "Store transactions that failed (unreachable database, lock timeout, ...).",
            &["backend", "kind"],
        )?,
        watches: gauge(
            "keygatectl_keymap_watches",
            "Key-map polls waiting for a change (long polls) now.",
        )?,
        sign_in_failures: counter(
            "keygatectl_sign_in_failures_total",
            "Wrong credentials: the operator's and customers' sign-ins, wrong tokens on the \
             admin API, the key map and /metrics.",
            &["where"],
        )?,
        keymap_version: gauge(
            "keygatectl_keymap_version",
            "The key map's current version (unix milliseconds of its last change, or more).",
        )?,
        keymap_keys: gauge(
            "keygatectl_keymap_keys",
            "Keys in the key map (disabled keys included) at the current version.",
        )?,
        keymap_built: gauge(
            "keygatectl_keymap_built",
            "1 once this server has built the full key map since it started.",
        )?,
        ready: gauge(
            "keygatectl_ready",
            "1 while /readyz answers 200: the store answers and the map is built.",
        )?,
        info: IntGaugeVec::new(
            Opts::new(
                "keygatectl_info",
                "Always 1; the labels name the version and the key map's store.",
            ),
            &["version", "store"],
        )?,
    };
    let started = gauge(
        "keygatectl_start_time_seconds",
        "When this server started, in unix seconds.",
    )?;
    started.set(i64::try_from(crate::clock::now_unix()).unwrap_or(i64::MAX));
    let collectors: [Box<dyn prometheus::core::Collector>; 15] = [
        Box::new(metrics.http_requests.clone()),
        Box::new(metrics.http_seconds.clone()),
        Box::new(metrics.keymap_answers.clone()),
        Box::new(metrics.keymap_answer_bytes.clone()),
        Box::new(metrics.keymap_build_seconds.clone()),
        Box::new(metrics.store_seconds.clone()),
        Box::new(metrics.store_errors.clone()),
        Box::new(metrics.watches.clone()),
        Box::new(metrics.sign_in_failures.clone()),
        Box::new(metrics.keymap_version.clone()),
        Box::new(metrics.keymap_keys.clone()),
        Box::new(metrics.keymap_built.clone()),
        Box::new(metrics.ready.clone()),
        Box::new(metrics.info.clone()),
        Box::new(started),
    ];
    for collector in collectors {
        metrics.registry.register(collector)?;
    }
    // Every answer kind and failure place is shown from the start, at 0, so that rates and
    // alerts work before the first one happens.
    for kind in [Answer::Full, Answer::Delta, Answer::NotModified] {
        metrics.keymap_answers.with_label_values(&[kind.label()]);
    }
    for place in [
        SignIn::Operator,
        SignIn::Customer,
        SignIn::AdminApi,
        SignIn::KeyMap,
        SignIn::Metrics,
    ] {
        metrics.sign_in_failures.with_label_values(&[place.label()]);
    }
    Ok(metrics)
}

/// An HTTP request answered. `route` is the route's template (`/v1/keys/{key_id}/roll`),
/// never the path a client sent.
pub fn http_request(route: &str, method: &str, status: StatusCode, elapsed: Duration) {
    let method = match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
        _ => "other",
    };
    with(|m| {
        m.http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        m.http_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    });
}

/// A key-map answer, with its body's size (0 for a 304).
pub fn keymap_answer(kind: Answer, bytes: usize) {
    with(|m| {
        m.keymap_answers.with_label_values(&[kind.label()]).inc();
        if kind != Answer::NotModified {
            m.keymap_answer_bytes
                .with_label_values(&[kind.label()])
                .observe(bytes as f64);
        }
    });
}

/// A full key map built (read from the store and encoded).
pub fn keymap_built(encoding: &str, elapsed: Duration) {
    with(|m| {
        m.keymap_build_seconds
            .with_label_values(&[encoding])
            .observe(elapsed.as_secs_f64());
    });
}

/// A store transaction, by backend (`sqlite`, `postgres`) and kind (`read`, `write`).
pub fn store_transaction(backend: &str, kind: &str, elapsed: Duration, ok: bool) {
    with(|m| {
        m.store_seconds
            .with_label_values(&[backend, kind])
            .observe(elapsed.as_secs_f64());
        // Looked up on success too, so that the series shows (at 0) before the first error
        // and an alert on its rate has something to watch.
        let errors = m.store_errors.with_label_values(&[backend, kind]);
        if !ok {
            errors.inc();
        }
    });
}

/// Counts a key-map poll that waits for a change while the guard lives. (The long-poll
/// handler holds one per waiting poll.)
#[must_use = "the watch counts as open while the guard lives"]
pub struct WatchGuard(());

impl Drop for WatchGuard {
    fn drop(&mut self) {
        with(|m| m.watches.dec());
    }
}

/// A long poll started waiting: keep the guard until it answers (or its client leaves).
pub fn watch_opened() -> WatchGuard {
    with(|m| m.watches.inc());
    WatchGuard(())
}

pub fn sign_in_failed(place: SignIn) {
    with(|m| m.sign_in_failures.with_label_values(&[place.label()]).inc());
}

/// The key map's store and version as last read.
pub fn keymap_status(store: &str, version: u64) {
    with(|m| {
        m.keymap_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        // One series: the store of now (a new lineage replaces the old one).
        let labels = [env!("CARGO_PKG_VERSION"), store];
        let current = m
            .info
            .get_metric_with_label_values(&labels)
            .map(|g| g.get())
            .unwrap_or(0);
        if current != 1 {
            m.info.reset();
            m.info.with_label_values(&labels).set(1);
        }
    });
}

pub fn keymap_keys(count: u64) {
    with(|m| m.keymap_keys.set(i64::try_from(count).unwrap_or(i64::MAX)));
}

pub fn keymap_built_once() {
    with(|m| m.keymap_built.set(1));
}

pub fn set_ready(ready: bool) {
    with(|m| m.ready.set(i64::from(ready)));
}

/// Every metric in Prometheus's text exposition format (version 0.0.4).
pub fn render() -> Result<(String, String), prometheus::Error> {
    let metrics = METRICS
        .as_ref()
        .map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    encoder.encode(&metrics.registry.gather(), &mut out)?;
    let text = String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    Ok((encoder.format_type().to_string(), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_show_in_the_exposition() {
        keymap_answer(Answer::Delta, 300);
        sign_in_failed(SignIn::Operator);
        let guard = watch_opened();
        keymap_status("00112233445566778899aabbccddeeff", 42);
        let (content_type, text) = render().expect("render");
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        assert!(text.contains("# TYPE keygatectl_keymap_answers_total counter"));
        assert!(text.contains("keygatectl_keymap_answers_total{kind=\"not_modified\"}"));
        assert!(text.contains("keygatectl_keymap_answer_bytes_bucket{kind=\"delta\",le=\"1024\"}"));
        assert!(text.contains("keygatectl_keymap_version 42"));
        assert!(text.contains("store=\"00112233445566778899aabbccddeeff\""));
        assert!(text.contains("keygatectl_sign_in_failures_total{where=\"operator\"}"));
        drop(guard);
    }

    #[test]
    fn store_errors_show_at_zero_before_the_first() {
        // A backend of its own: the store's tests count into this process-wide registry too.
        store_transaction("unit_test", "read", Duration::from_millis(1), true);
        let (_, text) = render().expect("render");
        assert!(
            text.contains("keygatectl_store_errors_total{backend=\"unit_test\",kind=\"read\"} 0"),
            "{text}"
        );
        store_transaction("unit_test", "read", Duration::from_millis(1), false);
        let (_, text) = render().expect("render");
        assert!(
            text.contains("keygatectl_store_errors_total{backend=\"unit_test\",kind=\"read\"} 1")
        );
    }

    #[test]
    fn unknown_methods_are_one_label() {
        http_request(
            "/v1/keymap",
            "BREW",
            StatusCode::METHOD_NOT_ALLOWED,
            Duration::from_millis(1),
        );
        let (_, text) = render().expect("render");
        assert!(text.contains("method=\"other\""));
        assert!(!text.contains("BREW"));
    }
}
