//! The page's handlers: sign-in and sign-out, the accounts list, an account's keys, and the
//! forms that change them. Changes answer `303 See Other` (POST-redirect-GET) with a
//! one-time notice, or the new keys, waiting in the session for the next page.

use super::html::{
    csrf_field, env_word, esc, kind_label, notice, page, relative, time, type_label, url_segment,
    Chrome, APP_CSS, APP_JS,
};
use super::session::{secrets_match, NewKeys, Notice, SessionInfo, ShownKey};
use super::signin::seconds_text;
use super::throttle::Failure;
use super::{
    cookie, html, parse_form, same_origin, see_other, set_cookie, ClientIp, Web, LOGIN_COOKIE,
    SESSION_COOKIE,
};
use crate::auth::token_matches;
use crate::clock::now_unix;
use crate::log::log_event;
use crate::model::{AccountView, KeyView};
use crate::service::{KeyChange, Service, ServiceError, ServiceResult};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::key::{Environment, KeyType};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// The grace periods offered when rolling a key: (seconds, label).
pub const GRACE_CHOICES: [(u64, &str); 4] = [
    (0, "now"),
    (3600, "in 1 hour"),
    (86_400, "in 24 hours"),
    (7 * 86_400, "in 7 days"),
];
/// Accounts listed at most on one page (search narrows it).
const MAX_LISTED: usize = 200;

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
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::Store(StoreError::AccountNotFound(_) | StoreError::KeyNotFound(_)) => {
                StatusCode::NOT_FOUND
            }
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

fn signed_in_page(status: StatusCode, title: &str, session: &SessionInfo, main: &str) -> Response {
    let chrome = Chrome {
        title,
        csrf: Some(&session.csrf),
    };
    html(status, page(&chrome, main))
}

fn error_page(status: StatusCode, session: Option<&SessionInfo>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let main = format!(
        "<h1>{}</h1>\n{}<p><a href=\"/ui/accounts\">Back to the accounts</a></p>\n",
        esc(title),
        notice(message, true)
    );
    let chrome = Chrome {
        title,
        csrf: session.map(|s| s.csrf.as_str()),
    };
    html(status, page(&chrome, &main))
}

fn to_login(reason: &str) -> Response {
    see_other(&format!("/ui/login?m={reason}"))
}

fn notices_html(web: &Web, session: &SessionInfo) -> String {
    match web.sessions.take_notice(&session.id) {
        Some(Notice::Info(text)) => notice(&text, false),
        Some(Notice::Error(text)) => notice(&text, true),
        None => String::new(),
    }
}

