//! The poller both fetchers run: when to ask keygatectl, what to ask (a delta since the
//! version held, or the whole map), what to do with the answer, and which replica to ask
//! next. It does no I/O: the wasm `keygate_sync` service (Envoy's HTTP callout) and the
//! native module's thread (an HTTP client) carry the request out and the answer back.
//!
//! Every request is one `next_request` and then exactly one `on_answer` or `on_failure`.
//!
//! Watching (the default): a request holding a version asks keygatectl to hold it
//! (`&wait=<seconds>`) until the map passes that version, and the next goes out as soon as
//! an answer is in, so a change reaches the fetcher as fast as the network carries it. What
//! can go wrong, and what the poller does:
//! - No answer (down, reset, timed out, 5xx): asked again at once, then after the interval,
//!   doubling up to `MAX_BACKOFF_MS`. The last good map serves throughout.
//! - Something between here and keygatectl cuts long requests (an idle timeout): two
//!   watches in a row cut after being held a while make the next ones shorter, for
//!   `SHORT_WAIT_MS`.
//! - A keygatectl or a cache that ignores `wait` answers a watch at once: an unchanged
//!   answer that came before half its wait sends the next request after the interval, so
//!   the fetcher polls instead of spinning. One that refuses `wait` (400) is polled without
//!   it for `NO_WATCH_MS`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::binary::{BodyReader, BINARY_CONTENT_TYPE};
use crate::message::parse_message;
use crate::settings::FetchSettings;
use crate::state::{Applied, BucketStore, Refusal, SyncState};

/// Retry delay after a failed poll (polling), capped by the configured interval.
pub const RETRY_MS: u64 = 1000;
/// Watching: the longest delay between two tries while keygatectl cannot be reached (unless
/// the interval is longer).
pub const MAX_BACKOFF_MS: u64 = 10_000;
/// A watch that fails after being held this long was cut on its way, not refused.
pub const CUT_AFTER_MS: u64 = 1000;
/// How long watches stay shorter after two were cut in a row, before the configured wait is
/// tried again (the path may have changed).
pub const SHORT_WAIT_MS: u64 = 10 * 60 * 1000;
/// How long a fetcher whose watch keygatectl refused (400) polls without `wait`.
pub const NO_WATCH_MS: u64 = 10 * 60 * 1000;
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

/// The host's metric id of each sync counter and gauge, defined once by a fetcher (an id
/// the host would not give is left out: its stat is then not kept).
#[derive(Debug, Clone, Copy)]
pub struct SyncMetricIds<Id> {
    counters: [Option<Id>; SyncCounter::ALL.len()],
    gauges: [Option<Id>; SyncGauge::ALL.len()],
}

impl<Id: Copy> SyncMetricIds<Id> {
    /// Defines every stat by name with the host's `counter` and `gauge` calls.
    pub fn define(
        mut counter: impl FnMut(&'static str) -> Option<Id>,
        mut gauge: impl FnMut(&'static str) -> Option<Id>,
    ) -> SyncMetricIds<Id> {
        SyncMetricIds {
            counters: SyncCounter::ALL.map(|c| counter(c.name())),
            gauges: SyncGauge::ALL.map(|g| gauge(g.name())),
        }
    }

    pub fn counter(&self, counter: SyncCounter) -> Option<Id> {
        let at = SyncCounter::ALL.iter().position(|c| *c == counter)?;
        self.counters.get(at).copied().flatten()
    }

    pub fn gauge(&self, gauge: SyncGauge) -> Option<Id> {
        let at = SyncGauge::ALL.iter().position(|g| *g == gauge)?;
        self.gauges.get(at).copied().flatten()
    }
}

/// Where a fetcher's stats go (Envoy's metrics, in both fetchers).
pub trait SyncStats {
    fn bump(&mut self, counter: SyncCounter);
    fn set(&mut self, gauge: SyncGauge, value: u64);
}

/// One request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollRequest {
    /// Which of the fetcher's replicas to ask (always 0 with one).
    pub replica: usize,
    /// Appended to the key-map path: empty for the whole map, else `?since=…&store=…`, and
    /// `&wait=<seconds>` for a watch.
    pub query: String,
    /// `accept`, and `if-none-match` and `authorization` when they apply.
    pub headers: Vec<(&'static str, String)>,
    /// How long keygatectl may hold this request (0: a poll, answered at once).
    pub wait_ms: u64,
    /// How long to wait for the whole answer: the wait, and `timeout_ms` beyond it.
    pub timeout_ms: u64,
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

/// The request under way.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    replica: usize,
    sent_ms: u64,
    /// The wait it asked for (0: none).
    wait_ms: u64,
}

impl InFlight {
    fn held_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.sent_ms)
    }

