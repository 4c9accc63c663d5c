//! The request path, once for both front ends: read the request's headers, decide, then
//! either send the request on with the caller's identity or answer it. The gate does no I/O
//! of its own: everything it asks of Envoy goes through [`Host`], and where keys are looked
//! up through [`KeyLookup`], so the wasm filter and the native module differ only in how they
//! carry bytes (and the gate is tested here, against a mock host).
//!
//! Generic, not `dyn`: each front end gets the gate compiled for its own host, with no
//! indirect call on the request path.

use crate::prelude::*;

use crate::bucket::KeyInfo;
use crate::config::FilterConfig;
use crate::decision::{decide, Decision, Sources};
use crate::denial::Denial;
use crate::digest::Digest;
use crate::digest_cache::{self, DigestCache};
use crate::header_pairs;
use crate::identity;
use crate::key::{KeyFormatError, KeyKind};
use crate::keymap::KeyMap;
use crate::rate_limit::{policy_header, state_header, Admission, Checked, LimitHeaders, RateLimit};
use crate::request_scan::scan;

/// The request's headers, as the host lends them for one decision.
pub trait HeaderSource {
    type Pairs<'a>: Iterator<Item = (&'a [u8], &'a [u8])>
    where
        Self: 'a;
    /// `(name, value)` pairs in order, names lower-case as Envoy gives them.
    fn pairs(&self) -> Self::Pairs<'_>;
}

/// The host could not give the request's headers (a host failure or a malformed buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersUnreadable;

/// What the gate asks of Envoy for one request. Header changes take `&mut self` and the
/// headers borrow `&self`, so no header view can outlive a change to the headers.
pub trait Host {
    type Headers<'h>: HeaderSource
    where
        Self: 'h;
    fn request_headers(&self) -> Result<Self::Headers<'_>, HeadersUnreadable>;
    /// Replaces every value of `name` with `value`.
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a value (cheaper than a replace where Envoy holds none).
    fn add_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    /// Answers the request from Envoy with `answer` and `extra` headers after its own; the
    /// upstream never sees it.
    fn send_answer(&mut self, answer: &Answer, extra: &[(&str, &str)]);
    /// Keeps `headers` for this request's response, which gets them when its headers
    /// pass (replacing any of those names the upstream sent). Asked only with the
    /// `rate_limit_headers` setting on, for an admitted request of a limited key.
    fn set_response_headers(&mut self, headers: LimitHeaders);
    fn count(&mut self, event: Count);
    /// Unix seconds; asked only when a key has an expiry.
    fn now_unix_seconds(&self) -> u64;
    /// Microseconds on a clock that only moves forward where the host has one; asked only
    /// when a key has a rate limit.
    fn now_micros(&self) -> u64;
}

/// Where the rate limits' state is kept: a table shared by every worker (native), or one
/// per worker (wasm), each enforcing its share of a limit.
pub trait RateLimits {
    /// How many independent tables share each limit.
    fn enforcers(&self) -> u32;
    fn admit(&self, key_id: &str, limit: &RateLimit, now_us: u64) -> Checked;
}

/// Where per-key usage is counted (a worker's `usage::UsageTable`), for keys a request was
/// judged as: allowed, or refused after the key was known.
pub trait UsageCounter {
    fn count(&self, digest: &Digest, allowed: bool);
}

/// No usage counting (static mode: nobody to report to).
pub struct Uncounted;

impl UsageCounter for Uncounted {
    fn count(&self, _: &Digest, _: bool) {}
}

/// No rate limits (tests, and front ends without them).
pub struct Unlimited;

impl RateLimits for Unlimited {
    fn enforcers(&self) -> u32 {
        1
    }
    fn admit(&self, _: &str, _: &RateLimit, _: u64) -> Checked {
        Checked::Overflow
    }
}

