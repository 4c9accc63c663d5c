//! The HTTP API: admin endpoints behind the admin token, and the key-map endpoint the
//! filters poll (`keymap_endpoint.rs`). Blocking store calls run on tokio's blocking pool.
//! Wrong tokens are throttled per client address, as on the sign-in page.

use crate::auth::bearer_token;
use crate::clock::now_unix;
use crate::keymap::{KeyMapCache, Observed};
use crate::keymap_endpoint::key_map;
use crate::log::log_event;
use crate::model::{
    AccountListView, BulkImportRequest, CreateAccountRequest, CreateKeyRequest, ErrorBody,
    ErrorDetail, ImportKeyRequest, KeyListView, RateLimitRequest, RenameKeyRequest, RollKeyRequest,
};
use crate::rate_limits::{describe, limit_from_json};
use crate::service::{KeyChange, KeySpec, Service, ServiceError, ServiceResult};
use crate::store::{Actor, AuditQuery, StoreError, StoreId};
use crate::usage_endpoint::{report_usage, UsageSettings};
use crate::web::throttle::{retry_after_seconds, LoginThrottle};
use crate::web::ClientIp;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keygate_core::digest::Digest;
use keygate_core::key::KeyKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A database that went back (a restore) gets an empty change of its own at most this
/// often, however many polls or reads notice it.
const RESTORE_BUMP_INTERVAL: Duration = Duration::from_secs(1);

/// Full key maps written at once (see `slotted_body.rs`); more wait their turn.
const FULL_MAP_SENDS: usize = 4;

/// The largest bulk import body (about a million keys by digest).
const MAX_IMPORT_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Audit events a listing answers unless `limit` says otherwise.
const DEFAULT_AUDIT_LIMIT: usize = 100;

/// Who may read the key map.
pub enum KeyMapAccess {
    /// The sync token (digest re-read from the store every second) or the admin token.
    Token(Digest),
    /// Anyone who can reach the server (`serve --no-sync-token`).
    Open,
}

/// Everything the handlers share.
pub struct AppState {
    service: Service,
    /// Re-read from the store every second, so that `admin-token rotate` takes effect.
    admin_digest: RwLock<Option<Digest>>,
    /// `None`: the key map is open to anyone (`--no-sync-token`).
    sync_digest: Option<RwLock<Digest>>,
    pub(crate) keymap: KeyMapCache,
    /// One full-map build at a time: polls that need one while it runs wait for it and
    /// take its result.
    pub(crate) full_build: tokio::sync::Mutex<()>,
    /// How many full maps were built (for the log and tests).
    pub(crate) full_builds: AtomicU64,
    /// Slots for writing full maps.
    pub(crate) full_sends: Arc<tokio::sync::Semaphore>,
    /// When an empty change was last recorded for a restore.
    last_restore_bump: Mutex<Option<Instant>>,
    /// Failed admin-token attempts on the admin API, per client address.
    admin_throttle: LoginThrottle,
    /// Failed attempts on the key map with a token that is not the sync token (the admin
    /// token works there too), per address. Apart from the admin API's, so that a filter
    /// still sending a rotated-out sync token does not lock its host's operators out.
    key_map_throttle: LoginThrottle,
    /// How long the filters' usage reports are kept (`serve --usage-retention`).
    pub(crate) usage: UsageSettings,
    /// What `/readyz` rests on (`ops.rs`).
    pub(crate) health: crate::ops::Health,
}

