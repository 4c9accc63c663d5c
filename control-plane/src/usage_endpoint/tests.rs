//! `POST /v1/usage` over HTTP, in process (`tower::ServiceExt::oneshot` on the real router,
//! with the Host check in front as `serve` has it, and a real SQLite store).

use super::*;
use crate::api::{router, KeyMapAccess};
use crate::front_door::front_door;
use crate::hosts::AllowedHosts;
use crate::keymap::KeyMapCache;
use crate::service::Service;
use crate::store::audit::who;
use crate::store::{SqliteStore, Store};
use axum::http::Request;
use axum::Router;
use keygate_core::digest::Digest;
use serde_json::json;
use tower::ServiceExt;

const SYNC_TOKEN: &str = "kgsync_test_0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

struct Site {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    state: Arc<AppState>,
    router: Router,
    account: String,
    keys: Vec<String>,
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("keygate.db")).expect("store"));
    let service = Service::new(Arc::clone(&store));
    let created = service
        .create_account(Some("Acme"), 1, &who())
        .expect("account")
        .value;
    let keymap = KeyMapCache::new(store.key_map_status().expect("status"));
    let state = Arc::new(AppState::new(
        service,
        Some(Digest::of_key(ADMIN_TOKEN)),
        KeyMapAccess::Token(Digest::of_key(SYNC_TOKEN)),
        keymap,
    ));
    let hosts = AllowedHosts::new(Vec::new()).expect("hosts");
    let router = front_door(router(Arc::clone(&state)), Arc::new(hosts));
    Site {
        _dir: dir,
        store,
        state,
        router,
        account: created.account.id,
        keys: created
            .keys
            .iter()
            .map(|k| k.record.key_id.clone())
            .collect(),
    }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Site {
    async fn send(&self, token: Option<&str>, host: &str, body: Vec<u8>) -> Answer {
        let mut request = Request::post("/v1/usage")
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON answer")
        };
        Answer { status, body }
    }

    async fn report(&self, body: &Value) -> Answer {
        self.send(
            Some(SYNC_TOKEN),
            "127.0.0.1:8080",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// (allowed, refused) of each of the account's keys today, from the store.
    fn counts(&self) -> Vec<(String, u64, u64)> {
        self.store
            .daily_usage(&self.account, 0)
            .expect("usage")
            .into_iter()
            .map(|d| (d.key_id, d.allowed, d.refused))
            .collect()
    }
}

fn now() -> u64 {
    now_unix()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_report_is_stored_once_and_a_retry_is_a_duplicate() {
    runtime().block_on(async {
        let site = site();
        let (a, b) = (&site.keys[0], &site.keys[1]);
        let body = json!({
            "report_id": "envoy-1_report-0001",
            "keys": [
                {"key_id": a, "allowed": 7, "refused": 1, "last_used": now()},
                {"key_id": b, "allowed": 0, "refused": 3, "last_used": now() - 5},
                {"key_id": "key_revoked_meanwhile", "allowed": 4, "refused": 0, "last_used": now()},
            ],
            "sent_at": 123,
        });
        let stored = site.report(&body).await;
        assert_eq!(stored.status, StatusCode::NO_CONTENT, "{:?}", stored.body);
        assert_eq!(stored.body, Value::Null);
        let mut expected = vec![(a.clone(), 7, 1), (b.clone(), 0, 3)];
        expected.sort();
        assert_eq!(site.counts(), expected);
        // The retry of the same report: 200, and nothing counted twice.
        let retried = site.report(&body).await;
        assert_eq!(retried.status, StatusCode::OK);
        assert_eq!(retried.body, json!({"duplicate": true}));
        assert_eq!(site.counts(), expected);
        // Another report adds up; the last use is kept per key.
        let more = json!({"report_id": "envoy-2_report-0001",
            "keys": [{"key_id": a, "allowed": 3, "refused": 0, "last_used": now()}]});
        assert_eq!(site.report(&more).await.status, StatusCode::NO_CONTENT);
        assert_eq!(site.counts()[0].1 + site.counts()[1].1, 10);
        let last = site.store.last_used(Some(&site.account)).expect("last");
        assert!(last.contains_key(a.as_str()) && last.contains_key(b.as_str()));
    });
}

#[test]
fn bad_input_gets_400_naming_the_field_and_changes_nothing() {
    runtime().block_on(async {
        let site = site();
        let a = &site.keys[0];
        let entry = |fields: Value| json!({"report_id": "report-0000000000001", "keys": [fields]});
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{not json".to_vec(), "body: not valid JSON"),
            (b"[]".to_vec(), "body: must be a JSON object"),
            (json!({"keys": []}).to_string().into(), "report_id: missing"),
            (json!({"report_id": "short", "keys": []}).to_string().into(), "report_id: must be 16 to 64"),
            (json!({"report_id": "has spaces in it !!", "keys": []}).to_string().into(), "report_id: must be 16 to 64"),
            (json!({"report_id": "x".repeat(65), "keys": []}).to_string().into(), "report_id: must be 16 to 64"),
            (json!({"report_id": "report-0000000000001"}).to_string().into(), "keys: missing"),
            (json!({"report_id": "report-0000000000001", "keys": {}}).to_string().into(), "keys: missing or not an array"),
            (entry(json!(5)).to_string().into(), "keys[0]: must be an object"),
            (entry(json!({"allowed": 1, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].key_id: missing"),
            (entry(json!({"key_id": a, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].allowed: missing"),
            (entry(json!({"key_id": a, "allowed": -1, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].allowed"),
            (entry(json!({"key_id": a, "allowed": 1.5, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].allowed"),
            (entry(json!({"key_id": a, "allowed": 1, "refused": "2", "last_used": 1})).to_string().into(), "keys[0].refused"),
            (entry(json!({"key_id": a, "allowed": 1, "refused": 0})).to_string().into(), "keys[0].last_used"),
            (entry(json!({"key_id": "", "allowed": 1, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].key_id: must be 1 to 128"),
            (entry(json!({"key_id": a, "allowed": MAX_ENTRY_COUNT + 1, "refused": 0, "last_used": 1})).to_string().into(), "keys[0].allowed: at most"),
        ];
        for (body, expected) in cases {
            let answer = site.send(Some(SYNC_TOKEN), "localhost", body.clone()).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(answer.body["error"]["code"], "invalid_request");
            let message = answer.body["error"]["message"].as_str().expect("message");
            assert!(message.starts_with(expected), "{message:?} should start with {expected:?}");
        }
        assert!(site.counts().is_empty());
        // The field is named in a later entry too.
        let body = json!({"report_id": "report-0000000000001", "keys": [
            {"key_id": a, "allowed": 1, "refused": 0, "last_used": 1},
            {"key_id": a, "allowed": 1, "refused": 0, "last_used": null},
        ]});
        let answer = site.report(&body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert!(answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("keys[1].last_used")));
    });
}

#[test]
fn reports_over_the_size_limit_get_413() {
    runtime().block_on(async {
        let site = site();
        let entry = json!({"key_id": "key_x", "allowed": 1, "refused": 0, "last_used": 1});
        let body = json!({
            "report_id": "report-too-many-entries",
            "keys": vec![entry; MAX_REPORT_KEYS + 1],
        });
        let answer = site.report(&body).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.body["error"]["code"], "too_large");
        assert!(answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("keys: at most 100000 entries")));
        // Exactly the limit is fine.
        let entry = json!({"key_id": site.keys[0], "allowed": 1, "refused": 0, "last_used": 1});
        let body = json!({"report_id": "report-exactly-the-limit",
            "keys": vec![entry; MAX_REPORT_KEYS]});
        assert_eq!(site.report(&body).await.status, StatusCode::NO_CONTENT);
        assert_eq!(site.counts()[0].1, MAX_REPORT_KEYS as u64);
        // Bytes: over 16 MiB is refused before it is read whole.
        let mut huge = br#"{"report_id":"report-huge-body-00","keys":[],"pad":""#.to_vec();
        huge.resize(MAX_REPORT_BYTES + 10, b'a');
        huge.extend_from_slice(br#""}"#);
        let answer = site.send(Some(SYNC_TOKEN), "localhost", huge).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer.body["error"]["code"], "too_large");
    });
}

#[test]
fn only_the_sync_token_or_the_admin_token_may_report_and_the_host_is_checked() {
    runtime().block_on(async {
        let site = site();
        let body = json!({"report_id": "report-0000000000001",
            "keys": [{"key_id": site.keys[0], "allowed": 1, "refused": 0, "last_used": 1}]})
        .to_string()
        .into_bytes();
        let missing = site.send(None, "localhost", body.clone()).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        let wrong = site
            .send(
                Some("kgsync_wrong_0123456789abc"),
                "localhost",
                body.clone(),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let rebound = site
            .send(Some(SYNC_TOKEN), "evil.example:8080", body.clone())
            .await;
        assert_eq!(rebound.status, StatusCode::MISDIRECTED_REQUEST);
        assert!(site.counts().is_empty());
        let admin = site.send(Some(ADMIN_TOKEN), "localhost", body).await;
        assert_eq!(admin.status, StatusCode::NO_CONTENT);
        assert_eq!(site.counts().len(), 1);
    });
}

#[test]
fn old_usage_is_pruned_on_a_later_report() {
    runtime().block_on(async {
        let site = site();
        let a = &site.keys[0];
        let old_day = now() - 10 * SECONDS_PER_DAY;
        let report = UsageReport {
            report_id: "report-from-long-ago".into(),
            entries: vec![UsageEntry {
                key_id: a.clone(),
                allowed: 1,
                refused: 0,
                last_used: old_day,
            }],
        };
        site.store.record_usage(&report, old_day).expect("old");
        // With a retention of 5 days, the next report prunes the 10-day-old one.
        site.state.usage.set_retention_days(5);
        let body = json!({"report_id": "report-of-today-0001",
            "keys": [{"key_id": a, "allowed": 2, "refused": 0, "last_used": now()}]});
        assert_eq!(site.report(&body).await.status, StatusCode::NO_CONTENT);
        assert_eq!(
            site.counts(),
            vec![(a.clone(), 2, 0)],
            "the old day is gone"
        );
        // Its report id went too (past the retention a retry could count again).
        assert_eq!(
            site.store.record_usage(&report, now()).expect("again"),
            UsageStored::Stored { keys: 1 }
        );
    });
}
