//! The per-request path: the gate (keygate-core's, shared with the native module) judges the
//! request; this file only carries bytes between it and Envoy's proxy-wasm ABI.

#![forbid(unsafe_code)]

use crate::abi;
use crate::metrics::Metrics;
use crate::synced_map::SyncedMap;
use crate::usage::VmUsage;
use crate::vm_global::VmGlobal;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::OnceCell;
use keygate_core::bucket::{self, KeyInfo};
use keygate_core::config::FilterConfig;
use keygate_core::digest::Digest;
use keygate_core::gate::{
    Answer, Count, Gate, HeadersUnreadable, Host, KeyLookup, RateLimits, UsageCounter, Verdict,
    Worker,
};
use keygate_core::header_pairs::{self, HeaderMap, HeaderPairs};
use keygate_core::rate_limit::{Checked, LimitHeaders, LimitTable, RateLimit, DEFAULT_SLOTS};
use log::warn;

/// What this VM keeps between requests, for every configuration (the digest cache's answer
/// depends on the key alone).
static WORKER: VmGlobal<Worker> = VmGlobal::new(|| Worker::new(abi::random_bytes().ok()));

/// This VM's rate-limit state, for every configuration (a key's limit is the key's),
/// allocated at the first request of a limited key.
static LIMITS: VmGlobal<OnceCell<LimitTable>> = VmGlobal::new(OnceCell::new);

/// proxy-wasm's answers to `proxy_on_request_headers`.
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

/// What one filter configuration (one root context) serves its requests with.
pub struct Filter {
    pub gate: Gate,
    pub metrics: Metrics,
    /// Sync mode: the map the fetcher service publishes.
    pub synced: Option<SyncedMap>,
    /// Sync mode: per-key usage, handed to the fetcher service.
    usage: Option<VmUsage>,
}

impl Filter {
    pub fn new(config: FilterConfig, metrics: Metrics) -> Filter {
        let synced = config.sync_namespace.as_deref().map(SyncedMap::new);
        let usage = config.sync_namespace.as_deref().map(VmUsage::new);
        Filter {
            gate: Gate::new(config, synced.is_some()),
            metrics,
            synced,
            usage,
        }
    }

    /// Decides one request and acts on it; returns the proxy-wasm action.
    pub fn on_request_headers(&self) -> u32 {
        // Sync mode serves the synced map once one is published (the gate falls back to
        // the configuration's bootstrap keys, or 503, until then).
        let synced = self.synced.as_ref().filter(|s| {
            if s.version().is_none() {
                s.refresh();
            }
            s.version().is_some()
        });
        let mut stream = Stream {
            metrics: &self.metrics,
        };
        let limits = VmLimits {
            workers: self.gate.config().settings.rate_limit_workers,
        };
        let usage = Usage(self.usage.as_ref());
        let verdict = WORKER.with_borrow_mut(|worker| {
            self.gate.on_request_headers(
                &mut stream,
                synced.map(Buckets).as_ref(),
                worker,
                &limits,
                &usage,
            )
        });
        match verdict {
            Verdict::Continue => CONTINUE,
            Verdict::Stop => PAUSE,
        }
    }

    /// Timer work: publish counts, and (sync mode) pick up a newly published map.
    pub fn on_tick(&self) {
        self.metrics.flush();
        if let Some(synced) = &self.synced {
            synced.refresh();
        }
        if let Some(usage) = &self.usage {
            usage.on_tick();
        }
    }
}

/// Answers a stream whose root has no configuration (fail closed), counted like any denial.
pub fn refuse_unconfigured(metrics: &Metrics) -> u32 {
    let answer = Answer::new(keygate_core::denial::Denial::NotConfigured, "");
    send(&answer, &[]);
    metrics.count(Count::Denied(answer.denial));
    metrics.flush();
    PAUSE
}

