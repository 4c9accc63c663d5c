//! The per-request path: one read of the header map, one decision, then either the identity
//! headers for the upstream or a local answer. No client input reaches a panic.

use crate::abi;
use crate::metrics::Metrics;
use crate::synced_map::SyncedMap;
use crate::vm_global::VmGlobal;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::OnceCell;
use keygate_core::bucket::{self, KeyInfo};
use keygate_core::config::{FilterConfig, Settings};
use keygate_core::decision::{decide, Decision, Sources};
use keygate_core::denial::Denial;
use keygate_core::digest::Digest;
use keygate_core::digest_cache::{self, DigestCache};
use keygate_core::header_pairs;
use keygate_core::identity;
use keygate_core::key::{KeyFormatError, KeyKind};
use keygate_core::request_scan;
use log::warn;

/// Kinds and digests of recently presented keys, for every configuration of this VM (the
/// answer depends on the key alone). None if the host gave no random secret: then every
/// request is hashed afresh.
static DIGESTS: VmGlobal<Option<DigestCache>> = VmGlobal::new(|| {
    abi::random_bytes()
        .ok()
        .map(|secret| DigestCache::new(secret, digest_cache::DEFAULT_SLOTS))
});

fn identify(key: &str) -> Result<(KeyKind, Digest), KeyFormatError> {
    DIGESTS.with_borrow_mut(|cache| match cache {
        Some(cache) => cache.identify(key),
        None => digest_cache::identify(key),
    })
}

/// proxy-wasm's answers to `proxy_on_request_headers`.
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

/// What one filter configuration (one root context) serves its requests with.
pub struct Filter {
    pub config: FilterConfig,
    pub metrics: Metrics,
    /// Sync mode: the map the fetcher service publishes.
    pub synced: Option<SyncedMap>,
    /// The local answers' serialized headers and bodies (by `Denial::index`), built once.
    answer_headers: AnswerHeaders,
    bodies: [String; Denial::ALL.len()],
}

struct AnswerHeaders {
    unauthorized: Vec<u8>,
    forbidden: Vec<u8>,
    unavailable: Vec<u8>,
}

impl Filter {
    pub fn new(config: FilterConfig, metrics: Metrics) -> Filter {
        let synced = config.sync_namespace.as_deref().map(SyncedMap::new);
        let json: (&[u8], &[u8]) = (b"content-type", b"application/json");
        let answer_headers = AnswerHeaders {
            unauthorized: header_pairs::serialize(&[
                json,
                (
                    b"www-authenticate",
                    config.settings.www_authenticate.as_bytes(),
                ),
            ]),
            forbidden: header_pairs::serialize(&[json]),
            unavailable: header_pairs::serialize(&[json, (b"retry-after", b"1")]),
        };
        Filter {
            config,
            metrics,
            synced,
            answer_headers,
            bodies: Denial::ALL.map(Denial::body),
        }
    }

    /// Decides one request and acts on it; returns the proxy-wasm action.
    pub fn on_request_headers(&self) -> u32 {
        let settings = &self.config.settings;
        // Sync mode serves the synced map once one is published; until then the config's
        // bootstrap keys, and with none of those, 503 (fail closed).
        let synced = self.synced.as_ref().filter(|s| {
            if s.version().is_none() {
                s.refresh();
            }
            s.version().is_some()
        });
        if self.synced.is_some() && synced.is_none() && self.config.keys.is_empty() {
            return self.deny(Denial::KeyMapUnavailable);
        }
        let Ok(buf) = abi::request_header_map() else {
            return self.deny(Denial::MalformedCredentials);
        };
        let Ok(pairs) = header_pairs::parse(&buf) else {
            return self.deny(Denial::MalformedCredentials);
        };
        #[cfg(feature = "fault-injection")]
        if pairs
            .clone()
            .any(|pair| pair == (&b"x-keygate-fault"[..], &b"trap"[..]))
        {
            panic!("fault injection: trap requested");
        }
        let scanned = request_scan::scan(pairs, &settings.identity_headers);
        let request = scanned.request();
        // Holds the looked-up bucket for as long as the decision borrows from it.
        let bucket_holder = OnceCell::new();
        let lookup = |digest: &Digest| match synced {
            Some(map) => {
                let bytes = bucket_holder.get_or_init(|| map.bucket(bucket::bucket_of(digest)));
                bucket::find(bytes, digest)
            }
            None => self.config.keys.get(digest).map(|e| e.info()),
        };
        let sources = Sources {
            identify,
            lookup,
            now: || abi::now_unix_seconds().unwrap_or(u64::MAX),
        };
        match decide(settings, sources, &request) {
            Decision::Allow(entry) => self.forward(settings, &entry, scanned.identity_sent),
            Decision::Deny(denial) => {
                // The access log reads request headers: a refused client must not be able
                // to write an identity there.
                for (name, sent) in settings
                    .identity_headers
                    .names()
                    .iter()
                    .zip(scanned.identity_sent)
                {
                    if sent {
                        let _ = abi::remove_request_header(name);
                    }
                }
                self.deny(denial)
            }
        }
    }

    fn deny(&self, denial: Denial) -> u32 {
        self.metrics.denied(denial);
        let headers = match denial.status() {
            401 => &self.answer_headers.unauthorized,
            503 => &self.answer_headers.unavailable,
            _ => &self.answer_headers.forbidden,
        };
        let body = &self.bodies[denial.index()];
        if let Err(status) =
            abi::send_local_response(denial.status(), denial.details(), headers, body.as_bytes())
        {
            warn!(
                "keygate: cannot send the {} answer: {status:?}",
                denial.status()
            );
        }
        PAUSE
    }

    /// Sets our identity headers and removes the credential. A header the client sent is
    /// replaced (every copy goes); one it did not send is added, which costs Envoy less.
    fn forward(&self, settings: &Settings, entry: &KeyInfo<'_>, client_sent: [bool; 4]) -> u32 {
        identity::for_each_header(&settings.identity_headers, entry, |slot, name, value| {
            let _ = if client_sent[slot] {
                abi::set_request_header(name, value)
            } else {
                abi::add_request_header(name, value)
            };
        });
        if !settings.keep_authorization {
            let _ = abi::remove_request_header("authorization");
        }
        self.metrics.allowed();
        CONTINUE
    }

    /// Timer work: publish counts, and (sync mode) pick up a newly published map.
    pub fn on_tick(&self) {
        self.metrics.flush();
        if let Some(synced) = &self.synced {
            synced.refresh();
        }
    }
}
