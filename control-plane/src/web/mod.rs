//! The operator's web page under `/ui/`: sign in with the admin token, list and search
//! accounts, see an account's keys as HyperTrack's dashboard shows them, and create, roll,
//! revoke, disable and enable them. Server-rendered HTML; one small script and one style
//! sheet, both served from here (no third-party fetches).
//!
//! Every change goes through `Service`, the same functions the JSON API and the CLI use, so
//! the page and the CLI leave the same state.
//!
//! Security: a session is a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie
//! scoped to `/ui`, known to the server only by its digest, ending after 8 hours, at sign-out
//! or when the admin token is rotated. Every form that changes state carries a CSRF token
//! (the session's; for sign-in a double-submit cookie) compared in constant time, and
//! cross-site form posts are refused outright. Failed sign-ins slow down per address.
//! Pages are `Cache-Control: no-store` with a strict Content-Security-Policy; a new key's
//! plaintext is handed from the POST to the next page through a one-time server-side flash,
//! so reloading never shows it again.

mod backoff;
mod customer;
mod flash;
pub(crate) mod html;
pub(crate) mod pages;
pub(crate) mod session;
pub mod signin;
pub(crate) mod throttle;
pub(crate) mod usage_chart;
mod views;

use crate::api::AppState;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
pub use customer::CustomerOptions;
pub use html::url_segment;
pub use session::random_token;
use session::{SessionInfo, Sessions};
use signin::SignInThrottle;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
pub use throttle::bucket as throttle_bucket;

/// Set to 1 (or true) to mark cookies `Secure` even when no proxy says the request was https.
pub const SECURE_COOKIES_ENV: &str = "KEYGATE_SECURE_COOKIES";

pub const SESSION_COOKIE: &str = "keygate_session";
/// The sign-in form's double-submit CSRF cookie.
pub const LOGIN_COOKIE: &str = "keygate_login";

const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'; object-src 'none'";
/// Forms are tiny; anything larger is not ours.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the page's handlers share.
pub struct Web {
    app: Arc<AppState>,
    sessions: Sessions,
    throttle: SignInThrottle,
    /// Mark every cookie `Secure`.
    always_secure: bool,
}

impl Web {
    fn new(app: Arc<AppState>) -> Web {
        let always_secure = std::env::var(SECURE_COOKIES_ENV)
            .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"));
        Web {
            app,
            sessions: Sessions::default(),
            throttle: SignInThrottle::default(),
            always_secure,
        }
    }

    /// The session the request's cookie names, if it is live.
    fn session(&self, headers: &HeaderMap) -> Option<SessionInfo> {
        let value = signin::cookie_value(headers, SESSION_COOKIE)?;
        self.sessions.get(&value, self.app.admin_digest())
    }

    /// `Secure` cookies when told to, or when a proxy in front says the browser used https.
    fn secure(&self, headers: &HeaderMap) -> bool {
        self.always_secure || forwarded_https(headers)
    }
}

/// Whether cookies are marked `Secure` whatever the request says (KEYGATE_SECURE_COOKIES).
pub fn secure_cookies_from_env() -> bool {
    std::env::var(SECURE_COOKIES_ENV).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// The pages' routes (the customer's at `/`, the operator's under `/ui/`), to be merged into
/// the API's router.
pub fn router(app: Arc<AppState>, customers: CustomerOptions) -> Router {
    router_parts(app, customers).0
}

/// The pages' routes and the customer pages' shared state (which tests look into).
pub(crate) fn router_parts(
    app: Arc<AppState>,
    customers: CustomerOptions,
) -> (Router, Arc<customer::CustomerWeb>) {
    let (customer, customer_web) = customer::router(Arc::clone(&app), customers);
    let web = Arc::new(Web::new(app));
    let router = Router::new()
        .route("/ui", get(pages::root))
        .route("/ui/", get(pages::home))
        .route("/ui/app.css", get(pages::css))
        .route("/ui/app.js", get(pages::js))
        .route("/ui/login", get(pages::login_page).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route(
            "/ui/accounts",
            get(pages::accounts_page).post(pages::create_account),
        )
        .route("/ui/accounts/{account_id}", get(pages::account_page))
        .route("/ui/accounts/{account_id}/keys", post(pages::create_key))
        .route("/ui/audit", get(pages::audit_page))
        .route("/ui/keys/{key_id}/{action}", post(pages::key_action))
        .route(
            "/ui/accounts/{account_id}/{action}",
            post(pages::account_action),
        )
        .route("/ui/users/{user_id}/{action}", post(pages::user_action))
        .route("/ui/{*rest}", get(pages::not_found))
        .with_state(web)
        .merge(customer)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(middleware::map_response(security_headers));
    (router, customer_web)
}

/// Headers on every answer of the page.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The client's address, as the connection gives it (not from headers, which anyone can
/// write). Behind a reverse proxy every client shares the proxy's address.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientIp(ip))
    }
}

pub fn forwarded_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    proto || forwarded
}

/// False when the browser says the request came from another site (`Sec-Fetch-Site`), or
/// its `Origin` names another host than the one asked. Browsers send both on form posts.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if site.is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return false;
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        // "null" is sent from sandboxed or privacy-sensitive contexts: not ours.
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
            origin_host.eq_ignore_ascii_case(host)
                // A proxy may rewrite Host; it then says which host the browser asked.
                || headers
                    .get("x-forwarded-host")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|h| origin_host.eq_ignore_ascii_case(h.trim()))
        }
        _ => true,
    }
}

/// An HTML answer.
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// `303 See Other` to a path of this server (POST-redirect-GET).
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn https_behind_a_proxy_is_recognised() {
        assert!(forwarded_https(&headers(&[("x-forwarded-proto", "https")])));
        assert!(forwarded_https(&headers(&[(
            "forwarded",
            "for=1.2.3.4;proto=https"
        )])));
        assert!(!forwarded_https(&headers(&[("x-forwarded-proto", "http")])));
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
        ])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "h")])));
        assert!(same_origin(&headers(&[
            ("origin", "https://keys.example.com"),
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-host", "keys.example.com"),
        ])));
    }
}