fn send(answer: &Answer, extra: &[(&str, &str)]) {
    // The prebuilt headers, or (a 429's retry time) those and the extra ones.
    let with_extra;
    let headers = if extra.is_empty() {
        &answer.serialized_headers
    } else {
        let pairs: Vec<(&[u8], &[u8])> = answer
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .chain(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
            .collect();
        with_extra = header_pairs::serialize(&pairs);
        &with_extra
    };
    let sent = abi::send_local_response(
        answer.status,
        answer.details,
        headers,
        answer.body.as_bytes(),
    );
    if let Err(status) = sent {
        warn!(
            "keygate: cannot send the {} answer: status {}",
            answer.status, status.0
        );
    }
}

/// The request being judged, as the gate sees Envoy.
struct Stream<'f> {
    metrics: &'f Metrics,
}

impl Host for Stream<'_> {
    type Headers<'h>
        = Headers
    where
        Self: 'h;

    fn request_headers(&self) -> Result<Headers, HeadersUnreadable> {
        let buf = abi::request_header_map().map_err(|_| HeadersUnreadable)?;
        HeaderMap::new(buf)
            .map(Headers)
            .map_err(|_| HeadersUnreadable)
    }

    // A failed header change is ignored, as a failed answer is logged: Envoy only refuses
    // one for a stream that is already gone.
    fn set_request_header(&mut self, name: &str, value: &str) {
        let _ = abi::set_request_header(name, value);
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        let _ = abi::add_request_header(name, value);
    }

    fn remove_request_header(&mut self, name: &str) {
        let _ = abi::remove_request_header(name);
    }

    fn send_answer(&mut self, answer: &Answer, extra: &[(&str, &str)]) {
        send(answer, extra);
    }

    fn set_response_headers(&mut self, _headers: LimitHeaders) {
        // Never asked: the configuration with `rate_limit_headers` is refused (exports.rs).
    }

    fn count(&mut self, event: Count) {
        self.metrics.count(event);
    }

    fn now_unix_seconds(&self) -> u64 {
        abi::now_unix_seconds().unwrap_or(u64::MAX)
    }

    fn now_micros(&self) -> u64 {
        // Envoy gives a VM wall-clock time only; the limiter copes with a clock gone back.
        abi::now_micros().unwrap_or(0)
    }
}

/// This configuration's usage counting (sync mode), or none.
struct Usage<'a>(Option<&'a VmUsage>);

impl UsageCounter for Usage<'_> {
    fn count(&self, digest: &Digest, allowed: bool) {
        if let Some(usage) = self.0 {
            usage.count(digest, allowed);
        }
    }
}

/// The rate limits as this VM keeps them: each worker VM its share of every limit.
struct VmLimits {
    workers: u32,
}

impl RateLimits for VmLimits {
    fn enforcers(&self) -> u32 {
        self.workers
    }

    fn admit(&self, key_id: &str, limit: &RateLimit, now_us: u64) -> Checked {
        LIMITS.with_borrow(|cell| {
            cell.get_or_init(|| LimitTable::new(DEFAULT_SLOTS))
                .admit(key_id, limit, now_us)
        })
    }
}

/// The request's header map, copied into the VM by one host call.
struct Headers(HeaderMap);

impl keygate_core::gate::HeaderSource for Headers {
    type Pairs<'a> = HeaderPairs<'a>;

    fn pairs(&self) -> HeaderPairs<'_> {
        self.0.pairs()
    }
}

/// The synced map in shared data, read a bucket at a time.
struct Buckets<'m>(&'m SyncedMap);

impl KeyLookup for Buckets<'_> {
    /// The bucket the entry was found in, copied out of shared data (or this worker's
    /// cache of it).
    type Held = Option<Rc<Vec<u8>>>;

    fn find<'a>(&'a self, digest: &Digest, held: &'a mut Self::Held) -> Option<KeyInfo<'a>> {
        let bytes = held.insert(self.0.bucket(bucket::bucket_of(digest)));
        bucket::find(bytes, digest)
    }
}
