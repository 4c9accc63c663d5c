//! The HTTP API: admin endpoints behind the admin token, and the key-map endpoint the
//! filters poll. Blocking store calls run on tokio's blocking pool.

use crate::auth::{bearer_token, token_matches};
use crate::clock::now_unix;
use crate::keymap::{etag, if_none_match_matches, Encoding, KeyMapCache};
use crate::log::log_event;
use crate::model::{
    AccountListView, CreateAccountRequest, CreateKeyRequest, ErrorBody, ErrorDetail,
    ImportKeyRequest, KeyListView, RollKeyRequest,
};
use crate::service::{KeyChange, Service, ServiceError, ServiceResult};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keygate_core::config::{build_key_map, RawKey};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use keygate_sync_core::binary::{encode_binary_full, BINARY_CONTENT_TYPE};
use keygate_sync_core::message::KeyMapMessage;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// Everything the handlers share.
pub struct AppState {
    service: Service,
    /// Re-read from the store every second, so that `admin-token rotate` takes effect.
    admin_digest: RwLock<Option<Digest>>,
    /// When set, the key map needs this token (or the admin token).
    sync_digest: Option<Digest>,
    keymap: KeyMapCache,
}

impl AppState {
    pub fn new(
        service: Service,
        admin_digest: Option<Digest>,
        sync_digest: Option<Digest>,
        keymap: KeyMapCache,
    ) -> AppState {
        AppState {
            service,
            admin_digest: RwLock::new(admin_digest),
            sync_digest,
            keymap,
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn set_admin_digest(&self, digest: Option<Digest>) {
        *self.admin_digest.write().unwrap_or_else(|e| e.into_inner()) = digest;
    }

    /// The current admin token's digest (the web page's sign-in checks against it).
    pub fn admin_digest(&self) -> Option<Digest> {
        *self.admin_digest.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the key map's version and next expiry (cheap: two indexed lookups).
    pub fn refresh_key_map_status(&self) {
        match self.service.store().key_map_status() {
            Ok(status) => self.keymap.observe(status),
            Err(e) => log_event(&format!("cannot read the key map status: {e}")),
        }
    }

    fn presented_token(headers: &HeaderMap) -> Option<&str> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        let expected = *self.admin_digest.read().unwrap_or_else(|e| e.into_inner());
        match (Self::presented_token(headers), expected) {
            (Some(token), Some(expected)) => token_matches(token, &expected),
            _ => false,
        }
    }

    fn may_read_key_map(&self, headers: &HeaderMap) -> bool {
        match &self.sync_digest {
            None => true,
            Some(sync) => {
                Self::presented_token(headers).is_some_and(|t| token_matches(t, sync))
                    || self.is_admin(headers)
            }
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/v1/accounts", post(create_account).get(list_accounts))
        .route("/v1/accounts/{account_id}", get(get_account))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/import", post(import_key))
        .route("/v1/keys/{key_id}/roll", post(roll_key))
        .route("/v1/keys/{key_id}/revoke", post(revoke_key))
        .route("/v1/keys/{key_id}/disable", post(disable_key))
        .route("/v1/keys/{key_id}/enable", post(enable_key))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    Router::new()
        .merge(admin)
        .route("/v1/keymap", get(key_map))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: `{"error":{"code":..,"message":..}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// Details go to the log only; the answer says nothing about the store.
    fn internal(detail: &str) -> ApiError {
        log_event(&format!("internal error: {detail}"));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let message = e.to_string();
        match e {
            ServiceError::Invalid(_) => ApiError::invalid(message),
            ServiceError::Store(StoreError::AccountNotFound(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "account_not_found", message)
            }
            ServiceError::Store(StoreError::KeyNotFound(_)) => {
                ApiError::new(StatusCode::NOT_FOUND, "key_not_found", message)
            }
            ServiceError::Store(StoreError::DuplicateDigest(_)) => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_key", message)
            }
            ServiceError::Store(StoreError::DuplicateId(_)) => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_id", message)
            }
            ServiceError::Store(StoreError::KeyState { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "key_state_conflict", message)
            }
            ServiceError::Store(_) | ServiceError::Random(_) => ApiError::internal(&message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"keygatectl\""),
    );
    response
}

async fn require_admin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.is_admin(request.headers()) {
        next.run(request).await
    } else {
        unauthorized("missing or wrong admin token; send Authorization: Bearer <admin token>")
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Runs store work on the blocking pool, then refreshes the in-memory key-map status so the
/// next poll sees any change at once.
async fn run_blocking<T, F>(state: &Arc<AppState>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Service, u64) -> ServiceResult<T> + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let result = work(&state.service, now_unix());
        if result.is_ok() {
            state.refresh_key_map_status();
        }
        result
    })
    .await
    .map_err(|e| ApiError::internal(&format!("a store task failed: {e}")))?
    .map_err(ApiError::from)
}

/// Parses a JSON body; an empty body is the request's default when `T` has one.
fn parse_body<T: DeserializeOwned>(body: &Bytes, empty: Option<T>) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return empty.ok_or_else(|| ApiError::invalid("the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p)
        .map_err(|e| ApiError::invalid(format!("path: {e}")))
}

/// A JSON answer that carries a plaintext key: never to be cached anywhere.
fn with_secret<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn create_account(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateAccountRequest = parse_body(&body, Some(Default::default()))?;
    let created = run_blocking(&state, move |service, now| {
        service.create_account(request.name.as_deref(), now)
    })
    .await?;
    let hints: Vec<&str> = created
        .value
        .keys
        .iter()
        .map(|k| k.record.hint.as_str())
        .collect();
    log_event(&format!(
        "account {} created with keys {} (key map version {})",
        created.value.account.id,
        hints.join(", "),
        created.version
    ));
    Ok(with_secret(StatusCode::CREATED, &created.value))
}

async fn list_accounts(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let accounts = run_blocking(&state, |service, _| service.accounts()).await?;
    Ok(Json(AccountListView { accounts }).into_response())
}

async fn get_account(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account_id = path_param(path)?;
    let detail = run_blocking(&state, move |service, now| {
        service.account(&account_id, now)
    })
    .await?;
    Ok(Json(detail).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    account_id: Option<String>,
}

async fn list_keys(
    State(state): State<Arc<AppState>>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    // `?account_id=` with nothing after it means no filter, as if absent.
    let account_id = query.account_id.filter(|id| !id.is_empty());
    let keys = run_blocking(&state, move |service, now| {
        service.keys(account_id.as_deref(), now)
    })
    .await?;
    Ok(Json(KeyListView { keys }).into_response())
}

async fn create_key(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: CreateKeyRequest = parse_body(&body, None)?;
    let kind = KeyKind::new(request.key_type, request.environment);
    let created = run_blocking(&state, move |service, now| {
        service.create_key(&request.account_id, kind, now)
    })
    .await?;
    let key = &created.value.record;
    log_event(&format!(
        "key {} ({}) created for account {} (key map version {})",
        key.key_id, key.hint, key.account_id, created.version
    ));
    Ok(with_secret(StatusCode::CREATED, &created.value))
}

async fn import_key(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let request: ImportKeyRequest = parse_body(&body, None)?;
    let imported = run_blocking(&state, move |service, now| {
        service.import_key(&request, now)
    })
    .await?;
    let key = &imported.value;
    log_event(&format!(
        "key {} ({}) imported by digest for account {} (key map version {})",
        key.key_id, key.hint, key.account_id, imported.version
    ));
    Ok((StatusCode::CREATED, Json(&imported.value)).into_response())
}

async fn roll_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let request: RollKeyRequest = parse_body(&body, Some(Default::default()))?;
    let grace = request.expires_in_seconds.unwrap_or(0);
    let rolled = run_blocking(&state, move |service, now| {
        service.roll_key(&key_id, grace, now)
    })
    .await?;
    let (old, new) = (&rolled.value.old_key, &rolled.value.new_key.record);
    log_event(&format!(
        "key {} ({}) rolled to {} ({}); old key expires at {} (key map version {})",
        old.key_id,
        old.hint,
        new.key_id,
        new.hint,
        old.expires_at.unwrap_or_default(),
        rolled.version
    ));
    Ok(with_secret(StatusCode::OK, &rolled.value))
}

async fn change_key(
    state: Arc<AppState>,
    path: Result<Path<String>, PathRejection>,
    change: KeyChange,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let changed = run_blocking(&state, move |service, now| {
        service.change_key(&key_id, change, now)
    })
    .await?;
    let verb = change.past_tense();
    let key = &changed.value;
    log_event(&format!(
        "key {} ({}) {verb} (key map version {})",
        key.key_id, key.hint, changed.version
    ));
    Ok(Json(&changed.value).into_response())
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, path, KeyChange::Revoke).await
}

async fn disable_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, path, KeyChange::Disable).await
}

async fn enable_key(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, path, KeyChange::Enable).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyMapQuery {
    since: Option<u64>,
}

fn not_modified(version: u64) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    insert_etag(&mut response, version);
    response
}

fn key_map_answer(version: u64, body: Bytes, encoding: Encoding) -> Response {
    let content_type = match encoding {
        Encoding::Json => "application/json",
        Encoding::Binary => BINARY_CONTENT_TYPE,
    };
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    insert_etag(&mut response, version);
    response
}

fn insert_etag(response: &mut Response, version: u64) {
    // A decimal number in quotes is always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&etag(version)) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

fn encode(message: &KeyMapMessage) -> Result<Bytes, ApiError> {
    serde_json::to_vec(message)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(&format!("cannot encode the key map: {e}")))
}

/// A full map in keygate's binary form (what the fetcher asks for: ~75 bytes a key instead
/// of ~190, and no JSON parse in the VM). Deltas stay JSON: they are small.
fn encode_binary(version: u64, keys: &[RawKey]) -> Result<Bytes, ApiError> {
    let map = build_key_map(keys, "keys")
        .map_err(|e| ApiError::internal(&format!("cannot encode the key map: {e}")))?;
    Ok(Bytes::from(encode_binary_full(version, &map)))
}

/// The encoding a poller asked for with `Accept`.
fn wanted_encoding(headers: &HeaderMap) -> Encoding {
    let binary = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().starts_with(BINARY_CONTENT_TYPE))
        });
    if binary {
        Encoding::Binary
    } else {
        Encoding::Json
    }
}

/// `GET /v1/keymap[?since=N]`. An unchanged map (`If-None-Match` naming the current
/// version) is answered 304 from memory; the full map is served from memory while current.
async fn key_map(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<KeyMapQuery>, QueryRejection>,
) -> Response {
    if !state.may_read_key_map(&headers) {
        return unauthorized(
            "missing or wrong sync token; send Authorization: Bearer <sync token>",
        );
    }
    let since = match query {
        Ok(Query(query)) => query.since,
        Err(e) => return ApiError::invalid(format!("query: {e}")).into_response(),
    };
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let now = now_unix();
    if let Some(version) = state.keymap.fresh_version(now) {
        if if_none_match.is_some_and(|tags| if_none_match_matches(tags, version)) {
            return not_modified(version);
        }
        // A poll from a filter that is up to date: nothing changed, and memory knows it.
        if since == Some(version) {
            return match encode(&KeyMapMessage::Delta {
                version,
                since: version,
                upserts: Vec::new(),
                removes: Vec::new(),
            }) {
                Ok(body) => key_map_answer(version, body, Encoding::Json),
                Err(e) => e.into_response(),
            };
        }
    }
    let encoding = wanted_encoding(&headers);
    if since.is_none() {
        if let Some((version, body)) = state.keymap.cached_full(now, encoding) {
            return key_map_answer(version, body, encoding);
        }
    }
    let message = match run_blocking(&state, move |service, now| service.key_map(since, now)).await
    {
        Ok(message) => message,
        Err(e) => return e.into_response(),
    };
    let version = message.version();
    if if_none_match.is_some_and(|tags| if_none_match_matches(tags, version)) {
        return not_modified(version);
    }
    let (body, encoding) = match &message {
        KeyMapMessage::Full { keys, .. } if encoding == Encoding::Binary => {
            (encode_binary(version, keys), Encoding::Binary)
        }
        _ => (encode(&message), Encoding::Json),
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    if matches!(message, KeyMapMessage::Full { .. }) {
        state.keymap.remember_full(version, body.clone(), encoding);
    }
    key_map_answer(version, body, encoding)
}