    /// A watch that keygatectl answered unchanged well before its wait ended: one that
    /// ignores `wait` (an older keygatectl, a cache on the way).
    fn answered_early(&self, now_ms: u64) -> bool {
        self.wait_ms > 0 && self.held_ms(now_ms) < self.wait_ms / 2
    }
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
    /// Replicas tried in the poll under way, and the request out now.
    tried: usize,
    in_flight: Option<InFlight>,
    /// Rounds in a row in which no replica answered (the backoff while watching).
    failed_rounds: u32,
    /// How long the last request had been held when it was cut (a watch that failed after
    /// `CUT_AFTER_MS`); cleared by anything else.
    last_cut_held_ms: Option<u64>,
    /// The wait watches ask for now, in seconds: the configured one, or a shorter one until
    /// `full_wait_at_ms` after watches were cut.
    wait_s: u64,
    full_wait_at_ms: Option<u64>,
    /// After keygatectl refused a watch: no `wait` until then.
    no_watch_until_ms: Option<u64>,
    /// Something the host should log once (a change of how the poller watches).
    notice: Option<String>,
    /// Whether an early answer was logged already.
    early_noticed: bool,
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
            wait_s: fetch.wait_s,
            fetch,
            replicas: replicas.max(1),
            tick_ms,
            state: SyncState::default(),
            want_full: true,
            rng: seed | 1,
            preferred: 0,
            tried: 0,
            in_flight: None,
            failed_rounds: 0,
            last_cut_held_ms: None,
            full_wait_at_ms: None,
            no_watch_until_ms: None,
            notice: None,
            early_noticed: false,
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

    /// Time since the map was last known current; `None` before the first answer. A watch
    /// keygatectl holds keeps it current (a change would have ended the watch) until its
    /// wait is over; an answer late beyond that makes it grow.
    pub fn age_ms(&self, now_ms: u64) -> Option<u64> {
        let answered = self.last_success_ms?;
        let held = self
            .in_flight
            .filter(|f| f.wait_ms > 0)
            .map_or(0, |f| now_ms.min(f.sent_ms.saturating_add(f.wait_ms)));
        Some(now_ms.saturating_sub(answered.max(held)))
    }

