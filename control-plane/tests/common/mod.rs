//! A real `keygatectl serve` on a free loopback port, with its own database in a temp dir,
//! and a small HTTP client for it.
#![allow(dead_code)] // Each test binary uses its own part of the harness.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The sync token test servers are started with (in `sync-token` beside the database).
pub const SYNC_TOKEN: &str = "test-sync-token-0123456789";
pub const BIN: &str = env!("CARGO_BIN_EXE_keygatectl");

/// A `keygatectl` command with the test's environment only (no inherited KEYGATE_*).
pub fn keygatectl(database: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .env_remove("KEYGATE_SERVER")
        .env_remove("KEYGATE_DATABASE")
        .arg("--database")
        .arg(database);
    command
}

/// A spawned `keygatectl serve` that has said where it listens.
pub struct Listening {
    pub child: Child,
    pub base: String,
    /// Everything it wrote to stderr so far (drained for its whole life).
    pub log: Arc<Mutex<String>>,
}

/// Spawns `command` (a `serve`) and waits for its `listening on` line; `Err` carries its
/// log if it exits or stays silent for 15 s.
pub fn spawn_listening(command: &mut Command) -> Result<Listening, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygatectl serve");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (address_tx, address_rx) = mpsc::channel();
    let log_writer = Arc::clone(&log);
    // Keeps draining stderr for the server's whole life, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let address = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = address_tx.send(address);
            }
            let mut log = log_writer.lock().expect("log lock");
            log.push_str(&line);
            log.push('\n');
        }
    });
    match address_rx.recv_timeout(Duration::from_secs(15)) {
        Ok(address) => Ok(Listening {
            child,
            base: format!("http://{address}"),
            log,
        }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let log = log.lock().expect("log lock").clone();
            Err(log)
        }
    }
}

pub struct Server {
    child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// Everything the server wrote to stderr so far.
    log: Arc<Mutex<String>>,
}

pub struct StartOptions<'a> {
    pub admin_token: Option<&'a str>,
    /// Written to `sync-token` in the directory and given with `--sync-token-file`; `None`
    /// leaves the server to its default (a token generated beside the database).
    pub sync_token: Option<&'a str>,
    pub extra_args: Vec<String>,
    /// Reuse this directory's database instead of a new one.
    pub dir: Option<tempfile::TempDir>,
}

impl Default for StartOptions<'_> {
    fn default() -> Self {
        StartOptions {
            admin_token: Some(ADMIN_TOKEN),
            sync_token: Some(SYNC_TOKEN),
            extra_args: Vec::new(),
            dir: None,
        }
    }
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(StartOptions::default()).expect("server starts")
    }

    /// Starts a server; `Err` carries its log if it exits before listening.
    pub fn start_with(options: StartOptions) -> Result<Server, (tempfile::TempDir, String)> {
        let dir = match options.dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("tempdir"),
        };
        let mut command = keygatectl(&dir.path().join("keygate.db"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--purge-interval", "1s"])
            .args(&options.extra_args);
        if let Some(token) = options.sync_token {
            let file = dir.path().join("sync-token");
            std::fs::write(&file, format!("{token}\n")).expect("write the sync token");
            command.arg("--sync-token-file").arg(file);
        }
        if let Some(token) = options.admin_token {
            command.env("KEYGATE_ADMIN_TOKEN", token);
        }
        match spawn_listening(&mut command) {
            Ok(running) => Ok(Server {
                child: running.child,
                base: running.base,
                dir,
                log: running.log,
            }),
            Err(log) => Err((dir, log)),
        }
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("keygate.db")
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Stops the server and hands back its directory (to restart on the same database).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP answer, body parsed as JSON when it is JSON.
pub struct Answer {
    pub status: u16,
    pub etag: Option<String>,
    /// `keygate-store`: the store a key-map answer comes from.
    pub store: Option<String>,
    pub retry_after: Option<String>,
    pub cache_control: Option<String>,
    pub body: Value,
    pub text: String,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends a request; `token` goes in `Authorization: Bearer`.
pub fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(body.unwrap_or("").to_string())
        .expect("request");
    let mut response = agent.run(request).expect("HTTP exchange");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let etag = header("etag");
    let store = header("keygate-store");
    let retry_after = header("retry-after");
    let cache_control = header("cache-control");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        etag,
        store,
        retry_after,
        cache_control,
        body,
        text,
    }
}

/// An admin client bound to one server.
pub struct Api<'s> {
    pub server: &'s Server,
    pub agent: ureq::Agent,
    pub token: Option<String>,
    /// What key-map polls send.
    pub sync_token: Option<String>,
}

impl<'s> Api<'s> {
    pub fn new(server: &'s Server) -> Api<'s> {
        Api {
            server,
            agent: agent(),
            token: Some(ADMIN_TOKEN.into()),
            sync_token: Some(SYNC_TOKEN.into()),
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        send(
            &self.agent,
            "GET",
            &self.server.url(path),
            self.token.as_deref(),
            None,
            &[],
        )
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        send(
            &self.agent,
            "POST",
            &self.server.url(path),
            self.token.as_deref(),
            Some(body),
            &[],
        )
    }

    /// `GET /v1/keymap`, optionally `?since=` and `If-None-Match`, with the sync token.
    pub fn key_map(&self, since: Option<u64>, if_none_match: Option<&str>) -> Answer {
        let query = since.map(|since| format!("since={since}"));
        self.key_map_query(query.as_deref(), if_none_match)
    }

    /// `GET /v1/keymap?<query>` with the sync token.
    pub fn key_map_query(&self, query: Option<&str>, if_none_match: Option<&str>) -> Answer {
        let path = match query {
            Some(query) => format!("/v1/keymap?{query}"),
            None => "/v1/keymap".into(),
        };
        let headers: Vec<(&str, &str)> = if_none_match
            .map(|tag| vec![("if-none-match", tag)])
            .unwrap_or_default();
        send(
            &self.agent,
            "GET",
            &self.server.url(&path),
            self.sync_token.as_deref(),
            None,
            &headers,
        )
    }

    pub fn key_map_version(&self) -> u64 {
        let answer = self.key_map(None, None);
        assert_eq!(answer.status, 200, "{}", answer.text);
        answer.body["version"].as_u64().expect("version")
    }

    /// Creates an account and returns its answer (with the four plaintext keys).
    pub fn create_account(&self, name: Option<&str>) -> Value {
        let body = match name {
            Some(name) => serde_json::json!({ "name": name }).to_string(),
            None => String::new(),
        };
        let answer = self.post("/v1/accounts", &body);
        assert_eq!(answer.status, 201, "{}", answer.text);
        answer.body
    }
}

/// Runs a finished command and returns its output, for CLI tests.
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run keygatectl")
}

/// Runs a command with `input` on standard input.
pub fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygatectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}
