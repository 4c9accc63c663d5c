//! The poller's transitions, without a network: each answer a fetcher can get, and what
//! the poller asks next.

use super::*;
use crate::binary::encode_binary_full;
use alloc::vec;
use keygate_core::bucket::{bucket_of, find};
use keygate_core::digest::Digest;
use std::collections::HashMap;
use std::prelude::rust_2021::*;

#[derive(Default)]
struct Stats {
    counters: HashMap<&'static str, u64>,
    gauges: HashMap<&'static str, u64>,
}

impl SyncStats for Stats {
    fn bump(&mut self, counter: SyncCounter) {
        *self.counters.entry(counter.name()).or_default() += 1;
    }
    fn set(&mut self, gauge: SyncGauge, value: u64) {
        self.gauges.insert(gauge.name(), value);
    }
}

impl Stats {
    fn count(&self, counter: SyncCounter) -> u64 {
        self.counters
            .get(counter.name())
            .copied()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Buckets(HashMap<usize, Vec<u8>>);

impl BucketStore for Buckets {
    fn read(&mut self, bucket: usize) -> Vec<u8> {
        self.0.get(&bucket).cloned().unwrap_or_default()
    }
    fn write(&mut self, bucket: usize, bytes: &[u8]) {
        self.0.insert(bucket, bytes.to_vec());
    }
}

impl Buckets {
    fn has(&self, key: &str) -> bool {
        let d = Digest::of_key(key);
        self.0
            .get(&bucket_of(&d))
            .is_some_and(|b| find(b, &d).is_some())
    }
}

fn settings(json: &str) -> FetchSettings {
    let doc = keygate_core::json::parse(json.as_bytes()).expect("json");
    let path = keygate_core::fields::Path::Root;
    crate::settings::PollConfig::read(&doc, &path)
        .expect("valid")
        .fetch
}

/// A poller with `extra` settings (JSON members, e.g. `"watch":false`), no jitter, and a
/// one-second interval unless `extra` names another.
fn poller(replicas: usize, extra: &str) -> Poller {
    let interval = if extra.contains("interval_ms") {
        ""
    } else {
        r#","interval_ms":1000"#
    };
    let fetch = settings(&format!(
        r#"{{"url":"http://127.0.0.1:1/v1/keymap","jitter":0,"bearer_token":"sync-token"{interval}{extra}}}"#
    ));
    Poller::new(fetch, replicas, 0, 0, 7)
}

fn entry(key: &str, id: &str) -> String {
    format!(
        r#"{{"digest":"{}","account_id":"acct","key_id":"{id}","type":"secret","environment":"test"}}"#,
        Digest::of_key(key).to_hex()
    )
}

fn full_json(version: u64, keys: &[&str]) -> Vec<u8> {
    let keys: Vec<String> = keys.iter().map(|k| entry(k, k)).collect();
    format!(
        r#"{{"kind":"full","version":{version},"keys":[{}]}}"#,
        keys.join(",")
    )
    .into_bytes()
}

fn delta_json(since: u64, version: u64, add: &[&str], remove: &[&str]) -> Vec<u8> {
    let upserts: Vec<String> = add.iter().map(|k| entry(k, k)).collect();
    let removes: Vec<String> = remove
        .iter()
        .map(|k| format!("\"{}\"", Digest::of_key(k).to_hex()))
        .collect();
    format!(
        r#"{{"kind":"delta","version":{version},"since":{since},"upserts":[{}],"removes":[{}]}}"#,
        upserts.join(","),
        removes.join(",")
    )
    .into_bytes()
}

struct Run {
    poller: Poller,
    buckets: Buckets,
    stats: Stats,
    now: u64,
}

impl Run {
    /// A polling fetcher (`"watch": false`).
    fn new(replicas: usize) -> Run {
        Run::with(replicas, r#","watch":false"#)
    }

    /// A watching fetcher (the default), waiting 25 s.
    fn watching(replicas: usize) -> Run {
        Run::with(replicas, "")
    }

    fn with(replicas: usize, extra: &str) -> Run {
        Run {
            poller: poller(replicas, extra),
            buckets: Buckets::default(),
            stats: Stats::default(),
            now: 0,
        }
    }

    /// The whole map, so that the next request holds a version.
    fn synced(mut self) -> Run {
        self.request();
        self.answer(
            200,
            "application/json",
            Some("store_a"),
            &full_json(5, &["k1", "k2"]),
        );
        self
    }

    fn fail(&mut self) -> Outcome {
        self.poller
            .on_failure(self.now, "connection refused", &mut self.stats)
    }

    /// The delay the poller set from now to its next request.
    fn delay(&self) -> u64 {
        self.poller.next_at_ms().saturating_sub(self.now)
    }

    /// Waits until a poll is due and takes its request.
    fn request(&mut self) -> PollRequest {
        self.now = self.now.max(self.poller.next_at_ms());
        self.poller
            .next_request(self.now, &mut self.stats)
            .expect("a poll is due")
    }

    fn answer(
        &mut self,
        status: u16,
        content_type: &str,
        store: Option<&str>,
        body: &[u8],
    ) -> Outcome {
        let head = AnswerHead {
            status,
            content_type: Some(content_type.as_bytes()),
            store: store.map(str::as_bytes),
            body_len: body.len(),
        };
        let mut reader = body;
        self.poller.on_answer(
            self.now,
            head,
            &mut reader,
            &mut self.buckets,
            &mut self.stats,
        )
    }
}

fn header<'a>(request: &'a PollRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn full_then_304_then_delta_with_the_lineage_in_every_request() {
    let mut run = Run::new(1);
    let first = run.request();
    assert_eq!(first.query, "", "the first poll asks for the whole map");
    assert_eq!(header(&first, "accept"), Some(ACCEPT));
    assert_eq!(header(&first, "authorization"), Some("Bearer sync-token"));
    assert_eq!(header(&first, "if-none-match"), None);
    let outcome = run.answer(
        200,
        "application/json",
        Some("store_a"),
        &full_json(5, &["k1", "k2"]),
    );
    assert_eq!(
        outcome,
        Outcome::Updated {
            version: 5,
            keys: 2,
            new_lineage: false
        }
    );
    assert!(run.buckets.has("k1"));
    assert_eq!(run.stats.gauges.get("keygate.sync.version"), Some(&5));
    assert_eq!(
        run.poller.next_at_ms(),
        1000,
        "the next poll one interval later"
    );
    assert!(run.poller.next_request(999, &mut run.stats).is_none());

    let second = run.request();
    assert_eq!(second.query, "?since=5&store=store_a");
    assert_eq!(header(&second, "if-none-match"), Some("\"store_a:5\""));
    assert_eq!(
        run.answer(304, "", Some("store_a"), b""),
        Outcome::Unchanged
    );
    assert_eq!(run.stats.count(SyncCounter::NotModified), 1);

    run.request();
    let outcome = run.answer(
        200,
        "application/json",
        Some("store_a"),
        &delta_json(5, 6, &["k3"], &["k1"]),
    );
    assert!(matches!(
        outcome,
        Outcome::Updated {
            version: 6,
            keys: 2,
            ..
        }
    ));
    assert!(!run.buckets.has("k1") && run.buckets.has("k3"));
    assert_eq!(
        run.poller.generation(),
        2,
        "each publish is a new generation"
    );
    assert_eq!(run.stats.count(SyncCounter::Fetches), 3);
}

#[test]
fn a_binary_full_map_is_read_from_the_body_reader() {
    let mut run = Run::new(1);
    run.request();
    let keys = crate::message::parse_message(&full_json(9, &["b1", "b2", "b3"])).expect("valid");
    let crate::message::ValidMessage::Full { keys, .. } = keys else {
        std::panic!("a full map");
    };
    let body = encode_binary_full(9, &keys);
    let outcome = run.answer(200, "application/x-keygate-map", Some("store_a"), &body);
    assert!(matches!(
        outcome,
        Outcome::Updated {
            version: 9,
            keys: 3,
            ..
        }
    ));
    assert!(run.buckets.has("b2"));
}

#[test]
fn a_refused_answer_keeps_the_map_and_asks_for_the_whole_map_next() {
    let mut run = Run::new(1);
    run.request();
    run.answer(
        200,
        "application/json",
        Some("store_a"),
        &full_json(5, &["k1"]),
    );
    for (status, content_type, store, body) in [
        (
            200,
            "application/json",
            Some("store_a"),
            b"not json".to_vec(),
        ),
        (
            200,
            "application/json",
            Some("store_a"),
            full_json(4, &["k9"]),
        ),
        (
            200,
            "application/x-keygate-map",
            Some("store_a"),
            b"KGMAP01\ngarbage".to_vec(),
        ),
        (
            200,
            "application/json",
            Some("bad store!"),
            full_json(7, &["k9"]),
        ),
        (
            200,
            "application/json",
            Some("store_b"),
            delta_json(5, 6, &["k9"], &[]),
        ),
        (304, "", Some("store_b"), Vec::new()),
    ] {
        let refused_before = run.stats.count(SyncCounter::Refused);
        run.request();
        let outcome = run.answer(status, content_type, store, &body);
        assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
        assert_eq!(run.stats.count(SyncCounter::Refused), refused_before + 1);
        assert!(run.buckets.has("k1") && !run.buckets.has("k9"));
        assert_eq!(run.poller.state().version(), Some(5));
        assert_eq!(run.request().query, "", "the whole map next");
        // Answer that one with the current map, so the next case starts from a delta.
        run.answer(
            200,
            "application/json",
            Some("store_a"),
            &full_json(5, &["k1"]),
        );
    }
}

#[test]
fn a_map_from_another_store_is_a_new_lineage_whatever_its_version() {
    let mut run = Run::new(1);
    run.request();
    run.answer(
        200,
        "application/json",
        Some("store_a"),
        &full_json(i64::MAX as u64, &["old"]),
    );
    run.request();
    let outcome = run.answer(
        200,
        "application/json",
        Some("store_b"),
        &full_json(11, &["new"]),
    );
    assert_eq!(
        outcome,
        Outcome::Updated {
            version: 11,
            keys: 1,
            new_lineage: true
        }
    );
    assert_eq!(run.stats.count(SyncCounter::LineageChanges), 1);
    assert!(run.buckets.has("new") && !run.buckets.has("old"));
    assert_eq!(run.request().query, "?since=11&store=store_b");
}

#[test]
fn a_version_no_keygatectl_issues_is_refused() {
    let mut run = Run::new(1);
    run.request();
    let outcome = run.answer(
        200,
        "application/json",
        Some("s"),
        &full_json(u64::MAX, &["k"]),
    );
    assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
}

#[test]
fn an_unavailable_replica_is_skipped_at_once_and_the_one_that_answered_is_asked_first() {
    let mut run = Run::new(3);
    assert_eq!(run.request().replica, 0);
    run.poller
        .on_failure(run.now, "connection refused", &mut run.stats);
    assert_eq!(run.poller.next_at_ms(), run.now, "the next replica at once");
    assert_eq!(run.request().replica, 1);
    run.answer(503, "text/plain", None, b"down");
    assert_eq!(run.request().replica, 2);
    run.answer(200, "application/json", Some("s"), &full_json(1, &["k"]));
    let next = run.request();
    assert_eq!(next.replica, 2, "the replica that answered is asked first");
    assert_eq!(run.stats.count(SyncCounter::Errors), 2);

    // Every replica down: wait a retry delay, then start again from the preferred one.
    run.poller.on_failure(run.now, "down", &mut run.stats);
    run.request();
    run.poller.on_failure(run.now, "down", &mut run.stats);
    let before = run.now;
    run.request();
    run.poller.on_failure(run.now, "down", &mut run.stats);
    assert!(run.poller.next_at_ms() > before);
    assert_eq!(run.request().replica, 2);
}

#[test]
fn a_client_error_is_not_for_another_replica_to_mend() {
    let mut run = Run::new(2);
    run.request();
    let outcome = run.answer(401, "application/json", None, b"{}");
    assert_eq!(outcome, Outcome::Failed("answer status 401".into()));
    assert!(run.poller.next_at_ms() > run.now);
    assert_eq!(run.request().replica, 0);
}

#[test]
fn an_oversized_answer_is_refused_unread() {
    struct Untouchable;
    impl BodyReader for Untouchable {
        fn read(&mut self, _: usize, _: usize) -> Vec<u8> {
            std::panic!("an oversized body must not be read");
        }
    }
    let mut run = Run::new(1);
    run.request();
    let head = AnswerHead {
        status: 200,
        content_type: Some(b"application/json"),
        store: None,
        body_len: MAX_BODY_BYTES + 1,
    };
    let outcome = run.poller.on_answer(
        run.now,
        head,
        &mut Untouchable,
        &mut run.buckets,
        &mut run.stats,
    );
    assert!(matches!(outcome, Outcome::Refused(_)));
}

#[test]
fn an_older_keygatectl_without_a_store_id_is_polled_as_before() {
    let mut run = Run::new(1);
    run.request();
    run.answer(200, "application/json", None, &full_json(3, &["k"]));
    let next = run.request();
    assert_eq!(next.query, "?since=3");
    assert_eq!(header(&next, "if-none-match"), Some("\"3\""));
}

#[test]
fn a_poll_is_never_scheduled_later_than_one_interval_less_a_tick() {
    for unit in [0.0, 0.25, 0.5, 1.0, 7.0] {
        let wait = poll_wait(1000, 0.1, unit, 100);
        assert!(wait <= 900, "unit {unit}: {wait}");
        assert!(wait >= 800, "unit {unit}: {wait}");
    }
    assert_eq!(poll_wait(1000, 0.0, 0.7, 100), 900);
    assert_eq!(
        poll_wait(50, 0.5, 1.0, 100),
        0,
        "shorter than a tick: the next tick"
    );
    let _ = vec![0u8];
}

// Watching: each transition the poller makes while watching.

#[test]
fn a_watch_asks_to_be_held_and_the_next_goes_out_as_soon_as_an_answer_is_in() {
    let mut run = Run::watching(1);
    let first = run.request();
    assert_eq!(first.query, "", "the whole map first, never held");
    assert_eq!(first.wait_ms, 0);
    assert_eq!(first.timeout_ms, 5000, "a poll's timeout: timeout_ms");
    run.answer(
        200,
        "application/json",
        Some("store_a"),
        &full_json(5, &["k1"]),
    );
    assert_eq!(run.delay(), 0, "a watch at once after the map");

    let watch = run.request();
    assert_eq!(watch.query, "?since=5&store=store_a&wait=25");
    assert_eq!(header(&watch, "if-none-match"), Some("\"store_a:5\""));
    assert_eq!(watch.wait_ms, 25_000);
    assert_eq!(watch.timeout_ms, 30_000, "the timeout sits above the wait");
    // A change 3 s in: the delta, and the next watch at once.
    run.now += 3000;
    let outcome = run.answer(
        200,
        "application/json",
        Some("store_a"),
        &delta_json(5, 6, &["k3"], &["k1"]),
    );
    assert!(matches!(outcome, Outcome::Updated { version: 6, .. }));
    assert_eq!(run.delay(), 0);
    // The wait ends without a change: 304, and the next watch at once.
    assert_eq!(run.request().query, "?since=6&store=store_a&wait=25");
    run.now += 25_000;
    assert_eq!(
        run.answer(304, "", Some("store_a"), b""),
        Outcome::Unchanged
    );
    assert_eq!(run.delay(), 0);
    assert_eq!(run.poller.take_notice(), None, "nothing to tell");
}

#[test]
fn an_unchanged_answer_long_before_the_wait_falls_back_to_the_interval_without_spinning() {
    // A keygatectl (or a cache) that ignores `wait`: every watch answered 304 at once.
    let mut run = Run::watching(1).synced();
    let start = run.now;
    let mut requests = 0;
    while run.now < start + 10_000 {
        run.request();
        requests += 1;
        run.now += 2;
        run.answer(304, "", Some("store_a"), b"");
        assert_eq!(run.delay(), 1000, "the interval, not at once");
    }
    assert!(requests <= 11, "{requests} requests in 10 s");
    let notice = run.poller.take_notice().expect("told once");
    assert!(notice.contains("ignores wait"), "{notice}");
    run.request();
    run.answer(304, "", Some("store_a"), b"");
    assert_eq!(run.poller.take_notice(), None, "only once");
    // A change answered at once is news: the next watch at once.
    run.request();
    run.answer(
        200,
        "application/json",
        Some("store_a"),
        &delta_json(5, 6, &["k3"], &[]),
    );
    assert_eq!(run.delay(), 0);
    // An empty delta at once is no news: the interval.
    run.request();
    run.answer(
        200,
        "application/json",
        Some("store_a"),
        &delta_json(6, 6, &[], &[]),
    );
    assert_eq!(run.delay(), 1000);
}

#[test]
fn a_failed_watch_is_retried_at_once_then_after_a_growing_capped_delay() {
    let mut run = Run::watching(1).synced();
    let mut delays = Vec::new();
    for _ in 0..8 {
        run.request();
        assert!(matches!(run.fail(), Outcome::Failed(_)));
        delays.push(run.delay());
        assert!(run.buckets.has("k1"), "the last good map stays");
    }
    assert_eq!(
        delays,
        [0, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000],
        "at once, then the interval doubling up to {MAX_BACKOFF_MS} ms"
    );
    assert_eq!(run.stats.count(SyncCounter::Errors), 8);
    // A 5xx is a failure too; an answer starts over.
    run.request();
    run.answer(503, "text/plain", None, b"down");
    assert_eq!(run.delay(), 10_000);
    run.request();
    run.answer(304, "", Some("store_a"), b"");
    run.request();
    run.fail();
    assert_eq!(run.delay(), 0, "at once again after an answer");
    assert_eq!(run.poller.state().version(), Some(5));
}

#[test]
fn a_long_interval_is_the_backoff_s_floor_and_cap() {
    let mut run = Run::with(1, r#","interval_ms":60000"#).synced();
    let mut delays = Vec::new();
    for _ in 0..4 {
        run.request();
        run.fail();
        delays.push(run.delay());
    }
    assert_eq!(delays, [0, 60_000, 60_000, 60_000]);
}

#[test]
fn every_replica_is_tried_at_once_before_a_round_counts_as_failed() {
    let mut run = Run::watching(2).synced();
    assert_eq!(run.request().replica, 0);
    run.fail();
    assert_eq!(run.delay(), 0);
    assert_eq!(run.request().replica, 1);
    run.fail();
    assert_eq!(run.delay(), 0, "the first failed round: again at once");
    assert_eq!(run.request().replica, 0);
    run.fail();
    assert_eq!(run.request().replica, 1);
    run.fail();
    assert_eq!(run.delay(), 1000, "the second: the interval");
}

#[test]
fn two_watches_cut_in_a_row_make_the_next_ones_shorter_for_a_while() {
    let mut run = Run::watching(1).synced();
    // Something on the way closes requests idle for 4 s.
    run.request();
    run.now += 4000;
    run.fail();
    assert_eq!(run.delay(), 0, "the first cut: again at once");
    assert_eq!(run.poller.wait_s(), 25);
    run.request();
    run.now += 4000;
    run.fail();
    assert_eq!(
        run.poller.wait_s(),
        2,
        "half as long as the cut ones were held"
    );
    assert_eq!(run.delay(), 0, "a shorter watch at once");
    let notice = run.poller.take_notice().expect("told");
    assert!(notice.contains("cut after about 4 s"), "{notice}");
    let short = run.request();
    assert_eq!(short.query, "?since=5&store=store_a&wait=2");
    assert_eq!(short.timeout_ms, 7000);
    run.now += 2000;
    assert_eq!(
        run.answer(304, "", Some("store_a"), b""),
        Outcome::Unchanged
    );
    assert_eq!(run.delay(), 0, "a whole short wait is no early answer");
    // The configured wait is tried again after a while.
    run.now += SHORT_WAIT_MS;
    assert_eq!(run.request().query, "?since=5&store=store_a&wait=25");
    // Cut at 1.5 s with Envoy's retries inside one callout: shorter than asked, never
    // below a second.
    run.now += 1500;
    run.fail();
    run.request();
    run.now += 1500;
    run.fail();
    assert_eq!(run.poller.wait_s(), 1);
}

#[test]
fn a_cut_watch_then_a_refused_connection_is_a_failure_not_a_short_path() {
    // keygatectl killed during a watch: the watch is cut, the retry finds nobody.
    let mut run = Run::watching(1).synced();
    run.request();
    run.now += 10_000;
    run.fail();
    run.request();
    run.fail();
    assert_eq!(run.poller.wait_s(), 25, "the wait is kept");
    assert_eq!(run.delay(), 1000, "the backoff");
    // Quick failures (held under a second) are not cuts either.
    for _ in 0..3 {
        run.now = run.poller.next_at_ms();
        run.request();
        run.now += 500;
        run.fail();
    }
    assert_eq!(run.poller.wait_s(), 25);
}

#[test]
fn a_keygatectl_that_refuses_wait_is_polled_without_it() {
    let mut run = Run::watching(1).synced();
    run.request();
    let outcome = run.answer(400, "application/json", None, b"{}");
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    assert_eq!(run.delay(), 0, "a plain poll at once");
    assert!(run.poller.take_notice().is_some());
    let poll = run.request();
    assert_eq!(poll.query, "?since=5&store=store_a", "no wait");
    assert_eq!(poll.wait_ms, 0);
    run.answer(304, "", Some("store_a"), b"");
    assert_eq!(run.delay(), 1000, "then every interval");
    // A 400 to a poll is no watch refused: the client-error retry.
    run.request();
    run.answer(400, "application/json", None, b"{}");
    assert_eq!(run.delay(), 1000);
    // Watches again after a while (keygatectl may have been upgraded).
    run.now += NO_WATCH_MS;
    assert!(run.request().query.ends_with("&wait=25"));
}

#[test]
fn polling_keeps_its_interval_and_its_short_retry() {
    let mut run = Run::new(1).synced();
    assert_eq!(run.delay(), 1000);
    let poll = run.request();
    assert_eq!(poll.query, "?since=5&store=store_a");
    assert_eq!((poll.wait_ms, poll.timeout_ms), (0, 5000));
    run.fail();
    assert_eq!(run.delay(), 1000);
    run.request();
    run.fail();
    assert_eq!(run.delay(), 1000, "no backoff when polling");
}

#[test]
fn a_304_to_a_full_map_request_does_not_spin() {
    // Nothing held yet: the next request is for the whole map again, which is no watch.
    let mut run = Run::watching(1);
    run.request();
    assert_eq!(
        run.answer(304, "", Some("store_a"), b""),
        Outcome::Unchanged
    );
    assert_eq!(run.delay(), 1000);
    // After a refusal the whole map is asked for: an unchanged one at once is no spin either.
    let mut run = Run::watching(1).synced();
    run.request();
    run.answer(200, "application/json", Some("store_a"), b"garbage");
    run.request();
    run.answer(304, "", Some("store_a"), b"");
    assert_eq!(run.request().query, "", "still the whole map");
}

#[test]
fn a_held_watch_keeps_the_map_current_until_its_wait_ends() {
    let mut run = Run::watching(1).synced();
    assert_eq!(run.poller.age_ms(run.now), Some(0));
    run.request();
    assert_eq!(
        run.poller.age_ms(run.now + 20_000),
        Some(0),
        "held: current"
    );
    assert_eq!(
        run.poller.age_ms(run.now + 28_000),
        Some(3000),
        "late beyond its wait: growing"
    );
    run.now += 25_000;
    run.answer(304, "", Some("store_a"), b"");
    assert_eq!(run.poller.age_ms(run.now + 100), Some(100));
    // A poll in flight is no proof of anything: the age runs from the last answer.
    let mut run = Run::new(1).synced();
    run.request();
    assert_eq!(run.now, 1000, "one interval after the answer");
    assert_eq!(run.poller.age_ms(run.now + 700), Some(1700));
}

#[test]
fn watches_end_at_different_seconds_across_a_fleet() {
    assert_eq!(watch_wait_s(25, 0.0, 0.7), 25);
    assert_eq!(watch_wait_s(25, 0.1, 1.0), 22);
    assert_eq!(watch_wait_s(25, 0.1, 0.0), 25);
    assert_eq!(watch_wait_s(1, 0.5, 1.0), 1, "never below a second");
    assert_eq!(watch_wait_s(60, 0.5, 7.0), 30, "the unit is clamped");
}

#[test]
fn every_sync_stat_keeps_the_id_the_host_gave_it_and_one_refused_is_left_out() {
    // The host numbers the stats in the order they are defined and refuses one.
    let defined = core::cell::RefCell::new(Vec::new());
    let give = |name: &'static str| {
        defined.borrow_mut().push(name);
        let id = defined.borrow().len() as u32;
        (name != SyncGauge::Keys.name()).then_some(id)
    };
    let ids = SyncMetricIds::define(give, give);
    let names: Vec<&str> = SyncCounter::ALL
        .map(SyncCounter::name)
        .into_iter()
        .chain(SyncGauge::ALL.map(SyncGauge::name))
        .collect();
    assert_eq!(*defined.borrow(), names);
    let counter_ids: Vec<_> = SyncCounter::ALL.iter().map(|c| ids.counter(*c)).collect();
    assert_eq!(counter_ids, (1..=6).map(Some).collect::<Vec<_>>());
    assert_eq!(ids.gauge(SyncGauge::Version), Some(7));
    assert_eq!(ids.gauge(SyncGauge::Keys), None);
    assert_eq!(ids.gauge(SyncGauge::AgeMs), Some(9));
}
