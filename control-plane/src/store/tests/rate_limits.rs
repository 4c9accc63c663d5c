//! Per-key rate limits: kept, shipped in the key map (full and delta), audited, carried by a
//! roll, refused when no filter would take them; on both backends.

use super::super::audit::{who, AuditAction};
use super::super::*;
use super::{apply, create, full, hex, new_key, skipped, PostgresDb, SqliteDb, TestDb};
use keygate_core::config::RawLimit;
use keygate_core::rate_limit::Period;

on_both_backends!(
    a_limit_is_kept_shipped_in_the_map_and_audited_and_a_removed_one_leaves_it,
    setting_the_same_limit_again_changes_nothing,
    a_limit_no_filter_would_take_is_refused_and_nothing_changes,
    a_roll_keeps_the_limit_and_a_revoked_key_cannot_get_one,
);

fn limit(requests: u64, per: Period, burst: Option<u64>) -> RawLimit {
    RawLimit {
        requests,
        per,
        burst,
    }
}

fn limit_events(store: &dyn Store) -> Vec<AuditEvent> {
    store
        .audit_events(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::KeyRateLimited)
        .collect()
}

fn a_limit_is_kept_shipped_in_the_map_and_audited_and_a_removed_one_leaves_it(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let (before, mut map) = full(&*store, 100);
    let ten = limit(10, Period::Second, Some(20));
    let set = store
        .set_rate_limit("key_a-0", Some(&ten), 101, &who())
        .expect("set");
    assert!(set.version > before);
    assert_eq!(set.value.rate_limit, Some(ten));
    // A poller with the old version gets the key again, limit and all; a new one too.
    let version = apply(&mut map, store.key_map(Some(before), 101).expect("delta"));
    assert_eq!(version, set.version);
    assert_eq!(map[&hex("a-0")].rate_limit, Some(ten));
    assert_eq!(
        map[&hex("a-1")].rate_limit,
        None,
        "another key of the account"
    );
    assert_eq!(full(&*store, 101).1, map);
    // Kept: a reopened store reads it back.
    let reopened = db.open();
    assert_eq!(
        reopened
            .keys(Some("a"))
            .expect("keys")
            .iter()
            .find(|k| k.key_id == "key_a-0")
            .and_then(|k| k.rate_limit),
        Some(ten)
    );

    let removed = store
        .set_rate_limit("key_a-0", None, 102, &who())
        .expect("remove");
    assert!(removed.version > set.version);
    apply(
        &mut map,
        store.key_map(Some(set.version), 102).expect("delta"),
    );
    assert_eq!(map[&hex("a-0")].rate_limit, None);

    let events = limit_events(&*store);
    assert_eq!(events.len(), 2);
    let details: Vec<&str> = events.iter().filter_map(|e| e.detail.as_deref()).collect();
    assert!(
        details.iter().any(|d| d.ends_with("rate limit removed")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.ends_with("rate limit 10 per second, burst 20")),
        "{details:?}"
    );
    assert!(events
        .iter()
        .all(|e| e.key_ids == vec!["key_a-0".to_string()]));
}

fn setting_the_same_limit_again_changes_nothing(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let per_minute = limit(100, Period::Minute, None);
    let first = store
        .set_rate_limit("key_a-0", Some(&per_minute), 101, &who())
        .expect("set");
    let again = store
        .set_rate_limit("key_a-0", Some(&per_minute), 102, &who())
        .expect("again");
    assert_eq!(again.version, first.version);
    assert_eq!(limit_events(&*store).len(), 1);
    // Removing a limit a key does not have changes nothing either.
    let none = store
        .set_rate_limit("key_a-1", None, 103, &who())
        .expect("none");
    assert_eq!(none.version, first.version);
}

fn a_limit_no_filter_would_take_is_refused_and_nothing_changes(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let (before, map) = full(&*store, 100);
    for (bad, field) in [
        (limit(0, Period::Second, None), "rate_limit.requests"),
        (
            limit(1_000_001, Period::Minute, None),
            "rate_limit.requests",
        ),
        (limit(10, Period::Second, Some(0)), "rate_limit.burst"),
    ] {
        match store.set_rate_limit("key_a-0", Some(&bad), 101, &who()) {
            Err(StoreError::InvalidRateLimit(message)) => {
                assert!(message.starts_with(field), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(full(&*store, 101), (before, map));
    assert!(limit_events(&*store).is_empty());
    assert!(matches!(
        store.set_rate_limit(
            "key_missing",
            Some(&limit(1, Period::Second, None)),
            101,
            &who()
        ),
        Err(StoreError::KeyNotFound(_))
    ));
}

fn a_roll_keeps_the_limit_and_a_revoked_key_cannot_get_one(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let five = limit(5, Period::Second, None);
    store
        .set_rate_limit("key_a-0", Some(&five), 101, &who())
        .expect("set");
    let kind = store
        .keys(Some("a"))
        .expect("keys")
        .into_iter()
        .find(|k| k.key_id == "key_a-0")
        .map(|k| k.kind)
        .expect("key");
    let rolled = store
        .roll_key("key_a-0", &new_key("a", kind, "a-0b"), 60, 102, &who())
        .expect("roll");
    assert_eq!(rolled.value.new.rate_limit, Some(five));
    let (_, map) = full(&*store, 102);
    assert_eq!(map[&hex("a-0b")].rate_limit, Some(five));
    assert_eq!(
        map[&hex("a-0")].rate_limit,
        Some(five),
        "the old key in its grace"
    );

    store.revoke_key("key_a-1", 103, &who()).expect("revoke");
    assert!(matches!(
        store.set_rate_limit("key_a-1", Some(&five), 104, &who()),
        Err(StoreError::KeyState { .. })
    ));
}
