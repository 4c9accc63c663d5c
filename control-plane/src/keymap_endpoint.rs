//! `GET /v1/keymap[?since=<version>&store=<store id>[&wait=<seconds>]]`: the key map the
//! filters poll, or watch.
//!
//! Every answer (200 full, 200 delta, 304) names the store it comes from in the
//! `keygate-store` header and in its ETag, `"<store>:<version>"`. A delta is answered only
//! when `since` is a version this store issued and still has the changes after (and `store`,
//! if given, is this store); anything else gets the full map, served from memory: full maps
//! are built one at a time and shared by every poll that waits for one, so polls with an
//! unknown `since` cost a lookup, not a build. A `since` newer than the store's version means
//! the database went back to an older copy: the store records an empty change (at most once
//! a second) so its version passes the poller's, and the poller gets the full map.

use crate::api::{ApiError, AppState};
use crate::clock::now_unix;
use crate::keymap::{if_none_match_matches, Encoding, VersionTags};
use crate::log::log_event;
use crate::metrics;
use crate::slotted_body::SlottedBody;
use crate::store::{DeltaLookup, KeyMapStatus, StoreId, StoredKeyMap};
use crate::web::ClientIp;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::Request;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::config::build_key_map;
use keygate_core::digest::Digest;
use keygate_sync_core::binary::{encode_binary_full, BINARY_CONTENT_TYPE};
use keygate_sync_core::message::KeyMapMessage;
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::Instant as TokioInstant;

/// The response header naming the store an answer comes from.
pub const STORE_HEADER: HeaderName = HeaderName::from_static("keygate-store");

/// The longest a watch is held; a longer `wait` is taken as this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyMapQuery {
    since: Option<String>,
    store: Option<String>,
    wait: Option<String>,
}

/// What a poll asked for, checked.
struct Poll {
    since: Option<u64>,
    store: Option<StoreId>,
    /// How long to hold it while `since` is the current version (zero: not at all).
    wait: Duration,
}

fn parse_poll(query: Result<Query<KeyMapQuery>, QueryRejection>) -> Result<Poll, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query: {e}")))?;
    let store = match query.store.as_deref() {
        None => None,
        Some(text) => Some(StoreId::parse(text).ok_or_else(|| {
            ApiError::invalid("store must be a store id: 32 lowercase hex characters")
        })?),
    };
    let since =
        match query.since.as_deref() {
            None => None,
            Some(text) => Some(whole_number(text).and_then(|n| n.parse().ok()).ok_or_else(
                || ApiError::invalid("since must be a key map version: a whole number"),
            )?),
        };
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        // All digits but too many for a u64: as long as the longest.
        Some(text) => whole_number(text)
            .map(|n| Duration::from_secs(n.parse().unwrap_or(u64::MAX)).min(MAX_WAIT))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "wait must be a whole number of seconds (at most {} is held)",
                    MAX_WAIT.as_secs()
                ))
            })?,
    };
    Ok(Poll { since, store, wait })
}

