#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
//! The operator page (`/ui/`) of a real `keygatectl serve`, over plain HTTP: sign-in and its
//! throttle, session cookies, CSRF, security headers, and keys shown exactly once. The same
//! flows in a real browser are in tests/browser/.

mod common;

use common::{keygatectl, run, Api, Server, ADMIN_TOKEN};
use keygate_core::digest::Digest;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A cookie-keeping client that does not follow redirects, as a browser would send forms.
struct Browser<'s> {
    server: &'s Server,
    agent: ureq::Agent,
    cookies: HashMap<String, String>,
    /// Extra headers on every request (e.g. `Sec-Fetch-Site`).
    headers: Vec<(String, String)>,
}

struct Page {
    status: u16,
    location: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    elapsed: Duration,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn set_cookie(&self, name: &str) -> Option<&str> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The first hidden CSRF field's value.
    fn csrf(&self) -> String {
        between(&self.body, "name=\"csrf\" value=\"", "\"")
            .next()
            .expect("a CSRF field")
            .to_string()
    }

    /// The plaintext keys shown on the page.
    fn shown_keys(&self) -> Vec<String> {
        between(&self.body, "<code class=\"secret\"", "</code>")
            .map(|s| s.rsplit('>').next().unwrap_or("").to_string())
            .collect()
    }
}

fn between<'a>(text: &'a str, start: &'a str, end: &'a str) -> impl Iterator<Item = &'a str> {
    text.split(start)
        .skip(1)
        .filter_map(move |rest| rest.split(end).next())
}

