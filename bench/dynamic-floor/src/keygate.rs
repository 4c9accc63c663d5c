//! A prototype of keygate's request path as a native dynamic module: the same
//! `keygate-core` decision the wasm filter makes (header scan, credential parsing, digest
//! cache, key-map lookup, rules), on a static key map from the plugin configuration, with
//! the same identity headers, credential removal and answers.
//!
//! It measures what a native keygate would cost; it is not the product. Missing on purpose:
//! sync mode (refused), logging through Envoy. It counts as the wasm filter does
//! (`keygate.allowed`, `keygate.denied.<code>`), here as Envoy counters bumped per request. Nothing here can panic on a
//! request: every buffer Envoy lends is read as bytes, and a failed host call is ignored as
//! the wasm filter ignores it.

use crate::{
    envoy_dynamic_module_callback_http_add_header, envoy_dynamic_module_callback_http_get_headers,
    envoy_dynamic_module_callback_http_get_headers_size,
    envoy_dynamic_module_callback_http_send_response,
    envoy_dynamic_module_callback_http_set_header, Buffer, Header, CONTINUE, REQUEST_HEADER,
    STOP_ITERATION,
};
use core::ffi::c_void;
use keygate_core::bucket::KeyInfo;
use keygate_core::config::FilterConfig;
use keygate_core::decision::{decide, Decision, Request, Sources};
use keygate_core::denial::Denial;
use keygate_core::digest::Digest;
use keygate_core::digest_cache::{self, DigestCache};
use keygate_core::identity;
use keygate_core::key::{KeyFormatError, KeyKind};
use keygate_core::request_scan;
use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a configuration is refused.
#[derive(Debug)]
pub enum PrototypeError {
    Config(keygate_core::config::ConfigError),
    SyncModeUnsupported,
}

impl fmt::Display for PrototypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrototypeError::Config(e) => write!(f, "{e}"),
            PrototypeError::SyncModeUnsupported => {
                f.write_str("sync_namespace: the prototype serves static key maps only")
            }
        }
    }
}

pub struct Prototype {
    config: FilterConfig,
    bodies: [String; Denial::ALL.len()],
    /// Envoy counter ids by `Denial::index`, then the allowed counter; None if Envoy
    /// refused to define one (a lost count, never a lost request).
    counters: [Option<usize>; COUNTERS],
}

const COUNTERS: usize = Denial::ALL.len() + 1;
const ALLOWED: usize = Denial::ALL.len();

extern "C" {
    /// 1.40's form: a name, optional label names (none here), the id written back.
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: *mut c_void,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: *mut c_void,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
}

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// Defines one counter on the filter configuration; Envoy only allows it while the
/// configuration is being created.
///
/// # Safety
/// `config_envoy` is the configuration Envoy is creating.
unsafe fn define_counter(config_envoy: *mut c_void, name: &str) -> Option<usize> {
    let mut id = 0;
    let result = envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy,
        Buffer::of(name.as_bytes()),
        core::ptr::null(),
        0,
        &mut id,
    );
    (result == METRICS_SUCCESS).then_some(id)
}

