//! The operator page's handlers: sign-in and sign-out, the accounts list, an account's keys
//! and the people who sign in to it, and the forms that change them. Pages are askama
//! templates (`templates/operator/`). Changes answer `303 See Other` (POST-redirect-GET)
//! with a one-time notice, or the new keys, waiting in the session for the next page.

use super::html::{APP_CSS, APP_JS};
use super::session::{secrets_match, NewKeys, Notice, SessionInfo, ShownKey};
use super::signin::{cookie_header, form_token_ok, seconds_text, with_retry_after};
use super::throttle::Failure;
use super::usage_chart::CHART_DAYS;
use super::views::{
    render, shown_keys, Chrome, KeyRow, LimitForm, NoticeView, ShownKeyView, Stamp,
};
use super::{
    html::kind_label, same_origin, see_other, url_segment, ClientIp, Web, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::auth::token_matches;
use crate::clock::now_unix;
use crate::clock::parse_rfc3339;
use crate::log::log_event;
use crate::model::{AccountView, KeyUsageView, KeyView};
use crate::rate_limits::{describe, limit_from_text};
use crate::service::{KeyChange, KeySpec, Service, ServiceError, ServiceResult};
use crate::store::{Actor, AuditQuery, StoreError};
use askama::Template;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::config::RawLimit;
use keygate_core::key::KeyKind;
use keygate_core::key::{Environment, KeyType};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The grace periods offered when rolling a key: (seconds, label).
pub const GRACE_CHOICES: [(u64, &str); 4] = [
    (0, "now"),
    (3600, "in 1 hour"),
    (86_400, "in 24 hours"),
    (7 * 86_400, "in 7 days"),
];
/// The expiries offered for a new key: (seconds, label); 0 is none.
pub const EXPIRY_CHOICES: [(u64, &str); 6] = [
    (0, "never"),
    (86_400, "in 1 day"),
    (7 * 86_400, "in 7 days"),
    (30 * 86_400, "in 30 days"),
    (90 * 86_400, "in 90 days"),
    (365 * 86_400, "in 365 days"),
];
/// Audit events on one page of the audit trail.
const AUDIT_PAGE: usize = 100;
/// Accounts listed at most on one page (search narrows it).
const MAX_LISTED: usize = 200;
const COOKIE_PATH: &str = "/ui";

type WebState = State<Arc<Web>>;

// ---------------------------------------------------------------------------------------
// Plumbing

/// Why a store call failed, in words for the operator (details of internal errors go to the
/// log only).
struct Failed {
    status: StatusCode,
    message: String,
}

impl From<ServiceError> for Failed {
    fn from(e: ServiceError) -> Failed {
        let status = match &e {
            ServiceError::Invalid(_)
            | ServiceError::ImportRefused(_)
            | ServiceError::Store(StoreError::InvalidRateLimit(_)) => StatusCode::BAD_REQUEST,
            ServiceError::Store(
                StoreError::AccountNotFound(_)
                | StoreError::KeyNotFound(_)
                | StoreError::UserNotFound(_),
            ) => StatusCode::NOT_FOUND,
            ServiceError::Store(
                StoreError::KeyState { .. }
                | StoreError::DuplicateDigest(_)
                | StoreError::DuplicateId(_),
            ) => StatusCode::CONFLICT,
            ServiceError::Store(_) | ServiceError::Random(_) => {
                return Failed::internal(&e.to_string())
            }
        };
        Failed {
            status,
            message: e.to_string(),
        }
    }
}

impl Failed {
    fn internal(detail: &str) -> Failed {
        log_event(&format!("internal error (web page): {detail}"));
        Failed {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Internal error; see the server log.".into(),
        }
    }
}

/// Runs store work on the blocking pool. After a change the in-memory key-map status is
/// refreshed at once, as the API does, so the filters' next poll sees it.
async fn run<T, F>(web: &Arc<Web>, changes: bool, work: F) -> Result<T, Failed>
where
    T: Send + 'static,
    F: FnOnce(&Service, u64) -> ServiceResult<T> + Send + 'static,
{
    let web = Arc::clone(web);
    tokio::task::spawn_blocking(move || {
        let result = work(web.app.service(), now_unix());
        if changes && result.is_ok() {
            web.app.refresh_key_map_status();
        }
        result
    })
    .await
    .map_err(|e| Failed::internal(&format!("a store task failed: {e}")))?
    .map_err(Failed::from)
}

#[derive(Template)]
#[template(path = "operator/error.html")]
struct ErrorPage {
    chrome: Chrome,
    notice: NoticeView,
    back: &'static str,
    back_text: &'static str,
}

fn error_page(status: StatusCode, session: Option<&SessionInfo>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let page = ErrorPage {
        chrome: Chrome::operator(title, session.map(|s| s.csrf.as_str())),
        notice: NoticeView::error(message),
        back: if session.is_some() {
            "/ui/accounts"
        } else {
            "/ui/"
        },
        back_text: if session.is_some() {
            "Back to the accounts"
        } else {
            "Go to the start page"
        },
    };
    render(status, &page)
}

fn to_login(reason: &str) -> Response {
    see_other(&format!("/ui/login?m={reason}"))
}

fn notice_of(web: &Web, session: &SessionInfo) -> Option<NoticeView> {
    web.sessions.take_notice(&session.id).map(NoticeView::from)
}

/// A form that carries its CSRF token and what the action needs: a grace period, a name, or
/// a new key's kind and expiry.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct OperatorForm {
    csrf: String,
    grace: String,
    name: String,
    key_type: String,
    environment: String,
    expires_in: String,
    expires_at: String,
    rate_requests: String,
    rate_per: String,
    rate_burst: String,
}

