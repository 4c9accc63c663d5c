use super::*;
use keygate_core::fields::Path;
use std::io::Write;
use std::net::TcpListener;
use std::time::Instant;

fn block(json: &str) -> PollConfig {
    let doc = keygate_core::json::parse(json.as_bytes()).expect("json");
    PollConfig::read(&doc, &Path::Root).expect("valid sync block")
}

fn stopped(shared: &Shared) -> bool {
    *shared.stopped.lock().expect("lock")
}

/// Waits for `done` with a deadline (no fixed sleep: the condition, or a failure).
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn configurations_with_the_same_sync_block_share_one_map_until_the_last_goes() {
    let url = r#"{"url":"http://127.0.0.1:9/shared-test","interval_ms":60000}"#;
    let first = Subscription::start(block(url), SyncStats::default()).expect("thread");
    let second = Subscription::start(block(url), SyncStats::default()).expect("thread");
    let other = Subscription::start(
        block(r#"{"url":"http://127.0.0.1:9/other-test","interval_ms":60000}"#),
        SyncStats::default(),
    )
    .expect("thread");
    assert!(
        Arc::ptr_eq(&first.group, &second.group),
        "one group per sync block"
    );
    assert!(
        !Arc::ptr_eq(&first.group, &other.group),
        "another block, another group"
    );
    assert_eq!(first.group.shared.stats().len(), 2);

    let shared = first.group.shared.clone();
    drop(first);
    assert_eq!(
        shared.stats().len(),
        1,
        "a destroyed configuration's stats leave"
    );
    assert!(!stopped(&shared), "one configuration still syncs");
    drop(second);
    assert!(stopped(&shared), "the last one stops the thread");
    assert!(!stopped(&other.group.shared));
}

#[test]
fn stopping_wakes_a_sleeping_thread() {
    let group = Group::start(
        block(r#"{"url":"http://127.0.0.1:9/sleep-test","interval_ms":3600000}"#),
        None,
    )
    .expect("thread");
    let shared = group.shared.clone();
    let sleeper = std::thread::spawn(move || shared.sleep(Duration::from_secs(60)));
    drop(group);
    assert!(
        sleeper.join().expect("no panic"),
        "woken as stopped, not timed out"
    );
}

/// A server that answers every request with headers for a long body, then sends it one
/// byte every few milliseconds, for ever; counts the connections it took.
fn trickling_server() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1/keymap", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicU64::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n{";
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                while stream.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    (url, connections)
}

#[test]
fn the_thread_ends_with_its_configuration_even_in_the_middle_of_a_long_read() {
    let (url, connections) = trickling_server();
    let group = Group::start(
        block(&format!(
            r#"{{"url":"{url}","interval_ms":60000,"timeout_ms":60000}}"#
        )),
        None,
    )
    .expect("thread");
    let shared = group.shared.clone();
    eventually("the poll is under way", || {
        connections.load(Ordering::Relaxed) > 0
    });
    drop(group);
    eventually("the fetching thread ended", || {
        shared.ended.load(Ordering::Relaxed)
    });
}

#[test]
fn the_proxy_variables_of_the_environment_are_never_used() {
    // What Envoy's environment may hold; a client that read it would ask this dead proxy.
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "all_proxy",
    ] {
        std::env::set_var(name, "http://127.0.0.1:9");
    }
    let direct = Fetch::new(&block(r#"{"url":"http://127.0.0.1:8/v1/keymap"}"#));
    assert!(
        direct.proxy().is_none(),
        "no proxy unless the configuration names one"
    );
    let named = Fetch::new(&block(
        r#"{"url":"http://127.0.0.1:8/v1/keymap","proxy":"http://127.0.0.1:3128"}"#,
    ));
    assert!(named.proxy().is_some(), "the configured proxy");

    // And for real: a poll reaches a server on loopback directly.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1/keymap", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = stream.write_all(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let fetch = Fetch::new(&block(&format!(r#"{{"url":"{url}"}}"#)));
    let shared = Shared::new();
    let request = keygate_sync_core::poller::PollRequest {
        replica: 0,
        query: String::new(),
        headers: Vec::new(),
        wait_ms: 0,
        timeout_ms: 5000,
    };
    match fetch.exchange(&url, &request, &shared) {
        crate::fetch::Exchange::Answered(answer) => assert_eq!(answer.head().status, 304),
        crate::fetch::Exchange::Failed(why) => panic!("not reached directly: {why}"),
        crate::fetch::Exchange::Stopped => panic!("not stopped"),
    }
}

#[test]
fn a_held_watch_keeps_the_age_at_zero_until_its_wait_ends() {
    assert_eq!(
        age_ms(10_000, 4_000, 0),
        6_000,
        "no watch: since the answer"
    );
    assert_eq!(age_ms(10_000, 4_000, 29_000), 0, "held within its wait");
    assert_eq!(age_ms(32_000, 4_000, 29_000), 3_000, "late beyond its wait");
}

#[test]
fn a_watch_s_timeout_sits_above_its_wait() {
    // A server that holds each request 600 ms, then answers 304.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/v1/keymap", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            std::thread::sleep(Duration::from_millis(600));
            let _ = stream.write_all(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let fetch = Fetch::new(&block(&format!(
        r#"{{"url":"{url}","timeout_ms":200,"wait":1}}"#
    )));
    let shared = Shared::new();
    let poll = |wait_ms: u64| keygate_sync_core::poller::PollRequest {
        replica: 0,
        query: String::new(),
        headers: Vec::new(),
        wait_ms,
        timeout_ms: wait_ms + 200,
    };
    match fetch.exchange(&url, &poll(1000), &shared) {
        crate::fetch::Exchange::Answered(answer) => assert_eq!(answer.head().status, 304),
        crate::fetch::Exchange::Failed(why) => panic!("the watch timed out: {why}"),
        crate::fetch::Exchange::Stopped => panic!("not stopped"),
    }
    assert!(
        matches!(
            fetch.exchange(&url, &poll(0), &shared),
            crate::fetch::Exchange::Failed(_)
        ),
        "a poll held as long times out"
    );
}
