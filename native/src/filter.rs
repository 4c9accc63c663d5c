//! The per-request path: the gate (keygate-core's, shared with the wasm filter) judges the
//! request; this file only carries bytes between it and Envoy's dynamic-module ABI, through
//! the safe handles of `abi.rs`.

#![forbid(unsafe_code)]

use crate::abi::{self, ConfigBeingCreated, MetricId, MetricKind};
use crate::sync::{Subscription, SyncStats};
use crate::synced_map::Snapshot;
use keygate_core::config::{ConfigError, FilterConfig};
use keygate_core::gate::{
    Answer, Count, Gate, HeadersUnreadable, Host, RateLimits, Verdict, Worker,
};
use keygate_core::rate_limit::{Checked, LimitHeaders, LimitTable, RateLimit, DEFAULT_SLOTS};
use keygate_sync_core::settings::PollConfig;
use std::cell::RefCell;
use std::fmt;
use std::io::Read;
use std::sync::OnceLock;
use std::time::Instant;
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

/// One filter configuration, shared by every worker thread's streams.
pub struct Filter {
    gate: Gate,
    /// Sync mode: the group syncing this configuration's map.
    synced: Option<Subscription>,
    /// By `Count::index`.
    counters: [Option<MetricId>; Count::LEN],
    /// The rate limits' state, one for every worker thread (allocated at the first request
    /// of a limited key).
    limits: OnceLock<LimitTable>,
    /// Ends the sync thread's use of this configuration's stats when Envoy destroys it.
    _lifetime: abi::ConfigLifetime,
}

// Worker threads share one configuration: what they share must be safe to share.
const _: () = {
    const fn shared_by_workers<T: Send + Sync>() {}
    shared_by_workers::<Filter>();
};

thread_local! {
    /// What each worker thread keeps between requests, as each wasm VM does.
    static WORKER: RefCell<Worker> = RefCell::new(Worker::new(random_secret()));
}

fn random_secret() -> Option<[u8; 16]> {
    let mut secret = [0; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .ok()?;
    Some(secret)
}

impl Filter {
    /// Reads a configuration: keygate's plugin configuration, whose `sync` block (if any)
    /// names the URL of keygatectl's key map.
    pub fn new(config: &mut ConfigBeingCreated<'_>, json: &[u8]) -> Result<Filter, FilterError> {
        let (filter_config, poll) =
            FilterConfig::parse_with_sync(json, PollConfig::read).map_err(FilterError::Config)?;
        let mut counters = [None; Count::LEN];
        for (slot, count) in counters.iter_mut().zip(Count::all()) {
            *slot = config.define_metric(MetricKind::Counter, &count.name());
        }
        let synced = match poll {
            None => None,
            Some(poll) => Some(
                Subscription::start(poll, SyncStats::define(config))
                    .map_err(FilterError::SyncThread)?,
            ),
        };
        Ok(Filter {
            gate: Gate::new(filter_config, synced.is_some()),
            synced,
            counters,
            limits: OnceLock::new(),
            _lifetime: config.lifetime(),
        })
    }

    /// Whether allowed requests of limited keys get rate-limit headers on their response:
    /// only then does a stream need state of its own (see `hooks.rs`).
    pub fn rate_limit_headers(&self) -> bool {
        self.gate.config().settings.rate_limit_headers
    }

    /// Decides one request and acts on it; also answers the rate-limit headers its
    /// response is to get (`rate_limit_headers`), if any.
    pub fn on_request_headers(
        &self,
        stream: &mut abi::Stream<'_>,
    ) -> (Verdict, Option<LimitHeaders>) {
        // Held by this request: a map published meanwhile serves the next one.
        let snapshot = self.synced.as_ref().and_then(|s| s.map().current());
        let mut host = NativeHost {
            stream,
            counters: &self.counters,
            response: None,
        };
        let limits = SharedLimits(&self.limits);
        let usage = Usage(self.synced.as_ref().and_then(Subscription::usage));
        let verdict = WORKER.with_borrow_mut(|worker| {
            self.gate
                .on_request_headers(&mut host, snapshot.as_deref(), worker, &limits, &usage)
        });
        (verdict, host.response)
    }

    /// Sets the rate-limit headers kept for a response, replacing the upstream's of those
    /// names.
    pub fn on_response_headers(stream: &mut abi::Stream<'_>, headers: &LimitHeaders) {
        headers.write(|name, value| stream.set_response_header(name.as_bytes(), value.as_bytes()));
    }

    /// Answers a request the filter failed on (a caught panic): 500, counted.
    pub fn refuse_after_failure(&self, stream: &mut abi::Stream<'_>) {
        let mut host = NativeHost {
            stream,
            counters: &self.counters,
            response: None,
        };
        let answer = self
            .gate
            .answer(keygate_core::denial::Denial::InternalError);
        host.send_answer(answer, &[]);
        host.count(Count::Denied(answer.denial));
    }
}

/// Answers a request with no configuration to judge it by (fail closed).
pub fn refuse_unconfigured(stream: &mut abi::Stream<'_>, denial: keygate_core::denial::Denial) {
    let answer = Answer::new(denial, "");
    send(stream, &answer, &[]);
}

fn send(stream: &mut abi::Stream<'_>, answer: &Answer, extra: &[(&str, &str)]) {
    stream.send_response(
        answer.status,
        answer
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .chain(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))),
        answer.body.as_bytes(),
        answer.details,
    );
}