/// `check_post` for a form posted to a page of one thing (`/ui/<kind>/{id}/{action}`): the
/// path's two parts as well, or the error page (404 for a path that does not read).
#[allow(clippy::result_large_err)]
fn check_post_to(
    web: &Web,
    headers: &HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Result<(SessionInfo, OperatorForm, (String, String)), Response> {
    let (session, form) = check_post(web, headers, form)?;
    match path {
        Ok(Path(parts)) => Ok((session, form, parts)),
        Err(_) => Err(error_page(
            StatusCode::NOT_FOUND,
            Some(&session),
            "There is no such page.",
        )),
    }
}

/// A state-changing form's checks: same-origin, a live session, a readable form, its CSRF
/// token. The error is the answer to send.
#[allow(clippy::result_large_err)]
fn check_post(
    web: &Web,
    headers: &HeaderMap,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Result<(SessionInfo, OperatorForm), Response> {
    let session = web.session(headers);
    if !same_origin(headers) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            session.as_ref(),
            "This form was sent from another site, so it was refused.",
        ));
    }
    let Some(session) = session else {
        return Err(to_login("expired"));
    };
    let Ok(Form(form)) = form else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "The form could not be read.",
        ));
    };
    if form.csrf.is_empty() || !secrets_match(&form.csrf, &session.csrf) {
        return Err(error_page(
            StatusCode::FORBIDDEN,
            Some(&session),
            "This form is out of date or did not come from this page (its CSRF token is \
             missing or wrong). Reload the page and try again.",
        ));
    }
    Ok((session, form))
}

// ---------------------------------------------------------------------------------------
// Entry points and assets

pub async fn root() -> Response {
    see_other("/ui/")
}

pub async fn home(State(web): WebState, headers: HeaderMap) -> Response {
    if web.session(&headers).is_some() {
        see_other("/ui/accounts")
    } else {
        see_other("/ui/login")
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The page links assets with a content hash: a new version is a new URL.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}

pub async fn css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn not_found(State(web): WebState, headers: HeaderMap) -> Response {
    let session = web.session(&headers);
    error_page(
        StatusCode::NOT_FOUND,
        session.as_ref(),
        "There is no such page.",
    )
}

pub async fn method_not_allowed() -> Response {
    error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "This page does not take that method.",
    )
}

// ---------------------------------------------------------------------------------------
// Sign-in and sign-out

#[derive(Deserialize)]
pub struct LoginQuery {
    m: Option<String>,
}

#[derive(Template)]
#[template(path = "operator/login.html")]
struct LoginPage {
    chrome: Chrome,
    notice: Option<NoticeView>,
    csrf: String,
}

/// The sign-in form, with a fresh double-submit CSRF token in a cookie and a hidden field.
fn login_form(
    web: &Web,
    headers: &HeaderMap,
    status: StatusCode,
    message: Option<(&str, bool)>,
) -> Response {
    let token = match super::session::random_token() {
        Ok(token) => token,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()),
    };
    let page = LoginPage {
        chrome: Chrome::operator("Sign in", None),
        notice: message.map(|(text, error)| {
            if error {
                NoticeView::error(text)
            } else {
                NoticeView::info(text)
            }
        }),
        csrf: token.clone(),
    };
    let mut response = render(status, &page);
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(LOGIN_COOKIE, &token, COOKIE_PATH, 3600, web.secure(headers)),
    );
    response
}

pub async fn login_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, QueryRejection>,
) -> Response {
    if web.session(&headers).is_some() {
        return see_other("/ui/accounts");
    }
    let reason = query.ok().and_then(|Query(q)| q.m);
    let message = match reason.as_deref() {
        Some("signed-out") => Some(("You are signed out.", false)),
        Some("expired") => Some(("Your session has ended. Sign in again.", false)),
        _ => None,
    };
    login_form(&web, &headers, StatusCode::OK, message)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    csrf: String,
    token: String,
}

pub async fn login(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return login_form(
            &web,
            &headers,
            StatusCode::FORBIDDEN,
            Some((
                "This sign-in came from another site, so it was refused.",
                true,
            )),
        );
    }
    if let Err(wait) = web.throttle.check(ip, None) {
        let response = login_form(
            &web,
            &headers,
            StatusCode::TOO_MANY_REQUESTS,
            Some((
                &format!(
                    "Too many failed sign-ins from your address. Wait {} and try again.",
                    seconds_text(wait)
                ),
                true,
            )),
        );
        return with_retry_after(response, wait);
    }
    let form = form.map(|Form(f)| f).unwrap_or_default();
    if !form_token_ok(&headers, LOGIN_COOKIE, &form.csrf) {
        return login_form(
            &web,
            &headers,
            StatusCode::FORBIDDEN,
            Some((
                "This sign-in form had expired (or cookies are off). Try again.",
                true,
            )),
        );
    }
    let token = form.token.trim();
    if token.is_empty() {
        return login_form(
            &web,
            &headers,
            StatusCode::BAD_REQUEST,
            Some(("Enter the admin token.", true)),
        );
    }
    let admin = web.app.admin_digest();
    let Some(admin) = admin.filter(|digest| token_matches(token, digest)) else {
        let Failure { count, delay } = web.throttle.failed(ip, None);
        crate::metrics::sign_in_failed(crate::metrics::SignIn::Operator);
        log_event(&format!(
            "web sign-in refused from {ip}: wrong admin token ({count} in a row)"
        ));
        // The answer waits; attempts from this address meanwhile are refused unchecked.
        tokio::time::sleep(delay).await;
        let message = format!(
            "Wrong admin token: sign-in refused. Failed attempts from your address in a row: \
             {count}; each one makes the next answer wait longer (this one waited {}).",
            seconds_text(delay)
        );
        return login_form(
            &web,
            &headers,
            StatusCode::UNAUTHORIZED,
            Some((&message, true)),
        );
    };
    web.throttle.succeeded(ip, None);
    let opened = match web.sessions.open(admin) {
        Ok(opened) => opened,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()),
    };
    log_event(&format!("web sign-in from {ip}"));
    let secure = web.secure(&headers);
    let mut response = see_other("/ui/accounts");
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        cookie_header(
            SESSION_COOKIE,
            &opened.cookie_value,
            COOKIE_PATH,
            opened.info.remaining.as_secs(),
            secure,
        ),
    );
    cookies.append(
        header::SET_COOKIE,
        cookie_header(LOGIN_COOKIE, "", COOKIE_PATH, 0, secure),
    );
    response
}

