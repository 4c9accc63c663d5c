//! The customer pages over HTTP, in process (`tower::ServiceExt::oneshot` on the real router
//! and a real SQLite store; mail goes to an outbox directory and is read back). Mostly the
//! refusals: each must be a clear answer that changes nothing. The whole journey in a real
//! browser, with real SMTP and Envoy, is in tests/browser/.

use super::CustomerOptions;
use crate::api::AppState;
use crate::keymap::KeyMapCache;
use crate::mail::{MailRoute, Mailer};
use crate::service::Service;
use crate::store::customers::Signup;
use crate::store::{SqliteStore, Store};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use keygate_core::digest::Digest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const PASSWORD: &str = "plum-tractor-velvet-42-orbit";
const NEW_PASSWORD: &str = "granite-lantern-oboe-77-fjord";

struct Site {
    _dir: tempfile::TempDir,
    db: PathBuf,
    outbox: PathBuf,
    store: Arc<dyn Store>,
    router: Router,
    /// The pages' shared state: tests put a failed attempt in progress into its throttle.
    web: Arc<super::CustomerWeb>,
}

fn site_with(public_url: &str) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keygate.db");
    let outbox = dir.path().join("outbox");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).expect("store"));
    let keymap = KeyMapCache::new(store.key_map_status().expect("status"));
    let app = Arc::new(AppState::new(
        Service::new(Arc::clone(&store)),
        Some(Digest::of_key("admin-token-0123456789")),
        crate::api::KeyMapAccess::Open,
        keymap,
    ));
    let mailer = Mailer::start(
        &MailRoute::Outbox(outbox.clone()),
        "keygate <keygate@localhost>",
    )
    .expect("mailer");
    let (router, web) = crate::web::router_parts(
        app,
        CustomerOptions {
            public_url: public_url.into(),
            mailer: Some(mailer),
            secure_cookies: public_url.starts_with("https://"),
        },
    );
    Site {
        _dir: dir,
        db,
        outbox,
        store,
        router,
        web,
    }
}

fn site() -> Site {
    site_with("http://127.0.0.1:8080")
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    set_cookies: Vec<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn csrf(&self) -> String {
        self.body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF field")
            .to_string()
    }

    fn shown_keys(&self) -> Vec<String> {
        self.body
            .split("<code class=\"secret\"")
            .skip(1)
            .filter_map(|rest| rest.split("</code>").next())
            .map(|s| s.rsplit('>').next().unwrap_or("").to_string())
            .collect()
    }
}