    /// A change in how the poller watches, for the host to log (once each).
    pub fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }

    /// The wait watches ask for now, in seconds (shorter after cuts).
    pub fn wait_s(&self) -> u64 {
        self.wait_s
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
        if self.full_wait_at_ms.is_some_and(|at| now_ms >= at) {
            self.full_wait_at_ms = None;
            self.wait_s = self.fetch.wait_s;
        }
        if self.no_watch_until_ms.is_some_and(|at| now_ms >= at) {
            self.no_watch_until_ms = None;
        }
        let replica = (self.preferred + self.tried) % self.replicas;
        stats.bump(SyncCounter::Fetches);
        let mut headers = Vec::with_capacity(3);
        headers.push(("accept", ACCEPT.to_string()));
        let mut query = String::new();
        let mut wait_ms = 0;
        if let (false, Some(version)) = (self.want_full, self.state.version()) {
            let lineage = self.state.lineage();
            if lineage.is_empty() {
                query = format!("?since={version}");
                headers.push(("if-none-match", format!("\"{version}\"")));
            } else {
                query = format!("?since={version}&store={lineage}");
                headers.push(("if-none-match", format!("\"{lineage}:{version}\"")));
            }
            if self.watching() {
                let wait_s = self.jittered_wait_s();
                query.push_str(&format!("&wait={wait_s}"));
                wait_ms = wait_s * 1000;
            }
        }
        if let Some(token) = &self.fetch.bearer_token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        self.in_flight = Some(InFlight {
            replica,
            sent_ms: now_ms,
            wait_ms,
        });
        Some(PollRequest {
            replica,
            query,
            headers,
            wait_ms,
            timeout_ms: wait_ms.saturating_add(self.fetch.timeout_ms),
        })
    }

    /// Whether requests that hold a version are watches now.
    fn watching(&self) -> bool {
        self.fetch.watch && self.no_watch_until_ms.is_none()
    }

    /// Whether the next request will be a watch (only a watch may follow an unchanged
    /// answer at once: keygatectl holds it).
    fn next_is_watch(&self) -> bool {
        self.watching() && !self.want_full && self.state.version().is_some()
    }

    /// The request under way got no answer (connection failed, reset, timed out).
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
                    self.succeeded(now_ms, false);
                    Outcome::Unchanged
                }
                Err(why) => self.refused(now_ms, why, stats),
            },
            200 => self.apply(now_ms, head, body, store, stats),
            status if status >= 500 => {
                self.unavailable(now_ms, stats);
                Outcome::Failed(format!("answer status {status}"))
            }
            // What a keygatectl from before watches answers a parameter it does not know.
            400 if self.in_flight.is_some_and(|f| f.wait_ms > 0) => {
                self.watch_refused(now_ms, stats)
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
                self.succeeded(now_ms, true);
                Outcome::Updated {
                    version,
                    keys,
                    new_lineage,
                }
            }
            Ok(Applied::Unchanged) => {
                self.want_full = false;
                self.succeeded(now_ms, false);
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
    /// replica was tried in this round. Then polling retries after a short delay; watching
    /// retries at once, then backs off.
    fn unavailable(&mut self, now_ms: u64, stats: &mut impl SyncStats) {
        stats.bump(SyncCounter::Errors);
        let shortened = self.note_cut(now_ms);
        self.in_flight = None;
        self.tried += 1;
        if self.tried < self.replicas {
            self.next_at_ms = now_ms;
            return;
        }
        self.tried = 0;
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        if !self.fetch.watch {
            self.schedule_retry(now_ms);
        } else if shortened || self.failed_rounds == 1 {
            self.next_at_ms = now_ms;
        } else {
            let wait = self.jittered(self.backoff_ms());
            self.next_at_ms = now_ms.saturating_add(wait);
        }
    }

    /// keygatectl refused a watch: polls without `wait` for `NO_WATCH_MS`, the first at once.
    fn watch_refused(&mut self, now_ms: u64, stats: &mut impl SyncStats) -> Outcome {
        stats.bump(SyncCounter::Errors);
        self.in_flight = None;
        self.tried = 0;
        self.no_watch_until_ms = Some(now_ms.saturating_add(NO_WATCH_MS));
        self.next_at_ms = now_ms;
        self.notice = Some(format!(
            "keygatectl refused a watch (400: one from before watches?): polling every {} ms \
             for the next {} minutes",
            self.fetch.interval_ms,
            NO_WATCH_MS / 60_000
        ));
        Outcome::Failed("answer status 400 to a watch".to_string())
    }

    /// The delay after `failed_rounds` (2 or more) failed rounds while watching: the
    /// interval, doubling each round, up to `MAX_BACKOFF_MS` (or the interval, if longer).
    fn backoff_ms(&self) -> u64 {
        let doublings = self.failed_rounds.saturating_sub(2).min(16);
        let cap = MAX_BACKOFF_MS.max(self.fetch.interval_ms);
        self.fetch
            .interval_ms
            .saturating_mul(1u64 << doublings)
            .min(cap)
    }

    /// Records whether the request that just failed was a watch cut after being held a
    /// while. Two in a row make watches shorter than the shorter of them was held (at least
    /// a second) for `SHORT_WAIT_MS`: true when it did so.
    fn note_cut(&mut self, now_ms: u64) -> bool {
        let cut = self
            .in_flight
            .filter(|f| f.wait_ms > 0 && f.held_ms(now_ms) >= CUT_AFTER_MS)
            .map(|f| f.held_ms(now_ms).min(f.wait_ms));
        let (Some(held), Some(before)) = (cut, self.last_cut_held_ms) else {
            self.last_cut_held_ms = cut;
            return false;
        };
        self.last_cut_held_ms = None;
        let shorter_s = (held.min(before) / 2 / 1000).max(1);
        if shorter_s >= self.wait_s {
            return false;
        }
        self.wait_s = shorter_s;
        self.full_wait_at_ms = Some(now_ms.saturating_add(SHORT_WAIT_MS));
        self.notice = Some(format!(
            "two watches in a row were cut after about {} s (an idle timeout between here and \
             keygatectl?): watching {shorter_s} s at a time for the next {} minutes",
            held.min(before) / 1000,
            SHORT_WAIT_MS / 60_000
        ));
        true
    }

    /// An answer that left the map current. Polling: the next poll one interval later.
    /// Watching: the next watch at once, unless this answer was an unchanged map that came
    /// well before the wait asked for (keygatectl ignores `wait`: poll instead of spinning)
    /// or the fetcher cannot watch now.
    fn succeeded(&mut self, now_ms: u64, updated: bool) {
        let flight = self.in_flight.take();
        if let Some(flight) = flight {
            self.preferred = flight.replica;
        }
        self.tried = 0;
        self.failed_rounds = 0;
        self.last_cut_held_ms = None;
        self.last_success_ms = Some(now_ms);
        let early = flight.is_some_and(|f| f.answered_early(now_ms));
        let was_watch = flight.is_some_and(|f| f.wait_ms > 0);
        let at_once = self.fetch.watch
            && (updated || (was_watch && !early) || (!was_watch && self.next_is_watch()));
        if at_once {
            self.next_at_ms = now_ms;
            return;
        }
        if early && !updated && !self.early_noticed {
            self.early_noticed = true;
            self.notice = Some(format!(
                "keygatectl answered a watch at once, unchanged (one that ignores wait, or a \
                 cache on the way?): asking again every {} ms while it does",
                self.fetch.interval_ms
            ));
        }
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
    /// answer, never later.
    fn jittered(&mut self, base: u64) -> u64 {
        let unit = self.next_unit();
        poll_wait(base, self.fetch.jitter, unit, self.tick_ms)
    }

    /// The wait a watch asks for: the current one less up to the jitter share, in whole
    /// seconds, at least one (so that watches a change re-armed together do not all end
    /// together).
    fn jittered_wait_s(&mut self) -> u64 {
        let unit = self.next_unit();
        watch_wait_s(self.wait_s, self.fetch.jitter, unit)
    }

    /// 0..=1, from xorshift: no need for a secure source.
    fn next_unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 10_001) as f64 / 10_000.0
    }
}

/// `wait_s` less `unit` (0..=1) of the jitter share, in whole seconds, at least 1.
fn watch_wait_s(wait_s: u64, jitter: f64, unit: f64) -> u64 {
    let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
    (((wait_s * 1000) as f64 * factor) as u64 / 1000).max(1)
}

/// `base` less `unit` (0..=1) of the jitter share, less one tick.
fn poll_wait(base: u64, jitter: f64, unit: f64, tick_ms: u64) -> u64 {
    let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
    ((base as f64 * factor) as u64).saturating_sub(tick_ms)
}

#[cfg(test)]
mod tests;
