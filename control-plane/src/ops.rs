//! What operators' tools read: `/livez` (the process answers), `/readyz` (the store answers
//! and the key map has been built), `/metrics` (Prometheus text, `metrics.rs`), and the
//! middleware that counts every HTTP request by route template and status.
//!
//! `/livez` and `/readyz` are answered whatever the `Host` (probes name the pod's address or
//! the cluster; `hosts.rs`) and tell nothing about the keys. `/metrics` keeps the Host check,
//! and with `--metrics-token-file` needs `Authorization: Bearer <metrics token>`.

use crate::api::AppState;
use crate::auth::{bearer_token, token_matches};
use crate::log::{log_event, warn};
use crate::metrics::{self, SignIn};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use keygate_core::digest::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The store counts as answering while its last read is at most this old; the server reads
/// the key map's version from it every second.
pub const STORE_FRESH: Duration = Duration::from_secs(5);

/// What readiness rests on, kept up to date by the server's own store reads.
pub struct Health {
    store_answered_at: Mutex<Option<Instant>>,
    map_built: AtomicBool,
    /// The version whose key count `/metrics` last read.
    counted_version: Mutex<Option<u64>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            store_answered_at: Mutex::new(None),
            map_built: AtomicBool::new(false),
            counted_version: Mutex::new(None),
        }
    }
}

impl Health {
    /// A store read succeeded just now.
    pub fn store_answered(&self) {
        *self
            .store_answered_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The full key map was built (it is in memory for the filters' next full polls).
    pub fn map_built(&self) {
        if !self.map_built.swap(true, Ordering::Relaxed) {
            metrics::keymap_built_once();
        }
    }

    /// Why the server is not ready, if it is not.
    pub fn not_ready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let answered = *self
            .store_answered_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match answered.map(|at| at.elapsed()) {
            Some(age) if age <= STORE_FRESH => {}
            Some(age) => reasons.push(format!(
                "the store has not answered for {} s",
                age.as_secs()
            )),
            None => reasons.push("the store has not answered yet".to_string()),
        }
        if !self.map_built.load(Ordering::Relaxed) {
            reasons.push("the key map is not built yet".to_string());
        }
        reasons
    }
}

/// Who may read `/metrics`.
#[derive(Clone)]
pub struct OpsOptions {
    /// `--metrics-token-file`: the token's digest; `None`: anyone the Host check lets in.
    pub metrics_token: Option<Digest>,
}

#[derive(Clone)]
struct OpsState {
    app: Arc<AppState>,
    options: OpsOptions,
}

pub fn router(app: Arc<AppState>, options: OpsOptions) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(OpsState { app, options })
}

async fn livez() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let reasons = state.app.health.not_ready();
    metrics::set_ready(reasons.is_empty());
    let status = state.app.keymap.status();
    if reasons.is_empty() {
        return Json(serde_json::json!({
            "status": "ready",
            "key_map": {"store": status.store.as_str(), "version": status.version},
        }))
        .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"status": "not_ready", "reasons": reasons})),
    )
        .into_response()
}

async fn metrics_page(State(state): State<OpsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.options.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        if !given.is_some_and(|token| token_matches(token, expected)) {
            if given.is_some() {
                metrics::sign_in_failed(SignIn::Metrics);
                warn("refused /metrics: wrong metrics token");
            }
            let mut refused = (
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <metrics token>\n",
            )
                .into_response();
            refused.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keygatectl metrics\""),
            );
            return refused;
        }
    }
    count_keys(&state.app).await;
    metrics::set_ready(state.app.health.not_ready().is_empty());
    match metrics::render() {
        Ok((content_type, text)) => {
            let mut response = text.into_response();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        Err(e) => {
            log_event(&format!("cannot render the metrics: {e}"));
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Reads the key map's size once per version (a count in the store, not a build).
async fn count_keys(app: &Arc<AppState>) {
    let version = app.keymap.status().version;
    let counted = *app
        .health
        .counted_version
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if counted == Some(version) {
        return;
    }
    let app = Arc::clone(app);
    let counted = tokio::task::spawn_blocking(move || {
        let store = app.service().store();
        match store.key_map_size(crate::clock::now_unix()) {
            Ok(count) => {
                metrics::keymap_keys(count);
                *app.health
                    .counted_version
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(version);
            }
            Err(e) => warn(&format!("cannot count the key map's keys: {e}")),
        }
    })
    .await;
    if let Err(e) = counted {
        warn(&format!("the key count task failed: {e}"));
    }
}
