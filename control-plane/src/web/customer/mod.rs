//! The customer's pages: sign up, confirm the email by its link, sign in, reset a forgotten
//! password, and Settings → Account with the account's four keys, each of which can be
//! rolled there. Sessions live in the store (by digest), so any replica knows them.
//!
//! Signed-out forms carry a double-submit CSRF token (`keygate_form` cookie); signed-in forms
//! carry the session's own (`signin::session_csrf`). Cross-site posts are refused outright.
//! No answer tells whether an email has an account: sign-up and reset say the same either
//! way, and sign-in says "wrong email or password".

// Helpers answer `Result<_, Response>`: the error is the page to send, built once.
#![allow(clippy::result_large_err)]

mod forms;
#[cfg(test)]
mod http_tests;
mod login;
mod settings;
mod signup;

use super::flash::Flash;
use super::signin::{cookie_header, cookie_value, session_csrf, SignInThrottle};
use super::{forwarded_https, see_other};
use crate::api::AppState;
use crate::clock::now_unix;
use crate::customers::password::Hasher;
use crate::customers::SESSION_TTL_SECONDS;
use crate::log::log_event;
use crate::mail::{Mail, Mailer};
use crate::service::{Service, ServiceError, ServiceResult};
use crate::store::customers::SessionOwner;
use crate::store::Actor;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use forms::message_page;
use keygate_core::digest::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "keygate_account_session";
/// The signed-out forms' double-submit CSRF cookie.
pub const FORM_COOKIE: &str = "keygate_form";
const COOKIE_PATH: &str = "/";

/// How the customer pages are set up (`serve`'s flags).
pub struct CustomerOptions {
    /// Where links in mails point: `--public-url`, else the address the server listens on.
    pub public_url: String,
    /// `None`: no mail set up; sign-up and password reset are then unavailable.
    pub mailer: Option<Mailer>,
    /// Mark cookies `Secure` (an `https://` public URL, or KEYGATE_SECURE_COOKIES).
    pub secure_cookies: bool,
}

/// What the customer pages' handlers share.
pub struct CustomerWeb {
    app: Arc<AppState>,
    options: CustomerOptions,
    hasher: Hasher,
    throttle: SignInThrottle,
    flash: Flash,
    /// Mails to one address an hour.
    quota: Quota,
    /// Sign-ups from one client address (IPv4 address, IPv6 /64) an hour.
    signups: Quota,
}

pub fn router(app: Arc<AppState>, options: CustomerOptions) -> (Router, Arc<CustomerWeb>) {
    let web = Arc::new(CustomerWeb {
        app,
        options,
        hasher: Hasher::default(),
        throttle: SignInThrottle::default(),
        flash: Flash::default(),
        quota: Quota::new(MAIL_QUOTA),
        signups: Quota::new(SIGNUP_QUOTA),
    });
    let router = Router::new()
        .route("/", get(root))
        .route("/signup", get(signup::signup_page).post(signup::signup))
        .route("/verify", get(signup::verify_page).post(signup::verify))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/logout-everywhere", post(login::logout_everywhere))
        .route("/forgot", get(login::forgot_page).post(login::forgot))
        .route("/reset", get(login::reset_page).post(login::reset))
        .route("/settings", get(settings::settings_root))
        .route("/settings/account", get(settings::account_page))
        .route(
            "/settings/account/keys/{key_id}/roll",
            post(settings::roll_key),
        )
        .route(
            "/settings/account/keys/{key_id}/rename",
            post(settings::rename_key),
        )
        .route(
            "/settings/account/keys/{key_id}/revoke",
            post(settings::revoke_key),
        )
        .with_state(Arc::clone(&web));
    (router, web)
}

type WebState = axum::extract::State<Arc<CustomerWeb>>;

async fn root(axum::extract::State(web): WebState, headers: HeaderMap) -> Response {
    match web.signed_in(&headers).await {
        Ok(Some(_)) => see_other("/settings/account"),
        _ => see_other("/login"),
    }
}

/// A signed-in request's session.
pub struct Signed {
    /// The session id's digest: how the store and the flash know it.
    pub id: Digest,
    pub csrf: String,
    pub owner: SessionOwner,
}

impl CustomerWeb {
    fn secure(&self, headers: &HeaderMap) -> bool {
        self.options.secure_cookies || forwarded_https(headers)
    }

    fn service(&self) -> &Service {
        self.app.service()
    }