pub async fn logout(
    State(web): WebState,
    headers: HeaderMap,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    let (session, _) = match check_post(&web, &headers, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    web.sessions.close(&session.id);
    log_event("web sign-out");
    let mut response = to_login("signed-out");
    response.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, "", COOKIE_PATH, 0, web.secure(&headers)),
    );
    response
}

// ---------------------------------------------------------------------------------------
// Accounts

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

fn account_name(account: &AccountView) -> &str {
    account.name.as_deref().unwrap_or("(no name)")
}

pub struct AccountRow {
    id: String,
    name: String,
    created: Stamp,
    live_keys: usize,
    disabled: bool,
}

#[derive(Template)]
#[template(path = "operator/accounts.html")]
struct AccountsPage {
    chrome: Chrome,
    notice: Option<NoticeView>,
    query: String,
    summary: String,
    rows: Vec<AccountRow>,
    truncated: bool,
    csrf: String,
}

pub async fn accounts_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    let Some(session) = web.session(&headers) else {
        return to_login("expired");
    };
    let q = query
        .ok()
        .and_then(|Query(q)| q.q)
        .map(|q| q.trim().to_string())
        .unwrap_or_default();
    let key_query = q.starts_with("key_").then(|| q.clone());
    let listing = run(&web, false, move |service, now| {
        let accounts = service.accounts()?;
        let mut live: HashMap<String, usize> = HashMap::new();
        for key in service.keys(None, now)? {
            if matches!(key.status.as_str(), "active" | "expiring" | "disabled") {
                *live.entry(key.account_id).or_default() += 1;
            }
        }
        let mut emails: HashMap<String, Vec<String>> = HashMap::new();
        for user in service.store().users(None)? {
            emails.entry(user.account_id).or_default().push(user.email);
        }
        // A key id finds its account.
        let key_account = match key_query {
            Some(id) => match service.store().key(&id) {
                Ok(key) => Some(key.account_id),
                Err(StoreError::KeyNotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        Ok((accounts, live, emails, key_account))
    })
    .await;
    let (mut accounts, live, emails, key_account) = match listing {
        Ok(listing) => listing,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    // Newest first.
    accounts.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let needle = q.to_lowercase();
    let found: Vec<&AccountView> = accounts
        .iter()
        .filter(|a| {
            needle.is_empty()
                || key_account.as_deref() == Some(a.id.as_str())
                || a.id.to_lowercase().contains(&needle)
                || a.name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
                || emails
                    .get(&a.id)
                    .is_some_and(|list| list.iter().any(|e| e.contains(&needle)))
        })
        .collect();
    let plural = if accounts.len() == 1 { "" } else { "s" };
    let summary = if q.is_empty() {
        format!("{} account{plural}", accounts.len())
    } else {
        format!(
            "{} of {} account{plural} match “{q}”",
            found.len(),
            accounts.len()
        )
    };
    let page = AccountsPage {
        chrome: Chrome::operator("Accounts", Some(&session.csrf)),
        notice: notice_of(&web, &session),
        query: q.clone(),
        summary,
        rows: found
            .iter()
            .take(MAX_LISTED)
            .map(|a| AccountRow {
                id: a.id.clone(),
                name: account_name(a).to_string(),
                created: Stamp::new(a.created_at),
                live_keys: live.get(&a.id).copied().unwrap_or(0),
                disabled: a.disabled_at.is_some(),
            })
            .collect(),
        truncated: found.len() > MAX_LISTED,
        csrf: session.csrf.clone(),
    };
    render(StatusCode::OK, &page)
}

pub async fn create_account(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    let (session, form) = match check_post(&web, &headers, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let name = Some(form.name.trim().to_string()).filter(|n| !n.is_empty());
    let actor = Actor::operator(&session.tag(), ip);
    let created = run(&web, true, move |service, now| {
        service.create_account(name.as_deref(), now, &actor)
    })
    .await;
    let created = match created {
        Ok(created) => created,
        Err(f) => {
            web.sessions.set_notice(
                &session.id,
                Notice::Error(format!("The account was not created: {}", f.message)),
            );
            return see_other("/ui/accounts");
        }
    };
    let account = &created.value.account;
    let hints: Vec<&str> = created
        .value
        .keys
        .iter()
        .map(|k| k.record.hint.as_str())
        .collect();
    log_event(&format!(
        "account {} created with keys {} (web page; key map version {})",
        account.id,
        hints.join(", "),
        created.version
    ));
    let shown = created
        .value
        .keys
        .iter()
        .map(|k| ShownKey {
            key_id: k.record.key_id.clone(),
            kind: k.record.kind(),
            plaintext: k.plaintext.clone(),
        })
        .collect();
    web.sessions
        .set_new_keys(&session.id, NewKeys::new(account.id.clone(), shown));
    web.sessions.set_notice(
        &session.id,
        Notice::Info(format!(
            "Account {} created with four keys.",
            account_name(account)
        )),
    );
    see_other(&format!("/ui/accounts/{}", url_segment(&account.id)))
}

// ---------------------------------------------------------------------------------------
// One account's keys and people

fn is_live(key: &KeyView) -> bool {
    matches!(key.status.as_str(), "active" | "expiring" | "disabled")
}

pub struct KeyGroup {
    id: &'static str,
    title: &'static str,
    rows: Vec<KeyRow>,
}

pub struct UserRow {
    id: String,
    email: String,
    created: Stamp,
    disabled_at: Option<Stamp>,
}

#[derive(Template)]
#[template(path = "operator/account.html")]
struct AccountPage {
    chrome: Chrome,
    name: String,
    account_id: String,
    created: Stamp,
    disabled_at: Option<Stamp>,
    notice: Option<NoticeView>,
    new_keys: Vec<ShownKeyView>,
    groups: Vec<KeyGroup>,
    history: Vec<KeyRow>,
    users: Vec<UserRow>,
    csrf: String,
    grace_choices: Vec<(u64, &'static str)>,
    expiry_choices: Vec<(u64, &'static str)>,
    /// The account's default rate limit, for its form and the rows of keys without their own.
    default_limit: LimitForm,
}

pub async fn account_page(
    State(web): WebState,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(session) = web.session(&headers) else {
        return to_login("expired");
    };
    let Ok(Path(account_id)) = path else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&session),
            "There is no such account.",
        );
    };
    let detail = run(&web, false, move |service, now| {
        let detail = service.account(&account_id, now)?;
        let users = service.store().users(Some(&account_id))?;
        let usage = service.account_usage(&account_id, CHART_DAYS, now)?;
        let last_report = service.store().last_report_at()?;
        Ok((detail, users, usage, last_report, now))
    })
    .await;
    let (detail, users, usage, last_report, now) = match detail {
        Ok(detail) => detail,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    // Taken now: whatever happens next, these plaintexts are gone from the server.
    let new_keys = web.sessions.take_new_keys(&session.id, &detail.account.id);
    let account = &detail.account;

    // A key's last roll is its own (an old key) or its predecessor's (the key that replaced).
    let last_rolled: HashMap<&str, u64> = detail
        .keys
        .iter()
        .filter_map(|k| Some((k.replaced_by.as_deref()?, k.rolled_at?)))
        .collect();
    let usage: HashMap<&str, &KeyUsageView> =
        usage.keys.iter().map(|u| (u.key_id.as_str(), u)).collect();
    let row = |k: &&KeyView| {
        KeyRow::new(k, last_rolled.get(k.key_id.as_str()).copied(), now).with_usage(
            k,
            usage.get(k.key_id.as_str()).copied(),
            last_report,
            now,
        )
    };
    // Live keys by environment, secret first, newest first; then the history.
    let mut live: Vec<&KeyView> = detail.keys.iter().filter(|k| is_live(k)).collect();
    live.sort_by(|a, b| {
        let rank = |k: &KeyView| (k.key_type == KeyType::Publishable, k.expires_at.is_some());
        rank(a)
            .cmp(&rank(b))
            .then(b.created_at.cmp(&a.created_at))
            .then(a.key_id.cmp(&b.key_id))
    });
    let groups = [
        (Environment::Test, "test-keys", "Test keys"),
        (
            Environment::Production,
            "production-keys",
            "Production keys",
        ),
    ]
    .into_iter()
    .map(|(environment, id, title)| KeyGroup {
        id,
        title,
        rows: live
            .iter()
            .filter(|k| k.environment == environment)
            .map(row)
            .collect(),
    })
    .collect();
    let mut history: Vec<&KeyView> = detail.keys.iter().filter(|k| !is_live(k)).collect();
    history.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.key_id.cmp(&b.key_id))
    });
    let name = account_name(account).to_string();
    let page = AccountPage {
        chrome: Chrome::operator(&name, Some(&session.csrf)),
        name,
        account_id: account.id.clone(),
        created: Stamp::new(account.created_at),
        disabled_at: account.disabled_at.map(Stamp::new),
        notice: notice_of(&web, &session),
        new_keys: shown_keys(new_keys),
        groups,
        history: history.iter().map(row).collect(),
        users: users
            .into_iter()
            .map(|u| UserRow {
                id: u.id,
                email: u.email,
                created: Stamp::new(u.created_at),
                disabled_at: u.disabled_at.map(Stamp::new),
            })
            .collect(),
        csrf: session.csrf.clone(),
        grace_choices: GRACE_CHOICES.to_vec(),
        expiry_choices: EXPIRY_CHOICES.to_vec(),
        default_limit: LimitForm::new(account.rate_limit.as_ref()),
    };
    render(StatusCode::OK, &page)
}

/// A new key's expiry from the form: one of the offered spans, or a time typed in the
/// `datetime-local` field (read as UTC), not both.
fn form_expiry(form: &OperatorForm, now: u64) -> Result<Option<u64>, String> {
    let span = form
        .expires_in
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|s| EXPIRY_CHOICES.iter().any(|(c, _)| c == s));
    let Some(span) = span.or(form.expires_in.trim().is_empty().then_some(0)) else {
        return Err("Choose when the key expires from the list.".into());
    };
    let typed = form.expires_at.trim();
    match (span, typed.is_empty()) {
        (0, true) => Ok(None),
        (span, true) => Ok(Some(now + span)),
        (0, false) => {
            // `2026-05-01T12:30` (what browsers send), with or without seconds.
            let text = match typed.len() {
                16 => format!("{typed}:00Z"),
                _ => format!("{typed}Z"),
            };
            parse_rfc3339(&text)
                .map(Some)
                .map_err(|_| "The expiry time is not a date and time.".to_string())
        }
        _ => Err("Choose an expiry from the list or type a time, not both.".into()),
    }
}

