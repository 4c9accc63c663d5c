//! Per-key rate limits: `requests` per second or minute, with bursts up to `burst`, enforced
//! by the generic cell rate algorithm (GCRA). A key's whole state is one number, its
//! *theoretical arrival time* (TAT, microseconds): the native module keeps it in an atomic
//! shared by every worker, the wasm filter in each worker VM. A request is admitted when the
//! TAT it would move to is at most `burst` emission intervals ahead of now.
//!
//! Why GCRA rather than a token bucket with a refill timestamp: one word of state, updated
//! by one compare-and-swap, so many threads can share it without a lock.

use crate::prelude::*;

/// How long a limit's window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Second,
    Minute,
}

impl Period {
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
        }
    }
}

/// The most requests a limit may name per period.
pub const MAX_REQUESTS: u32 = 1_000_000;

/// A key's limit: `requests` per `period`, up to `burst` at once (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub requests: u32,
    pub period: Period,
    pub burst: u32,
}

/// Why a limit's numbers were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    Requests,
    Burst,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            LimitError::Requests => "requests must be between 1 and 1000000",
            LimitError::Burst => "burst must be between 1 and 1000000",
        })
    }
}

impl RateLimit {
    /// A limit with validated numbers; `burst` defaults to `requests`.
    pub fn new(requests: u64, period: Period, burst: Option<u64>) -> Result<RateLimit, LimitError> {
        let in_range = |n: u64| (1..=u64::from(MAX_REQUESTS)).contains(&n);
        if !in_range(requests) {
            return Err(LimitError::Requests);
        }
        let burst = burst.unwrap_or(requests);
        if !in_range(burst) {
            return Err(LimitError::Burst);
        }
        Ok(RateLimit {
            requests: requests as u32,
            period,
            burst: burst as u32,
        })
    }

    /// Microseconds between two requests at the sustained rate (at least 1).
    pub fn interval_us(&self) -> u64 {
        (self.period.seconds() * 1_000_000 / u64::from(self.requests.max(1))).max(1)
    }

    /// This limit shared by `workers` independent enforcers (the wasm filter's worker VMs):
    /// each admits its share of the rate and of the burst, at least one request.
    pub fn share(&self, workers: u32) -> RateLimit {
        let workers = workers.max(1);
        RateLimit {
            requests: (self.requests / workers).max(1),
            period: self.period,
            burst: (self.burst / workers).max(1),
        }
    }
}

/// What the limiter says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let through; `remaining` more requests would be now, the window resets in
    /// `reset_s` seconds.
    Admitted { remaining: u32, reset_s: u64 },
    /// Over the limit: try again in `retry_after_s` seconds (at least 1).
    Limited { retry_after_s: u64 },
}

/// One GCRA step: the key's TAT before (`tat_us`, 0 for a key not seen yet) and now.
/// Answers the new TAT to store (unchanged when limited) and the admission.
pub fn gcra(tat_us: u64, now_us: u64, limit: &RateLimit) -> (u64, Admission) {
    let interval = limit.interval_us();
    let tolerance = interval.saturating_mul(u64::from(limit.burst));
    // A TAT is never more than the tolerance ahead of now (a refusal leaves it alone): one
    // further ahead means the clock went back, or a limit was lowered. Start afresh rather
    // than refuse the key until the clock catches up.
    let tat_us = if tat_us > now_us.saturating_add(tolerance) {
        now_us
    } else {
        tat_us
    };
    let next = tat_us.max(now_us).saturating_add(interval);
    let ahead = next - now_us;
    if ahead > tolerance {
        let wait_us = ahead - tolerance;
        return (
            tat_us,
            Admission::Limited {
                retry_after_s: wait_us.div_ceil(1_000_000).max(1),
            },
        );
    }
    let remaining = ((tolerance - ahead) / interval).min(u64::from(u32::MAX)) as u32;
    (
        next,
        Admission::Admitted {
            remaining,
            reset_s: ahead.div_ceil(1_000_000),
        },
    )
}

/// `RateLimit-Policy` for a limit (draft-ietf-httpapi-ratelimit-headers): the quota `q`
/// (the burst) over a window `w` (seconds) in which it refills.
pub fn policy_header(limit: &RateLimit) -> String {
    let window = (limit.interval_us().saturating_mul(u64::from(limit.burst))).div_ceil(1_000_000);
    format!("\"keygate\";q={};w={}", limit.burst, window.max(1))
}

