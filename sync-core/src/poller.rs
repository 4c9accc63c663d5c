//! The poller both fetchers run: when to ask keygatectl, what to ask (a delta since the
//! version held, or the whole map), what to do with the answer, and which replica to ask
//! next. It does no I/O: the wasm `keygate_sync` service (Envoy's HTTP callout) and the
//! native module's thread (an HTTP client) carry the request out and the answer back.
//!
//! Every poll is one `next_request` and then exactly one `on_answer` or `on_failure`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::binary::{BodyReader, BINARY_CONTENT_TYPE};
use crate::message::parse_message;
use crate::settings::FetchSettings;
use crate::state::{Applied, BucketStore, Refusal, SyncState};

/// Retry delay after a failed poll, capped by the configured interval.
pub const RETRY_MS: u64 = 1000;
/// Largest answer accepted; anything bigger is refused unread.
pub const MAX_BODY_BYTES: usize = 512 << 20;
/// The response header naming the store an answer came from (its lineage).
pub const STORE_HEADER: &str = "keygate-store";
/// What a fetcher accepts: a full map binary (a million keys), deltas as JSON.
pub const ACCEPT: &str = "application/x-keygate-map, application/json";

/// The sync stats, one name each, kept by both fetchers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncCounter {
    Fetches,
    Updates,
    NotModified,
    Errors,
    Refused,
    /// Full maps taken from another store than the one held (a restore, a migration).
    LineageChanges,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncGauge {
    Version,
    Keys,
    AgeMs,
}

impl SyncCounter {
    pub const ALL: [SyncCounter; 6] = [
        SyncCounter::Fetches,
        SyncCounter::Updates,
        SyncCounter::NotModified,
        SyncCounter::Errors,
        SyncCounter::Refused,
        SyncCounter::LineageChanges,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SyncCounter::Fetches => "keygate.sync.fetches",
            SyncCounter::Updates => "keygate.sync.updates",
            SyncCounter::NotModified => "keygate.sync.not_modified",
            SyncCounter::Errors => "keygate.sync.errors",
            SyncCounter::Refused => "keygate.sync.refused",
            SyncCounter::LineageChanges => "keygate.sync.lineage_changes",
        }
    }
}

impl SyncGauge {
    pub const ALL: [SyncGauge; 3] = [SyncGauge::Version, SyncGauge::Keys, SyncGauge::AgeMs];

    pub fn name(self) -> &'static str {
        match self {
            SyncGauge::Version => "keygate.sync.version",
            SyncGauge::Keys => "keygate.sync.keys",
            SyncGauge::AgeMs => "keygate.sync.age_ms",
        }
    }
}

/// Where a fetcher's stats go (Envoy's metrics, in both fetchers).
pub trait SyncStats {
    fn bump(&mut self, counter: SyncCounter);
    fn set(&mut self, gauge: SyncGauge, value: u64);
}

/// One poll to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    /// Which of the fetcher's replicas to ask (always 0 with one).
    pub replica: usize,
    /// Appended to the key-map path: empty for the whole map, else `?since=…&store=…`.
    pub query: String,
    /// `accept`, and `if-none-match` and `authorization` when they apply.
    pub headers: Vec<(&'static str, String)>,
}

/// What came back, as the fetcher read it off the answer's head.
#[derive(Debug, Clone, Copy)]
pub struct AnswerHead<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    /// The `keygate-store` header.
    pub store: Option<&'a [u8]>,
    pub body_len: usize,
}

/// What a poll came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new map is in the bucket store: publish it.
    Updated {
        version: u64,
        keys: usize,
        new_lineage: bool,
    },
    /// The map held is current.
    Unchanged,
    /// The answer was refused whole (invalid, or against a guard): the last good map
    /// keeps serving, and the next poll asks for the whole map.
    Refused(String),
    /// The replica did not answer usefully (down, timed out, 5xx, another status).
    Failed(String),
}

pub struct Poller {
    fetch: FetchSettings,
    replicas: usize,
    /// How often the host looks at the poller: a poll starts on the first look at or after
    /// its time, so waits are shortened by this much to stay within one interval.
    tick_ms: u64,
    state: SyncState,
    /// After a refused answer (or before any map), ask for the whole map.
    want_full: bool,
    rng: u64,
    /// The replica that answered last: asked first.
    preferred: usize,
    /// Replicas tried in the poll under way, and the one asked now.
    tried: usize,
    in_flight: Option<usize>,
    next_at_ms: u64,
    last_success_ms: Option<u64>,
    /// Bumped on every publish: what the wasm fetcher publishes for workers to notice a new
    /// map by (two lineages may share a version number).
    generation: u64,
}