/// `POST /ui/accounts/{account_id}/keys`: a new key, shown once on the account's page.
pub async fn create_key(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    let (session, form) = match check_post(&web, &headers, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let Ok(Path(account_id)) = path else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&session),
            "There is no such account.",
        );
    };
    let back = format!("/ui/accounts/{}", url_segment(&account_id));
    let key_type = match form.key_type.as_str() {
        "secret" => KeyType::Secret,
        "publishable" => KeyType::Publishable,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                Some(&session),
                "Choose the key's type.",
            )
        }
    };
    let environment = match form.environment.as_str() {
        "test" => Environment::Test,
        "production" => Environment::Production,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                Some(&session),
                "Choose the key's environment.",
            )
        }
    };
    let expires_at = match form_expiry(&form, now_unix()) {
        Ok(at) => at,
        Err(message) => {
            web.sessions.set_notice(
                &session.id,
                Notice::Error(format!("The key was not added: {message}")),
            );
            return see_other(&back);
        }
    };
    let spec = KeySpec {
        kind: KeyKind::new(key_type, environment),
        name: Some(form.name.trim().to_string()).filter(|n| !n.is_empty()),
        expires_at,
    };
    let actor = Actor::operator(&session.tag(), ip);
    let id = account_id.clone();
    let created = run(&web, true, move |service, now| {
        service.create_key(&id, &spec, now, &actor)
    })
    .await;
    let created = match created {
        Ok(created) => created,
        Err(f) if f.status == StatusCode::NOT_FOUND => {
            return error_page(f.status, Some(&session), &f.message)
        }
        Err(f) => {
            web.sessions.set_notice(
                &session.id,
                Notice::Error(format!("The key was not added: {}", f.message)),
            );
            return see_other(&back);
        }
    };
    let key = &created.value.record;
    log_event(&format!(
        "key {} ({}) created for account {} (web page; key map version {})",
        key.key_id, key.hint, key.account_id, created.version
    ));
    web.sessions.set_new_keys(
        &session.id,
        NewKeys::new(
            key.account_id.clone(),
            vec![ShownKey {
                key_id: key.key_id.clone(),
                kind: key.kind(),
                plaintext: created.value.plaintext.clone(),
            }],
        ),
    );
    let expiry = match key.expires_at {
        Some(at) => format!(" It expires at {}.", crate::clock::format_utc(at)),
        None => String::new(),
    };
    web.sessions.set_notice(
        &session.id,
        Notice::Info(format!(
            "Added a {}.{expiry}",
            kind_label(key.kind()).to_lowercase()
        )),
    );
    see_other(&format!("{back}#{}", url_segment(&key.key_id)))
}