impl<'s> Browser<'s> {
    fn new(server: &'s Server) -> Browser<'s> {
        Browser {
            server,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .max_redirects(0)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
            cookies: HashMap::new(),
            headers: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.server.url(path));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            request = request.header("cookie", jar.join("; "));
        }
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let body = match form {
            Some(fields) => {
                request = request.header("content-type", "application/x-www-form-urlencoded");
                fields
                    .iter()
                    .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
                    .collect::<Vec<_>>()
                    .join("&")
            }
            None => String::new(),
        };
        let start = Instant::now();
        let mut response = self
            .agent
            .run(request.body(body).expect("request"))
            .expect("HTTP exchange");
        let elapsed = start.elapsed();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let page = Page {
            status: response.status().as_u16(),
            location: response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: response.body_mut().read_to_string().unwrap_or_default(),
            headers,
            elapsed,
        };
        for cookie in page.set_cookies() {
            let pair = cookie.split(';').next().unwrap_or("");
            let (name, value) = pair.split_once('=').expect("name=value");
            if cookie.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        page
    }

    fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(form))
    }

    /// Opens the sign-in form and sends `token` with it.
    fn sign_in(&mut self, token: &str) -> Page {
        let form = self.get("/ui/login");
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        self.post("/ui/login", &[("csrf", &csrf), ("token", token)])
    }

    fn signed_in(server: &'s Server) -> Browser<'s> {
        let mut browser = Browser::new(server);
        let answer = browser.sign_in(ADMIN_TOKEN);
        assert_eq!(answer.status, 303, "{}", answer.body);
        assert_eq!(answer.location.as_deref(), Some("/ui/accounts"));
        browser
    }

    /// The session's CSRF token, read from a page.
    fn csrf(&mut self) -> String {
        let page = self.get("/ui/accounts");
        assert_eq!(page.status, 200);
        page.csrf()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn account_count(server: &Server) -> usize {
    let answer = Api::new(server).get("/v1/accounts");
    answer.body["accounts"].as_array().expect("accounts").len()
}

#[test]
fn signed_out_pages_lead_to_sign_in_and_carry_security_headers() {
    let server = Server::start();
    let mut browser = Browser::new(&server);
    // `/` is the customers' (it leads to their sign-in); the operator's page is `/ui/`.
    assert_eq!(browser.get("/").location.as_deref(), Some("/login"));
    assert_eq!(browser.get("/ui").location.as_deref(), Some("/ui/"));
    assert_eq!(browser.get("/ui/").location.as_deref(), Some("/ui/login"));
    for path in ["/ui/accounts", "/ui/accounts/acct_x"] {
        let page = browser.get(path);
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/ui/login?m=expired"));
    }
    let login = browser.get("/ui/login");
    assert_eq!(login.status, 200);
    assert_eq!(
        login.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = login.header("content-security-policy").expect("CSP");
    assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(login.header("cache-control"), Some("no-store"));
    assert_eq!(login.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(login.header("x-frame-options"), Some("DENY"));
    assert!(login
        .body
        .contains("<label for=\"token\">Admin token</label>"));
    assert!(!login.body.contains("<script>") && !login.body.contains("style="));
    let cookie = login
        .set_cookie("keygate_login")
        .expect("login CSRF cookie");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=3600"));

    // Assets: linked by content hash, cached for good, nothing else needed.
    for (path, kind) in [
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
    ] {
        let asset = browser.get(path);
        assert_eq!(asset.status, 200);
        assert_eq!(asset.header("content-type"), Some(kind));
        assert!(asset
            .header("cache-control")
            .expect("cache")
            .contains("immutable"));
        assert!(login.body.contains(&format!("{path}?v=")));
        assert!(!asset.body.contains("http://") && !asset.body.contains("https://"));
    }
    let missing = browser.get("/ui/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("There is no such page."));
    // The API is as it was.
    let api = browser.get("/v1/nope");
    assert_eq!(api.status, 404);
    assert!(api.body.contains("\"not_found\""));
    assert_eq!(browser.get("/healthz").status, 200);
}

#[test]
fn sign_in_opens_a_strict_http_only_session_and_sign_out_ends_it() {
    let server = Server::start();
    let mut browser = Browser::new(&server);
    let answer = browser.sign_in(ADMIN_TOKEN);
    assert_eq!(answer.status, 303);
    let cookie = answer
        .set_cookie("keygate_session")
        .expect("session cookie");
    let value = cookie
        .split(';')
        .next()
        .and_then(|p| p.strip_prefix("keygate_session="))
        .expect("value");
    assert_eq!(value.len(), 64);
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        &cookie[cookie.find(';').expect("attributes")..],
        "; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=28800"
    );
    // The sign-in form's cookie is spent.
    assert!(answer
        .set_cookie("keygate_login")
        .expect("cleared")
        .contains("Max-Age=0"));
    let accounts = browser.get("/ui/accounts");
    assert_eq!(accounts.status, 200);
    assert!(accounts.body.contains("<h1>Accounts</h1>"));

    // Behind a TLS-terminating proxy the cookies are Secure.
    let mut proxied = Browser::new(&server);
    proxied
        .headers
        .push(("x-forwarded-proto".into(), "https".into()));
    let answer = proxied.sign_in(ADMIN_TOKEN);
    assert!(answer
        .set_cookie("keygate_session")
        .expect("cookie")
        .contains("; Secure"));

    // Signing out needs the CSRF token, then ends the session on the server.
    let stolen = browser.cookies.clone();
    let refused = browser.post("/ui/logout", &[]);
    assert_eq!(refused.status, 403);
    let csrf = browser.csrf();
    let out = browser.post("/ui/logout", &[("csrf", &csrf)]);
    assert_eq!(out.status, 303);
    assert_eq!(out.location.as_deref(), Some("/ui/login?m=signed-out"));
    assert!(out
        .set_cookie("keygate_session")
        .expect("cleared")
        .contains("Max-Age=0"));
    assert!(browser
        .get("/ui/login?m=signed-out")
        .body
        .contains("You are signed out."));
    let mut replay = Browser::new(&server);
    replay.cookies = stolen;
    assert_eq!(
        replay.get("/ui/accounts").location.as_deref(),
        Some("/ui/login?m=expired")
    );
    // Neither the token nor the session id reaches the log.
    let log = server.log();
    assert!(!log.contains(ADMIN_TOKEN) && !log.contains(value));
    assert!(log.contains("web sign-in from 127.0.0.1"));
}

#[test]
fn wrong_tokens_are_refused_clearly_and_each_failure_slows_the_next() {
    let server = Server::start();
    let mut browser = Browser::new(&server);
    let first = browser.sign_in("wrong-token-0123456789");
    assert_eq!(first.status, 401);
    assert!(first.body.contains("Wrong admin token"), "{}", first.body);
    assert!(first.body.contains("in a row: 1"));
    assert!(first.set_cookie("keygate_session").is_none());
    let second = browser.sign_in("wrong-token-0123456789");
    assert_eq!(second.status, 401);
    assert!(second.body.contains("in a row: 2"));
    assert!(
        first.elapsed >= Duration::from_millis(500),
        "{:?}",
        first.elapsed
    );
    assert!(
        second.elapsed >= Duration::from_secs(1),
        "{:?}",
        second.elapsed
    );

    // While a failed attempt's wait runs, attempts from the same address are refused
    // unchecked, even with the right token: guessing in parallel gains nothing.
    let csrf_page = browser.get("/ui/login");
    let csrf = csrf_page.csrf();
    let cookies = browser.cookies.clone();
    let third = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            let mut other = Browser::new(&server);
            other.sign_in("wrong-token-0123456789")
        });
        std::thread::sleep(Duration::from_millis(400));
        let mut parallel = Browser::new(&server);
        parallel.cookies = cookies;
        let locked = parallel.post("/ui/login", &[("csrf", &csrf), ("token", ADMIN_TOKEN)]);
        assert_eq!(locked.status, 429, "{}", locked.body);
        assert!(locked.body.contains("Too many failed sign-ins"));
        assert!(locked.header("retry-after").is_some());
        assert!(locked.elapsed < Duration::from_millis(500));
        slow.join().expect("thread")
    });
    assert_eq!(third.status, 401);
    assert!(third.body.contains("in a row: 3"));
    assert!(third.elapsed >= Duration::from_secs(2));

    // The right token afterwards: in, and the count starts again.
    let ok = browser.sign_in(ADMIN_TOKEN);
    assert_eq!(ok.status, 303);
    let mut again = Browser::new(&server);
    assert!(again
        .sign_in("wrong-token-0123456789")
        .body
        .contains("in a row: 1"));
    assert!(server.log().contains("web sign-in refused from 127.0.0.1"));
}