impl Poller {
    /// A poller that polls at once. `seed` varies the jitter between fetchers (any value).
    pub fn new(
        fetch: FetchSettings,
        replicas: usize,
        tick_ms: u64,
        now_ms: u64,
        seed: u64,
    ) -> Poller {
        Poller {
            fetch,
            replicas: replicas.max(1),
            tick_ms,
            state: SyncState::default(),
            want_full: true,
            rng: seed | 1,
            preferred: 0,
            tried: 0,
            in_flight: None,
            next_at_ms: now_ms,
            last_success_ms: None,
            generation: 0,
        }
    }

    pub fn state(&self) -> &SyncState {
        &self.state
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Time since the last answer that left the map current; `None` before the first.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_success_ms.map(|at| now_ms.saturating_sub(at))
    }

    /// When the next poll is due.
    pub fn next_at_ms(&self) -> u64 {
        self.next_at_ms
    }

    /// The next poll, when one is due and none is under way.
    pub fn next_request(&mut self, now_ms: u64, stats: &mut impl SyncStats) -> Option<PollRequest> {
        if self.in_flight.is_some() || now_ms < self.next_at_ms {
            return None;
        }
        let replica = (self.preferred + self.tried) % self.replicas;
        self.in_flight = Some(replica);
        stats.bump(SyncCounter::Fetches);
        let mut headers = Vec::with_capacity(3);
        headers.push(("accept", ACCEPT.to_string()));
        let mut query = String::new();
        if let (false, Some(version)) = (self.want_full, self.state.version()) {
            let lineage = self.state.lineage();
            if lineage.is_empty() {
                query = format!("?since={version}");
                headers.push(("if-none-match", format!("\"{version}\"")));
            } else {
                query = format!("?since={version}&store={lineage}");
                headers.push(("if-none-match", format!("\"{lineage}:{version}\"")));
            }
        }
        if let Some(token) = &self.fetch.bearer_token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        Some(PollRequest {
            replica,
            query,
            headers,
        })
    }

    /// The poll under way got no answer (connection failed, reset, timed out).
    pub fn on_failure(&mut self, now_ms: u64, why: &str, stats: &mut impl SyncStats) -> Outcome {
        self.unavailable(now_ms, stats);
        Outcome::Failed(why.to_string())
    }

    /// The poll under way was answered: `body` reads the answer's body (`head.body_len`
    /// bytes), `store` is where the map's buckets are built.
    pub fn on_answer(
        &mut self,
        now_ms: u64,
        head: AnswerHead<'_>,
        body: &mut impl BodyReader,
        store: &mut impl BucketStore,
        stats: &mut impl SyncStats,
    ) -> Outcome {
        match head.status {
            304 => match self.lineage_of(head.store) {
                Ok(lineage)
                    if self.state.version().is_some() && lineage != self.state.lineage() =>
                {
                    self.refused(now_ms, Refusal::OtherLineage.to_string(), stats)
                }
                Ok(_) => {
                    stats.bump(SyncCounter::NotModified);
                    self.succeeded(now_ms);
                    Outcome::Unchanged
                }
                Err(why) => self.refused(now_ms, why, stats),
            },
            200 => self.apply(now_ms, head, body, store, stats),
            status if status >= 500 => {
                self.unavailable(now_ms, stats);
                Outcome::Failed(format!("answer status {status}"))
            }
            status => {
                // Another status (401: a wrong sync token, 404: a wrong path) is not for
                // another replica to mend.
                stats.bump(SyncCounter::Errors);
                self.schedule_retry(now_ms);
                Outcome::Failed(format!("answer status {status}"))
            }
        }
    }