/// `RateLimit` for an admission: remaining requests `r` and seconds `t` until the quota
/// is whole again (for a refusal, `r=0` and the wait).
pub fn state_header(admission: &Admission) -> String {
    match admission {
        Admission::Admitted { remaining, reset_s } => {
            format!("\"keygate\";r={remaining};t={reset_s}")
        }
        Admission::Limited { retry_after_s } => format!("\"keygate\";r=0;t={retry_after_s}"),
    }
}

/// The rate-limit headers of an admitted request's response (the `rate_limit_headers`
/// setting): the same two a 429 carries, with the quota left after this request. Kept as
/// numbers (no allocation) by the front end from the request's headers to the response's,
/// written out there, replacing any the upstream sent under these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHeaders {
    limit: RateLimit,
    admission: Admission,
}

impl LimitHeaders {
    /// The header names, lower-case as Envoy carries them.
    pub const POLICY: &'static str = "ratelimit-policy";
    pub const STATE: &'static str = "ratelimit";

    pub fn new(limit: &RateLimit, admission: &Admission) -> LimitHeaders {
        LimitHeaders {
            limit: *limit,
            admission: *admission,
        }
    }

    /// Hands each `(name, value)` to `put`, in the order a 429 carries them.
    pub fn write(&self, mut put: impl FnMut(&'static str, &str)) {
        put(Self::POLICY, &policy_header(&self.limit));
        put(Self::STATE, &state_header(&self.admission));
    }
}

/// Slots of a `LimitTable` by default: 16 bytes each, so 1 MiB, and this many keys over
/// their full burst at once before any goes unlimited.
pub const DEFAULT_SLOTS: usize = 65536;
/// Slots a key may sit in, from the one its id hashes to.
const PROBES: usize = 8;
/// Compare-and-swap attempts on one key's state before the request is let through.
const ATTEMPTS: usize = 64;

/// The limits' state: one TAT per key in use, in a fixed table of atomics (no lock, no
/// allocation after the first). The native module shares one by every worker thread; the
/// wasm filter has one per worker VM (where the atomics are plain loads and stores).
///
/// A key whose TAT is not ahead of now has its whole burst again, exactly as a key never
/// seen: so its slot is free for another key, and the table never needs a sweep. A key that
/// finds every slot it may use held by keys still paying off a burst is not limited
/// (`Admission::Admitted`), and counted by the caller as an overflow: with the default
/// table that takes more than 65,536 keys over their burst at once.
pub struct LimitTable {
    slots: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    /// The key's id hash (never 0), 0 for a slot never used.
    tag: core::sync::atomic::AtomicU64,
    tat: core::sync::atomic::AtomicU64,
}

/// What `LimitTable::admit` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Judged(Admission),
    /// No slot for the key: let through, uncounted by the limit.
    Overflow,
}

impl LimitTable {
    pub fn new(slots: usize) -> LimitTable {
        let slots = slots.max(PROBES).next_power_of_two();
        LimitTable {
            slots: (0..slots).map(|_| Slot::default()).collect(),
        }
    }

    /// Judges one request of the key `key_id` against `limit` at `now_us`.
    pub fn admit(&self, key_id: &str, limit: &RateLimit, now_us: u64) -> Checked {
        // The limit is part of the slot's identity: a changed limit starts afresh (its
        // whole new burst at once) instead of inheriting a debt counted in the old one.
        let tag = limit_hash(key_id, limit) | 1;
        // The key's own slot if it has one; else the first free one it may use.
        match self.find(tag).or_else(|| self.claim(tag, now_us)) {
            Some(slot) => self.judge(slot, tag, limit, now_us),
            None => Checked::Overflow,
        }
    }

    fn probes(&self, tag: u64) -> impl Iterator<Item = &Slot> {
        let mask = self.slots.len() - 1;
        let home = tag as usize & mask;
        (0..PROBES).filter_map(move |probe| self.slots.get((home + probe) & mask))
    }

    fn find(&self, tag: u64) -> Option<&Slot> {
        use core::sync::atomic::Ordering::Acquire;
        self.probes(tag).find(|slot| slot.tag.load(Acquire) == tag)
    }