#[test]
fn every_form_needs_its_csrf_token_and_cross_site_posts_are_refused() {
    let server = Server::start();
    let mut browser = Browser::signed_in(&server);
    let csrf = browser.csrf();
    let mut other = Browser::signed_in(&server);
    let other_csrf = other.csrf();
    assert_ne!(csrf, other_csrf);

    let create = |b: &mut Browser, csrf: Option<&str>| {
        let mut form = vec![("name", "Acme")];
        if let Some(csrf) = csrf {
            form.push(("csrf", csrf));
        }
        b.post("/ui/accounts", &form)
    };
    for token in [
        None,
        Some(""),
        Some("0".repeat(64).as_str()),
        Some(other_csrf.as_str()),
    ] {
        let page = create(&mut browser, token);
        assert_eq!(page.status, 403, "{token:?}");
        assert!(page.body.contains("CSRF token is missing or wrong"));
    }
    // A form posted from another site, right token or not.
    for header in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        browser.headers = vec![(header.0.into(), header.1.into())];
        let page = create(&mut browser, Some(&csrf));
        assert_eq!(page.status, 403, "{header:?}");
        assert!(page.body.contains("sent from another site"));
    }
    browser.headers.clear();
    // Key actions too.
    let created = Api::new(&server).create_account(Some("Globex"));
    let key_id = created["keys"][0]["key_id"]
        .as_str()
        .expect("key id")
        .to_string();
    for action in ["roll", "revoke", "disable", "enable"] {
        let page = browser.post(&format!("/ui/keys/{key_id}/{action}"), &[("grace", "0")]);
        assert_eq!(page.status, 403, "{action}");
    }
    let keys = Api::new(&server).get(&format!(
        "/v1/keys?account_id={}",
        created["account"]["id"].as_str().expect("id")
    ));
    assert!(keys.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .all(|k| k["status"] == "active"));
    assert_eq!(account_count(&server), 1, "nothing was created");

    // The sign-in form's own token: a form without its cookie is refused.
    let mut fresh = Browser::new(&server);
    let form = fresh.get("/ui/login");
    fresh.cookies.clear();
    let page = fresh.post(
        "/ui/login",
        &[("csrf", &form.csrf()), ("token", ADMIN_TOKEN)],
    );
    assert_eq!(page.status, 403);
    assert!(page.set_cookie("keygate_session").is_none());

    // With its token the form works.
    let page = create(&mut browser, Some(&csrf));
    assert_eq!(page.status, 303);
    assert_eq!(account_count(&server), 2);
}