/// A browser: keeps cookies, sends forms, comes from one address.
struct Browser<'s> {
    site: &'s Site,
    cookies: HashMap<String, String>,
    ip: SocketAddr,
    extra: Vec<(&'static str, String)>,
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl<'s> Browser<'s> {
    fn new(site: &'s Site) -> Browser<'s> {
        Browser::from(site, "192.0.2.10:5000")
    }

    fn from(site: &'s Site, ip: &str) -> Browser<'s> {
        Browser {
            site,
            cookies: HashMap::new(),
            ip: ip.parse().expect("address"),
            extra: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            request = request.header(header::COOKIE, jar.join("; "));
        }
        for (name, value) in &self.extra {
            request = request.header(*name, value.as_str());
        }
        if body.is_some() && !self.extra.iter().any(|(n, _)| *n == "content-type") {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let mut request = request
            .body(Body::from(body.unwrap_or_default()))
            .expect("request");
        request.extensions_mut().insert(ConnectInfo(self.ip));
        let response = self
            .site
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("answer");
        let headers = response.headers().clone();
        let text = |name: header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let set_cookies: Vec<String> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect();
        for cookie in &set_cookies {
            let pair = cookie.split(';').next().unwrap_or("");
            let (name, value) = pair.split_once('=').expect("name=value");
            if cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        Answer {
            status,
            location: text(header::LOCATION),
            set_cookies,
            retry_after: text(header::RETRY_AFTER),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let body = fields
            .iter()
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send("POST", path, Some(body)).await
    }

    /// Opens the form at `page` and posts `fields` with its CSRF token.
    async fn fill(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Answer {
        let form = self.get(page).await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let csrf = form.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    async fn sign_up(&mut self, email: &str, password: &str) -> Answer {
        self.fill(
            "/signup",
            "/signup",
            &[("email", email), ("password", password)],
        )
        .await
    }

    async fn sign_in(&mut self, email: &str, password: &str) -> Answer {
        self.fill(
            "/login",
            "/login",
            &[("email", email), ("password", password)],
        )
        .await
    }

    /// Signs up, opens the mailed link and confirms: signed in, on Settings → Account.
    async fn new_customer(&mut self, email: &str) -> Answer {
        let sent = self.sign_up(email, PASSWORD).await;
        assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
        let token = wait_for_link(&self.site.outbox, email, "verify").await;
        let page = format!("/verify?token={token}");
        let done = self
            .fill(
                &page,
                "/verify",
                &[("token", &token), ("password", PASSWORD)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        assert_eq!(done.location.as_deref(), Some("/settings/account"));
        let settings = self.get("/settings/account").await;
        assert_eq!(settings.status, StatusCode::OK);
        settings
    }

    async fn csrf(&mut self) -> String {
        self.get("/settings/account").await.csrf()
    }
}

/// The mails written to the outbox so far, decoded (quoted-printable undone).
fn mails(outbox: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(outbox) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|raw| {
            let joined = raw.replace("=\r\n", "").replace("=\n", "");
            let mut out = String::new();
            let mut rest = joined.as_str();
            while let Some(i) = rest.find('=') {
                out.push_str(&rest[..i]);
                match u8::from_str_radix(rest.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b as char);
                        rest = &rest[i + 3..];
                    }
                    Err(_) => {
                        out.push('=');
                        rest = &rest[i + 1..];
                    }
                }
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// Waits (up to 10 s) for a mail to `email` holding a `/{kind}?token=` link; its token.
async fn wait_for_link(outbox: &std::path::Path, email: &str, kind: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = format!("/{kind}?token=");
    loop {
        let found = mails(outbox).into_iter().find_map(|m| {
            if !m.contains(&format!("To: {email}")) {
                return None;
            }
            let at = m.find(&needle)? + needle.len();
            let token = m.get(at..at + 64)?;
            Some(token.to_string())
        });
        if let Some(token) = found {
            return token;
        }
        assert!(Instant::now() < deadline, "no {kind} mail to {email}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_mail(outbox: &std::path::Path, email: &str, subject: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = mails(outbox)
            .into_iter()
            .find(|m| m.contains(&format!("To: {email}")) && m.contains(subject))
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no mail \"{subject}\" to {email}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 35 s: the longest delay) until `ip` and `email` may try again.
async fn wait_until_open(site: &Site, ip: SocketAddr, email: &str) {
    let deadline = Instant::now() + Duration::from_secs(35);
    while let Err(wait) = site.web.throttle.check(ip.ip(), Some(email)) {
        assert!(Instant::now() < deadline, "still throttled");
        tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_refuses_bad_input_clearly_and_stores_nothing() {
    let site = site();
    let mut browser = Browser::new(&site);
    let form = browser.get("/signup").await;
    let csrf = form.csrf();
    type Case = (Vec<(&'static str, String)>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("email", "ann@example.com".into()),
                ("password", PASSWORD.into()),
            ],
            StatusCode::FORBIDDEN,
            "CSRF token is missing or wrong",
        ),
        (
            vec![
                ("csrf", "0".repeat(64)),
                ("email", "ann@example.com".into()),
                ("password", PASSWORD.into()),
            ],
            StatusCode::FORBIDDEN,
            "CSRF token is missing or wrong",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", "not-an-address".into()),
                ("password", PASSWORD.into()),
            ],
            StatusCode::BAD_REQUEST,
            "does not look like an email address",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", format!("{}@example.com", "a".repeat(300))),
                ("password", PASSWORD.into()),
            ],
            StatusCode::BAD_REQUEST,
            "email address is too long",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", "ann@example.com".into()),
                ("password", "password123".into()),
            ],
            StatusCode::BAD_REQUEST,
            "too easy to guess",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", "ann@example.com".into()),
                ("password", "short".into()),
            ],
            StatusCode::BAD_REQUEST,
            "too short",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", "ann@example.com".into()),
                ("password", "x".repeat(300)),
            ],
            StatusCode::BAD_REQUEST,
            "too long",
        ),
        (
            vec![
                ("csrf", csrf.clone()),
                ("email", "ann@example.com".into()),
                ("password", String::new()),
            ],
            StatusCode::BAD_REQUEST,
            "Enter a password",
        ),
    ];
    for (fields, status, message) in cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let answer = browser.post("/signup", &fields).await;
        assert_eq!(answer.status, status, "{fields:?}: {}", answer.body);
        assert!(answer.body.contains(message), "{message}: {}", answer.body);
    }
    // Markup typed into the form comes back as text.
    let answer = browser
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("email", "<script>x</script>@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(!answer.body.contains("<script>x") && answer.body.contains("&lt;script&gt;x"));
    // A body that is not a form, and one that is too large.
    browser.extra = vec![("content-type", "application/json".into())];
    let answer = browser
        .send("POST", "/signup", Some("{\"email\":1}".into()))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert!(answer.body.contains("could not be read"));
    browser.extra.clear();
    let answer = browser
        .send(
            "POST",
            "/signup",
            Some(format!("csrf={csrf}&email={}", "a".repeat(20_000))),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.body
    );
    // Posted from another site: refused, whatever the token.
    browser.extra = vec![("sec-fetch-site", "cross-site".into())];
    let answer = browser
        .post(
            "/signup",
            &[
                ("csrf", &csrf),
                ("email", "ann@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.body.contains("sent from another site"));
    // Nothing stored, nothing mailed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(mails(&site.outbox).is_empty());
    assert!(site.store.users(None).expect("users").is_empty());
    let db = std::fs::read(&site.db).expect("db");
    assert!(!contains(&db, "ann@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_up_with_a_taken_email_answers_alike_and_mails_its_owner() {
    let site = site();
    let mut ann = Browser::new(&site);
    ann.new_customer("ann@example.com").await;
    let mut someone = Browser::from(&site, "192.0.2.99:1");
    let again = someone.sign_up("Ann@Example.com", NEW_PASSWORD).await;
    let mut fresh = Browser::from(&site, "192.0.2.98:1");
    let new = fresh.sign_up("bob@example.com", NEW_PASSWORD).await;
    assert_eq!(again.status, new.status);
    let strip = |body: &str, email: &str| body.replace(email, "EMAIL");
    assert_eq!(
        strip(&again.body, "ann@example.com"),
        strip(&new.body, "bob@example.com")
    );
    let mail = wait_for_mail(
        &site.outbox,
        "ann@example.com",
        "You already have an account",
    )
    .await;
    assert!(mail.contains("Nothing was changed") && !mail.contains("token="));
    // Ann's password is unchanged and still works.
    let mut check = Browser::from(&site, "192.0.2.97:1");
    assert_eq!(
        check.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(site.store.users(None).expect("users").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_links_are_single_use_expire_and_need_the_password() {
    let site = site();
    let mut ann = Browser::new(&site);
    assert_eq!(
        ann.sign_up("ann@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
    let token = wait_for_link(&site.outbox, "ann@example.com", "verify").await;
    // Malformed and unknown links.
    let bad = ann.get("/verify?token=abc").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("malformed"));
    let unknown = ann.get(&format!("/verify?token={}", "a".repeat(64))).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("not valid"));
    assert_eq!(ann.get("/verify").await.status, StatusCode::BAD_REQUEST);
    // The link's page needs the password: a wrong one is refused, and slows the next.
    let page = format!("/verify?token={token}");
    let wrong = ann
        .fill(
            &page,
            "/verify",
            &[("token", &token), ("password", "wrong-password-123")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    assert!(wrong.body.contains("Wrong password"));
    // While another failed attempt's wait runs, the right password is refused unchecked.
    let failure = site
        .web
        .throttle
        .failed(ann.ip.ip(), Some("ann@example.com"));
    assert_eq!(failure.count, 2);
    let locked = ann
        .fill(
            &page,
            "/verify",
            &[("token", &token), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert!(locked.retry_after.is_some());
    assert!(locked.body.contains("Too many wrong passwords"));
    assert!(
        site.store.users(None).expect("users").is_empty(),
        "nothing created yet"
    );
    // Once the wait is over, the right password confirms it; the link is then spent.
    wait_until_open(&site, ann.ip, "ann@example.com").await;
    let done = ann
        .fill(
            &page,
            "/verify",
            &[("token", &token), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let settings = ann.get("/settings/account").await;
    assert_eq!(settings.shown_keys().len(), 4, "the four keys, shown once");
    let used = ann.get(&page).await;
    assert_eq!(used.status, StatusCode::GONE);
    assert!(used.body.contains("already used"));
    let csrf = ann.get("/signup").await.csrf();
    let replay = ann
        .post(
            "/verify",
            &[("csrf", &csrf), ("token", &token), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(replay.status, StatusCode::GONE);
    assert_eq!(
        site.store.accounts().expect("accounts").len(),
        1,
        "one account"
    );
    // An expired link.
    let old = "b".repeat(64);
    site.store
        .add_signup(
            &Digest::of_key(&old),
            &Signup {
                email: "old@example.com".into(),
                password_hash: crate::customers::password::hash_now(PASSWORD).expect("hash"),
                created_at: 1,
                expires_at: 2,
                used_at: None,
            },
        )
        .expect("signup");
    let expired = ann.get(&format!("/verify?token={old}")).await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.body.contains("expired"));
    let replay = ann
        .post(
            "/verify",
            &[("csrf", &csrf), ("token", &old), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(replay.status, StatusCode::GONE);
    assert!(site
        .store
        .user_by_email("old@example.com")
        .expect("read")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_generic_throttled_and_sets_a_strict_http_only_cookie() {
    let site = site();
    Browser::new(&site).new_customer("ann@example.com").await;
    let mut browser = Browser::from(&site, "192.0.2.20:1");
    let wrong = browser.sign_in("ann@example.com", "not-her-password").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("Wrong email or password"));
    // While a failed attempt's wait runs (here one in progress from elsewhere), attempts are
    // refused unchecked, even with the right password.
    site.web
        .throttle
        .failed("192.0.2.99".parse().expect("ip"), Some("ann@example.com"));
    let locked = browser.sign_in("ann@example.com", PASSWORD).await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    let wait: u64 = locked
        .retry_after
        .as_deref()
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&wait));
    assert!(locked
        .set_cookies
        .iter()
        .all(|c| !c.starts_with("keygate_account_session=")));
    // From another address the email is still throttled (per email, not only per address).
    let mut elsewhere = Browser::from(&site, "192.0.2.21:1");
    assert_eq!(
        elsewhere.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An unknown email gets the very same answer as a wrong password.
    let mut other = Browser::from(&site, "192.0.2.22:1");
    let unknown = other
        .sign_in("nobody@example.com", "not-her-password")
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let cut = |body: &str| {
        body.split("<main")
            .nth(1)
            .unwrap_or("")
            .replace("nobody@example.com", "ann@example.com")
    };
    let strip_csrf = |body: String| {
        body.split("name=\"csrf\"").next().unwrap_or("").to_string()
            + body.split("</form>").nth(1).unwrap_or("")
    };
    assert_eq!(strip_csrf(cut(&unknown.body)), strip_csrf(cut(&wrong.body)));
    // Growing delays: after the wait, the next failure waits longer (the email's third).
    wait_until_open(&site, browser.ip, "ann@example.com").await;
    let third = browser.sign_in("ann@example.com", "still-not-it-123").await;
    assert_eq!(third.status, StatusCode::UNAUTHORIZED);
    assert!(third.body.contains("this one waited 2 s"), "{}", third.body);
    wait_until_open(&site, browser.ip, "ann@example.com").await;
    let ok = browser.sign_in("ann@example.com", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let cookie = ok
        .set_cookies
        .iter()
        .find(|c| c.starts_with("keygate_account_session="))
        .expect("session cookie");
    assert!(
        cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"),
        "{cookie}"
    );
    let value = cookie
        .split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v)
        .expect("value");
    // The store knows the session by its digest only.
    let db = std::fs::read(&site.db).expect("db");
    assert!(!contains(&db, value));
    assert!(site
        .store
        .session(&Digest::of_key(value), crate::clock::now_unix())
        .expect("read")
        .is_some());
    // Missing CSRF on the sign-in form.
    let mut fresh = Browser::from(&site, "192.0.2.23:1");
    let refused = fresh
        .post(
            "/login",
            &[("email", "ann@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused
        .set_cookies
        .iter()
        .all(|c| !c.starts_with("keygate_account_session=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_are_secure_behind_tls() {
    let site = site_with("https://keys.example.com");
    let mut browser = Browser::new(&site);
    let form = browser.get("/login").await;
    assert!(
        form.set_cookies.iter().all(|c| c.contains("; Secure")),
        "{:?}",
        form.set_cookies
    );
    let plain = self::site();
    let mut proxied = Browser::new(&plain);
    proxied.extra = vec![("x-forwarded-proto", "https".into())];
    let form = proxied.get("/login").await;
    assert!(
        form.set_cookies.iter().all(|c| c.contains("; Secure")),
        "{:?}",
        form.set_cookies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_key_is_not_found_and_nothing_changes() {
    let site = site();
    let mut ann = Browser::new(&site);
    ann.new_customer("ann@example.com").await;
    let mut bob = Browser::from(&site, "192.0.2.30:1");
    bob.new_customer("bob@example.com").await;
    let bob_user = site
        .store
        .user_by_email("bob@example.com")
        .expect("read")
        .expect("bob");
    let bob_keys = site.store.keys(Some(&bob_user.account_id)).expect("keys");
    let version = site.store.key_map_status().expect("status").version;
    let csrf = ann.csrf().await;
    for key in &bob_keys {
        let answer = ann
            .post(
                &format!("/settings/account/keys/{}/roll", key.key_id),
                &[("csrf", &csrf), ("grace", "0")],
            )
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
        assert!(answer.body.contains("no such key in your account"));
    }
    // Made-up, malformed and over-long ids alike.
    for id in ["key_nope", "%00%ff", &"k".repeat(5000), "..%2F..%2Fetc"] {
        let answer = ann
            .post(
                &format!("/settings/account/keys/{id}/roll"),
                &[("csrf", &csrf), ("grace", "0")],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{id}: {}",
            answer.body
        );
    }
    assert_eq!(
        site.store.keys(Some(&bob_user.account_id)).expect("keys"),
        bob_keys
    );
    assert_eq!(
        site.store.key_map_status().expect("status").version,
        version
    );
    // Ann's page shows her keys only.
    let page = ann.get("/settings/account").await;
    for key in &bob_keys {
        assert!(!page.body.contains(&key.key_id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_needs_csrf_and_a_listed_grace_and_shows_the_new_key_once() {
    let site = site();
    let mut ann = Browser::new(&site);
    let first = ann.new_customer("ann@example.com").await;
    let shown = first.shown_keys();
    assert_eq!(shown.len(), 4);
    assert!(
        ann.get("/settings/account").await.shown_keys().is_empty(),
        "shown once"
    );
    let user = site
        .store
        .user_by_email("ann@example.com")
        .expect("read")
        .expect("ann");
    let keys = site.store.keys(Some(&user.account_id)).expect("keys");
    let sk_test = keys
        .iter()
        .find(|k| k.hint.starts_with("sk_test_"))
        .expect("sk_test");
    let path = format!("/settings/account/keys/{}/roll", sk_test.key_id);
    let csrf = ann.csrf().await;
    let mut other = Browser::from(&site, "192.0.2.40:1");
    other.new_customer("bob@example.com").await;
    let other_csrf = other.csrf().await;
    for token in ["", "0000", other_csrf.as_str()] {
        let answer = ann.post(&path, &[("csrf", token), ("grace", "0")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{token:?}");
        assert!(answer.body.contains("CSRF token is missing or wrong"));
    }
    ann.extra = vec![
        ("origin", "http://evil.example".into()),
        ("host", "127.0.0.1:8080".into()),
    ];
    assert_eq!(
        ann.post(&path, &[("csrf", &csrf), ("grace", "0")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    ann.extra.clear();
    for grace in ["5", "", "-1", "99999999999999999999999"] {
        let answer = ann.post(&path, &[("csrf", &csrf), ("grace", grace)]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{grace:?}");
    }
    assert_eq!(
        site.store.key(&sk_test.key_id).expect("key"),
        *sk_test,
        "nothing changed"
    );
    // Signed out, the roll leads to sign-in.
    let mut stranger = Browser::from(&site, "192.0.2.41:1");
    assert_eq!(
        stranger
            .post(&path, &[("csrf", &csrf), ("grace", "0")])
            .await
            .location
            .as_deref(),
        Some("/login?m=expired")
    );
    // With everything right: rolled with a day's grace; the new key is shown once.
    let rolled = ann
        .post(&path, &[("csrf", &csrf), ("grace", "86400")])
        .await;
    assert_eq!(rolled.status, StatusCode::SEE_OTHER, "{}", rolled.body);
    let page = ann.get("/settings/account").await;
    let new = page.shown_keys();
    assert_eq!(new.len(), 1);
    assert!(new[0].starts_with("sk_test_") && !shown.contains(&new[0]));
    assert!(page.body.contains("keeps working until"));
    assert!(page.body.contains("expiring at"));
    assert!(ann.get("/settings/account").await.shown_keys().is_empty());
    // Rolling it again is refused with a reason, and changes nothing.
    let again = ann.post(&path, &[("csrf", &csrf), ("grace", "0")]).await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert!(ann
        .get("/settings/account")
        .await
        .body
        .contains("already rolled"));
    // No plaintext key anywhere in the database.
    let mut db = std::fs::read(&site.db).expect("db");
    db.extend(std::fs::read(site.db.with_extension("db-wal")).unwrap_or_default());
    for key in shown.iter().chain(&new) {
        assert!(!contains(&db, key), "a plaintext key is in the database");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_and_sign_out_everywhere_end_sessions() {
    let site = site();
    let mut laptop = Browser::new(&site);
    laptop.new_customer("ann@example.com").await;
    let mut phone = Browser::from(&site, "192.0.2.50:1");
    assert_eq!(
        phone.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let mut tablet = Browser::from(&site, "192.0.2.51:1");
    assert_eq!(
        tablet.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    // Sign-out needs the session's CSRF token.
    assert_eq!(
        tablet.post("/logout", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    let csrf = tablet.csrf().await;
    let out = tablet.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.location.as_deref(), Some("/login?m=signed-out"));
    assert_eq!(
        tablet.get("/settings/account").await.location.as_deref(),
        Some("/login?m=expired")
    );
    assert_eq!(phone.get("/settings/account").await.status, StatusCode::OK);
    // Everywhere: the phone's session ends too.
    let csrf = laptop.csrf().await;
    let out = laptop.post("/logout-everywhere", &[("csrf", &csrf)]).await;
    assert_eq!(out.location.as_deref(), Some("/login?m=everywhere"));
    assert_eq!(
        phone.get("/settings/account").await.location.as_deref(),
        Some("/login?m=expired")
    );
    assert_eq!(
        laptop.get("/settings/account").await.location.as_deref(),
        Some("/login?m=expired")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_is_single_use_and_ends_every_session() {
    let site = site();
    let mut ann = Browser::new(&site);
    ann.new_customer("ann@example.com").await;
    // Unknown addresses get the same answer, and no mail.
    let mut someone = Browser::from(&site, "192.0.2.60:1");
    let unknown = someone
        .fill("/forgot", "/forgot", &[("email", "nobody@example.com")])
        .await;
    let known = someone
        .fill("/forgot", "/forgot", &[("email", "ann@example.com")])
        .await;
    assert_eq!(unknown.status, known.status);
    assert_eq!(
        unknown.body.replace("nobody@example.com", "X"),
        known.body.replace("ann@example.com", "X")
    );
    let malformed = someone
        .fill("/forgot", "/forgot", &[("email", "nope")])
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let token = wait_for_link(&site.outbox, "ann@example.com", "reset").await;
    assert!(!mails(&site.outbox)
        .iter()
        .any(|m| m.contains("To: nobody@example.com")));
    let page = format!("/reset?token={token}");
    // A weak new password: refused, nothing changed, the link still works.
    let weak = someone
        .fill(
            &page,
            "/reset",
            &[("token", &token), ("password", "password1234")],
        )
        .await;
    assert_eq!(weak.status, StatusCode::BAD_REQUEST);
    assert!(weak.body.contains("too easy to guess"));
    assert_eq!(ann.get("/settings/account").await.status, StatusCode::OK);
    let done = someone
        .fill(
            &page,
            "/reset",
            &[("token", &token), ("password", NEW_PASSWORD)],
        )
        .await;
    assert_eq!(
        done.location.as_deref(),
        Some("/login?m=password-changed"),
        "{}",
        done.body
    );
    // Every old session is gone; the old password no longer works, the new one does.
    assert_eq!(
        ann.get("/settings/account").await.location.as_deref(),
        Some("/login?m=expired")
    );
    let mut fresh = Browser::from(&site, "192.0.2.61:1");
    assert_eq!(
        fresh.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    wait_until_open(&site, fresh.ip, "ann@example.com").await;
    assert_eq!(
        fresh.sign_in("ann@example.com", NEW_PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    wait_for_mail(&site.outbox, "ann@example.com", "Your password was changed").await;
    // The link is spent.
    let used = someone.get(&page).await;
    assert_eq!(used.status, StatusCode::GONE);
    assert!(used.body.contains("already used"));
    assert_eq!(
        someone.get("/reset?token=zz").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_or_account_cannot_sign_in() {
    let site = site();
    let mut ann = Browser::new(&site);
    ann.new_customer("ann@example.com").await;
    let user = site
        .store
        .user_by_email("ann@example.com")
        .expect("read")
        .expect("ann");
    site.store
        .set_user_disabled(&user.id, true, crate::clock::now_unix())
        .expect("disable");
    assert_eq!(
        ann.get("/settings/account").await.location.as_deref(),
        Some("/login?m=expired")
    );
    let refused = ann.sign_in("ann@example.com", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.body.contains("disabled by the operator"));
    site.store
        .set_user_disabled(&user.id, false, crate::clock::now_unix())
        .expect("enable");
    site.store
        .set_account_disabled(&user.account_id, true, crate::clock::now_unix())
        .expect("disable");
    assert_eq!(
        ann.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::FORBIDDEN
    );
    site.store
        .set_account_disabled(&user.account_id, false, crate::clock::now_unix())
        .expect("enable");
    assert_eq!(
        ann.sign_in("ann@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_and_mails_are_limited_per_hour() {
    let site = site();
    // One address gets at most MAIL_QUOTA mails an hour; the page says the same each time.
    let mut browser = Browser::from(&site, "192.0.2.70:1");
    for _ in 0..super::MAIL_QUOTA + 2 {
        let answer = browser.sign_up("flood@example.com", PASSWORD).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.contains("Check your inbox"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while mails(&site.outbox).len() < super::MAIL_QUOTA {
        assert!(Instant::now() < deadline, "mails not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (the mail thread has had every one of them: the dropped ones were never queued)
    assert_eq!(mails(&site.outbox).len(), super::MAIL_QUOTA);
    // One client network gets at most SIGNUP_QUOTA sign-ups an hour, then 429.
    let mut many = Browser::from(&site, "[2001:db8:1:2::1]:1");
    for i in 0..super::SIGNUP_QUOTA {
        let answer = many
            .sign_up(&format!("user{i}@example.com"), PASSWORD)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{i}");
    }
    // Another host of the same /64 shares the quota.
    let mut neighbour = Browser::from(&site, "[2001:db8:1:2::99]:1");
    let refused = neighbour.sign_up("late@example.com", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.retry_after.is_some());
    assert!(refused.body.contains("Too many sign-ups"));
    assert_eq!(
        Browser::from(&site, "192.0.2.71:1")
            .sign_up("fine@example.com", PASSWORD)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_refuses_a_missing_or_foreign_csrf_token_and_changes_nothing() {
    let site = site();
    let mut ann = Browser::from(&site, "192.0.2.80:1");
    ann.new_customer("csrf-ann@example.com").await;
    let mut bob = Browser::from(&site, "192.0.2.81:1");
    bob.new_customer("csrf-bob@example.com").await;
    let foreign = bob.csrf().await;
    let forms: [(&str, Vec<(&str, &str)>); 6] = [
        (
            "/login",
            vec![("email", "csrf-ann@example.com"), ("password", PASSWORD)],
        ),
        ("/verify", vec![("token", "0"), ("password", PASSWORD)]),
        ("/forgot", vec![("email", "csrf-ann@example.com")]),
        ("/reset", vec![("token", "0"), ("password", PASSWORD)]),
        ("/logout", vec![]),
        ("/logout-everywhere", vec![]),
    ];
    let sent_before = mails(&site.outbox).len();
    for (action, fields) in &forms {
        let zeros = "0".repeat(64);
        for token in [None, Some(""), Some(zeros.as_str()), Some(foreign.as_str())] {
            let mut all: Vec<(&str, &str)> = fields.clone();
            if let Some(token) = token {
                all.push(("csrf", token));
            }
            let answer = ann.post(action, &all).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{action} {token:?}");
            assert!(
                answer.body.contains("CSRF token is missing or wrong"),
                "{action}: {}",
                answer.body
            );
        }
    }
    // Still signed in (neither sign-out took), and no reset mail was sent.
    assert_eq!(ann.get("/settings/account").await.status, StatusCode::OK);
    assert_eq!(mails(&site.outbox).len(), sent_before);
}
