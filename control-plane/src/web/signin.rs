//! What operator and customer sign-in share: the throttle (per client address, and per email
//! for customers), CSRF tokens (a double-submit cookie for the forms used signed out, a token
//! bound to the session for the rest), cookies, and the answers a throttled or refused
//! attempt gets.

use super::backoff::Backoff;
use super::session::{random_token, secrets_match};
use super::throttle::{Failure, LoginThrottle};
use crate::random::RandomError;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum_extra::extract::cookie::{Cookie, SameSite};
use keygate_core::digest::Digest;
use std::net::IpAddr;
use std::time::Duration;

/// Failed sign-ins slow down per client address and, when the attempt names one, per email
/// (so spreading guesses over many addresses gains nothing either). The wait is the longer
/// of the two.
#[derive(Default)]
pub struct SignInThrottle {
    by_address: LoginThrottle,
    by_email: Backoff<Digest>,
}

impl SignInThrottle {
    /// `Err(wait)` while either the address or the email must wait.
    pub fn check(&self, ip: IpAddr, email: Option<&str>) -> Result<(), Duration> {
        let address = self.by_address.check(ip).err();
        let named = email.and_then(|e| self.by_email.check(&Digest::of_key(e)).err());
        match address.into_iter().chain(named).max() {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failure for both; the answer waits the longer delay.
    pub fn failed(&self, ip: IpAddr, email: Option<&str>) -> Failure {
        let address = self.by_address.failed(ip);
        match email.map(|e| self.by_email.failed(&Digest::of_key(e))) {
            Some(named) if named.delay > address.delay => named,
            _ => address,
        }
    }

    pub fn succeeded(&self, ip: IpAddr, email: Option<&str>) {
        self.by_address.succeeded(ip);
        if let Some(email) = email {
            self.by_email.succeeded(&Digest::of_key(email));
        }
    }
}

/// `1.5 s`, `30 s`: a wait for people.
pub fn seconds_text(d: Duration) -> String {
    let tenths = d.as_millis().div_ceil(100);
    if tenths % 10 == 0 {
        format!("{} s", tenths / 10)
    } else {
        format!("{}.{} s", tenths / 10, tenths % 10)
    }
}

/// Adds `Retry-After` (whole seconds, at least 1) to a 429 answer.
pub fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// A cookie keygatectl sets: HttpOnly, SameSite=Strict, on `path`; `Secure` when the page is
/// served over TLS. `max_age` 0 deletes it.
pub fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
    secure: bool,
) -> HeaderValue {
    let cookie = Cookie::build((name.to_string(), value.to_string()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path(path.to_string())
        .max_age(time_duration(max_age))
        .secure(secure)
        .build();
    // Names are constants and values hex: always a valid header value.
    HeaderValue::from_str(&cookie.encoded().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn time_duration(seconds: u64) -> cookie::time::Duration {
    cookie::time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// The value of cookie `name` in the request, if any and not empty.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let jar = axum_extra::extract::CookieJar::from_headers(headers);
    jar.get(name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
}

/// The double-submit token of a form used signed out (sign-in, sign-up, reset): the one the
/// browser already holds in cookie `name`, or a new one to set. Answers the token and the
/// `Set-Cookie` to send, if a new one was made.
pub fn form_token(
    headers: &HeaderMap,
    name: &str,
    path: &str,
    secure: bool,
) -> Result<(String, Option<HeaderValue>), RandomError> {
    match cookie_value(headers, name).filter(|v| v.len() == 64) {
        Some(token) => Ok((token, None)),
        None => {
            let token = random_token()?;
            let set = cookie_header(name, &token, path, 3600, secure);
            Ok((token, Some(set)))
        }
    }
}

/// True when the form's `csrf` field matches the double-submit cookie `name`.
pub fn form_token_ok(headers: &HeaderMap, name: &str, presented: &str) -> bool {
    match cookie_value(headers, name) {
        Some(expected) => !presented.is_empty() && secrets_match(presented, &expected),
        None => false,
    }
}

/// The CSRF token of a session, derived from its id: the server stores neither, a page holds
/// only this one-way image of the id, and it dies with the session.
pub fn session_csrf(session_id: &str) -> String {
    Digest::of_key(&format!("keygate-csrf\0{session_id}")).to_hex()
}

/// True when a signed-in form's `csrf` field is its session's.
pub fn session_csrf_ok(session_id: &str, presented: &str) -> bool {
    !presented.is_empty() && secrets_match(presented, &session_csrf(session_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_counts_per_address_and_per_email() {
        let throttle = SignInThrottle::default();
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        assert_eq!(throttle.failed(a, Some("ann@example.com")).count, 1);
        // Another address, same email: the email's count goes on.
        let second = throttle.failed(b, Some("ann@example.com"));
        assert_eq!((second.count, second.delay), (2, Duration::from_secs(1)));
        assert!(
            throttle.check(b, Some("bob@example.com")).is_err(),
            "b waits for its own failure"
        );
        assert!(throttle
            .check("192.0.2.3".parse().expect("ip"), Some("ann@example.com"))
            .is_err());
        assert_eq!(
            throttle.check("192.0.2.3".parse().expect("ip"), Some("bob@example.com")),
            Ok(())
        );
        throttle.succeeded(b, Some("ann@example.com"));
        assert_eq!(throttle.check(b, Some("ann@example.com")), Ok(()));
    }

    #[test]
    fn cookies_are_http_only_strict_scoped_and_secure_over_tls() {
        let plain = cookie_header("keygate_account", "abc", "/", 28800, false);
        assert_eq!(
            plain.to_str().expect("ascii"),
            "keygate_account=abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"
        );
        let secure = cookie_header("keygate_account", "", "/", 0, true);
        let text = secure.to_str().expect("ascii");
        assert!(
            text.contains("; Secure") && text.contains("Max-Age=0"),
            "{text}"
        );
    }

    #[test]
    fn csrf_tokens_are_bound_and_compared_by_value() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("keygate_form=t0k; other=1"),
        );
        assert!(form_token_ok(&headers, "keygate_form", "t0k"));
        assert!(!form_token_ok(&headers, "keygate_form", "t0K"));
        assert!(!form_token_ok(&headers, "keygate_form", ""));
        assert!(!form_token_ok(&HeaderMap::new(), "keygate_form", "t0k"));
        let csrf = session_csrf("session-id");
        assert_eq!(csrf.len(), 64);
        assert_ne!(csrf, session_csrf("other-session"));
        assert!(session_csrf_ok("session-id", &csrf));
        assert!(!session_csrf_ok("other-session", &csrf));
        assert!(!session_csrf_ok("session-id", ""));
        assert_eq!(seconds_text(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds_text(Duration::from_secs(30)), "30 s");
    }
}