/// Where a request's key is looked up: a synced map's current version, or a `KeyMap`.
pub trait KeyLookup {
    /// What a lookup keeps alive while the request uses the entry it found (the wasm
    /// filter's copy of a shared-data bucket); `()` where entries are borrowed in place.
    type Held: Default;
    fn find<'a>(&'a self, digest: &Digest, held: &'a mut Self::Held) -> Option<KeyInfo<'a>>;
}

impl KeyLookup for KeyMap {
    type Held = ();
    fn find<'a>(&'a self, digest: &Digest, _: &'a mut ()) -> Option<KeyInfo<'a>> {
        self.get(digest).map(|entry| entry.info())
    }
}

/// What the front end tells Envoy after the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the request on (with the identity headers set).
    Continue,
    /// The request was answered here; stop it.
    Stop,
}

/// An outcome worth a counter: one per denial, and allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Allowed,
    Denied(Denial),
    /// A limited key let through because its limiter had no room for it (see
    /// `LimitTable`).
    LimitOverflow,
}

impl Count {
    /// How many counters there are, for tables indexed by [`Count::index`].
    pub const LEN: usize = Denial::ALL.len() + 2;

    /// Every counter, in index order.
    pub fn all() -> impl Iterator<Item = Count> {
        Denial::ALL
            .into_iter()
            .map(Count::Denied)
            .chain([Count::Allowed, Count::LimitOverflow])
    }

    pub fn index(self) -> usize {
        match self {
            Count::Denied(denial) => denial.index(),
            Count::Allowed => Denial::ALL.len(),
            Count::LimitOverflow => Denial::ALL.len() + 1,
        }
    }

    /// The stat's name (Envoy prefixes it: `wasmcustom.`, `dynamicmodulescustom.`).
    pub fn name(self) -> String {
        match self {
            Count::Allowed => "keygate.allowed".to_owned(),
            Count::Denied(denial) => format!("keygate.denied.{}", denial.code()),
            Count::LimitOverflow => "keygate.rate_limit.overflow".to_owned(),
        }
    }
}

/// One local answer, built once per configuration: both front ends send these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub denial: Denial,
    pub status: u32,
    /// Envoy's response-code details (`%RESPONSE_CODE_DETAILS%`).
    pub details: &'static str,
    pub headers: Vec<(String, String)>,
    /// `headers` in the proxy-wasm ABI's serialized form.
    pub serialized_headers: Vec<u8>,
    pub body: String,
}

impl Answer {
    /// The answer for `denial`; a 401 challenges with `www_authenticate`.
    pub fn new(denial: Denial, www_authenticate: &str) -> Answer {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        match denial.status() {
            401 => headers.push(("www-authenticate".to_owned(), www_authenticate.to_owned())),
            503 => headers.push(("retry-after".to_owned(), "1".to_owned())),
            _ => {}
        }
        let pairs: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        Answer {
            denial,
            status: denial.status(),
            details: denial.details(),
            serialized_headers: header_pairs::serialize(&pairs),
            headers,
            body: denial.body(),
        }
    }
}

/// What one worker keeps between requests (one per wasm VM, one per native worker thread).
pub struct Worker {
    /// Kinds and digests of recently presented keys; `None` without a random secret, and
    /// then every request is hashed afresh.
    digests: Option<DigestCache>,
}

impl Worker {
    /// `secret` from a secure random source, for the digest cache's tags.
    pub fn new(secret: Option<[u8; 16]>) -> Worker {
        Worker {
            digests: secret.map(|s| DigestCache::new(s, digest_cache::DEFAULT_SLOTS)),
        }
    }

    fn identify(&mut self, key: &str) -> Result<(KeyKind, Digest), KeyFormatError> {
        match &mut self.digests {
            Some(cache) => cache.identify(key),
            None => digest_cache::identify(key),
        }
    }
}