impl AppState {
    pub fn new(
        service: Service,
        admin_digest: Option<Digest>,
        key_map_access: KeyMapAccess,
        keymap: KeyMapCache,
    ) -> AppState {
        AppState {
            service,
            admin_digest: RwLock::new(admin_digest),
            sync_digest: match key_map_access {
                KeyMapAccess::Token(digest) => Some(RwLock::new(digest)),
                KeyMapAccess::Open => None,
            },
            keymap,
            full_build: tokio::sync::Mutex::new(()),
            full_builds: AtomicU64::new(0),
            full_sends: Arc::new(tokio::sync::Semaphore::new(FULL_MAP_SENDS)),
            last_restore_bump: Mutex::new(None),
            admin_throttle: LoginThrottle::default(),
            key_map_throttle: LoginThrottle::default(),
            usage: UsageSettings::default(),
            health: crate::ops::Health::default(),
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn set_admin_digest(&self, digest: Option<Digest>) {
        let old = std::mem::replace(
            &mut *self.admin_digest.write().unwrap_or_else(|e| e.into_inner()),
            digest,
        );
        if old.is_some() && old != digest {
            // Held key-map watches check their token again.
            self.keymap.wake_watches();
        }
    }

    /// The current admin token's digest (the web page's sign-in checks against it).
    pub fn admin_digest(&self) -> Option<Digest> {
        *self.admin_digest.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the sync token's digest as the store has it now (a rotation); ignored when
    /// the key map is open.
    pub fn set_sync_digest(&self, digest: Digest) {
        if let Some(sync) = &self.sync_digest {
            let old = std::mem::replace(
                &mut *sync.write().unwrap_or_else(|e| e.into_inner()),
                digest,
            );
            if old != digest {
                // Held key-map watches check their token again.
                self.keymap.wake_watches();
            }
        }
    }

    /// Whether `headers` may read the key map now, checked without a throttle's side
    /// effects: what a held watch asks again when woken.
    pub(crate) fn key_map_token_passes(&self, presented: Option<&Digest>) -> bool {
        !self.key_map_requires_token()
            || presented.is_some_and(|d| self.is_sync_digest(d) || self.is_admin_digest(d))
    }

    pub fn key_map_requires_token(&self) -> bool {
        self.sync_digest.is_some()
    }

    /// Re-reads the key map's store, version and next expiry (cheap: a few indexed
    /// lookups). A version lower than the one cached is read again: a slow reader's is
    /// ignored, but a database that really went back (restored from an older copy, or its
    /// file replaced) gets an empty change so its version passes every one handed out
    /// before, and the cached maps are dropped.
    pub fn refresh_key_map_status(&self) {
        let store = self.service.store();
        let status = match store.key_map_status() {
            Ok(status) => status,
            Err(e) => return crate::log::error(&format!("cannot read the key map status: {e}")),
        };
        self.health.store_answered();
        crate::metrics::keymap_status(status.store.as_str(), status.version);
        crate::keymap_endpoint::prepare_delta_for_watches(self, &status);
        match self.keymap.observe(status) {
            Observed::Current => {}
            Observed::NewLineage { previous } => {
                let now = self.keymap.status();
                log_event(&format!(
                    "the key map's store is now {} at version {} (was {previous}): a new \
                     lineage or another database; filters take its full map as a new lineage",
                    now.store, now.version
                ));
            }
            Observed::Older { cached } => {
                let again = match store.key_map_status() {
                    Ok(again) => again,
                    Err(e) => return log_event(&format!("cannot read the key map status: {e}")),
                };
                // Caught up (or another store) by now: the first read was a slow one.
                if self.keymap.observe(again.clone()) != (Observed::Older { cached }) {
                    return;
                }
                log_event(&format!(
                    "the key map went back from version {cached} to {} in store {} (the \
                     database was restored from an older copy, or replaced)",
                    again.version, again.store
                ));
                self.record_restore(&again.store, cached);
                match store.key_map_status() {
                    Ok(now) => self.keymap.reset(now),
                    Err(e) => log_event(&format!("cannot read the key map status: {e}")),
                }
            }
        }
    }

    /// Has the store record an empty change when its version is below `seen` (at most once
    /// per `RESTORE_BUMP_INTERVAL`), so that it moves past every version handed out before
    /// it went back. Blocking. True when a version was recorded.
    pub(crate) fn record_restore(&self, store: &StoreId, seen: u64) -> bool {
        {
            let mut last = self
                .last_restore_bump
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < RESTORE_BUMP_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.service.store().record_restore(store, seen) {
            Ok(Some(version)) => {
                log_event(&format!(
                    "recorded key map version {version} in store {store} (an empty change), \
                     past version {seen}; filters get its full map"
                ));
                true
            }
            Ok(None) => false,
            Err(e) => {
                log_event(&format!("cannot record a version past {seen}: {e}"));
                false
            }
        }
    }

    fn presented_token(headers: &HeaderMap) -> Option<&str> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
    }

    /// The digest of the bearer token `headers` present, if any: what the token checks
    /// compare (in constant time). A held watch keeps it, not the token, for the checks
    /// it makes again when woken.
    pub(crate) fn presented_digest(headers: &HeaderMap) -> Option<Digest> {
        Self::presented_token(headers).map(Digest::of_key)
    }

    fn is_admin_digest(&self, presented: &Digest) -> bool {
        self.admin_digest()
            .is_some_and(|expected| presented.ct_eq(&expected))
    }

    fn is_sync_digest(&self, presented: &Digest) -> bool {
        self.sync_digest.as_ref().is_some_and(|sync| {
            let expected = *sync.read().unwrap_or_else(|e| e.into_inner());
            presented.ct_eq(&expected)
        })
    }

    /// Checks a bearer token with `accepts`, throttled per address like the sign-in page:
    /// while an address waits after a failure its attempts get 429 unchecked, and each
    /// wrong token makes the next answer wait longer. A missing token is no attempt.
    async fn check_token(
        &self,
        throttle: &LoginThrottle,
        presented: Option<&Digest>,
        ip: IpAddr,
        what: &str,
        accepts: impl Fn(&Self, &Digest) -> bool,
    ) -> Result<(), Response> {
        if let Err(wait) = throttle.check(ip) {
            return Err(too_many_attempts(wait));
        }
        let Some(presented) = presented else {
            return Err(unauthorized(&format!(
                "missing {what}; send Authorization: Bearer <{what}>"
            )));
        };
        if accepts(self, presented) {
            throttle.succeeded(ip);
            return Ok(());
        }
        let failure = throttle.failed(ip);
        crate::metrics::sign_in_failed(if what == "admin token" {
            crate::metrics::SignIn::AdminApi
        } else {
            crate::metrics::SignIn::KeyMap
        });
        crate::log::warn(&format!(
            "refused a wrong {what} from {ip} ({} in a row)",
            failure.count
        ));
        // The answer waits; attempts from this address meanwhile are refused unchecked.
        tokio::time::sleep(failure.delay).await;
        Err(unauthorized(&format!(
            "wrong {what}; send Authorization: Bearer <{what}>"
        )))
    }

    /// The key map needs the sync token (or the admin token), unless it is open. The sync
    /// token passes at once, so filters holding it are never slowed by a neighbour sending
    /// a wrong one; any other token is throttled as on the admin API (it may be a guess at
    /// the admin token).
    pub(crate) async fn authorize_key_map(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Result<(), Response> {
        self.authorize_key_map_digest(Self::presented_digest(headers).as_ref(), ip)
            .await
    }

    /// `authorize_key_map` with the presented token's digest (`presented_digest`).
    pub(crate) async fn authorize_key_map_digest(
        &self,
        presented: Option<&Digest>,
        ip: IpAddr,
    ) -> Result<(), Response> {
        if !self.key_map_requires_token() || presented.is_some_and(|d| self.is_sync_digest(d)) {
            return Ok(());
        }
        let throttle = &self.key_map_throttle;
        self.check_token(throttle, presented, ip, "sync token", Self::is_admin_digest)
            .await
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
        .route("/v1/keys/{key_id}/rename", post(rename_key))
        .route("/v1/keys/{key_id}/rate-limit", post(set_rate_limit))
        .route(
            "/v1/keys/bulk-import",
            post(bulk_import).layer(DefaultBodyLimit::max(MAX_IMPORT_BODY_BYTES)),
        )
        .route("/v1/accounts/{account_id}/usage", get(account_usage))
        .route(
            "/v1/accounts/{account_id}/rate-limit",
            post(set_account_rate_limit),
        )
        .route("/v1/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    Router::new()
        .merge(admin)
        .route("/v1/keymap", get(key_map))
        .route("/v1/usage", post(report_usage))
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

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub(crate) fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// Details go to the log only; the answer says nothing about the store.
    pub(crate) fn internal(detail: &str) -> ApiError {
        crate::log::error(&format!("internal error: {detail}"));
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
            ServiceError::ImportRefused(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "import_refused", message)
            }
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
            ServiceError::Store(StoreError::InvalidRateLimit(_)) => ApiError::invalid(message),
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

fn too_many_attempts(wait: Duration) -> Response {
    let seconds = retry_after_seconds(wait);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many wrong tokens from your address; try again in {seconds} s"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn require_admin(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    let checked = state
        .check_token(
            &state.admin_throttle,
            AppState::presented_digest(request.headers()).as_ref(),
            ip,
            "admin token",
            AppState::is_admin_digest,
        )
        .await;
    match checked {
        Ok(()) => next.run(request).await,
        Err(response) => response,
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
pub(crate) async fn run_blocking<T, F>(state: &Arc<AppState>, work: F) -> Result<T, ApiError>
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
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateAccountRequest = parse_body(&body, Some(Default::default()))?;
    let created = run_blocking(&state, move |service, now| {
        service.create_account(request.name.as_deref(), now, &Actor::admin_token(ip))
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

async fn create_key(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: CreateKeyRequest = parse_body(&body, None)?;
    let kind = KeyKind::new(request.key_type, request.environment);
    let created = run_blocking(&state, move |service, now| {
        let expires_at = match (request.expires_in_seconds, request.expires_at) {
            (Some(_), Some(_)) => {
                return Err(ServiceError::Invalid(
                    "give expires_in_seconds or expires_at, not both".into(),
                ))
            }
            (Some(0), None) => {
                return Err(ServiceError::Invalid(
                    "expires_in_seconds must be at least 1".into(),
                ))
            }
            (Some(seconds), None) if seconds > crate::duration::MAX_SECONDS => {
                return Err(ServiceError::Invalid(format!(
                    "expires_in_seconds must be at most {} (366 days); give expires_at for later",
                    crate::duration::MAX_SECONDS
                )))
            }
            (Some(seconds), None) => Some(now + seconds),
            (None, at) => at,
        };
        let spec = KeySpec {
            kind,
            name: request.name.clone(),
            expires_at,
        };
        service.create_key(&request.account_id, &spec, now, &Actor::admin_token(ip))
    })
    .await?;
    let key = &created.value.record;
    log_event(&format!(
        "key {} ({}) created for account {} (key map version {})",
        key.key_id, key.hint, key.account_id, created.version
    ));
    Ok(with_secret(StatusCode::CREATED, &created.value))
}

async fn import_key(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ImportKeyRequest = parse_body(&body, None)?;
    let imported = run_blocking(&state, move |service, now| {
        service.import_key(&request, now, &Actor::admin_token(ip))
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
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let request: RollKeyRequest = parse_body(&body, Some(Default::default()))?;
    let grace = request.expires_in_seconds.unwrap_or(0);
    let rolled = run_blocking(&state, move |service, now| {
        let name = request.name.as_deref();
        service.roll_key(&key_id, grace, name, now, &Actor::admin_token(ip))
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
    ip: IpAddr,
    path: Result<Path<String>, PathRejection>,
    change: KeyChange,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let changed = run_blocking(&state, move |service, now| {
        service.change_key(&key_id, change, now, &Actor::admin_token(ip))
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
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, ip, path, KeyChange::Revoke).await
}

async fn disable_key(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, ip, path, KeyChange::Disable).await
}

async fn enable_key(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    change_key(state, ip, path, KeyChange::Enable).await
}

async fn set_rate_limit(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let request: RateLimitRequest = parse_body(&body, None)?;
    let limit = limit_from_json(&request.rate_limit).map_err(ApiError::invalid)?;
    let changed = run_blocking(&state, move |service, now| {
        service.set_rate_limit(&key_id, limit.as_ref(), now, &Actor::admin_token(ip))
    })
    .await?;
    let key = &changed.value;
    let limit = key.rate_limit.as_ref().map_or("none".into(), describe);
    log_event(&format!(
        "key {} ({}) rate limit {limit} (key map version {})",
        key.key_id, key.hint, changed.version
    ));
    Ok(Json(&changed.value).into_response())
}

/// `POST /v1/accounts/{id}/rate-limit`: the account's default, read and refused like a
/// key's limit.
async fn set_account_rate_limit(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let account_id = path_param(path)?;
    let request: RateLimitRequest = parse_body(&body, None)?;
    let limit = limit_from_json(&request.rate_limit).map_err(ApiError::invalid)?;
    let changed = run_blocking(&state, move |service, now| {
        service.set_account_rate_limit(&account_id, limit.as_ref(), now, &Actor::admin_token(ip))
    })
    .await?;
    let account = &changed.value;
    let limit = account.rate_limit.as_ref().map_or("none".into(), describe);
    log_event(&format!(
        "account {} default rate limit {limit} (key map version {})",
        account.id, changed.version
    ));
    Ok(Json(&changed.value).into_response())
}

async fn rename_key(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key_id = path_param(path)?;
    let request: RenameKeyRequest = parse_body(&body, None)?;
    let renamed = run_blocking(&state, move |service, now| {
        service.rename_key(
            &key_id,
            request.name.as_deref(),
            now,
            &Actor::admin_token(ip),
        )
    })
    .await?;
    // The name stays out of the log: names are for pages and the API only.
    log_event(&format!(
        "key {} ({}) renamed",
        renamed.key_id, renamed.hint
    ));
    Ok(Json(&renamed).into_response())
}

async fn bulk_import(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: BulkImportRequest = parse_body(&body, None)?;
    let imported = run_blocking(&state, move |service, now| {
        service.import_keys(&request, now, &Actor::admin_token(ip))
    })
    .await?;
    if !imported.dry_run && !imported.added.is_empty() {
        log_event(&format!(
            "{} keys imported by digest, {} already stored (key map version {})",
            imported.added.len(),
            imported.unchanged.len(),
            imported.version
        ));
    }
    Ok(Json(&imported).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    days: Option<u64>,
}

async fn account_usage(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let account_id = path_param(path)?;
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let days = query.days.unwrap_or(30);
    let usage = run_blocking(&state, move |service, now| {
        service.account_usage(&account_id, days, now)
    })
    .await?;
    Ok(Json(usage).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    account_id: Option<String>,
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
}

async fn audit(
    State(state): State<Arc<AppState>>,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let query = AuditQuery {
        account_id: params.account_id.filter(|id| !id.is_empty()),
        since: params.since,
        before: params.before,
        limit: params.limit.unwrap_or(DEFAULT_AUDIT_LIMIT),
    };
    let events = run_blocking(&state, move |service, _| service.audit(&query)).await?;
    Ok(Json(events).into_response())
}