// ---------------------------------------------------------------------------------------
// The audit trail

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AuditPageQuery {
    account: Option<String>,
    before: Option<u64>,
}

pub struct AuditRow {
    at: Stamp,
    who: String,
    client: String,
    action: String,
    account_id: Option<String>,
    keys: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "operator/audit.html")]
struct AuditPage {
    chrome: Chrome,
    account: Option<String>,
    rows: Vec<AuditRow>,
    older: Option<String>,
}

/// `who` of an event in words: `operator (session 3f2a9c1b)`, `customer usr_…`, `cli (ann)`.
pub fn actor_words(actor: &crate::model::ActorView) -> String {
    match (&actor.kind[..], &actor.id) {
        ("admin_token", _) => "admin token (API)".into(),
        ("operator", Some(id)) => format!("operator ({id})"),
        ("customer", Some(id)) => format!("customer {id}"),
        ("cli", Some(user)) => format!("CLI on the database ({user})"),
        ("cli", None) => "CLI on the database".into(),
        ("server", _) => "keygatectl serve".into(),
        (kind, _) => kind.to_string(),
    }
}

/// Key ids of an event, at most a few of them.
pub fn key_ids_words(ids: &[String]) -> String {
    let shown: Vec<&str> = ids.iter().take(4).map(String::as_str).collect();
    match ids.len() {
        0 => String::new(),
        n if n > 4 => format!("{} and {} more", shown.join(", "), n - 4),
        _ => shown.join(", "),
    }
}