    /// Runs store work on the blocking pool; after a change that touches keys the key map's
    /// in-memory status is refreshed at once, so the filters' next poll sees it.
    async fn run<T, F>(self: &Arc<Self>, changes_keys: bool, work: F) -> Result<T, Response>
    where
        T: Send + 'static,
        F: FnOnce(&Service, u64) -> ServiceResult<T> + Send + 'static,
    {
        let web = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let result = work(web.service(), now_unix());
            if changes_keys && result.is_ok() {
                web.app.refresh_key_map_status();
            }
            result
        })
        .await;
        match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(internal(&e)),
            Err(e) => Err(internal_text(&format!("a store task failed: {e}"))),
        }
    }

    /// The live session the request's cookie names.
    async fn signed_in(self: &Arc<Self>, headers: &HeaderMap) -> Result<Option<Signed>, Response> {
        let Some(value) = cookie_value(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let id = Digest::of_key(&value);
        let owner = self
            .run(false, move |service, now| {
                Ok(service.store().session(&id, now)?)
            })
            .await?;
        Ok(owner.map(|owner| Signed {
            id,
            csrf: session_csrf(&value),
            owner,
        }))
    }

    /// Opens a session for `user_id`: the cookie to set, and the session's digest.
    /// A sign-in: audited as the user, from `client`.
    async fn open_session(
        self: &Arc<Self>,
        headers: &HeaderMap,
        user_id: String,
        client: std::net::IpAddr,
    ) -> Result<(axum::http::HeaderValue, Digest), Response> {
        let value = super::random_token().map_err(|e| internal_text(&e.to_string()))?;
        let id = Digest::of_key(&value);
        self.run(false, move |service, now| {
            let actor = Actor::customer(&user_id, client);
            Ok(service.store().add_session(
                &id,
                &user_id,
                now,
                now + SESSION_TTL_SECONDS,
                &actor,
            )?)
        })
        .await?;
        let cookie = cookie_header(
            SESSION_COOKIE,
            &value,
            COOKIE_PATH,
            SESSION_TTL_SECONDS,
            self.secure(headers),
        );
        Ok((cookie, id))
    }

    fn clear_session_cookie(&self, headers: &HeaderMap) -> axum::http::HeaderValue {
        cookie_header(SESSION_COOKIE, "", COOKIE_PATH, 0, self.secure(headers))
    }

    /// Sends a mail unless its address has had too many lately (the answer is the same).
    fn mail(&self, mail: Mail) {
        let Some(mailer) = &self.options.mailer else {
            return;
        };
        if self.quota.take(&mail.to) {
            mailer.send(mail);
        } else {
            log_event(&format!(
                "mail \"{}\" to {} not sent: {MAIL_QUOTA} mails to that address in the last hour",
                mail.subject,
                crate::customers::email::mask_email(&mail.to)
            ));
        }
    }
}

fn internal(e: &ServiceError) -> Response {
    internal_text(&e.to_string())
}

fn internal_text(detail: &str) -> Response {
    log_event(&format!("internal error (customer page): {detail}"));
    message_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        forms::Note::Error("Internal error: nothing was changed. Try again in a moment.".into()),
        None,
    )
}

/// Mails to one address in an hour, at most: sign-up and reset forms cannot be used to flood
/// someone's mailbox.
pub const MAIL_QUOTA: usize = 5;
/// Sign-ups from one client address in an hour, at most: the pending sign-ups table cannot be
/// filled from one place.
pub const SIGNUP_QUOTA: usize = 20;
const QUOTA_WINDOW: Duration = Duration::from_secs(3600);
/// Keys tracked at most (oldest windows go first).
const MAX_TRACKED: usize = 10_000;

/// At most `limit` uses a key an hour.
struct Quota {
    limit: usize,
    sent: Mutex<HashMap<Digest, (Instant, usize)>>,
}

impl Quota {
    fn new(limit: usize) -> Quota {
        Quota {
            limit,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// True (and counted) while `address` is under its quota.
    fn take(&self, address: &str) -> bool {
        let key = Digest::of_key(address);
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() >= MAX_TRACKED && !sent.contains_key(&key) {
            sent.retain(|_, (since, _)| now.duration_since(*since) < QUOTA_WINDOW);
            while sent.len() >= MAX_TRACKED {
                let oldest = sent.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k);
                match oldest {
                    Some(k) => sent.remove(&k),
                    None => break,
                };
            }
        }
        let entry = sent.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= QUOTA_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_a_few_mails_an_hour() {
        let quota = Quota::new(MAIL_QUOTA);
        for _ in 0..MAIL_QUOTA {
            assert!(quota.take("ann@example.com"));
        }
        assert!(!quota.take("ann@example.com"));
        assert!(quota.take("bob@example.com"));
    }
}
