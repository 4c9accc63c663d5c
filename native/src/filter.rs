//! The per-request path: one read of the header list, one decision (keygate-core's, as the
//! wasm filter makes it), then either the identity headers for the upstream or a local
//! answer. Nothing here can panic on a request: every buffer Envoy lends is read as bytes,
//! and a failed call into Envoy is ignored, as the wasm filter ignores it.

use crate::abi::{self, EnvoyPtr, MetricId, MetricKind, CONTINUE, STOP_ITERATION};
use crate::sync::{Subscription, SyncStats};
use keygate_core::bucket::KeyInfo;
use keygate_core::config::{ConfigError, FilterConfig};
use keygate_core::decision::{decide, Decision, Sources};
use keygate_core::denial::Denial;
use keygate_core::digest::Digest;
use keygate_core::digest_cache::{self, DigestCache};
use keygate_core::identity;
use keygate_core::key::{KeyFormatError, KeyKind};
use keygate_core::request_scan;
use keygate_core::service_config::PollConfig;
use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a configuration is refused (Envoy then refuses the listener or filter update, and
/// the last good configuration keeps serving).
#[derive(Debug)]
pub enum FilterError {
    Config(ConfigError),
    SyncThread(std::io::Error),
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterError::Config(e) => e.fmt(f),
            FilterError::SyncThread(e) => write!(f, "cannot start the sync thread: {e}"),
        }
    }
}

/// Counter slots: one per denial (by `Denial::index`), then allowed.
const COUNTERS: usize = Denial::ALL.len() + 1;
const ALLOWED: usize = Denial::ALL.len();

/// One filter configuration, shared by every worker thread's streams.
pub struct Filter {
    config: FilterConfig,
    /// Sync mode: the group syncing this configuration's map.
    synced: Option<Subscription>,
    /// The local answers' bodies (by `Denial::index`), built once.
    bodies: [String; Denial::ALL.len()],
    counters: [Option<MetricId>; COUNTERS],
}

thread_local! {
    /// Kinds and digests of recently presented keys, per worker thread as per wasm VM (the
    /// answer depends on the key alone). None without a random secret: then every request
    /// is hashed afresh.
    static DIGESTS: RefCell<Option<DigestCache>> = RefCell::new(random_secret().map(|secret| {
        DigestCache::new(secret, digest_cache::DEFAULT_SLOTS)
    }));
}

fn random_secret() -> Option<[u8; 16]> {
    let mut secret = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .ok()?;
    Some(secret)
}

fn identify(key: &str) -> Result<(KeyKind, Digest), KeyFormatError> {
    DIGESTS.with_borrow_mut(|cache| match cache {
        Some(cache) => cache.identify(key),
        None => digest_cache::identify(key),
    })
}

fn now_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(u64::MAX, |d| d.as_secs())
}

impl Filter {
    /// Reads a configuration: keygate's plugin configuration, whose `sync` block (if any)
    /// names the URL of keygatectl's key map.
    ///
    /// # Safety
    /// `config_envoy` is the configuration Envoy is creating (its stats are defined on it).
    pub unsafe fn new(config_envoy: EnvoyPtr, json: &[u8]) -> Result<Filter, FilterError> {
        let (config, poll) =
            FilterConfig::parse_with_sync(json, PollConfig::read).map_err(FilterError::Config)?;
        let mut counters = [None; COUNTERS];
        for (slot, denial) in counters.iter_mut().zip(Denial::ALL) {
            *slot = abi::define_metric(
                config_envoy,
                MetricKind::Counter,
                &format!("keygate.denied.{}", denial.code()),
            );
        }
        counters[ALLOWED] =
            abi::define_metric(config_envoy, MetricKind::Counter, "keygate.allowed");
        let synced = match poll {
            None => None,
            Some(poll) => Some(
                Subscription::start(poll, SyncStats::define(config_envoy))
                    .map_err(FilterError::SyncThread)?,
            ),
        };
        Ok(Filter {
            config,
            synced,
            bodies: Denial::ALL.map(Denial::body),
            counters,
        })
    }

    unsafe fn count(&self, filter: EnvoyPtr, slot: usize) {
        if let Some(id) = self.counters[slot] {
            abi::increment_counter(filter, id);
        }
    }

    /// Decides one request and acts on it; returns the request-headers status.
    ///
    /// # Safety
    /// `filter` is Envoy's live stream filter, inside the request-headers hook.
    pub unsafe fn on_request_headers(&self, filter: EnvoyPtr) -> u32 {
        let settings = &self.config.settings;
        // Sync mode serves the synced map once one arrived; until then the configuration's
        // bootstrap keys, and with none of those, 503 (fail closed).
        let snapshot = self.synced.as_ref().and_then(|s| s.map().current());
        if self.synced.is_some() && snapshot.is_none() && self.config.keys.is_empty() {
            return self.deny(filter, Denial::KeyMapUnavailable, [false; 4]);
        }
        let headers = abi::request_headers(filter);
        let pairs = headers.iter().map(|h| h.pair());
        #[cfg(feature = "fault-injection")]
        if pairs
            .clone()
            .any(|pair| pair == (&b"x-keygate-fault"[..], &b"trap"[..]))
        {
            panic!("fault injection: panic requested");
        }
        let scanned = request_scan::scan(pairs, &settings.identity_headers);
        let request = scanned.request();
        let lookup = |digest: &Digest| match &snapshot {
            Some(map) => map.find(digest),
            None => self.config.keys.get(digest).map(|e| e.info()),
        };
        let sources = Sources {
            identify,
            lookup,
            now: now_unix_seconds,
        };
        match decide(settings, sources, &request) {
            Decision::Allow(entry) => {
                self.forward(filter, &entry, scanned.identity_sent);
                self.count(filter, ALLOWED);
                CONTINUE
            }
            Decision::Deny(denial) => self.deny(filter, denial, scanned.identity_sent),
        }
    }

    /// Sets the identity headers and removes the credential. A header the client sent is
    /// replaced (every copy goes); one it did not send is added, which costs Envoy less.
    unsafe fn forward(&self, filter: EnvoyPtr, entry: &KeyInfo<'_>, client_sent: [bool; 4]) {
        let settings = &self.config.settings;
        identity::for_each_header(&settings.identity_headers, entry, |slot, name, value| {
            if client_sent[slot] {
                abi::set_request_header(filter, name.as_bytes(), value.as_bytes());
            } else {
                abi::add_request_header(filter, name.as_bytes(), value.as_bytes());
            }
        });
        if !settings.keep_authorization {
            abi::remove_request_header(filter, b"authorization");
        }
    }

    /// Answers 401/403/503 with keygate's JSON body. The access log reads request headers,
    /// so identity headers a refused client sent are removed first.
    unsafe fn deny(&self, filter: EnvoyPtr, denial: Denial, client_sent: [bool; 4]) -> u32 {
        let settings = &self.config.settings;
        for (name, sent) in settings.identity_headers.names().iter().zip(client_sent) {
            if sent {
                abi::remove_request_header(filter, name.as_bytes());
            }
        }
        let json: abi::HeaderPair = (b"content-type", b"application/json");
        let headers: &[abi::HeaderPair] = match denial.status() {
            401 => &[
                json,
                (b"www-authenticate", settings.www_authenticate.as_bytes()),
            ],
            503 => &[json, (b"retry-after", b"1")],
            _ => &[json],
        };
        abi::send_response(
            filter,
            denial.status(),
            headers,
            self.bodies[denial.index()].as_bytes(),
            denial.details(),
        );
        self.count(filter, denial.index());
        STOP_ITERATION
    }
}
