//! `POST /v1/usage`: the filters' fetchers report how often each key was used.
//!
//! The contract (the fetchers depend on it exactly):
//! - auth as `/v1/keymap`: `Authorization: Bearer <sync token>` (the admin token works too;
//!   none with `--no-sync-token`); the Host check applies;
//! - body `{"report_id":"<16-64 of [A-Za-z0-9_-]>","keys":[{"key_id":"key_…","allowed":N,
//!   "refused":N,"last_used":<unix seconds>},…]}`, at most 100,000 entries and 16 MiB;
//!   other fields are ignored, so reporters may send more later;
//! - 204 when stored; 200 `{"duplicate":true}` when that report id was already stored
//!   (nothing is counted twice; ids are kept for the usage retention period); 400 naming the
//!   field for bad input; 413 over the size limit. Unknown key ids are ignored.

use crate::api::{ApiError, AppState};
use crate::clock::now_unix;
use crate::log::log_event;
use crate::store::usage::{
    day_of, UsageEntry, UsageReport, UsageStored, DEFAULT_RETENTION_DAYS, SECONDS_PER_DAY,
};
use crate::web::ClientIp;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most entries one report may carry.
pub const MAX_REPORT_KEYS: usize = 100_000;
/// The largest body taken (100,000 entries with long numbers fit with room to spare).
pub const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// The largest count one entry may carry: far beyond any real report period, far below
/// where day totals could overflow.
pub const MAX_ENTRY_COUNT: u64 = 1 << 40;
/// Key ids longer than this are not ours (ours are `key_` and 26 characters).
const MAX_KEY_ID_CHARS: usize = 128;
/// How often old counts and report ids are pruned (on the next report after this long).
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// How long usage is kept, and when it was last pruned.
pub struct UsageSettings {
    retention_days: AtomicU64,
    last_prune: Mutex<Option<Instant>>,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            retention_days: AtomicU64::new(DEFAULT_RETENTION_DAYS),
            last_prune: Mutex::new(None),
        }
    }
}

impl UsageSettings {
    pub fn set_retention_days(&self, days: u64) {
        self.retention_days.store(days.max(1), Ordering::Relaxed);
    }

    pub fn retention_days(&self) -> u64 {
        self.retention_days.load(Ordering::Relaxed)
    }

    /// True (once per interval) when it is time to prune.
    fn prune_due(&self) -> bool {
        let mut last = self.last_prune.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < PRUNE_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// A report as sent; parsed typed first (fast, small), checked after.
#[derive(Deserialize)]
struct RawReport {
    report_id: String,
    keys: Vec<RawEntry>,
}

#[derive(Deserialize)]
struct RawEntry {
    key_id: String,
    allowed: u64,
    refused: u64,
    last_used: u64,
}

/// Why a report was refused: 400 or 413, with the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    TooLarge(String),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Invalid(message) => ApiError::invalid(message),
            Refusal::TooLarge(message) => ApiError::too_large(message),
        }
    }
}

fn invalid(field: &str, message: &str) -> Refusal {
    Refusal::Invalid(format!("{field}: {message}"))
}

/// Reads and checks a report body.
pub fn parse_report(body: &[u8]) -> Result<UsageReport, Refusal> {
    let raw: RawReport = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(_) => return Err(diagnose(body)),
    };
    if raw.keys.len() > MAX_REPORT_KEYS {
        return Err(Refusal::TooLarge(format!(
            "keys: at most {MAX_REPORT_KEYS} entries a report (this one has {}); send several",
            raw.keys.len()
        )));
    }
    let id = &raw.report_id;
    let id_ok = (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(invalid(
            "report_id",
            "must be 16 to 64 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let mut entries = Vec::with_capacity(raw.keys.len());
    for (i, entry) in raw.keys.into_iter().enumerate() {
        if entry.key_id.is_empty() || entry.key_id.chars().count() > MAX_KEY_ID_CHARS {
            return Err(invalid(
                &format!("keys[{i}].key_id"),
                &format!("must be 1 to {MAX_KEY_ID_CHARS} characters"),
            ));
        }
        for (field, count) in [("allowed", entry.allowed), ("refused", entry.refused)] {
            if count > MAX_ENTRY_COUNT {
                return Err(invalid(
                    &format!("keys[{i}].{field}"),
                    &format!("at most {MAX_ENTRY_COUNT} a report"),
                ));
            }
        }
        entries.push(UsageEntry {
            key_id: entry.key_id,
            allowed: entry.allowed,
            refused: entry.refused,
            last_used: entry.last_used,
        });
    }
    Ok(UsageReport {
        report_id: raw.report_id,
        entries,
    })
}

/// Names the field a body that did not parse gets wrong (read again, as a JSON value).
fn diagnose(body: &[u8]) -> Refusal {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return Refusal::Invalid(format!(
                "body: not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        }
    };
    let Some(object) = value.as_object() else {
        return invalid("body", "must be a JSON object");
    };
    if !object.get("report_id").is_some_and(Value::is_string) {
        return invalid("report_id", "missing or not a string");
    }
    let Some(keys) = object.get("keys").and_then(Value::as_array) else {
        return invalid("keys", "missing or not an array");
    };
    for (i, entry) in keys.iter().enumerate() {
        let Some(entry) = entry.as_object() else {
            return invalid(&format!("keys[{i}]"), "must be an object");
        };
        if !entry.get("key_id").is_some_and(Value::is_string) {
            return invalid(&format!("keys[{i}].key_id"), "missing or not a string");
        }
        for field in ["allowed", "refused", "last_used"] {
            if !entry.get(field).is_some_and(|v| v.as_u64().is_some()) {
                return invalid(
                    &format!("keys[{i}].{field}"),
                    "missing or not a whole number from 0 to 2^64-1",
                );
            }
        }
    }
    invalid("body", "not a usage report")
}

/// `POST /v1/usage`.
pub async fn report_usage(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refused) = state.authorize_key_map(&headers, ip).await {
        return refused;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::from(Refusal::TooLarge(format!(
            "body: at most {MAX_REPORT_BYTES} bytes"
        )))
        .into_response()
    };
    if declared.is_some_and(|n| n > MAX_REPORT_BYTES as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, MAX_REPORT_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => return too_large(),
    };
    let report = match parse_report(&bytes) {
        Ok(report) => report,
        Err(refusal) => return ApiError::from(refusal).into_response(),
    };
    let worker = Arc::clone(&state);
    let stored = tokio::task::spawn_blocking(move || {
        let now = now_unix();
        let stored = worker.service().record_usage(&report, now);
        if stored.is_ok() && worker.usage.prune_due() {
            prune(&worker, now);
        }
        stored
    })
    .await;
    match stored {
        Ok(Ok(UsageStored::Stored { .. })) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(UsageStored::Duplicate)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "duplicate": true })),
        )
            .into_response(),
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(&format!("a store task failed: {e}")).into_response(),
    }
}

/// Drops counts and report ids older than the retention period.
fn prune(state: &AppState, now: u64) {
    let days = state.usage.retention_days();
    let before_day = day_of(now).saturating_sub(days);
    let reports_before = now.saturating_sub(days.saturating_mul(SECONDS_PER_DAY));
    match state
        .service()
        .store()
        .prune_usage(before_day, reports_before)
    {
        Ok(0) => {}
        Ok(rows) => log_event(&format!(
            "usage older than {days} days pruned ({rows} rows)"
        )),
        Err(e) => log_event(&format!("cannot prune old usage: {e}")),
    }
}

#[cfg(test)]
mod tests;