/// This configuration's usage counting: its sync group's, or none (static mode, or reports
/// off).
struct Usage<'a>(Option<&'a crate::usage::UsageTables>);

impl keygate_core::gate::UsageCounter for Usage<'_> {
    fn count(&self, digest: &keygate_core::digest::Digest, allowed: bool) {
        if let Some(tables) = self.0 {
            tables.count(digest, allowed);
        }
    }
}

/// The rate limits every worker thread shares: each limit exact for the whole process.
struct SharedLimits<'a>(&'a OnceLock<LimitTable>);

impl RateLimits for SharedLimits<'_> {
    fn enforcers(&self) -> u32 {
        1
    }

    fn admit(&self, key_id: &str, limit: &RateLimit, now_us: u64) -> Checked {
        self.0
            .get_or_init(|| LimitTable::new(DEFAULT_SLOTS))
            .admit(key_id, limit, now_us)
    }
}

/// Microseconds on a clock that never goes back, from the module's first use of it.
fn monotonic_micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // Never 0: the limiter reads 0 as "not seen yet".
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// The request being judged, as the gate sees Envoy.
struct NativeHost<'s, 'hook> {
    stream: &'s mut abi::Stream<'hook>,
    counters: &'s [Option<MetricId>; Count::LEN],
    /// What the gate kept for the response.
    response: Option<LimitHeaders>,
}

impl Host for NativeHost<'_, '_> {
    type Headers<'h>
        = Headers<'h>
    where
        Self: 'h;

    fn request_headers(&self) -> Result<Headers<'_>, HeadersUnreadable> {
        self.stream
            .request_headers()
            .map(Headers)
            .map_err(|_| HeadersUnreadable)
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.stream
            .set_request_header(name.as_bytes(), value.as_bytes());
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        self.stream
            .add_request_header(name.as_bytes(), value.as_bytes());
    }

    fn remove_request_header(&mut self, name: &str) {
        self.stream.remove_request_header(name.as_bytes());
    }

    fn send_answer(&mut self, answer: &Answer, extra: &[(&str, &str)]) {
        send(self.stream, answer, extra);
    }

    fn set_response_headers(&mut self, headers: LimitHeaders) {
        self.response = Some(headers);
    }

    fn count(&mut self, event: Count) {
        if let Some(Some(id)) = self.counters.get(event.index()) {
            self.stream.increment_counter(*id);
        }
    }

    fn now_unix_seconds(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(u64::MAX, |d| d.as_secs())
    }

    fn now_micros(&self) -> u64 {
        monotonic_micros()
    }
}

struct Headers<'s>(abi::RequestHeaders<'s>);

impl keygate_core::gate::HeaderSource for Headers<'_> {
    type Pairs<'a>
        = abi::HeaderPairs<'a>
    where
        Self: 'a;

    fn pairs(&self) -> abi::HeaderPairs<'_> {
        self.0.pairs()
    }
}

impl keygate_core::gate::KeyLookup for Snapshot {
    type Held = ();

    fn find<'a>(
        &'a self,
        digest: &keygate_core::digest::Digest,
        _: &'a mut (),
    ) -> Option<keygate_core::bucket::KeyInfo<'a>> {
        Snapshot::find(self, digest)
    }
}