    /// An empty slot, or another key's whose burst is whole again, now this key's.
    fn claim(&self, tag: u64, now_us: u64) -> Option<&Slot> {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        self.probes(tag).find(|slot| {
            let held = slot.tag.load(Acquire);
            let free = held == 0 || slot.tat.load(Acquire) <= now_us;
            free && match slot.tag.compare_exchange(held, tag, AcqRel, Acquire) {
                Ok(_) => true,
                // Another request of the same key claimed it first: share it.
                Err(actual) => actual == tag,
            }
        })
    }

    fn judge(&self, slot: &Slot, tag: u64, limit: &RateLimit, now_us: u64) -> Checked {
        use core::sync::atomic::Ordering::{AcqRel, Acquire};
        for _ in 0..ATTEMPTS {
            let tat = slot.tat.load(Acquire);
            if slot.tag.load(Acquire) != tag {
                // Lent to another key meanwhile: this key's burst was whole, as it is for
                // a key without a slot.
                return Checked::Overflow;
            }
            let (next, admission) = gcra(tat, now_us, limit);
            if next == tat
                || slot
                    .tat
                    .compare_exchange_weak(tat, next, AcqRel, Acquire)
                    .is_ok()
            {
                return Checked::Judged(admission);
            }
        }
        // Contended past reason: let this one request through rather than spin.
        Checked::Overflow
    }
}