#[test]
fn a_new_key_is_shown_once_and_never_again() {
    let server = Server::start();
    let mut browser = Browser::signed_in(&server);
    let csrf = browser.csrf();
    let created = browser.post("/ui/accounts", &[("csrf", &csrf), ("name", "Acme & <Co>")]);
    assert_eq!(created.status, 303);
    let location = created.location.clone().expect("location");
    let account = location
        .strip_prefix("/ui/accounts/")
        .expect("account page");
    assert!(
        !created.body.contains("sk_"),
        "the POST answer carries no key"
    );

    let first = browser.get(&location);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert!(first.body.contains("will not be shown again"));
    assert!(first.body.contains("<h1>Acme &amp; &lt;Co&gt;</h1>"));
    let shown = first.shown_keys();
    assert_eq!(shown.len(), 4);
    let api = Api::new(&server);
    let stored = api.get(&format!("/v1/keys?account_id={account}")).body["keys"].clone();
    for key in &shown {
        let digest = Digest::of_key(key).to_hex();
        assert!(stored
            .as_array()
            .expect("keys")
            .iter()
            .any(|k| k["digest"] == digest.as_str()));
    }
    let again = browser.get(&location);
    assert!(again.shown_keys().is_empty());
    for key in &shown {
        assert!(!again.body.contains(key.as_str()));
    }

    // Roll with a 24-hour grace period: one new key, once; the old one expiring.
    let old = stored[0]["key_id"].as_str().expect("key id").to_string();
    let rolled = browser.post(
        &format!("/ui/keys/{old}/roll"),
        &[("csrf", &csrf), ("grace", "86400")],
    );
    assert_eq!(rolled.status, 303);
    assert!(rolled
        .location
        .as_deref()
        .expect("location")
        .starts_with(&location));
    let page = browser.get(&location);
    let new_keys = page.shown_keys();
    assert_eq!(new_keys.len(), 1);
    assert!(page.body.contains("expiring at"));
    let listed = api.get(&format!("/v1/keys?account_id={account}")).body["keys"].clone();
    let old_key = listed
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"] == old.as_str())
        .expect("old key")
        .clone();
    assert_eq!(old_key["status"], "expiring");
    assert_eq!(
        old_key["expires_at"].as_u64().expect("expires")
            - old_key["rolled_at"].as_u64().expect("rolled"),
        86_401,
        "24 h, plus the second that makes a grace at least what was asked"
    );
    assert!(browser.get(&location).shown_keys().is_empty());

    // A grace period that is not offered, or a second roll of the same key, changes nothing.
    let odd = browser.post(
        &format!("/ui/keys/{old}/roll"),
        &[("csrf", &csrf), ("grace", "5")],
    );
    assert_eq!(odd.status, 400);
    let twice = browser.post(
        &format!("/ui/keys/{old}/roll"),
        &[("csrf", &csrf), ("grace", "0")],
    );
    assert_eq!(twice.status, 303);
    let page = browser.get(&location);
    assert!(page.body.contains("already rolled"), "{}", page.body);
    assert!(page.shown_keys().is_empty());

    // Keys the page showed never reach the server's log or database file.
    let log = server.log();
    let db = std::fs::read(server.database()).expect("database");
    for key in shown.iter().chain(&new_keys) {
        assert!(!log.contains(key.as_str()));
        assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()));
    }
}

