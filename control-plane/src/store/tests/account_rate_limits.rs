//! Accounts' default rate limits: kept, shipped in the key map (full and delta) to the
//! account's keys without a limit of their own (a key's own limit wins), audited, refused
//! when no filter would take them; on both backends.

use super::super::audit::{who, AuditAction};
use super::super::*;
use super::{apply, create, full, hex, new_key, skipped, PostgresDb, SqliteDb, TestDb};
use keygate_core::config::RawLimit;
use keygate_core::rate_limit::Period;

on_both_backends!(
    a_default_reaches_the_keys_without_their_own_and_a_removed_one_leaves_them,
    keys_added_rolled_or_unlimited_later_take_the_default,
    setting_the_same_default_again_changes_nothing_and_a_bad_one_is_refused,
);

fn limit(requests: u64, per: Period, burst: Option<u64>) -> RawLimit {
    RawLimit {
        requests,
        per,
        burst,
    }
}

fn default_events(store: &dyn Store) -> Vec<AuditEvent> {
    store
        .audit_events(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == AuditAction::AccountRateLimited)
        .collect()
}

/// The map's limit of keys `<account>-0` … `<account>-3`.
fn limits_of(map: &super::Map, account: &str) -> Vec<Option<RawLimit>> {
    (0..4)
        .map(|i| map[&hex(&format!("{account}-{i}"))].rate_limit)
        .collect()
}

fn upserts(message: &KeyMapMessage) -> usize {
    match message {
        KeyMapMessage::Delta { upserts, .. } => upserts.len(),
        KeyMapMessage::Full { .. } => panic!("expected a delta"),
    }
}

fn a_default_reaches_the_keys_without_their_own_and_a_removed_one_leaves_them(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    create(&*store, "b", 100);
    let own = limit(5, Period::Second, None);
    store
        .set_rate_limit("key_a-0", Some(&own), 100, &who())
        .expect("own limit");
    let (before, mut map) = full(&*store, 100);

    let default = limit(100, Period::Minute, Some(20));
    let set = store
        .set_account_rate_limit("a", Some(&default), 101, &who())
        .expect("set");
    assert!(set.version > before, "the version moves");
    assert_eq!(set.value.rate_limit, Some(default));
    // A poller with the old version gets the three keys that inherit it, and only those.
    let delta = store.key_map(Some(before), 101).expect("delta");
    assert_eq!(upserts(&delta), 3);
    assert_eq!(apply(&mut map, delta), set.version);
    let d = Some(default);
    assert_eq!(limits_of(&map, "a"), vec![Some(own), d, d, d]);
    assert_eq!(limits_of(&map, "b"), vec![None; 4], "another account");
    assert_eq!(full(&*store, 101).1, map, "a full read agrees");
    // Kept: a reopened store reads it back; the key's own limit is still its own.
    let reopened = db.open();
    assert_eq!(reopened.account("a").expect("account").rate_limit, d);
    assert_eq!(reopened.account("b").expect("account").rate_limit, None);
    assert_eq!(reopened.key("key_a-1").expect("key").rate_limit, None);

    let removed = store
        .set_account_rate_limit("a", None, 102, &who())
        .expect("remove");
    assert!(removed.version > set.version);
    assert_eq!(removed.value.rate_limit, None);
    apply(
        &mut map,
        store.key_map(Some(set.version), 102).expect("delta"),
    );
    assert_eq!(limits_of(&map, "a"), vec![Some(own), None, None, None]);
    assert_eq!(full(&*store, 102).1, map);

    let events = default_events(&*store);
    let details: Vec<&str> = events.iter().filter_map(|e| e.detail.as_deref()).collect();
    assert_eq!(
        details,
        vec![
            "default rate limit removed",
            "default rate limit 100 per minute, burst 20"
        ]
    );
    assert!(events.iter().all(|e| e.account_id.as_deref() == Some("a")));
}

fn keys_added_rolled_or_unlimited_later_take_the_default(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let own = limit(5, Period::Second, None);
    store
        .set_rate_limit("key_a-0", Some(&own), 100, &who())
        .expect("own limit");
    let default = limit(7, Period::Second, None);
    let set = store
        .set_account_rate_limit("a", Some(&default), 101, &who())
        .expect("set");
    let (_, mut map) = full(&*store, 101);

    // The key's own limit removed: the default, at the next delta.
    let lifted = store
        .set_rate_limit("key_a-0", None, 102, &who())
        .expect("lift own");
    let version = apply(
        &mut map,
        store.key_map(Some(set.version), 102).expect("delta"),
    );
    assert_eq!(map[&hex("a-0")].rate_limit, Some(default));
    assert_eq!(version, lifted.version);

    // A key added later, and a roll's replacement of a key without its own.
    let kind = store.key("key_a-1").expect("key").kind;
    store
        .add_key(&new_key("a", kind, "a-4"), 103, &who())
        .expect("add");
    let rolled = store
        .roll_key("key_a-1", &new_key("a", kind, "a-1b"), 0, 104, &who())
        .expect("roll");
    assert_eq!(rolled.value.new.rate_limit, None, "no limit of its own");
    apply(&mut map, store.key_map(Some(version), 104).expect("delta"));
    assert_eq!(map[&hex("a-4")].rate_limit, Some(default));
    assert_eq!(map[&hex("a-1b")].rate_limit, Some(default));
    assert!(!map.contains_key(&hex("a-1")));
    assert_eq!(full(&*store, 104).1, map);
}

fn setting_the_same_default_again_changes_nothing_and_a_bad_one_is_refused(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let per_minute = limit(100, Period::Minute, None);
    let first = store
        .set_account_rate_limit("a", Some(&per_minute), 101, &who())
        .expect("set");
    let again = store
        .set_account_rate_limit("a", Some(&per_minute), 102, &who())
        .expect("again");
    assert_eq!(again.version, first.version);
    assert_eq!(default_events(&*store).len(), 1);

    let (before, map) = full(&*store, 103);
    for (bad, field) in [
        (limit(0, Period::Second, None), "rate_limit.requests"),
        (
            limit(1_000_001, Period::Minute, None),
            "rate_limit.requests",
        ),
        (limit(10, Period::Second, Some(0)), "rate_limit.burst"),
    ] {
        match store.set_account_rate_limit("a", Some(&bad), 103, &who()) {
            Err(StoreError::InvalidRateLimit(message)) => {
                assert!(message.starts_with(field), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(full(&*store, 103), (before, map));
    assert_eq!(default_events(&*store).len(), 1);
    assert!(matches!(
        store.set_account_rate_limit("nope", None, 103, &who()),
        Err(StoreError::AccountNotFound(_))
    ));
}