thread_local! {
    /// Each Envoy worker thread keeps its own digest cache, as each wasm VM does.
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

impl Prototype {
    /// # Safety
    /// `config_envoy` is the configuration Envoy is creating (its counters are defined on it).
    pub unsafe fn new(config_envoy: *mut c_void, json: &[u8]) -> Result<Prototype, PrototypeError> {
        let config = FilterConfig::parse(json).map_err(PrototypeError::Config)?;
        if config.sync_namespace.is_some() {
            return Err(PrototypeError::SyncModeUnsupported);
        }
        let mut counters = [None; COUNTERS];
        for (slot, denial) in counters.iter_mut().zip(Denial::ALL) {
            *slot = define_counter(config_envoy, &format!("keygate.denied.{}", denial.code()));
        }
        counters[ALLOWED] = define_counter(config_envoy, "keygate.allowed");
        Ok(Prototype {
            config,
            bodies: Denial::ALL.map(Denial::body),
            counters,
        })
    }

    unsafe fn count(&self, filter: *mut c_void, slot: usize) {
        if let Some(id) = self.counters[slot] {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                filter,
                id,
                core::ptr::null(),
                0,
                1,
            );
        }
    }

    /// Decides one request and acts on it, as the wasm filter's `on_request_headers` does.
    ///
    /// # Safety
    /// `filter` is Envoy's live stream filter, inside the request-headers hook.
    pub unsafe fn on_request_headers(&self, filter: *mut c_void) -> u32 {
        let settings = &self.config.settings;
        let count = envoy_dynamic_module_callback_http_get_headers_size(filter, REQUEST_HEADER);
        let mut headers: Vec<Header> = Vec::with_capacity(count);
        if count > 0
            && envoy_dynamic_module_callback_http_get_headers(
                filter,
                REQUEST_HEADER,
                headers.as_mut_ptr(),
            )
        {
            // SAFETY: Envoy wrote `count` entries, pointing into the live header map.
            headers.set_len(count);
        }
        let pairs = headers.iter().map(|h| (h.key.bytes(), h.value.bytes()));
        let scanned = request_scan::scan(pairs, &settings.identity_headers);
        let request = Request {
            authorization: scanned.authorization(),
            method: scanned.method,
            path: scanned.path,
            method_overrides: scanned.method_overrides(),
        };
        let sources = Sources {
            identify,
            lookup: |digest: &Digest| self.config.keys.get(digest).map(|e| e.info()),
            now: now_unix_seconds,
        };
        match decide(settings, sources, &request) {
            Decision::Allow(entry) => {
                self.forward(filter, &entry, scanned.identity_sent);
                self.count(filter, ALLOWED);
                CONTINUE
            }
            Decision::Deny(denial) => {
                for (name, sent) in settings
                    .identity_headers
                    .names()
                    .iter()
                    .zip(scanned.identity_sent)
                {
                    if sent {
                        remove(filter, name.as_bytes());
                    }
                }
                self.deny(filter, denial);
                self.count(filter, denial.index());
                STOP_ITERATION
            }
        }
    }

    unsafe fn forward(&self, filter: *mut c_void, entry: &KeyInfo<'_>, client_sent: [bool; 4]) {
        let settings = &self.config.settings;
        identity::for_each_header(&settings.identity_headers, entry, |slot, name, value| {
            let (name, value) = (Buffer::of(name.as_bytes()), Buffer::of(value.as_bytes()));
            if client_sent[slot] {
                envoy_dynamic_module_callback_http_set_header(filter, REQUEST_HEADER, name, value);
            } else {
                envoy_dynamic_module_callback_http_add_header(filter, REQUEST_HEADER, name, value);
            }
        });
        if !settings.keep_authorization {
            remove(filter, b"authorization");
        }
    }

    unsafe fn deny(&self, filter: *mut c_void, denial: Denial) {
        let json = Header {
            key: Buffer::of(b"content-type"),
            value: Buffer::of(b"application/json"),
        };
        let second = match denial.status() {
            401 => Some(Header {
                key: Buffer::of(b"www-authenticate"),
                value: Buffer::of(self.config.settings.www_authenticate.as_bytes()),
            }),
            503 => Some(Header {
                key: Buffer::of(b"retry-after"),
                value: Buffer::of(b"1"),
            }),
            _ => None,
        };
        let headers: Vec<Header> = core::iter::once(json).chain(second).collect();
        envoy_dynamic_module_callback_http_send_response(
            filter,
            denial.status(),
            headers.as_ptr(),
            headers.len(),
            Buffer::of(self.bodies[denial.index()].as_bytes()),
            Buffer::of(denial.details().as_bytes()),
        );
    }
}

/// Removes every value of a request header (an empty value does that in this ABI).
unsafe fn remove(filter: *mut c_void, name: &[u8]) {
    envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADER,
        Buffer::of(name),
        Buffer::EMPTY,
    );
}