/// A state-changing form's checks: same-origin, a live session, its CSRF token. The error
/// is the answer to send.
#[allow(clippy::result_large_err)]
fn check_post(
    web: &Web,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(SessionInfo, HashMap<String, String>), Response> {
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
    let Some(form) = parse_form(body) else {
        return Err(error_page(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "The form could not be read.",
        ));
    };
    let csrf_ok = form
        .get("csrf")
        .is_some_and(|presented| secrets_match(presented, &session.csrf));
    if !csrf_ok {
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
    html(
        StatusCode::METHOD_NOT_ALLOWED,
        page(
            &Chrome {
                title: "Method not allowed",
                csrf: None,
            },
            "<h1>Method not allowed</h1>\n<p><a href=\"/ui/\">Go to the start page</a></p>\n",
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Sign-in and sign-out

#[derive(Deserialize)]
pub struct LoginQuery {
    m: Option<String>,
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
    let mut main = String::from("<h1>Sign in</h1>\n");
    if let Some((text, error)) = message {
        main.push_str(&notice(text, error));
    }
    let _ = writeln!(
        main,
        "<form method=\"post\" action=\"/ui/login\" class=\"card narrow\">\n{}\n\
         <label for=\"token\">Admin token</label>\n\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" \
         required autofocus spellcheck=\"false\" aria-describedby=\"token-help\">\n\
         <p id=\"token-help\" class=\"help\">The token this keygatectl was started with \
         (<code>--admin-token-file</code> or <code>KEYGATE_ADMIN_TOKEN</code>; \
         <code>make run</code> keeps it in <code>.run/admin-token</code>).</p>\n\
         <button type=\"submit\">Sign in</button>\n</form>",
        csrf_field(&token)
    );
    let mut response = html(
        status,
        page(
            &Chrome {
                title: "Sign in",
                csrf: None,
            },
            &main,
        ),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, 3600, web.secure(headers)),
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

pub async fn login(
    State(web): WebState,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
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
        let mut response = login_form(
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
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let form = parse_form(&body).unwrap_or_default();
    let csrf_ok = match (cookie(&headers, LOGIN_COOKIE), form.get("csrf")) {
        (Some(expected), Some(presented)) => secrets_match(presented, &expected),
        _ => false,
    };
    if !csrf_ok {
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
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
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
        set_cookie(
            SESSION_COOKIE,
            &opened.cookie_value,
            opened.info.remaining.as_secs(),
            secure,
        ),
    );
    cookies.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
    response
}

pub async fn logout(State(web): WebState, headers: HeaderMap, body: Bytes) -> Response {
    let (session, _) = match check_post(&web, &headers, &body) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    web.sessions.close(&session.id);
    log_event("web sign-out");
    let mut response = to_login("signed-out");
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, web.secure(&headers)),
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

fn matches_search(account: &AccountView, needle: &str, key_account: Option<&str>) -> bool {
    needle.is_empty()
        || key_account == Some(account.id.as_str())
        || account.id.to_lowercase().contains(needle)
        || account
            .name
            .as_deref()
            .is_some_and(|n| n.to_lowercase().contains(needle))
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
        // A key id finds its account.
        let key_account = match key_query {
            Some(id) => match service.store().key(&id) {
                Ok(key) => Some(key.account_id),
                Err(StoreError::KeyNotFound(_)) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        Ok((accounts, live, key_account))
    })
    .await;
    let (mut accounts, live, key_account) = match listing {
        Ok(listing) => listing,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    // Newest first.
    accounts.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let needle = q.to_lowercase();
    let found: Vec<&AccountView> = accounts
        .iter()
        .filter(|a| matches_search(a, &needle, key_account.as_deref()))
        .collect();

    let mut main = String::from("<h1>Accounts</h1>\n");
    main.push_str(&notices_html(&web, &session));
    let _ = writeln!(
        main,
        "<form method=\"get\" action=\"/ui/accounts\" role=\"search\" class=\"search\">\n\
         <label for=\"q\">Search accounts</label>\n\
         <input type=\"search\" id=\"q\" name=\"q\" value=\"{}\" \
         placeholder=\"Name, account id or key id\" aria-describedby=\"q-help\">\n\
         <button type=\"submit\">Search</button>\n\
         <p id=\"q-help\" class=\"help\">Matches part of a name or account id, or a whole key id.</p>\n\
         </form>",
        esc(&q)
    );
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
    let _ = writeln!(
        main,
        "<p class=\"summary\" role=\"status\">{}</p>",
        esc(&summary)
    );
    if !found.is_empty() {
        main.push_str(
            "<div class=\"table-wrap\"><table class=\"accounts\">\n<caption class=\"vh\">Accounts</caption>\n<thead><tr>\
             <th scope=\"col\">Name</th><th scope=\"col\">Account id</th>\
             <th scope=\"col\">Created</th><th scope=\"col\">Live keys</th></tr></thead>\n<tbody>\n",
        );
        for account in found.iter().take(MAX_LISTED) {
            let _ = writeln!(
                main,
                "<tr><th scope=\"row\" data-label=\"Name\"><a href=\"/ui/accounts/{}\">{}</a></th>\
                 <td data-label=\"Account id\"><code>{}</code></td>\
                 <td data-label=\"Created\">{}</td><td data-label=\"Live keys\">{}</td></tr>",
                url_segment(&account.id),
                esc(account_name(account)),
                esc(&account.id),
                time(account.created_at),
                live.get(&account.id).copied().unwrap_or(0)
            );
        }
        main.push_str("</tbody>\n</table></div>\n");
        if found.len() > MAX_LISTED {
            let _ = writeln!(
                main,
                "<p class=\"help\">Showing the newest {MAX_LISTED}; search to narrow the list.</p>"
            );
        }
    }
    let _ = writeln!(
        main,
        "<section class=\"card\" aria-labelledby=\"create-heading\">\n\
         <h2 id=\"create-heading\">Create an account</h2>\n\
         <form method=\"post\" action=\"/ui/accounts\">\n{}\n\
         <label for=\"name\">Account name (optional)</label>\n\
         <input type=\"text\" id=\"name\" name=\"name\" maxlength=\"100\" autocomplete=\"off\" \
         aria-describedby=\"name-help\">\n\
         <p id=\"name-help\" class=\"help\">The account comes with four keys: secret and \
         publishable, test and production. They are shown once, on the next page.</p>\n\
         <button type=\"submit\">Create account</button>\n</form>\n</section>",
        csrf_field(&session.csrf)
    );
    signed_in_page(StatusCode::OK, "Accounts", &session, &main)
}

pub async fn create_account(State(web): WebState, headers: HeaderMap, body: Bytes) -> Response {
    let (session, form) = match check_post(&web, &headers, &body) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
    let name = form
        .get("name")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    let created = run(&web, true, move |service, now| {
        service.create_account(name.as_deref(), now)
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
// One account's keys

fn is_live(key: &KeyView) -> bool {
    matches!(key.status.as_str(), "active" | "expiring" | "disabled")
}

/// The state as the page words it: `active`, `expiring at … (in …)`, `disabled since …`,
/// `revoked at …`, `expired at …`.
fn state_html(key: &KeyView, now: u64) -> String {
    let status = key.status.as_str();
    let text = match status {
        "expiring" => match key.expires_at {
            Some(at) => format!("expiring at {} ({})", time(at), relative(at, now)),
            None => "expiring".into(),
        },
        "disabled" => {
            let mut text = match key.disabled_at {
                Some(at) => format!("disabled since {}", time(at)),
                None => "disabled".into(),
            };
            if let Some(at) = key.expires_at {
                let _ = write!(text, "; expires at {} ({})", time(at), relative(at, now));
            }
            text
        }
        "revoked" => match key.revoked_at {
            Some(at) => format!("revoked at {}", time(at)),
            None => "revoked".into(),
        },
        "expired" => match key.expires_at.or(key.removed_at) {
            Some(at) => format!("expired at {}", time(at)),
            None => "expired".into(),
        },
        _ => "active".into(),
    };
    format!(
        "<span class=\"state state-{}\">{}</span>",
        esc(status),
        text
    )
}

/// The forms a live key offers.
fn actions_html(key: &KeyView, csrf: &str) -> String {
    let id = url_segment(&key.key_id);
    let what = format!("{} {}", kind_label(key.kind()).to_lowercase(), key.hint);
    let mut out = String::new();
    if key.replaced_by.is_none() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/ui/keys/{id}/roll\" class=\"roll\" \
             data-confirm-now=\"Roll {what_attr} now? The current key stops working at once.\">\
             {csrf}<label for=\"grace-{id}\">Old key stops</label>\
             <select id=\"grace-{id}\" name=\"grace\">",
            what_attr = esc(&what),
            csrf = csrf_field(csrf),
        );
        for (seconds, label) in GRACE_CHOICES {
            let _ = write!(out, "<option value=\"{seconds}\">{label}</option>");
        }
        let _ = write!(
            out,
            "</select><button type=\"submit\">Roll<span class=\"vh\"> {}</span></button></form>",
            esc(&what)
        );
    }
    let (toggle, toggle_label) = if key.status == "disabled" {
        ("enable", "Enable")
    } else {
        ("disable", "Disable")
    };
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/ui/keys/{id}/{toggle}\" class=\"inline\">{csrf}\
         <button type=\"submit\" class=\"secondary\">{toggle_label}<span class=\"vh\"> {what}</span></button></form>\
         <form method=\"post\" action=\"/ui/keys/{id}/revoke\" class=\"inline\" \
         data-confirm=\"Revoke {what}? It stops working at once, for good.\">{csrf}\
         <button type=\"submit\" class=\"danger\">Revoke<span class=\"vh\"> {what}</span></button></form>",
        csrf = csrf_field(csrf),
        what = esc(&what),
    );
    out
}

fn key_rows(
    out: &mut String,
    keys: &[&KeyView],
    last_rolled: &HashMap<&str, u64>,
    csrf: &str,
    now: u64,
    with_actions: bool,
) {
    for key in keys {
        let rolled = key
            .rolled_at
            .or_else(|| last_rolled.get(key.key_id.as_str()).copied());
        let rolled = rolled.map_or_else(|| "never".to_string(), time);
        let _ = write!(
            out,
            "<tr id=\"{id_attr}\" data-key-id=\"{id_attr}\" data-status=\"{status}\">\
             <th scope=\"row\" data-label=\"Key\">{label}</th>\
             <td data-label=\"Value\"><code class=\"hint\">{hint}</code>\
             <span class=\"keyid\">{id_attr}</span></td>\
             <td data-label=\"Created\">{created}</td>\
             <td data-label=\"Last rolled\">{rolled}</td>\
             <td data-label=\"State\">{state}</td>",
            id_attr = esc(&key.key_id),
            status = esc(&key.status),
            label = if with_actions {
                type_label(key.key_type).to_string()
            } else {
                kind_label(key.kind())
            },
            hint = esc(&key.hint),
            created = time(key.created_at),
            state = state_html(key, now),
        );
        if with_actions {
            let _ = write!(
                out,
                "<td data-label=\"Actions\" class=\"actions\">{}</td>",
                actions_html(key, csrf)
            );
        }
        out.push_str("</tr>\n");
    }
}

fn key_table_head(out: &mut String, caption: &str, with_actions: bool) {
    let _ = writeln!(
        out,
        "<div class=\"table-wrap\"><table class=\"keys\">\n<caption class=\"vh\">{}</caption>\n<thead><tr>\
         <th scope=\"col\">Key</th><th scope=\"col\">Value</th><th scope=\"col\">Created</th>\
         <th scope=\"col\">Last rolled</th><th scope=\"col\">State</th>{}</tr></thead>\n<tbody>",
        esc(caption),
        if with_actions {
            "<th scope=\"col\">Actions</th>"
        } else {
            ""
        }
    );
}

fn new_keys_html(new_keys: &NewKeys) -> String {
    let one = new_keys.keys.len() == 1;
    let mut out = format!(
        "<section class=\"reveal\" aria-labelledby=\"reveal-heading\">\n\
         <h2 id=\"reveal-heading\">{}</h2>\n\
         <p class=\"warn\"><strong>Copy {} now: {} will not be shown again.</strong> keygatectl \
         keeps only a digest; reloading or leaving this page hides it for good.</p>\n",
        if one { "Your new key" } else { "Your new keys" },
        if one { "it" } else { "them" },
        if one { "it" } else { "they" },
    );
    for (i, key) in new_keys.keys.iter().enumerate() {
        let label = kind_label(key.kind);
        let _ = writeln!(
            out,
            "<div class=\"newkey\" data-key-id=\"{key_id}\">\
             <span class=\"newkey-label\" id=\"newkey-label-{i}\">{label}</span>\
             <code class=\"secret\" id=\"newkey-{i}\" aria-labelledby=\"newkey-label-{i}\">{plaintext}</code>\
             <button type=\"button\" class=\"copy\" data-copy=\"newkey-{i}\" data-status=\"copied-{i}\">\
             Copy<span class=\"vh\"> {label_lower}</span></button>\
             <span class=\"copied\" id=\"copied-{i}\" role=\"status\" aria-live=\"polite\"></span></div>",
            key_id = esc(&key.key_id),
            label = esc(&label),
            label_lower = esc(&label.to_lowercase()),
            plaintext = esc(&key.plaintext),
        );
    }
    out.push_str("</section>\n");
    out
}

pub async fn account_page(
    State(web): WebState,
    headers: HeaderMap,
    Path(account_id): Path<String>,
) -> Response {
    let Some(session) = web.session(&headers) else {
        return to_login("expired");
    };
    let lookup = account_id.clone();
    let detail = run(&web, false, move |service, now| {
        Ok((service.account(&lookup, now)?, now))
    })
    .await;
    let (detail, now) = match detail {
        Ok(detail) => detail,
        Err(f) => return error_page(f.status, Some(&session), &f.message),
    };
    // Taken now: whatever happens next, these plaintexts are gone from the server.
    let new_keys = web.sessions.take_new_keys(&session.id, &detail.account.id);
    let account = &detail.account;
    let name = account_name(account);

    // A key's last roll is its own (an old key) or its predecessor's (the key that replaced).
    let last_rolled: HashMap<&str, u64> = detail
        .keys
        .iter()
        .filter_map(|k| Some((k.replaced_by.as_deref()?, k.rolled_at?)))
        .collect();

    let mut main = format!(
        "<nav aria-label=\"Breadcrumb\" class=\"crumbs\"><a href=\"/ui/accounts\">Accounts</a> \
         <span aria-hidden=\"true\">›</span> <span aria-current=\"page\">{}</span></nav>\n\
         <h1>{}</h1>\n<p class=\"meta\">Account <code>{}</code> · created {}</p>\n",
        esc(name),
        esc(name),
        esc(&account.id),
        time(account.created_at)
    );
    main.push_str(&notices_html(&web, &session));
    if let Some(new_keys) = &new_keys {
        main.push_str(&new_keys_html(new_keys));
    }
    // Live keys by environment, secret first, newest first; then the history.
    let mut live: Vec<&KeyView> = detail.keys.iter().filter(|k| is_live(k)).collect();
    live.sort_by(|a, b| {
        let rank = |k: &KeyView| (k.key_type == KeyType::Publishable, k.expires_at.is_some());
        rank(a)
            .cmp(&rank(b))
            .then(b.created_at.cmp(&a.created_at))
            .then(a.key_id.cmp(&b.key_id))
    });
    for environment in [Environment::Test, Environment::Production] {
        let title = match environment {
            Environment::Test => "Test keys",
            Environment::Production => "Production keys",
        };
        let keys: Vec<&KeyView> = live
            .iter()
            .copied()
            .filter(|k| k.environment == environment)
            .collect();
        let heading_id = format!("{}-keys", env_word(environment));
        let _ = writeln!(
            main,
            "<section aria-labelledby=\"{heading_id}\">\n<h2 id=\"{heading_id}\">{title}</h2>"
        );
        if keys.is_empty() {
            main.push_str("<p class=\"help\">No live keys.</p>\n");
        } else {
            key_table_head(&mut main, title, true);
            key_rows(&mut main, &keys, &last_rolled, &session.csrf, now, true);
            main.push_str("</tbody>\n</table></div>\n");
        }
        main.push_str("</section>\n");
    }
    let mut history: Vec<&KeyView> = detail.keys.iter().filter(|k| !is_live(k)).collect();
    if !history.is_empty() {
        history.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(a.key_id.cmp(&b.key_id))
        });
        let _ = writeln!(
            main,
            "<section aria-labelledby=\"history-keys\">\n<h2 id=\"history-keys\">Revoked and expired keys</h2>\n\
             <details><summary>{} {}</summary>",
            history.len(),
            if history.len() == 1 { "key" } else { "keys" }
        );
        key_table_head(&mut main, "Revoked and expired keys", false);
        key_rows(&mut main, &history, &last_rolled, &session.csrf, now, false);
        main.push_str("</tbody>\n</table></div>\n</details>\n</section>\n");
    }
    let _ = writeln!(
        main,
        "<p class=\"help\">The same from the command line: \
         <code>keygatectl key list --account {}</code></p>",
        esc(&account.id)
    );
    signed_in_page(StatusCode::OK, name, &session, &main)
}

// ---------------------------------------------------------------------------------------
// Key actions

pub async fn key_action(
    State(web): WebState,
    headers: HeaderMap,
    Path((key_id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (session, form) = match check_post(&web, &headers, &body) {
        Ok(checked) => checked,
        Err(response) => return response,
    };
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
        let chosen = form.get("grace").and_then(|g| g.parse::<u64>().ok());
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
    let outcome = run(&web, true, move |service, now| {
        let result = match change {
            None => service
                .roll_key(&id, grace, now)
                .map(|r| Outcome::Rolled(Box::new(r))),
            Some(change) => service
                .change_key(&id, change, now)
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
        }
    }

    #[test]
    fn states_read_as_hypertrack_words_them() {
        let now = 1_700_000_000;
        assert!(state_html(&key("expiring"), now).contains("expiring at <time"));
        assert!(state_html(&key("expiring"), now).contains("(in 24 h)"));
        assert!(state_html(&key("revoked"), now).contains("revoked at"));
        assert!(state_html(&key("active"), now).contains(">active<"));
    }

    #[test]
    fn actions_escape_what_they_show_and_carry_csrf() {
        let forms = actions_html(&key("active"), "tok");
        assert!(!forms.contains("<b>") && !forms.contains("<x>"));
        assert!(forms.contains("&lt;b&gt;"));
        assert_eq!(forms.matches("name=\"csrf\" value=\"tok\"").count(), 3);
        assert!(forms.contains("/ui/keys/key_%3Cx%3E/roll"));
        for (seconds, _) in GRACE_CHOICES {
            assert!(forms.contains(&format!("value=\"{seconds}\"")));
        }
        let mut rolled = key("expiring");
        rolled.replaced_by = Some("key_new".into());
        let forms = actions_html(&rolled, "tok");
        assert!(!forms.contains("/roll"), "a rolled key is not rolled again");
    }
}