/// `text` when it is ASCII digits only (no sign, space or point).
fn whole_number(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// How a held watch ended.
enum Held {
    /// The wait ended with the map still at the version asked about.
    Unchanged(StoreId, u64),
    /// The map moved on (or an expiry came due, or the token changed): answer as any poll,
    /// the token checked again.
    Moved,
    /// The server is shutting down.
    Closing,
}

/// Holds a watch on `since` (the current version of `store`) until the version moves, a
/// key's expiry comes due, the tokens change, the server closes, or `wait` ends.
async fn hold(
    state: &AppState,
    presented: Option<&Digest>,
    store: StoreId,
    since: u64,
    wait: Duration,
) -> Held {
    // Subscribed first, then the status read again: no change falls between the two.
    let mut signal = state.keymap.subscribe();
    let still = |state: &AppState| state.keymap.fresh(now_unix()) == Some((store.clone(), since));
    if !still(state) {
        return Held::Moved;
    }
    // Counted as open until this returns, or the client leaves (the future is dropped).
    let _open = metrics::watch_opened();
    let wait_end = on_wait_grid(TokioInstant::now() + wait);
    loop {
        // `borrow`, not `borrow_and_update`: a change sent since the status was last read
        // must still wake `changed()` below (marking it seen here would lose that wake).
        if signal.borrow().closing {
            return Held::Closing;
        }
        // A grace period that ends during the wait: wake just after, so the purge comes
        // with this answer rather than at the next purge pass.
        let expiry = state.keymap.next_expiry().map(|at| {
            let after = at.saturating_sub(now_unix()).saturating_add(1);
            TokioInstant::now() + Duration::from_secs(after)
        });
        let until = expiry.map_or(wait_end, |e| e.min(wait_end));
        tokio::select! {
            changed = signal.changed() => {
                if changed.is_err() {
                    return Held::Closing;
                }
                // Token rotations wake the watches too: this one's may be out.
                if !state.key_map_token_passes(presented) {
                    return Held::Moved;
                }
            }
            () = tokio::time::sleep_until(until) => {
                if TokioInstant::now() >= wait_end {
                    return if still(state) { Held::Unchanged(store, since) } else { Held::Moved };
                }
            }
        }
        if !still(state) {
            return Held::Moved;
        }
    }
}

/// Held watches end on a shared grid of this step, rounded up: the watches ending within one
/// step end together, in one timer pass and one wakeup of the runtime, instead of each
/// waking it on a timer of its own (which made a watch ending in 304 cost more than a 304
/// poll). A watch is held at most this much longer than its `wait`.
const WAIT_GRID: Duration = Duration::from_millis(100);

/// `end` rounded up to the next point of the wait grid (points `WAIT_GRID` apart from the
/// first watch of this process).
fn on_wait_grid(end: TokioInstant) -> TokioInstant {
    static ORIGIN: std::sync::OnceLock<TokioInstant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(TokioInstant::now);
    let step = WAIT_GRID.as_nanos();
    let after = end.saturating_duration_since(origin).as_nanos();
    let steps = after.div_ceil(step);
    u64::try_from(steps * step)
        .map(|nanos| origin + Duration::from_nanos(nanos))
        .unwrap_or(end)
}

pub(crate) async fn key_map(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    request: Request,
) -> Response {
    // What the answer needs from the request, taken out of it at once: the request's head
    // points into its connection's read buffer, and hyper reads the connection while a
    // watch is held (to see the client leave). With the head still referenced it would
    // allocate a new read buffer for each held watch; without it, it reuses the one it has.
    let (parts, _) = request.into_parts();
    let query = Query::<KeyMapQuery>::try_from_uri(&parts.uri);
    let presented = AppState::presented_digest(&parts.headers);
    let if_none_match = parts
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let encoding = wanted_encoding(&parts.headers);
    drop(parts);
    if let Err(refused) = state.authorize_key_map_digest(presented.as_ref(), ip).await {
        return refused;
    }
    let poll = match parse_poll(query) {
        Ok(poll) => poll,
        Err(e) => return e.into_response(),
    };
    if !poll.wait.is_zero() {
        if state.keymap.closing() {
            return closing();
        }
        let cached = state.keymap.fresh(now_unix());
        if let (Some((store, version)), Some(since)) = (cached, poll.since) {
            if since == version && is_store(poll.store.as_ref(), &store) {
                match hold(&state, presented.as_ref(), store, since, poll.wait).await {
                    Held::Unchanged(store, version) => {
                        return not_modified(state.keymap.tags(&store, version))
                    }
                    Held::Closing => return closing(),
                    Held::Moved => {}
                }
                // The sync token may have been rotated meanwhile.
                if let Err(refused) = state.authorize_key_map_digest(presented.as_ref(), ip).await {
                    return refused;
                }
            }
        }
    }
    let if_none_match = if_none_match.as_deref();
    let now = now_unix();
    let cached_store = state.keymap.status().store;
    let same_store = is_store(poll.store.as_ref(), &cached_store);
    // An unchanged map is answered from memory.
    if let Some((store, version)) = state.keymap.fresh(now) {
        if if_none_match.is_some_and(|tags| if_none_match_matches(tags, &store, version)) {
            return not_modified(state.keymap.tags(&store, version));
        }
        if same_store && poll.since == Some(version) {
            return empty_delta(state.keymap.tags(&store, version));
        }
    }
    if let (Some(since), true) = (poll.since, same_store) {
        let stale = state.keymap.fresh(now).is_none();
        match delta(&state, since, poll.store.as_ref(), stale).await {
            Ok(Some(answer)) => return answer,
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    full(&state, encoding, if_none_match).await
}

/// True when a poll's `store` names `store`, or names none: a poll without one means this
/// store (filters before store ids).
fn is_store(given: Option<&StoreId>, store: &StoreId) -> bool {
    given.map_or(true, |given| given == store)
}

/// Runs store work on the blocking pool.
async fn blocking<T, F>(state: &Arc<AppState>, work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
{
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| ApiError::internal(&format!("a store task failed: {e}")))?
}

/// The delta since `since`, or `None` when the full map must answer. `stale`: the cached
/// status had a grace period end, which the lookup purges; the status is read again after.
/// Otherwise polls asking for the same delta (watches a change woke together) share one
/// query: the first asks the store, the others find its answer in memory.
async fn delta(
    state: &Arc<AppState>,
    since: u64,
    wanted_store: Option<&StoreId>,
    stale: bool,
) -> Result<Option<Response>, ApiError> {
    let remembered = || {
        state
            .keymap
            .cached_delta(now_unix(), since)
            .filter(|(store, _, _)| is_store(wanted_store, store))
            .map(|(store, version, body)| {
                metrics::keymap_answer(metrics::Answer::Delta, body.len());
                answer(state.keymap.tags(&store, version), body, Encoding::Json)
            })
    };
    let _one_at_a_time = if stale {
        None
    } else {
        if let Some(answer) = remembered() {
            return Ok(Some(answer));
        }
        let turn = state.keymap.delta_build.lock().await;
        if let Some(answer) = remembered() {
            return Ok(Some(answer));
        }
        Some(turn)
    };
    let lookup = blocking(state, move |state| {
        let lookup = state
            .service()
            .store()
            .key_map_delta(since, now_unix())
            .map_err(|e| ApiError::internal(&e.to_string()));
        if stale {
            state.refresh_key_map_status();
        }
        lookup
    })
    .await?;
    match lookup {
        // The store may have changed lineage since the cache was read.
        DeltaLookup::Delta(stored) if is_store(wanted_store, &stored.store) => {
            let body = encode_json(&stored.message)?;
            let version = stored.message.version();
            state
                .keymap
                .remember_delta(&stored.store, since, version, body.clone());
            metrics::keymap_answer(metrics::Answer::Delta, body.len());
            Ok(Some(answer(
                state.keymap.tags(&stored.store, version),
                body,
                Encoding::Json,
            )))
        }
        DeltaLookup::Ahead { store, version } if is_store(wanted_store, &store) => {
            blocking(state, move |state| {
                if state.record_restore(&store, since) {
                    log_event(&format!(
                        "a poll held key map version {since}, newer than store {store}'s \
                         {version}: the database was restored from an older copy (or the \
                         poller is not one of its filters)"
                    ));
                    state.refresh_key_map_status();
                }
                Ok(())
            })
            .await?;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Before a new version (`next`) wakes the held watches: the delta from the version they
/// hold, read once and kept, so that all of them find it in memory at once instead of
/// queueing for one query. Blocking; nothing to do while no watch is held.
pub(crate) fn prepare_delta_for_watches(state: &AppState, next: &KeyMapStatus) {
    let held = state.keymap.status();
    if state.keymap.watches_held() == 0 || next.store != held.store || next.version <= held.version
    {
        return;
    }
    let since = held.version;
    match state.service().store().key_map_delta(since, now_unix()) {
        Ok(DeltaLookup::Delta(stored)) => {
            if let Ok(body) = encode_json(&stored.message) {
                let version = stored.message.version();
                state
                    .keymap
                    .remember_delta(&stored.store, since, version, body);
            }
        }
        // The watches ask the store themselves.
        Ok(_) => {}
        Err(e) => log_event(&format!("cannot read the delta for held watches: {e}")),
    }
}

/// The full map, from memory when current, else built (one build at a time), written
/// in one of a few send slots.
async fn full(state: &Arc<AppState>, encoding: Encoding, if_none_match: Option<&str>) -> Response {
    let slot = match Arc::clone(&state.full_sends).acquire_owned().await {
        Ok(slot) => slot,
        Err(e) => return ApiError::internal(&format!("no send slot: {e}")).into_response(),
    };
    let (store, version, body) = match full_map(state, encoding).await {
        Ok(full) => full,
        Err(e) => return e.into_response(),
    };
    let tags = state.keymap.tags(&store, version);
    if if_none_match.is_some_and(|tags| if_none_match_matches(tags, &store, version)) {
        return not_modified(tags);
    }
    metrics::keymap_answer(metrics::Answer::Full, body.len());
    let body = Body::new(SlottedBody::new(body, slot));
    answer(tags, body, encoding)
}

/// The current full map in `encoding`. Polls that find none cached queue for the one
/// build; each then finds the map the build before it cached.
pub(crate) async fn full_map(
    state: &Arc<AppState>,
    encoding: Encoding,
) -> Result<(StoreId, u64, Bytes), ApiError> {
    if let Some(cached) = state.keymap.cached_full(now_unix(), encoding) {
        return Ok(cached);
    }
    let _building = state.full_build.lock().await;
    if let Some(cached) = state.keymap.cached_full(now_unix(), encoding) {
        return Ok(cached);
    }
    let built = blocking(state, move |state| build_full(state, encoding)).await?;
    state
        .keymap
        .remember_full(&built.0, built.1, built.2.clone(), encoding);
    state.health.map_built();
    Ok(built)
}

/// Reads and encodes the full map (blocking). The cached status is refreshed first (a
/// database that went back gets its empty change before its map is built, not after) and
/// again after, so that the map just built is the current one.
fn build_full(state: &AppState, encoding: Encoding) -> Result<(StoreId, u64, Bytes), ApiError> {
    let started = Instant::now();
    state.refresh_key_map_status();
    let StoredKeyMap { store, message } = state
        .service()
        .store()
        .read_key_map(None, now_unix())
        .map_err(|e| ApiError::internal(&e.to_string()))?;
    let version = message.version();
    let (count, body) = match &message {
        KeyMapMessage::Full { keys, .. } => (keys.len(), encode_full(&message, encoding)?),
        KeyMapMessage::Delta { .. } => {
            return Err(ApiError::internal(
                "the store answered a delta for the full map",
            ))
        }
    };
    state.refresh_key_map_status();
    metrics::keymap_built(encoding.label(), started.elapsed());
    let builds = state.full_builds.fetch_add(1, Ordering::Relaxed) + 1;
    log_event(&format!(
        "built the full key map: store {store}, version {version}, {count} keys, {} bytes \
         ({encoding:?}) in {} ms (build {builds})",
        body.len(),
        started.elapsed().as_millis()
    ));
    Ok((store, version, body))
}

fn encode_full(message: &KeyMapMessage, encoding: Encoding) -> Result<Bytes, ApiError> {
    match (encoding, message) {
        // keygate's binary form (what the fetcher asks for: ~75 bytes a key instead of
        // ~190, and no JSON parse in the VM). Deltas stay JSON: they are small.
        (Encoding::Binary, KeyMapMessage::Full { version, keys }) => {
            let map = build_key_map(keys, "keys")
                .map_err(|e| ApiError::internal(&format!("cannot encode the key map: {e}")))?;
            Ok(Bytes::from(encode_binary_full(*version, &map)))
        }
        _ => encode_json(message),
    }
}

fn encode_json(message: &KeyMapMessage) -> Result<Bytes, ApiError> {
    serde_json::to_vec(message)
        .map(Bytes::from)
        .map_err(|e| ApiError::internal(&format!("cannot encode the key map: {e}")))
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

/// A poll from a filter that is up to date: nothing changed, and memory knows it.
fn empty_delta(tags: VersionTags) -> Response {
    let version = tags.version();
    let message = KeyMapMessage::Delta {
        version,
        since: version,
        upserts: Vec::new(),
        removes: Vec::new(),
    };
    match encode_json(&message) {
        Ok(body) => {
            metrics::keymap_answer(metrics::Answer::Delta, body.len());
            answer(tags, body, Encoding::Json)
        }
        Err(e) => e.into_response(),
    }
}

/// A watch ended by the server's shutdown: the fetcher asks again at once (another replica,
/// or this one once it is back).
fn closing() -> Response {
    let mut response =
        ApiError::unavailable("shutting_down", "keygatectl is shutting down; ask again")
            .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn not_modified(tags: VersionTags) -> Response {
    metrics::keymap_answer(metrics::Answer::NotModified, 0);
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    name_the_version(&mut response, tags);
    response
}

fn answer(tags: VersionTags, body: impl Into<Body>, encoding: Encoding) -> Response {
    let content_type = match encoding {
        Encoding::Json => "application/json",
        Encoding::Binary => BINARY_CONTENT_TYPE,
    };
    let mut response = (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body.into(),
    )
        .into_response();
    name_the_version(&mut response, tags);
    response
}

/// `keygate-store` and `ETag` on every key-map answer (made once per version).
fn name_the_version(response: &mut Response, tags: VersionTags) {
    let headers = response.headers_mut();
    if let Some(value) = tags.store {
        headers.insert(STORE_HEADER, value);
    }
    if let Some(value) = tags.etag {
        headers.insert(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{router, KeyMapAccess};
    use crate::keymap::KeyMapCache;
    use crate::service::Service;
    use crate::store::customers::{
        NewUser, PasswordReset, SessionOwner, Signup, TokenRefusal, User, Verified,
    };
    use crate::store::import::{ImportItem, ImportReport};
    use crate::store::usage::{DailyUsage, UsageReport, UsageStore, UsageStored};
    use crate::store::{
        Account, AccountWithKeys, Actor, AuditEvent, AuditQuery, KeyMapStatus, KeyRecord, NewKey,
        Rolled, SqliteStore, Store, StoreResult, Versioned,
    };
    use keygate_core::digest::Digest;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// A store whose full-map reads take a while and are counted: polls that arrive while
    /// one runs must wait for it, not start their own.
    struct SlowFullMaps {
        inner: SqliteStore,
        full_reads: AtomicU64,
        /// Delta lookups (one per change however many watches it wakes).
        delta_reads: AtomicU64,
    }

    impl crate::store::CustomerStore for SlowFullMaps {
        fn add_signup(&self, token: &Digest, signup: &Signup) -> StoreResult<()> {
            self.inner.add_signup(token, signup)
        }
        fn signup(&self, token: &Digest) -> StoreResult<Option<Signup>> {
            self.inner.signup(token)
        }
        fn complete_signup(
            &self,
            token: &Digest,
            user: &NewUser,
            account: &Account,
            keys: &[NewKey],
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Result<Versioned<Verified>, TokenRefusal>> {
            self.inner
                .complete_signup(token, user, account, keys, now, actor)
        }
        fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
            self.inner.user_by_email(email)
        }
        fn users(&self, account_id: Option<&str>) -> StoreResult<Vec<User>> {
            self.inner.users(account_id)
        }
        fn set_user_disabled(
            &self,
            user_id: &str,
            disabled: bool,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<User> {
            self.inner.set_user_disabled(user_id, disabled, now, actor)
        }
        fn set_account_disabled(
            &self,
            account_id: &str,
            disabled: bool,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Account> {
            self.inner
                .set_account_disabled(account_id, disabled, now, actor)
        }
        fn set_password_hash(&self, user_id: &str, password_hash: &str) -> StoreResult<()> {
            self.inner.set_password_hash(user_id, password_hash)
        }
        fn add_password_reset(
            &self,
            token: &Digest,
            user_id: &str,
            now: u64,
            expires_at: u64,
        ) -> StoreResult<()> {
            self.inner
                .add_password_reset(token, user_id, now, expires_at)
        }
        fn password_reset(&self, token: &Digest) -> StoreResult<Option<PasswordReset>> {
            self.inner.password_reset(token)
        }
        fn complete_password_reset(
            &self,
            token: &Digest,
            password_hash: &str,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Result<User, TokenRefusal>> {
            self.inner
                .complete_password_reset(token, password_hash, now, actor)
        }
        fn add_session(
            &self,
            id: &Digest,
            user_id: &str,
            now: u64,
            expires_at: u64,
            actor: &Actor,
        ) -> StoreResult<()> {
            self.inner.add_session(id, user_id, now, expires_at, actor)
        }
        fn session(&self, id: &Digest, now: u64) -> StoreResult<Option<SessionOwner>> {
            self.inner.session(id, now)
        }
        fn delete_session(&self, id: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
            self.inner.delete_session(id, now, actor)
        }
        fn delete_user_sessions(&self, user_id: &str, now: u64, actor: &Actor) -> StoreResult<u64> {
            self.inner.delete_user_sessions(user_id, now, actor)
        }
    }

    impl UsageStore for SlowFullMaps {
        fn record_usage(&self, report: &UsageReport, now: u64) -> StoreResult<UsageStored> {
            self.inner.record_usage(report, now)
        }
        fn prune_usage(&self, before_day: u64, reports_before: u64) -> StoreResult<u64> {
            self.inner.prune_usage(before_day, reports_before)
        }
        fn last_used(&self, account_id: Option<&str>) -> StoreResult<HashMap<String, u64>> {
            self.inner.last_used(account_id)
        }
        fn daily_usage(&self, account_id: &str, from_day: u64) -> StoreResult<Vec<DailyUsage>> {
            self.inner.daily_usage(account_id, from_day)
        }
        fn last_report_at(&self) -> StoreResult<Option<u64>> {
            self.inner.last_report_at()
        }
    }

    impl Store for SlowFullMaps {
        fn create_account(
            &self,
            account: &Account,
            keys: &[NewKey],
            actor: &Actor,
        ) -> StoreResult<Versioned<AccountWithKeys>> {
            self.inner.create_account(account, keys, actor)
        }
        fn accounts(&self) -> StoreResult<Vec<Account>> {
            self.inner.accounts()
        }
        fn account(&self, account_id: &str) -> StoreResult<Account> {
            self.inner.account(account_id)
        }
        fn add_key(
            &self,
            key: &NewKey,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<KeyRecord>> {
            self.inner.add_key(key, now, actor)
        }
        fn keys(&self, account_id: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
            self.inner.keys(account_id)
        }
        fn key(&self, key_id: &str) -> StoreResult<KeyRecord> {
            self.inner.key(key_id)
        }
        fn roll_key(
            &self,
            key_id: &str,
            replacement: &NewKey,
            grace_seconds: u64,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<Rolled>> {
            self.inner
                .roll_key(key_id, replacement, grace_seconds, now, actor)
        }
        fn revoke_key(
            &self,
            key_id: &str,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<KeyRecord>> {
            self.inner.revoke_key(key_id, now, actor)
        }
        fn set_key_disabled(
            &self,
            key_id: &str,
            disabled: bool,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<KeyRecord>> {
            self.inner.set_key_disabled(key_id, disabled, now, actor)
        }
        fn set_rate_limit(
            &self,
            key_id: &str,
            limit: Option<&keygate_core::config::RawLimit>,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<KeyRecord>> {
            self.inner.set_rate_limit(key_id, limit, now, actor)
        }
        fn set_account_rate_limit(
            &self,
            account_id: &str,
            limit: Option<&keygate_core::config::RawLimit>,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<Versioned<Account>> {
            self.inner
                .set_account_rate_limit(account_id, limit, now, actor)
        }
        fn rename_key(
            &self,
            key_id: &str,
            name: Option<&str>,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<KeyRecord> {
            self.inner.rename_key(key_id, name, now, actor)
        }
        fn import_keys(
            &self,
            items: &[ImportItem],
            now: u64,
            actor: &Actor,
            apply: bool,
        ) -> StoreResult<ImportReport> {
            self.inner.import_keys(items, now, actor, apply)
        }
        fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEvent>> {
            self.inner.audit_events(query)
        }
        fn purge_expired(&self, now: u64) -> StoreResult<Versioned<Vec<KeyRecord>>> {
            self.inner.purge_expired(now)
        }
        fn read_key_map(&self, since: Option<u64>, now: u64) -> StoreResult<StoredKeyMap> {
            let answer = self.inner.read_key_map(since, now)?;
            if matches!(answer.message, KeyMapMessage::Full { .. }) {
                self.full_reads.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(answer)
        }
        fn key_map_delta(&self, since: u64, now: u64) -> StoreResult<DeltaLookup> {
            self.delta_reads.fetch_add(1, Ordering::SeqCst);
            self.inner.key_map_delta(since, now)
        }
        fn key_map_status(&self) -> StoreResult<KeyMapStatus> {
            self.inner.key_map_status()
        }
        fn record_restore(&self, store: &StoreId, seen: u64) -> StoreResult<Option<u64>> {
            self.inner.record_restore(store, seen)
        }
        fn new_lineage(&self) -> StoreResult<KeyMapStatus> {
            self.inner.new_lineage()
        }
        fn admin_token_digest(&self) -> StoreResult<Option<Digest>> {
            self.inner.admin_token_digest()
        }
        fn set_admin_token_digest(
            &self,
            digest: &Digest,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<()> {
            self.inner.set_admin_token_digest(digest, now, actor)
        }
        fn sync_token_digest(&self) -> StoreResult<Option<Digest>> {
            self.inner.sync_token_digest()
        }
        fn set_sync_token_digest(
            &self,
            digest: &Digest,
            now: u64,
            actor: &Actor,
        ) -> StoreResult<()> {
            self.inner.set_sync_token_digest(digest, now, actor)
        }
    }

    /// Many polls with a `since` the store never issued (JSON and binary), all at once: one
    /// full-map build per encoding, shared by all; the next ones come from memory.
    #[test]
    fn concurrent_unknown_since_polls_build_the_map_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = SqliteStore::open(&dir.path().join("keygate.db")).expect("open");
        let service = Service::new(Arc::new(inner));
        service
            .create_account(Some("acme"), 1, &Actor::cli())
            .expect("account");
        let store = Arc::new(SlowFullMaps {
            inner: SqliteStore::open(&dir.path().join("keygate.db")).expect("open"),
            full_reads: AtomicU64::new(0),
            delta_reads: AtomicU64::new(0),
        });
        let status = store.key_map_status().expect("status");
        let state = Arc::new(AppState::new(
            Service::new(Arc::clone(&store) as Arc<dyn Store>),
            None,
            KeyMapAccess::Open,
            KeyMapCache::new(status),
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = router(Arc::clone(&state));
        runtime.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
        let poll = |binary: bool| {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            let mut request = agent.get(format!("http://{address}/v1/keymap?since=12345"));
            if binary {
                request = request.header("accept", BINARY_CONTENT_TYPE);
            }
            let mut answer = request.call().expect("poll");
            assert_eq!(answer.status(), 200);
            answer.body_mut().read_to_vec().expect("body")
        };
        let bodies: Vec<(bool, Vec<u8>)> = std::thread::scope(|scope| {
            let polls: Vec<_> = (0..16)
                .map(|i| scope.spawn(move || (i % 2 == 1, poll(i % 2 == 1))))
                .collect();
            polls.into_iter().map(|p| p.join().expect("poll")).collect()
        });
        for (binary, body) in &bodies {
            let same = bodies
                .iter()
                .find(|(b, _)| b == binary)
                .expect("one")
                .1
                .clone();
            assert_eq!(*body, same, "every poll got the one map");
        }
        assert!(bodies
            .iter()
            .any(|(b, body)| !b && body.starts_with(b"{\"kind\":\"full\"")));
        assert_eq!(
            store.full_reads.load(Ordering::SeqCst),
            2,
            "one build per encoding"
        );
        assert_eq!(state.full_builds.load(Ordering::SeqCst), 2);
        // Later ones come from memory.
        poll(false);
        poll(true);
        assert_eq!(store.full_reads.load(Ordering::SeqCst), 2);
    }

    /// A server over a fresh SQLite store with one account, the key map open (or behind
    /// `sync_token`), on a runtime of its own.
    struct Served {
        _dir: tempfile::TempDir,
        store: Arc<SlowFullMaps>,
        state: Arc<AppState>,
        address: std::net::SocketAddr,
        runtime: tokio::runtime::Runtime,
    }

    impl Served {
        fn start(sync_token: Option<&str>) -> Served {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Arc::new(SlowFullMaps {
                inner: SqliteStore::open(&dir.path().join("keygate.db")).expect("open"),
                full_reads: AtomicU64::new(0),
                delta_reads: AtomicU64::new(0),
            });
            let service = Service::new(Arc::clone(&store) as Arc<dyn Store>);
            service
                .create_account(Some("acme"), 1, &Actor::cli())
                .expect("account");
            let status = store.key_map_status().expect("status");
            let access = match sync_token {
                Some(token) => KeyMapAccess::Token(Digest::of_key(token)),
                None => KeyMapAccess::Open,
            };
            let state = Arc::new(AppState::new(
                service,
                None,
                access,
                KeyMapCache::new(status),
            ));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .expect("bind");
            let address = listener.local_addr().expect("address");
            let app = router(Arc::clone(&state));
            runtime.spawn(async move {
                axum::serve(
                    listener,
                    app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                )
                .await
            });
            Served {
                _dir: dir,
                store,
                state,
                address,
                runtime,
            }
        }

        fn current(&self) -> (StoreId, u64) {
            let status = self.state.keymap.status();
            (status.store, status.version)
        }

        /// (status, ETag, body) of a GET of the key map with `query`.
        fn get(&self, query: &str, token: Option<&str>) -> (u16, Option<String>, String) {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            let mut request = agent.get(format!("http://{}/v1/keymap{query}", self.address));
            if let Some(token) = token {
                request = request.header("authorization", &format!("Bearer {token}"));
            }
            let mut answer = request.call().expect("answered");
            let etag = answer
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = answer.body_mut().read_to_string().expect("body");
            (answer.status().as_u16(), etag, body)
        }

        /// A change through the service, as the API makes it (the status refreshed after).
        fn change(&self) {
            self.state
                .service()
                .create_account(Some("globex"), 2, &Actor::cli())
                .expect("account");
            self.state.refresh_key_map_status();
        }

        fn watch_query(&self, wait: u64) -> String {
            let (store, version) = self.current();
            format!("?since={version}&store={store}&wait={wait}")
        }
    }

    /// Waits for `done` with a deadline (no fixed sleep).
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "not in time: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many watches the server holds now.
    fn held(served: &Served) -> usize {
        served.state.keymap.watches_held()
    }

    #[test]
    fn one_change_answers_every_held_watch_with_one_delta_query() {
        let served = Served::start(None);
        let query = served.watch_query(60);
        let (_, before) = served.current();
        let answers = std::thread::scope(|scope| {
            let watches: Vec<_> = (0..24)
                .map(|_| scope.spawn(|| served.get(&query, None)))
                .collect();
            eventually("every watch is held", || held(&served) == 24);
            assert_eq!(served.store.delta_reads.load(Ordering::SeqCst), 0);
            served.change();
            watches
                .into_iter()
                .map(|w| w.join().expect("watch"))
                .collect::<Vec<_>>()
        });
        let (store, after) = served.current();
        assert!(after > before);
        for (status, etag, body) in &answers {
            assert_eq!(*status, 200);
            assert_eq!(etag.as_deref(), Some(etag_of(&store, after).as_str()));
            assert!(
                body.starts_with(r#"{"kind":"delta""#) && body.contains("\"upserts\":[{"),
                "{body}"
            );
        }
        assert_eq!(
            served.store.delta_reads.load(Ordering::SeqCst),
            1,
            "one query for all the watches it woke"
        );
        assert_eq!(held(&served), 0);
    }

    fn etag_of(store: &StoreId, version: u64) -> String {
        crate::keymap::etag(store, version)
    }

    #[test]
    fn a_watch_whose_wait_ends_unchanged_gets_304_from_memory() {
        let served = Served::start(None);
        let (store, version) = served.current();
        let started = Instant::now();
        let (status, etag, body) = served.get(&served.watch_query(1), None);
        assert_eq!(status, 304);
        assert_eq!(etag, Some(etag_of(&store, version)));
        assert!(body.is_empty());
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "held for its wait"
        );
        assert_eq!(served.store.delta_reads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_watch_that_is_behind_or_ahead_is_answered_at_once() {
        let served = Served::start(None);
        let (store, old) = served.current();
        served.change();
        // Behind: the delta at once, however long the wait.
        let (status, _, body) = served.get(&format!("?since={old}&store={store}&wait=60"), None);
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"kind":"delta""#), "{body}");
        // Ahead (the database went back): the full map at once, as for a poll.
        let (_, now) = served.current();
        let ahead = now + 1_000_000;
        let (status, _, body) = served.get(&format!("?since={ahead}&store={store}&wait=60"), None);
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"kind":"full""#), "{body}");
        // Another store's version: the full map at once.
        let other = "0".repeat(32);
        let (status, _, body) = served.get(&format!("?since={now}&store={other}&wait=60"), None);
        assert_eq!(status, 200);
        assert!(body.starts_with(r#"{"kind":"full""#), "{body}");
    }

    #[test]
    fn nonsense_is_refused_naming_the_parameter() {
        let served = Served::start(None);
        for (query, name) in [
            ("?since=1&wait=abc", "wait"),
            ("?since=1&wait=-1", "wait"),
            ("?since=1&wait=1.5", "wait"),
            ("?since=1&wait=", "wait"),
            ("?since=1&wait=%201", "wait"),
            ("?since=x&wait=1", "since"),
            ("?since=-4", "since"),
            ("?since=1&wait=1&wait=2", "wait"),
            ("?since=1&watch=1", "watch"),
        ] {
            let (status, _, body) = served.get(query, None);
            assert_eq!(status, 400, "{query}: {body}");
            assert!(body.contains(name), "{query}: {body}");
        }
    }

    #[test]
    fn waits_end_together_on_the_grid_never_before_their_end() {
        let now = TokioInstant::now();
        let mut ends = Vec::new();
        for offset_ms in [0, 1, 37, 99, 100, 101, 250, 1_000, 25_000] {
            let end = now + Duration::from_millis(offset_ms);
            let rounded = on_wait_grid(end);
            assert!(rounded >= end, "never before the wait's end");
            assert!(rounded - end <= WAIT_GRID, "at most one step after it");
            assert_eq!(on_wait_grid(rounded), rounded, "a grid point stays");
            ends.push(rounded);
        }
        // Ends within one step share its grid point: one timer pass wakes them all.
        let first = on_wait_grid(now + Duration::from_secs(1));
        let together = (0..WAIT_GRID.as_millis() as u64)
            .map(|ms| on_wait_grid(first - WAIT_GRID + Duration::from_millis(ms + 1)))
            .all(|end| end == first);
        assert!(together);
        ends.dedup();
        assert!(ends.len() >= 5, "ends a step or more apart stay apart");
    }

    #[test]
    fn a_long_wait_is_held_at_most_the_longest() {
        let query = |text: &str| {
            let uri: axum::http::Uri = format!("/v1/keymap?{text}").parse().expect("uri");
            Query::<KeyMapQuery>::try_from_uri(&uri)
        };
        let wait = |text: &str| parse_poll(query(text)).map(|p| p.wait).ok();
        assert_eq!(wait("since=1&wait=30"), Some(Duration::from_secs(30)));
        assert_eq!(wait("since=1&wait=61"), Some(MAX_WAIT));
        assert_eq!(wait("since=1&wait=99999999999999999999999"), Some(MAX_WAIT));
        assert_eq!(wait("since=1&wait=0"), Some(Duration::ZERO));
        assert_eq!(wait("since=1"), Some(Duration::ZERO));
    }

    #[test]
    fn shutting_down_ends_held_watches_with_503() {
        let served = Served::start(None);
        let query = served.watch_query(60);
        let (status, _, body) = std::thread::scope(|scope| {
            let watch = scope.spawn(|| served.get(&query, None));
            eventually("the watch is held", || held(&served) == 1);
            served.state.keymap.close_watches();
            watch.join().expect("watch")
        });
        assert_eq!(status, 503);
        assert!(body.contains("shutting_down"), "{body}");
        // And a watch that comes after: at once.
        assert_eq!(served.get(&query, None).0, 503);
    }

    #[test]
    fn a_watch_still_needs_the_sync_token_and_one_rotated_out_meanwhile_gets_nothing() {
        let served = Served::start(Some("kgsync_old"));
        let query = served.watch_query(60);
        assert_eq!(served.get(&query, None).0, 401, "no token, no watch");
        let (status, _, _) = std::thread::scope(|scope| {
            let watch = scope.spawn(|| served.get(&query, Some("kgsync_old")));
            eventually("the watch is held", || held(&served) == 1);
            served.state.set_sync_digest(Digest::of_key("kgsync_new"));
            served.change();
            watch.join().expect("watch")
        });
        assert_eq!(
            status, 401,
            "the change is not handed to a rotated-out token"
        );
        let (status, _, body) = served.get(&query, Some("kgsync_new"));
        assert_eq!(status, 200, "{body}");
    }

    #[test]
    fn a_grace_period_ending_during_a_watch_answers_the_purge() {
        let served = Served::start(None);
        let key = served
            .state
            .service()
            .keys(None, now_unix())
            .expect("keys")
            .into_iter()
            .next()
            .expect("a key");
        // Rolled with a grace period of a second: the old key expires during the watch.
        served
            .state
            .service()
            .roll_key(&key.key_id, 1, None, now_unix(), &Actor::cli())
            .expect("rolled");
        served.state.refresh_key_map_status();
        assert!(served.state.keymap.next_expiry().is_some());
        let (_, version) = served.current();
        let (status, _, body) = served.get(&served.watch_query(60), None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&key.digest), "the expired key leaves: {body}");
        assert!(served.current().1 > version);
        drop(served.runtime);
    }
}