/// One filter configuration's request path.
pub struct Gate {
    config: FilterConfig,
    /// Sync mode: the keys come from a synced map; until one is served, from `config.keys`
    /// (bootstrap keys), and with none of those every request is refused (503).
    sync_mode: bool,
    /// By `Denial::index`.
    answers: Vec<Answer>,
}

impl Gate {
    pub fn new(config: FilterConfig, sync_mode: bool) -> Gate {
        let answers = Denial::ALL
            .iter()
            .map(|d| Answer::new(*d, &config.settings.www_authenticate))
            .collect();
        Gate {
            config,
            sync_mode,
            answers,
        }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    pub fn answer(&self, denial: Denial) -> &Answer {
        // `answers` holds one per denial, by index.
        &self.answers[denial.index()]
    }

    /// Judges one request. `synced` is the synced map's current version, when one is served.
    pub fn on_request_headers<H: Host, L: KeyLookup, R: RateLimits, U: UsageCounter>(
        &self,
        host: &mut H,
        synced: Option<&L>,
        worker: &mut Worker,
        limits: &R,
        usage: &U,
    ) -> Verdict {
        let settings = &self.config.settings;
        // Outlives the decision, which may borrow the entry it found.
        let mut held = L::Held::default();
        let held = &mut held;
        // The digest of the key the lookup found, for its usage.
        let mut found: Option<Digest> = None;
        let found_ref = &mut found;
        let (decision, sent) = {
            let Ok(headers) = host.request_headers() else {
                return self.deny(host, Denial::MalformedCredentials, 0);
            };
            // The test-only build's one panic, which the fault suites ask for.
            #[cfg(feature = "fault-injection")]
            #[allow(clippy::panic)]
            if headers
                .pairs()
                .any(|pair| pair == (&b"x-keygate-fault"[..], &b"trap"[..]))
            {
                panic!("fault injection: trap requested");
            }
            let scanned = scan(headers.pairs(), &settings.stripped_headers);
            let keys = match synced {
                Some(map) => Keys::Synced(map),
                None if self.sync_mode && self.config.keys.is_empty() => Keys::None,
                None => Keys::Config(&self.config.keys),
            };
            let decision = match keys {
                Keys::None => Decision::Deny(Denial::KeyMapUnavailable),
                keys => {
                    let sources = Sources {
                        identify: |key: &str| worker.identify(key),
                        lookup: lookup_once(move |digest: &Digest| {
                            let entry = keys.find(digest, held);
                            if entry.is_some() {
                                *found_ref = Some(*digest);
                            }
                            entry
                        }),
                        now: || host.now_unix_seconds(),
                    };
                    decide(settings, sources, &scanned.request())
                }
            };
            (decision, scanned.identity_sent)
        };
        // A request counts for its key when the key was known: allowed (or refused by its
        // limit), or refused for what the key may not do or no longer is.
        let counts_for_key = match &decision {
            Decision::Allow(_) => true,
            Decision::Deny(denial) => matches!(
                denial,
                Denial::ExpiredApiKey
                    | Denial::DisabledApiKey
                    | Denial::InsufficientPermissions
                    | Denial::WrongEnvironment
            ),
        };
        let verdict = match decision {
            Decision::Allow(entry) => match entry.limit {
                Some(limit) => self.within_limit(host, &entry, &limit, limits, sent),
                None => self.forward(host, &entry, sent),
            },
            Decision::Deny(denial) => self.deny(host, denial, sent),
        };
        if let (Some(digest), true) = (found, counts_for_key) {
            usage.count(&digest, verdict == Verdict::Continue);
        }
        verdict
    }

    /// A limited key's request: forwarded while within its limit (with the rate-limit
    /// headers kept for its response when `rate_limit_headers` is on), else 429 with
    /// `Retry-After` and the rate-limit headers.
    fn within_limit<H: Host, R: RateLimits>(
        &self,
        host: &mut H,
        entry: &KeyInfo<'_>,
        limit: &RateLimit,
        limits: &R,
        sent: u16,
    ) -> Verdict {
        let limit = limit.share(limits.enforcers());
        match limits.admit(entry.key_id, &limit, host.now_micros()) {
            Checked::Judged(admitted @ Admission::Admitted { .. }) => {
                if self.config.settings.rate_limit_headers {
                    host.set_response_headers(LimitHeaders::new(&limit, &admitted));
                }
            }
            // The limiter has no state for the key, so nothing to tell: no headers.
            Checked::Overflow => host.count(Count::LimitOverflow),
            Checked::Judged(limited @ Admission::Limited { retry_after_s }) => {
                self.remove_sent(host, sent, 0);
                let retry_after = retry_after_s.to_string();
                let policy = policy_header(&limit);
                let state = state_header(&limited);
                let extra = [
                    ("retry-after", retry_after.as_str()),
                    (LimitHeaders::POLICY, policy.as_str()),
                    (LimitHeaders::STATE, state.as_str()),
                ];
                host.send_answer(self.answer(Denial::RateLimited), &extra);
                host.count(Count::Denied(Denial::RateLimited));
                return Verdict::Stop;
            }
        }
        self.forward(host, entry, sent)
    }

    /// Sets the identity headers and removes the credential. A header the client sent is
    /// replaced (every copy goes); one it did not send is added, which costs Envoy less.
    /// Client copies of identity names this configuration does not set are removed.
    fn forward<H: Host>(&self, host: &mut H, entry: &KeyInfo<'_>, sent: u16) -> Verdict {
        let settings = &self.config.settings;
        identity::for_each_header(&settings.identity_headers, entry, |slot, name, value| {
            if was_sent(sent, slot) {
                host.set_request_header(name, value);
            } else {
                host.add_request_header(name, value);
            }
        });
        let set = settings.identity_headers.names().len();
        self.remove_sent(host, sent, set);
        if !settings.keep_authorization {
            host.remove_request_header("authorization");
        }
        host.count(Count::Allowed);
        Verdict::Continue
    }

    /// Answers with keygate's JSON body. The access log reads request headers, so identity
    /// headers a refused client sent are removed first.
    fn deny<H: Host>(&self, host: &mut H, denial: Denial, sent: u16) -> Verdict {
        self.remove_sent(host, sent, 0);
        host.send_answer(self.answer(denial), &[]);
        host.count(Count::Denied(denial));
        Verdict::Stop
    }

    /// Removes the stripped names from `from` on that the client sent.
    fn remove_sent<H: Host>(&self, host: &mut H, sent: u16, from: usize) {
        if sent == 0 {
            return;
        }
        let stripped = &self.config.settings.stripped_headers;
        for (slot, name) in stripped.iter().enumerate().skip(from) {
            if was_sent(sent, slot) {
                host.remove_request_header(name);
            }
        }
    }
}

/// Makes the lookup closure `FnOnce`: it hands the request's `held` borrow to the entry it
/// returns, which only a closure called once may do.
fn lookup_once<'a, F>(f: F) -> F
where
    F: FnOnce(&Digest) -> Option<KeyInfo<'a>>,
{
    f
}

fn was_sent(sent: u16, slot: usize) -> bool {
    slot < 16 && sent & (1 << slot) != 0
}

/// The keys a request is judged against.
enum Keys<'a, L> {
    Synced(&'a L),
    Config(&'a KeyMap),
    None,
}

impl<L> Clone for Keys<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L> Copy for Keys<'_, L> {}

impl<'a, L: KeyLookup> Keys<'a, L> {
    fn find(self, digest: &Digest, held: &'a mut L::Held) -> Option<KeyInfo<'a>> {
        match self {
            Keys::Synced(map) => map.find(digest, held),
            Keys::Config(map) => map.get(digest).map(|entry| entry.info()),
            Keys::None => None,
        }
    }
}

#[cfg(test)]
mod tests;