pub async fn audit_page(
    State(web): WebState,
    headers: HeaderMap,
    query: Result<Query<AuditPageQuery>, QueryRejection>,
) -> Response {
    let Some(session) = web.session(&headers) else {
        return to_login("expired");
    };
    let Ok(Query(query)) = query else {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "The page's address is not valid.",
        );
    };
    let account = query
        .account
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty());
    let audit_query = AuditQuery {
        account_id: account.clone(),
        since: None,
        before: query.before,
        limit: AUDIT_PAGE,
    };
    let listed = run(&web, false, move |service, _| service.audit(&audit_query)).await;
    let listed = match listed {
        Ok(listed) => listed,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    let older = listed.next_before.map(|before| match &account {
        Some(a) => format!("/ui/audit?account={}&before={before}", url_segment(a)),
        None => format!("/ui/audit?before={before}"),
    });
    let page = AuditPage {
        chrome: Chrome::operator("Audit trail", Some(&session.csrf)),
        account,
        rows: listed
            .events
            .iter()
            .map(|e| AuditRow {
                at: Stamp::new(e.at),
                who: actor_words(&e.actor),
                client: e.actor.client.clone().unwrap_or_else(|| "local".into()),
                action: e.action.clone(),
                account_id: e.account_id.clone(),
                keys: key_ids_words(&e.key_ids),
                detail: e.detail.clone().unwrap_or_default(),
            })
            .collect(),
        older,
    };
    render(StatusCode::OK, &page)
}

// ---------------------------------------------------------------------------------------
// Disabling people and accounts

/// `POST /ui/accounts/{account_id}/{disable|enable}` and `/ui/users/{user_id}/{…}`.
pub async fn account_action(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    if matches!(&path, Ok(Path((_, action))) if action == "rate-limit") {
        return set_account_rate_limit(web, ip, headers, path, form).await;
    }
    sign_in_switch(web, ip, headers, path, form, Target::Account).await
}

/// A limit from the operator page's form (`rate_requests`, `rate_per`, `rate_burst`):
/// empty requests mean none.
fn form_limit(form: &OperatorForm) -> ServiceResult<Option<RawLimit>> {
    if form.rate_requests.trim().is_empty() {
        return Ok(None);
    }
    limit_from_text(&form.rate_requests, &form.rate_per, &form.rate_burst)
        .map(Some)
        .map_err(ServiceError::Invalid)
}

/// `POST /ui/accounts/{account_id}/rate-limit`: the account's default rate limit; empty
/// requests remove it.
async fn set_account_rate_limit(
    web: Arc<Web>,
    ip: IpAddr,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    let (session, form, (account_id, _)) = match check_post_to(&web, &headers, path, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let actor = Actor::operator(&session.tag(), ip);
    let id = account_id.clone();
    let changed = run(&web, true, move |service, now| {
        let result = form_limit(&form)
            .and_then(|limit| service.set_account_rate_limit(&id, limit.as_ref(), now, &actor));
        match result {
            Ok(changed) => Ok(Ok(changed.value)),
            // A refused value goes back to the account's page; an unknown account is an
            // error page.
            Err(
                e @ (ServiceError::Invalid(_)
                | ServiceError::Store(StoreError::InvalidRateLimit(_))),
            ) => Ok(Err(Failed::from(e))),
            Err(e) => Err(e),
        }
    })
    .await;
    let notice = match changed {
        Ok(Ok(account)) => {
            let said = match &account.rate_limit {
                Some(limit) => format!(
                    "limits each key without a limit of its own to {}",
                    describe(limit)
                ),
                None => "has no default rate limit now".into(),
            };
            log_event(&format!("account {} {said} (web page)", account.id));
            Notice::Info(format!(
                "The account {} {said}; Envoy applies it at its next key-map poll.",
                account.name.unwrap_or(account.id)
            ))
        }
        Ok(Err(failed)) => Notice::Error(format!(
            "The default rate limit was not changed: {}",
            failed.message
        )),
        Err(failed) => return error_page(failed.status, Some(&session), &failed.message),
    };
    web.sessions.set_notice(&session.id, notice);
    see_other(&format!("/ui/accounts/{}", url_segment(&account_id)))
}

pub async fn user_action(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    sign_in_switch(web, ip, headers, path, form, Target::User).await
}

#[derive(Clone, Copy)]
enum Target {
    Account,
    User,
}

async fn sign_in_switch(
    web: Arc<Web>,
    ip: IpAddr,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
    target: Target,
) -> Response {
    let (session, _, (id, action)) = match check_post_to(&web, &headers, path, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session),
                "There is no such action.",
            )
        }
    };
    let actor = Actor::operator(&session.tag(), ip);
    let outcome = run(&web, false, move |service, now| {
        let store = service.store();
        Ok(match target {
            Target::Account => {
                let account = store.set_account_disabled(&id, disabled, now, &actor)?;
                (
                    account.id.clone(),
                    format!("The account {}", account.name.unwrap_or(account.id)),
                )
            }
            Target::User => {
                let user = store.set_user_disabled(&id, disabled, now, &actor)?;
                (user.account_id, user.email)
            }
        })
    })
    .await;
    let (account_id, what) = match outcome {
        Ok(outcome) => outcome,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    let verb = if disabled { "disabled" } else { "enabled" };
    log_event(&format!(
        "sign-in of {} {verb} (web page)",
        match target {
            Target::Account => format!("account {account_id}"),
            Target::User => format!("a user of account {account_id}"),
        }
    ));
    let effect = if disabled {
        ": its sessions ended, and it cannot sign in until enabled"
    } else {
        ": it can sign in again"
    };
    web.sessions.set_notice(
        &session.id,
        Notice::Info(format!("{what} is {verb}{effect}.")),
    );
    see_other(&format!("/ui/accounts/{}", url_segment(&account_id)))
}