#[test]
fn a_rotated_admin_token_ends_web_sessions() {
    let server = Server::start();
    let mut browser = Browser::signed_in(&server);
    assert_eq!(browser.get("/ui/accounts").status, 200);
    let token_file = server.dir.path().join("new-token");
    std::fs::write(&token_file, "a-brand-new-admin-token-0123456789\n").expect("write");
    let output = run(keygatectl(&server.database())
        .args(["admin-token", "rotate", "--new-token-file"])
        .arg(&token_file));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = browser.get("/ui/accounts");
        if page.status == 303 {
            assert_eq!(page.location.as_deref(), Some("/ui/login?m=expired"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session outlived the admin token"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut fresh = Browser::new(&server);
    assert_eq!(fresh.sign_in(ADMIN_TOKEN).status, 401);
    assert_eq!(
        fresh.sign_in("a-brand-new-admin-token-0123456789").status,
        303
    );
}

/// The account view's default rate-limit form (issue 23): set, shown on the rows of keys
/// without a limit of their own, refused with the field named, removed; kept in the store
/// (what the key map ships), audited as the operator's, and only with the session's CSRF
/// token.
#[test]
fn the_account_page_sets_refuses_and_removes_a_default_rate_limit() {
    let server = Server::start();
    let mut browser = Browser::signed_in(&server);
    let csrf = browser.csrf();
    let created = browser.post("/ui/accounts", &[("csrf", &csrf), ("name", "Initech")]);
    let location = created.location.clone().expect("location");
    let account = location
        .strip_prefix("/ui/accounts/")
        .expect("account page")
        .to_string();
    let page = browser.get(&location);
    assert!(page.body.contains("No default rate limit"), "{}", page.body);
    assert!(page
        .body
        .contains(&format!("action=\"/ui/accounts/{account}/rate-limit\"")));
    let api = Api::new(&server);
    let stored =
        || api.get(&format!("/v1/accounts/{account}")).body["account"]["rate_limit"].clone();
    let action = format!("/ui/accounts/{account}/rate-limit");
    let limit = |requests: &str, per: &str, burst: &str| {
        vec![
            ("csrf", csrf.clone()),
            ("rate_requests", requests.to_string()),
            ("rate_per", per.to_string()),
            ("rate_burst", burst.to_string()),
        ]
    };
    let send = |browser: &mut Browser, fields: Vec<(&str, String)>| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        browser.post(&action, &fields)
    };

    // Without the session's CSRF token: refused, nothing stored.
    let mut forged = limit("5", "second", "");
    forged[0].1 = "forged".into();
    assert_ne!(send(&mut browser, forged).status, 303);
    assert!(stored().is_null());

    let set = send(&mut browser, limit("100", "minute", "20"));
    assert_eq!(set.status, 303, "{}", set.body);
    assert_eq!(set.location.as_deref(), Some(location.as_str()));
    assert_eq!(
        stored(),
        serde_json::json!({"requests": 100, "per": "minute", "burst": 20})
    );
    let page = browser.get(&location);
    assert!(
        page.body
            .contains("limits each key without a limit of its own to 100 per minute, burst 20"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("Each key without a limit of its own: 100 per minute, burst 20"));
    assert!(
        page.body
            .contains("Account default: 100 per minute, burst 20"),
        "on the key rows"
    );

    // A value the form's min/max would stop, sent anyway: the field named, nothing changed.
    let refused = send(&mut browser, limit("2000000", "second", ""));
    assert_eq!(refused.status, 303);
    let page = browser.get(&location);
    assert!(page.body.contains("rate_limit.requests"), "{}", page.body);
    assert_eq!(stored()["requests"], 100);

    let removed = send(&mut browser, limit("", "second", ""));
    assert_eq!(removed.status, 303);
    assert!(stored().is_null());
    assert!(browser
        .get(&location)
        .body
        .contains("has no default rate limit now"));

    let events = api.get(&format!("/v1/audit?account_id={account}")).body["events"].clone();
    let set_by: Vec<(&str, &str)> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "account.rate_limit_set")
        .map(|e| {
            (
                e["actor"]["kind"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        set_by,
        vec![
            ("operator", "default rate limit removed"),
            ("operator", "default rate limit 100 per minute, burst 20")
        ]
    );
}
