//! `keygatectl serve`: sets up the admin and sync tokens, binds, and runs the HTTP API with
//! a maintenance task that purges expired keys and picks up changes made by other processes.

use crate::api::{router, AppState, KeyMapAccess};
use crate::auth::token_matches;
use crate::clock::now_unix;
use crate::front_door::front_door;
use crate::hosts::AllowedHosts;
use crate::keymap::KeyMapCache;
use crate::log::log_event;
use crate::mail::{MailError, MailRoute, Mailer};
use crate::random::{new_admin_token, RandomError};
use crate::service::Service;
use crate::store::{Actor, Store, StoreError};
use crate::sync_token::{self, SyncTokenError};
use crate::web::{secure_cookies_from_env, CustomerOptions};
use axum::serve::ListenerExt;
use keygate_core::digest::Digest;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the server re-reads the key-map version and admin token from the database, so
/// that CLI commands run against the file directly reach the filters within this time.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The admin token given on the command line or in the environment, if any.
    pub admin_token: Option<String>,
    pub sync_token: SyncTokenSetting,
    pub allowed_hosts: AllowedHosts,
    pub purge_interval: Duration,
    pub customers: CustomerSetup,
    /// How long usage reports are kept, in days.
    pub usage_retention_days: u64,
    /// Who may read /metrics.
    pub ops: crate::ops::OpsOptions,
}

/// The customer pages' mail and links, as given.
pub struct CustomerSetup {
    pub public_url: Option<String>,
    pub mail: Option<MailRoute>,
    pub mail_from: String,
}

/// Whether the key map needs the sync token.
pub enum SyncTokenSetting {
    /// It does (the default): the token is in this file (created if missing), or only in
    /// the database when there is no file (PostgreSQL replicas after the first).
    Required { file: Option<PathBuf> },
    /// `--no-sync-token`: anyone who can reach the server may read the key map.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the admin token given does not match the one this database was set up with; give \
         that token, or replace it with `keygatectl admin-token rotate`"
    )]
    AdminTokenMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SyncToken(#[from] SyncTokenError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot start the server runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Server(#[source] std::io::Error),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error("--public-url must be an http:// or https:// URL without a query (e.g. https://keys.example.com), not {0:?}")]
    PublicUrl(String),
}

pub fn serve(store: Arc<dyn Store>, options: ServeOptions) -> Result<(), ServeError> {
    let public_url = options
        .customers
        .public_url
        .as_deref()
        .map(check_public_url)
        .transpose()?;
    let mailer = options
        .customers
        .mail
        .as_ref()
        .map(|route| Mailer::start(route, &options.customers.mail_from))
        .transpose()?;
    let key_map_access = match &options.sync_token {
        SyncTokenSetting::Required { file } => KeyMapAccess::Token(sync_token::ensure(
            store.as_ref(),
            file.as_deref(),
            &Actor::server(),
        )?),
        SyncTokenSetting::Off => {
            crate::log::warn(
                "--no-sync-token: the key map (every key digest, account id and key \
                 id) is served to anyone who can reach this server",
            );
            KeyMapAccess::Open
        }
    };
    let admin_digest = ensure_admin_token(store.as_ref(), options.admin_token.as_deref())?;
    match crate::open_files::raise_limit() {
        Ok(limit) => log_event(&format!(
            "open files: up to {limit} (each held key-map watch is a connection)"
        )),
        Err((limit, e)) => log_event(&format!(
            "open files: cannot raise the limit of {limit}: {e} (each held key-map watch is              a connection)"
        )),
    }
    let status = store.key_map_status()?;
    log_event(&format!(
        "key map: store {}, version {}",
        status.store, status.version
    ));
    let keymap = KeyMapCache::new(status);
    let state = Arc::new(AppState::new(
        Service::new(store),
        Some(admin_digest),
        key_map_access,
        keymap,
    ));
    state.usage.set_retention_days(options.usage_retention_days);
    // Replicas over one PostgreSQL: another replica's change (or the CLI's) is announced,
    // and reaches this one's key map at once rather than at the next one-second re-read.
    let watcher = Arc::clone(&state);
    let on_change = Box::new(move || maintenance_pass(&watcher, false));
    if state.service().store().watch_changes(on_change)? {
        log_event("following changes made through other replicas (PostgreSQL LISTEN/NOTIFY)");
    }
    // Two workers for two cores; SQLite calls run on the blocking pool, one at a time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Server)?;
        let keymap_access = if state.key_map_requires_token() {
            "sync token required"
        } else {
            "no token required"
        };
        log_event(&format!(
            "listening on http://{addr} (key map at /v1/keymap: {keymap_access}; operator page at \
             http://{addr}/ui/; answering Host names: {}; probes at /livez and /readyz; \
             metrics at /metrics{})",
            options.allowed_hosts.describe(),
            if options.ops.metrics_token.is_some() {
                ", metrics token required"
            } else {
                ""
            }
        ));
        let public_url = public_url.unwrap_or_else(|| format!("http://{addr}"));
        log_event(&match &mailer {
            Some(mailer) => match &mailer.outbox {
                Some(dir) => format!(
                    "customer sign-up at {public_url}/signup; mail is written to {}",
                    dir.display()
                ),
                None => format!("customer sign-up at {public_url}/signup; mail goes by SMTP"),
            },
            None => format!(
                "customer sign-in at {public_url}/login; sign-up and password reset need mail \
                 (--smtp-url or --outbox)"
            ),
        });
        let customers = CustomerOptions {
            secure_cookies: public_url.starts_with("https://") || secure_cookies_from_env(),
            public_url,
            mailer,
        };
        tokio::spawn(maintain(Arc::clone(&state), options.purge_interval));
        tokio::spawn(warm_up(Arc::clone(&state)));
        let closing = Arc::clone(&state);
        // Small answers go out at once: no Nagle delay between a poll and its 304.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                log_event(&format!("cannot set TCP_NODELAY: {e}"));
            }
        });
        // The operator's page (`/ui/`) and the customers' pages beside the API; connection
        // info for the throttles; every request's Host checked first.
        let app = front_door(
            router(Arc::clone(&state))
                .merge(crate::ops::router(Arc::clone(&state), options.ops))
                .merge(crate::web::router(state, customers)),
            Arc::new(options.allowed_hosts),
        );
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Held watches end now (503: ask again), not at the end of their wait.
            let held = closing.keymap.watches_held();
            closing.keymap.close_watches();
            if held > 0 {
                log_event(&format!("ended {held} held key-map watches"));
            }
        })
        .await
        .map_err(ServeError::Server)
    })
}