// ---------------------------------------------------------------------------------------
// Key actions

pub async fn key_action(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<OperatorForm>, FormRejection>,
) -> Response {
    let (session, form, (key_id, action)) = match check_post_to(&web, &headers, path, form) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    if action == "rename" {
        return rename_key(web, ip, session, key_id, form.name).await;
    }
    if action == "rate-limit" {
        return set_rate_limit(web, ip, session, key_id, form).await;
    }
    let change = match action.as_str() {
        "roll" => None,
        "revoke" => Some(KeyChange::Revoke),
        "disable" => Some(KeyChange::Disable),
        "enable" => Some(KeyChange::Enable),
        _ => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session),
                "There is no such action.",
            )
        }
    };
    let grace = if change.is_none() {
        let chosen = form.grace.parse::<u64>().ok();
        match chosen.filter(|g| GRACE_CHOICES.iter().any(|(s, _)| s == g)) {
            Some(grace) => grace,
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    Some(&session),
                    "Choose when the old key stops: now, in 1 hour, in 24 hours or in 7 days.",
                )
            }
        }
    } else {
        0
    };
    let id = key_id.clone();
    let actor = Actor::operator(&session.tag(), ip);
    let outcome = run(&web, true, move |service, now| {
        let result = match change {
            None => service
                .roll_key(&id, grace, None, now, &actor)
                .map(|r| Outcome::Rolled(Box::new(r))),
            Some(change) => service
                .change_key(&id, change, now, &actor)
                .map(|c| Outcome::Changed(change, Box::new(c))),
        };
        match result {
            Ok(outcome) => Ok(Ok(outcome)),
            // Where to go back to: the key's account, when the key exists.
            Err(e) => {
                let account = service.store().key(&id).ok().map(|k| k.account_id);
                Ok(Err((Failed::from(e), account)))
            }
        }
    })
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    match outcome {
        Ok(Outcome::Rolled(rolled)) => {
            let (old, new) = (&rolled.value.old_key, &rolled.value.new_key);
            log_event(&format!(
                "key {} ({}) rolled to {} ({}); old key expires at {} (web page; key map version {})",
                old.key_id,
                old.hint,
                new.record.key_id,
                new.record.hint,
                old.expires_at.unwrap_or_default(),
                rolled.version
            ));
            let when = match old.expires_at {
                Some(at) if grace > 0 => {
                    format!("keeps working until {}", crate::clock::format_utc(at))
                }
                _ => "stopped working".into(),
            };
            web.sessions.set_new_keys(
                &session.id,
                NewKeys::new(
                    old.account_id.clone(),
                    vec![ShownKey {
                        key_id: new.record.key_id.clone(),
                        kind: new.record.kind(),
                        plaintext: new.plaintext.clone(),
                    }],
                ),
            );
            web.sessions.set_notice(
                &session.id,
                Notice::Info(format!(
                    "Rolled the {}: the old key {} {when}.",
                    kind_label(old.kind()).to_lowercase(),
                    old.hint
                )),
            );
            see_other(&format!(
                "/ui/accounts/{}#{}",
                url_segment(&old.account_id),
                url_segment(&new.record.key_id)
            ))
        }
        Ok(Outcome::Changed(change, changed)) => {
            let key = &changed.value;
            log_event(&format!(
                "key {} ({}) {} (web page; key map version {})",
                key.key_id,
                key.hint,
                change.past_tense(),
                changed.version
            ));
            web.sessions.set_notice(
                &session.id,
                Notice::Info(format!(
                    "The {} {} is {}.",
                    kind_label(key.kind()).to_lowercase(),
                    key.hint,
                    change.past_tense()
                )),
            );
            see_other(&format!(
                "/ui/accounts/{}#{}",
                url_segment(&key.account_id),
                url_segment(&key.key_id)
            ))
        }
        Err((failed, account)) => {
            web.sessions
                .set_notice(&session.id, Notice::Error(failed.message.clone()));
            match account {
                Some(account) => see_other(&format!("/ui/accounts/{}", url_segment(&account))),
                None => see_other("/ui/accounts"),
            }
        }
    }
}

/// `POST /ui/keys/{key_id}/rate-limit` (`rate_requests`, `rate_per`, `rate_burst`): empty
/// requests remove the key's limit.
async fn set_rate_limit(
    web: Arc<Web>,
    ip: IpAddr,
    session: SessionInfo,
    key_id: String,
    form: OperatorForm,
) -> Response {
    let actor = Actor::operator(&session.tag(), ip);
    let id = key_id.clone();
    // `true`: the key map changed, so held watches hear of it now.
    let changed = run(&web, true, move |service, now| {
        let result = form_limit(&form)
            .and_then(|limit| service.set_rate_limit(&id, limit.as_ref(), now, &actor));
        match result {
            Ok(changed) => Ok(Ok(changed.value)),
            Err(e) => {
                let account = service.store().key(&id).ok().map(|k| k.account_id);
                Ok(Err((Failed::from(e), account)))
            }
        }
    })
    .await;
    match changed {
        Ok(Ok(key)) => {
            let said = match &key.rate_limit {
                Some(limit) => format!("is limited to {}", describe(limit)),
                None => "has no rate limit now".into(),
            };
            log_event(&format!(
                "key {} ({}) {said} (web page)",
                key.key_id, key.hint
            ));
            web.sessions.set_notice(
                &session.id,
                Notice::Info(format!(
                    "The {} {} {said}; Envoy applies it at its next key-map poll.",
                    kind_label(key.kind()).to_lowercase(),
                    key.hint
                )),
            );
            see_other(&format!(
                "/ui/accounts/{}#{}",
                url_segment(&key.account_id),
                url_segment(&key.key_id)
            ))
        }
        Ok(Err((failed, Some(account)))) => {
            web.sessions.set_notice(
                &session.id,
                Notice::Error(format!(
                    "The rate limit was not changed: {}",
                    failed.message
                )),
            );
            see_other(&format!("/ui/accounts/{}", url_segment(&account)))
        }
        Ok(Err((failed, None))) | Err(failed) => {
            error_page(failed.status, Some(&session), &failed.message)
        }
    }
}