/// FNV-1a of a key id and its limit: ids are made by keygatectl (or an operator), not by
/// clients.
fn limit_hash(key_id: &str, limit: &RateLimit) -> u64 {
    let numbers = limit
        .requests
        .to_le_bytes()
        .into_iter()
        .chain(limit.burst.to_le_bytes())
        .chain([limit.period as u8]);
    key_id
        .bytes()
        .chain(numbers)
        .fold(0xcbf2_9ce4_8422_2325, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(requests: u64, burst: u64) -> RateLimit {
        RateLimit::new(requests, Period::Second, Some(burst)).expect("valid")
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let limit = per_second(10, 3);
        let mut tat = 0;
        let start = 1_000_000_000;
        let mut admitted = 0;
        for _ in 0..5 {
            let (next, admission) = gcra(tat, start, &limit);
            tat = next;
            admitted += matches!(admission, Admission::Admitted { .. }) as u32;
        }
        assert_eq!(admitted, 3, "the burst at one instant");
        // One interval (100 ms) later, one more.
        let (next, admission) = gcra(tat, start + 100_000, &limit);
        assert!(matches!(admission, Admission::Admitted { .. }));
        let (_, admission) = gcra(next, start + 100_000, &limit);
        assert!(matches!(admission, Admission::Limited { retry_after_s: 1 }));
    }

    #[test]
    fn over_a_long_run_the_admitted_rate_is_the_limit() {
        // Requests every 1 ms (1000/s) against 100/s: about 100 a second pass.
        let limit = per_second(100, 10);
        let mut tat = 0;
        let mut admitted = 0u64;
        let start = 5_000_000;
        for ms in 0..10_000u64 {
            let (next, admission) = gcra(tat, start + ms * 1000, &limit);
            tat = next;
            admitted += matches!(admission, Admission::Admitted { .. }) as u64;
        }
        assert!((1000..=1010).contains(&admitted), "{admitted} in 10 s");
    }

    #[test]
    fn remaining_and_headers_say_what_is_left() {
        let limit = RateLimit::new(60, Period::Minute, None).expect("valid");
        let (tat, admission) = gcra(0, 10_000_000, &limit);
        assert_eq!(
            admission,
            Admission::Admitted {
                remaining: 59,
                reset_s: 1
            }
        );
        assert_eq!(policy_header(&limit), "\"keygate\";q=60;w=60");
        assert_eq!(state_header(&admission), "\"keygate\";r=59;t=1");
        let mut tat = tat;
        for _ in 1..60 {
            tat = gcra(tat, 10_000_000, &limit).0;
        }
        let (_, limited) = gcra(tat, 10_000_000, &limit);
        assert_eq!(state_header(&limited), "\"keygate\";r=0;t=1");
    }

    #[test]
    fn an_admitted_requests_headers_say_the_quota_left_after_it() {
        let limit = per_second(10, 4);
        let (tat, first) = gcra(0, 50_000_000, &limit);
        let headers = LimitHeaders::new(&limit, &first);
        // Burst 4 refilling one per 100 ms: 3 left, whole again in 0.1 s (rounded up).
        let written = |headers: LimitHeaders| {
            let mut pairs = Vec::new();
            headers.write(|name, value| pairs.push((name, value.to_owned())));
            pairs
        };
        assert_eq!(
            written(headers),
            [
                ("ratelimit-policy", "\"keygate\";q=4;w=1".to_owned()),
                ("ratelimit", "\"keygate\";r=3;t=1".to_owned())
            ]
        );
        let (_, second) = gcra(tat, 50_000_000, &limit);
        assert_eq!(
            written(LimitHeaders::new(&limit, &second))[1].1,
            "\"keygate\";r=2;t=1"
        );
    }

    #[test]
    fn limits_are_validated_and_shared_fairly() {
        assert_eq!(
            RateLimit::new(0, Period::Second, None),
            Err(LimitError::Requests)
        );
        assert_eq!(
            RateLimit::new(5, Period::Second, Some(0)),
            Err(LimitError::Burst)
        );
        assert_eq!(
            RateLimit::new(2_000_000, Period::Second, None),
            Err(LimitError::Requests)
        );
        let limit = per_second(10, 4);
        assert_eq!(limit.share(2), per_second(5, 2));
        assert_eq!(limit.share(100), per_second(1, 1), "never below one");
    }

    #[test]
    fn the_table_keeps_each_key_apart_and_lends_idle_slots() {
        let table = LimitTable::new(8);
        let limit = per_second(1, 1);
        let now = 1_000_000_000;
        let judged = |id: &str, at: u64| table.admit(id, &limit, at);
        assert!(matches!(
            judged("key_a", now),
            Checked::Judged(Admission::Admitted { .. })
        ));
        assert!(matches!(
            judged("key_a", now),
            Checked::Judged(Admission::Limited { .. })
        ));
        // Another key is not limited by key_a's requests.
        assert!(matches!(
            judged("key_b", now),
            Checked::Judged(Admission::Admitted { .. })
        ));
        // Eight slots, all held by keys paying off a burst: the ninth key overflows.
        for i in 0..8 {
            table.admit(&format!("key_{i}"), &limit, now);
        }
        assert_eq!(judged("key_x", now), Checked::Overflow);
        // A second later every burst is whole again: their slots are free.
        assert!(matches!(
            judged("key_x", now + 1_000_000),
            Checked::Judged(Admission::Admitted { .. })
        ));
    }

    #[test]
    fn a_changed_limit_starts_afresh() {
        let table = LimitTable::new(64);
        let strict = per_second(1, 1);
        let now = 9_000_000;
        assert!(matches!(
            table.admit("key_a", &strict, now),
            Checked::Judged(Admission::Admitted { .. })
        ));
        assert!(matches!(
            table.admit("key_a", &strict, now),
            Checked::Judged(Admission::Limited { .. })
        ));
        let raised = per_second(100, 100);
        assert!(matches!(
            table.admit("key_a", &raised, now),
            Checked::Judged(Admission::Admitted { .. })
        ));
    }

    #[test]
    fn threads_sharing_a_table_admit_exactly_the_burst() {
        let table = std::sync::Arc::new(LimitTable::new(1024));
        let limit = RateLimit::new(1000, Period::Minute, Some(500)).expect("valid");
        let now = 7_000_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || {
                    (0..400)
                        .filter(|_| {
                            matches!(
                                table.admit("key_shared", &limit, now),
                                Checked::Judged(Admission::Admitted { .. })
                            )
                        })
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        assert_eq!(admitted, 500, "the burst, not one more, across threads");
    }

    #[test]
    fn a_clock_gone_back_or_a_rogue_state_never_wedges_a_key() {
        let limit = per_second(1, 1);
        // The clock went back an hour: the key is not refused for an hour.
        let hour = 3_600_000_000;
        let (tat, first) = gcra(0, 2 * hour, &limit);
        assert!(matches!(first, Admission::Admitted { .. }));
        let (_, after_jump) = gcra(tat, hour, &limit);
        assert!(matches!(after_jump, Admission::Admitted { .. }));
        let (_, rogue) = gcra(u64::MAX, 0, &limit);
        assert!(matches!(rogue, Admission::Admitted { .. }));
        let (_, end_of_time) = gcra(0, u64::MAX - 1, &limit);
        assert!(matches!(end_of_time, Admission::Admitted { .. }));
    }
}