/// A public URL as links use it: http(s), a host, no query or fragment, no trailing slash.
fn check_public_url(url: &str) -> Result<String, ServeError> {
    let trimmed = url.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.starts_with('/')
            && !r.contains(['?', '#', ' ', '"', '<', '>', '\\'])
            && r.chars().all(|c| c.is_ascii_graphic())
    });
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(ServeError::PublicUrl(url.to_string()))
    }
}

/// Checks the given admin token against the stored digest, or sets it up on first start:
/// from the token given, else a generated one printed once to stderr.
fn ensure_admin_token(store: &dyn Store, given: Option<&str>) -> Result<Digest, ServeError> {
    match (store.admin_token_digest()?, given) {
        (Some(stored), Some(token)) if token_matches(token, &stored) => Ok(stored),
        (Some(_), Some(_)) => Err(ServeError::AdminTokenMismatch),
        (Some(stored), None) => Ok(stored),
        (None, Some(token)) => {
            let digest = Digest::of_key(token);
            store.set_admin_token_digest(&digest, now_unix(), &Actor::server())?;
            log_event("admin token set from the one given (only its digest is stored)");
            Ok(digest)
        }
        (None, None) => {
            let token = new_admin_token()?;
            let digest = Digest::of_key(&token);
            store.set_admin_token_digest(&digest, now_unix(), &Actor::server())?;
            eprintln!(
                "keygatectl: no admin token was given, so one was generated. It is shown this \
                 once; only its digest is stored:\nkeygatectl: admin token: {token}"
            );
            Ok(digest)
        }
    }
}

/// Builds the full key map in the fetchers' encoding once at start, so that the first full
/// polls after a restart are answered from memory and `/readyz` can say the map is built;
/// retried every second while the store does not answer.
async fn warm_up(state: Arc<AppState>) {
    let mut logged = false;
    loop {
        match crate::keymap_endpoint::full_map(&state, crate::keymap::Encoding::Binary).await {
            Ok(_) => return,
            Err(_) if logged => {}
            Err(_) => {
                crate::log::warn("cannot build the key map yet (not ready); retrying every second");
                logged = true;
            }
        }
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}

/// Every second: pick up the admin token and key-map version (other processes may change
/// the file); every `purge_interval`: take expired keys out of the map.
async fn maintain(state: Arc<AppState>, purge_interval: Duration) {
    let mut tick = tokio::time::interval(REFRESH_INTERVAL.min(purge_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_purge = Instant::now();
    loop {
        tick.tick().await;
        let purge = last_purge.elapsed() >= purge_interval;
        if purge {
            last_purge = Instant::now();
        }
        let state = Arc::clone(&state);
        if let Err(e) = tokio::task::spawn_blocking(move || maintenance_pass(&state, purge)).await {
            log_event(&format!("maintenance task failed: {e}"));
        }
    }
}

fn maintenance_pass(state: &AppState, purge: bool) {
    let store = state.service().store();
    if purge {
        match store.purge_expired(now_unix()) {
            Ok(purged) => {
                for key in &purged.value {
                    log_event(&format!(
                        "key {} ({}) expired and left the key map (key map version {})",
                        key.key_id, key.hint, purged.version
                    ));
                }
            }
            Err(e) => crate::log::error(&format!("cannot purge expired keys: {e}")),
        }
    }
    match store.admin_token_digest() {
        Ok(Some(digest)) => state.set_admin_digest(Some(digest)),
        Ok(None) => {}
        Err(e) => crate::log::error(&format!("cannot read the admin token digest: {e}")),
    }
    if state.key_map_requires_token() {
        match store.sync_token_digest() {
            Ok(Some(digest)) => state.set_sync_digest(digest),
            Ok(None) => {}
            Err(e) => crate::log::error(&format!("cannot read the sync token digest: {e}")),
        }
    }
    state.refresh_key_map_status();
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    log_event("shutting down");
}