/// `POST /ui/keys/{key_id}/rename`: an empty name removes it.
async fn rename_key(
    web: Arc<Web>,
    ip: IpAddr,
    session: SessionInfo,
    key_id: String,
    name: String,
) -> Response {
    let actor = Actor::operator(&session.tag(), ip);
    let id = key_id.clone();
    let renamed = run(&web, false, move |service, now| {
        match service.rename_key(&id, Some(&name), now, &actor) {
            Ok(key) => Ok(Ok(key)),
            Err(e) => {
                let account = service.store().key(&id).ok().map(|k| k.account_id);
                Ok(Err((Failed::from(e), account)))
            }
        }
    })
    .await;
    match renamed {
        Ok(Ok(key)) => {
            log_event(&format!(
                "key {} ({}) renamed (web page)",
                key.key_id, key.hint
            ));
            let said = match &key.name {
                Some(name) => format!("is now named “{name}”"),
                None => "has no name now".into(),
            };
            web.sessions.set_notice(
                &session.id,
                Notice::Info(format!(
                    "The {} {} {said}.",
                    kind_label(key.kind()).to_lowercase(),
                    key.hint
                )),
            );
            see_other(&format!(
                "/ui/accounts/{}#{}",
                url_segment(&key.account_id),
                url_segment(&key.key_id)
            ))
        }
        Ok(Err((failed, Some(account)))) => {
            web.sessions.set_notice(
                &session.id,
                Notice::Error(format!("The name was not changed: {}", failed.message)),
            );
            see_other(&format!("/ui/accounts/{}", url_segment(&account)))
        }
        Ok(Err((failed, None))) | Err(failed) => {
            error_page(failed.status, Some(&session), &failed.message)
        }
    }
}

enum Outcome {
    Rolled(Box<crate::service::Changed<crate::model::RolledView>>),
    Changed(KeyChange, Box<crate::service::Changed<KeyView>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(status: &str) -> KeyView {
        KeyView {
            key_id: "key_<x>".into(),
            account_id: "acct_1".into(),
            key_type: KeyType::Secret,
            environment: Environment::Test,
            hint: "sk_test_…<b>".into(),
            digest: "00".into(),
            origin: "issued".into(),
            status: status.into(),
            created_at: 1_700_000_000,
            disabled_at: None,
            expires_at: Some(1_700_086_400),
            rolled_at: None,
            replaced_by: None,
            revoked_at: Some(1_700_000_100),
            removed_at: None,
            name: None,
            last_used_at: None,
            rate_limit: None,
        }
    }

    fn page_of(keys: Vec<KeyView>) -> String {
        let row = |k: &KeyView| KeyRow::new(k, None, 1_700_000_000);
        AccountPage {
            chrome: Chrome::operator("A<b>", Some("tok\"en")),
            name: "A<b>".into(),
            account_id: "acct_1".into(),
            created: Stamp::new(1_700_000_000),
            disabled_at: None,
            notice: None,
            new_keys: Vec::new(),
            groups: vec![KeyGroup {
                id: "test-keys",
                title: "Test keys",
                rows: keys.iter().map(row).collect(),
            }],
            history: Vec::new(),
            users: Vec::new(),
            csrf: "tok\"en".into(),
            grace_choices: GRACE_CHOICES.to_vec(),
            expiry_choices: EXPIRY_CHOICES.to_vec(),
            default_limit: LimitForm::new(None),
        }
        .render()
        .expect("render")
    }

    #[test]
    fn states_read_as_hypertrack_words_them() {
        let html = page_of(vec![key("expiring")]);
        assert!(html.contains("expiring at <time"), "{html}");
        assert!(html.contains("(in 24 h)"));
        let html = page_of(vec![key("active")]);
        assert!(html.contains(">active</span>"));
    }

    #[test]
    fn actions_escape_what_they_show_and_carry_csrf() {
        let html = page_of(vec![key("active")]);
        assert!(!html.contains("<b>") && !html.contains("<x>"));
        assert!(html.contains("&lt;b&gt;"));
        assert!(html.contains("<title>A&lt;b&gt; · keygate</title>"));
        // Three key forms and sign-out, each with the escaped token.
        assert!(html.matches("name=\"csrf\" value=\"tok&quot;en\"").count() >= 4);
        assert!(html.contains("/ui/keys/key_%3Cx%3E/roll"));
        for (seconds, _) in GRACE_CHOICES {
            assert!(html.contains(&format!("value=\"{seconds}\"")));
        }
        let mut rolled = key("expiring");
        rolled.replaced_by = Some("key_new".into());
        let html = page_of(vec![rolled]);
        assert!(
            !html.contains("/roll\""),
            "a rolled key is not rolled again"
        );
    }
}