    fn apply(
        &mut self,
        now_ms: u64,
        head: AnswerHead<'_>,
        body: &mut impl BodyReader,
        store: &mut impl BucketStore,
        stats: &mut impl SyncStats,
    ) -> Outcome {
        if head.body_len > MAX_BODY_BYTES {
            let why = format!(
                "answer of {} bytes refused (limit {MAX_BODY_BYTES})",
                head.body_len
            );
            return self.refused(now_ms, why, stats);
        }
        let lineage = match self.lineage_of(head.store) {
            Ok(lineage) => lineage,
            Err(why) => return self.refused(now_ms, why, stats),
        };
        let binary = head
            .content_type
            .is_some_and(|v| v.starts_with(BINARY_CONTENT_TYPE.as_bytes()));
        let guard = self.fetch.guard;
        let applied = if binary {
            self.state
                .apply_binary_full(body, head.body_len, lineage, store, guard)
                .map_err(|e| e.to_string())
        } else {
            let bytes = crate::binary::read_exactly(body, 0, head.body_len);
            parse_message(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|message| {
                    self.state
                        .apply(message, lineage, store, guard)
                        .map_err(|r| r.to_string())
                })
        };
        match applied {
            Ok(Applied::Updated {
                version,
                keys,
                new_lineage,
            }) => {
                // Stats first: whoever sees the new map finds them already set.
                stats.bump(SyncCounter::Updates);
                if new_lineage {
                    stats.bump(SyncCounter::LineageChanges);
                }
                stats.set(SyncGauge::Version, version);
                stats.set(SyncGauge::Keys, keys as u64);
                stats.set(SyncGauge::AgeMs, 0);
                self.generation = self.generation.wrapping_add(1);
                self.want_full = false;
                self.succeeded(now_ms);
                Outcome::Updated {
                    version,
                    keys,
                    new_lineage,
                }
            }
            Ok(Applied::Unchanged) => {
                self.want_full = false;
                self.succeeded(now_ms);
                Outcome::Unchanged
            }
            Err(why) => self.refused(now_ms, why, stats),
        }
    }

    /// The store an answer names: empty when it names none (an older keygatectl).
    fn lineage_of<'a>(&self, store: Option<&'a [u8]>) -> Result<&'a str, String> {
        let Some(store) = store else {
            return Ok("");
        };
        let valid = (1..=64).contains(&store.len())
            && store
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        match core::str::from_utf8(store) {
            Ok(text) if valid => Ok(text),
            _ => Err(format!(
                "the {STORE_HEADER} header is not a store id (1-64 letters, digits, '-', '_')"
            )),
        }
    }

    fn refused(&mut self, now_ms: u64, why: String, stats: &mut impl SyncStats) -> Outcome {
        stats.bump(SyncCounter::Refused);
        stats.bump(SyncCounter::Errors);
        self.want_full = true;
        self.schedule_retry(now_ms);
        Outcome::Refused(why)
    }

    /// The replica asked could not answer: the next one is asked at once, until every
    /// replica was tried in this poll.
    fn unavailable(&mut self, now_ms: u64, stats: &mut impl SyncStats) {
        stats.bump(SyncCounter::Errors);
        self.in_flight = None;
        self.tried += 1;
        if self.tried < self.replicas {
            self.next_at_ms = now_ms;
        } else {
            self.schedule_retry(now_ms);
        }
    }

    fn succeeded(&mut self, now_ms: u64) {
        if let Some(replica) = self.in_flight.take() {
            self.preferred = replica;
        }
        self.tried = 0;
        self.last_success_ms = Some(now_ms);
        let wait = self.jittered(self.fetch.interval_ms);
        self.next_at_ms = now_ms.saturating_add(wait);
    }

    fn schedule_retry(&mut self, now_ms: u64) {
        self.in_flight = None;
        self.tried = 0;
        let wait = self.jittered(self.fetch.interval_ms.min(RETRY_MS));
        self.next_at_ms = now_ms.saturating_add(wait);
    }

    /// The wait before the next poll: `base` less up to the jitter share of it (so fleets do
    /// not poll in step), less one host tick, so a poll starts within `base` of the last
    /// answer, never later. xorshift: no need for a secure source.
    fn jittered(&mut self, base: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng % 10_001) as f64 / 10_000.0;
        poll_wait(base, self.fetch.jitter, unit, self.tick_ms)
    }
}

/// `base` less `unit` (0..=1) of the jitter share, less one tick.
fn poll_wait(base: u64, jitter: f64, unit: f64, tick_ms: u64) -> u64 {
    let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
    ((base as f64 * factor) as u64).saturating_sub(tick_ms)
}

#[cfg(test)]
mod tests;
