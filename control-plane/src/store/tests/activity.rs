//! Names, expiries, the audit trail, bulk import and usage, through the trait, on both
//! backends.

use super::super::audit::{who, ActorKind, AuditAction};
use super::super::customers::{NewUser, Signup};
use super::super::import::ImportItem;
use super::super::usage::{UsageEntry, UsageReport, UsageStored, SECONDS_PER_DAY};
use super::super::*;
use super::{account, create, full, hex, new_key, skipped, PostgresDb, SqliteDb, TestDb};
use keygate_core::key::KeyKind;
use std::net::{IpAddr, Ipv4Addr};

on_both_backends!(
    names_and_expiries_are_kept_and_never_in_the_key_map,
    every_change_is_audited_with_its_actor_and_nothing_else_is,
    a_failed_change_leaves_no_audit_event,
    the_audit_trail_pages_and_filters,
    an_import_is_checked_whole_then_written_once_and_again_changes_nothing,
    an_import_refuses_keys_of_another_account_or_kind_and_lines_given_twice,
    after_a_large_import_pollers_get_the_full_map_instead_of_a_larger_delta,
    a_usage_report_counts_once_and_last_used_never_goes_back,
    usage_older_than_the_retention_is_pruned,
    concurrent_reports_from_many_replicas_add_up_exactly,
);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The events, oldest first, as (action, actor kind, actor id, account, key ids).
fn trail(store: &dyn Store) -> Vec<AuditEvent> {
    let mut events = store
        .audit_events(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .expect("audit");
    events.reverse();
    events
}

fn named(kind: KeyKind, id: &str, account: &str, name: &str, expires_at: Option<u64>) -> NewKey {
    NewKey {
        name: Some(name.into()),
        expires_at,
        ..new_key(account, kind, id)
    }
}

fn names_and_expiries_are_kept_and_never_in_the_key_map(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 100);
    let kind = KeyKind::ALL[0];
    let added = store
        .add_key(
            &named(kind, "ios", "a", "iOS app 2.3", Some(5000)),
            100,
            &who(),
        )
        .expect("add");
    assert_eq!(added.value.name.as_deref(), Some("iOS app 2.3"));
    assert_eq!(added.value.expires_at, Some(5000));
    assert_eq!(added.value.status(100), KeyStatus::Expiring);
    let (version, map) = full(&*store, 100);
    let entry = &map[&hex("ios")];
    assert_eq!(entry.expires_at, Some(5000), "the filter refuses it after");
    let json = serde_json::to_string(&store.key_map(None, 100).expect("map")).expect("json");
    assert!(!json.contains("iOS app"), "names stay out of the key map");

    // A rename is no key-map change: same version, no delta.
    let renamed = store
        .rename_key("key_ios", Some("iOS app 2.4"), 101, &who())
        .expect("rename");
    assert_eq!(renamed.name.as_deref(), Some("iOS app 2.4"));
    assert_eq!(store.key_map_status().expect("status").version, version);
    store
        .rename_key("key_ios", None, 102, &who())
        .expect("unname");
    assert_eq!(store.key("key_ios").expect("key").name, None);
    assert!(matches!(
        store.rename_key("key_nope", Some("x"), 103, &who()),
        Err(StoreError::KeyNotFound(_))
    ));
    // Purged at its expiry, like a rolled key's grace.
    let (_, map) = full(&*store, 5000);
    assert!(!map.contains_key(&hex("ios")));
    assert_eq!(
        store.key("key_ios").expect("key").status(5000),
        KeyStatus::Expired
    );
}

fn every_change_is_audited_with_its_actor_and_nothing_else_is(db: &dyn TestDb) {
    let store = db.open();
    let admin = Actor::admin_token(ip(1));
    let operator = Actor::operator("session 0123abcd", ip(2));
    let cli = who();
    let kind = KeyKind::ALL[0];

    store
        .create_account(&account("a", 10), &[new_key("a", kind, "a-0")], &admin)
        .expect("account");
    store
        .add_key(&named(kind, "k1", "a", "billing", None), 11, &operator)
        .expect("add");
    store
        .roll_key("key_k1", &new_key("a", kind, "k2"), 3600, 12, &cli)
        .expect("roll");
    store
        .set_key_disabled("key_k2", true, 13, &admin)
        .expect("disable");
    store
        .set_key_disabled("key_k2", true, 14, &admin)
        .expect("disable again: no change");
    store
        .set_key_disabled("key_k2", false, 15, &admin)
        .expect("enable");
    store
        .rename_key("key_k2", Some("billing v2"), 16, &operator)
        .expect("rename");
    store
        .rename_key("key_k2", Some("billing v2"), 17, &operator)
        .expect("same name: no change");
    store.revoke_key("key_a-0", 18, &admin).expect("revoke");
    store
        .revoke_key("key_a-0", 19, &admin)
        .expect("revoke again: no change");
    let imported = ImportItem {
        line: 1,
        key: new_key("a", kind, "legacy"),
    };
    store
        .import_keys(&[imported], 20, &cli, true)
        .expect("import");
    let token = |t: &str| Digest::of_key(t);
    let server = Actor::server();
    store
        .set_admin_token_digest(&token("admin-1"), 21, &server)
        .expect("admin set");
    store
        .set_admin_token_digest(&token("admin-1"), 22, &server)
        .expect("the same token: no change");
    store
        .set_admin_token_digest(&token("admin-2"), 23, &cli)
        .expect("admin rotated");
    store
        .set_sync_token_digest(&token("sync-1"), 24, &server)
        .expect("sync set");
    store
        .set_sync_token_digest(&token("sync-2"), 25, &cli)
        .expect("sync rotated");

    // A customer: sign-up, sign-in, sign-out, everywhere, password reset; the operator
    // disables and enables them and their account.
    let customer = Actor::customer("usr_c", ip(3));
    store
        .add_signup(
            &token("signup"),
            &Signup {
                email: "c@example.com".into(),
                password_hash: "$argon2id$x".into(),
                created_at: 30,
                expires_at: 1000,
                used_at: None,
            },
        )
        .expect("signup");
    store
        .complete_signup(
            &token("signup"),
            &NewUser {
                id: "usr_c".into(),
                account_id: "c".into(),
            },
            &account("c", 31),
            &[new_key("c", kind, "c-0")],
            31,
            &customer,
        )
        .expect("verify")
        .expect("verified");
    store
        .add_session(&token("s1"), "usr_c", 32, 1000, &customer)
        .expect("sign in");
    store
        .delete_session(&token("s1"), 33, &customer)
        .expect("sign out");
    store
        .delete_session(&token("s1"), 34, &customer)
        .expect("no session: no change");
    store
        .add_session(&token("s2"), "usr_c", 35, 1000, &customer)
        .expect("sign in");
    store
        .delete_user_sessions("usr_c", 36, &customer)
        .expect("everywhere");
    store
        .add_password_reset(&token("reset"), "usr_c", 37, 1000)
        .expect("reset link");
    store
        .complete_password_reset(&token("reset"), "$argon2id$y", 38, &customer)
        .expect("reset")
        .expect("done");
    store
        .set_user_disabled("usr_c", true, 39, &operator)
        .expect("disable user");
    store
        .set_user_disabled("usr_c", true, 40, &operator)
        .expect("again: no change");
    store
        .set_user_disabled("usr_c", false, 41, &operator)
        .expect("enable user");
    store
        .set_account_disabled("c", true, 42, &operator)
        .expect("disable account");
    store
        .set_account_disabled("c", false, 43, &operator)
        .expect("enable account");

    let events = trail(&*store);
    /// When, what, who, from where, which account.
    type Seen<'a> = (u64, &'a str, ActorKind, Option<&'a str>, Option<&'a str>);
    let seen: Vec<Seen> = events
        .iter()
        .map(|e| {
            (
                e.at,
                e.action.as_str(),
                e.actor.kind,
                e.actor.client.as_deref(),
                e.account_id.as_deref(),
            )
        })
        .collect();
    use ActorKind::{AdminToken, Cli, Customer, Operator, Server};
    let (a, c) = (Some("a"), Some("c"));
    let (admin_ip, operator_ip, customer_ip) =
        (Some("127.0.0.1"), Some("127.0.0.2"), Some("127.0.0.3"));
    assert_eq!(
        seen,
        vec![
            (10, "account.created", AdminToken, admin_ip, a),
            (11, "key.created", Operator, operator_ip, a),
            (12, "key.rolled", Cli, None, a),
            (13, "key.disabled", AdminToken, admin_ip, a),
            (15, "key.enabled", AdminToken, admin_ip, a),
            (16, "key.renamed", Operator, operator_ip, a),
            (18, "key.revoked", AdminToken, admin_ip, a),
            (20, "key.imported", Cli, None, a),
            (21, "admin_token.set", Server, None, None),
            (23, "admin_token.rotated", Cli, None, None),
            (24, "sync_token.set", Server, None, None),
            (25, "sync_token.rotated", Cli, None, None),
            (31, "user.signed_up", Customer, customer_ip, c),
            (32, "user.signed_in", Customer, customer_ip, c),
            (33, "user.signed_out", Customer, customer_ip, c),
            (35, "user.signed_in", Customer, customer_ip, c),
            (36, "user.signed_out_everywhere", Customer, customer_ip, c),
            (38, "user.password_reset", Customer, customer_ip, c),
            (39, "user.disabled", Operator, operator_ip, c),
            (41, "user.enabled", Operator, operator_ip, c),
            (42, "account.disabled", Operator, operator_ip, c),
            (43, "account.enabled", Operator, operator_ip, c),
        ]
    );
    // Which ids: the keys a change touched, the person it was about.
    let ids = |action: &str| -> Vec<String> {
        events
            .iter()
            .find(|e| e.action.as_str() == action)
            .map(|e| e.key_ids.clone())
            .unwrap_or_default()
    };
    assert_eq!(ids("account.created"), ["key_a-0"]);
    assert_eq!(ids("key.rolled"), ["key_k1", "key_k2"]);
    assert_eq!(ids("key.revoked"), ["key_a-0"]);
    assert_eq!(ids("user.signed_up"), ["key_c-0"]);
    let by = |action: AuditAction| events.iter().find(|e| e.action == action).cloned();
    let renamed = by(AuditAction::KeyRenamed).expect("renamed");
    assert!(renamed
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("billing v2")));
    let imported = by(AuditAction::KeysImported).expect("imported");
    assert_eq!(imported.key_ids.len(), 1);
    assert_eq!(imported.detail.as_deref(), Some("1 key imported by digest"));
    let reset = by(AuditAction::UserPasswordReset).expect("reset");
    assert_eq!(reset.user_id.as_deref(), Some("usr_c"));
    assert_eq!(reset.actor.id.as_deref(), Some("usr_c"));
    assert_eq!(
        by(AuditAction::KeyCreated).and_then(|e| e.actor.id),
        Some("session 0123abcd".into())
    );
    // Never a token, nor its digest.
    let everything = format!("{events:?}");
    for secret in ["admin-1", "admin-2", "sync-1", "sync-2"] {
        assert!(!everything.contains(&token(secret).to_hex()));
    }
}

fn a_failed_change_leaves_no_audit_event(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    let before = trail(&*store).len();
    let kind = KeyKind::ALL[0];
    // A key whose digest is taken: the whole account creation fails.
    let taken = new_key("b", kind, "a-0");
    assert!(store
        .create_account(&account("b", 2), &[taken], &who())
        .is_err());
    store.revoke_key("key_a-1", 3, &who()).expect("revoke");
    assert!(store
        .roll_key("key_a-1", &new_key("a", KeyKind::ALL[1], "x"), 0, 4, &who())
        .is_err());
    assert!(store.set_key_disabled("key_a-1", true, 5, &who()).is_err());
    let events = trail(&*store);
    assert_eq!(events.len(), before + 1, "only the revoke");
    assert_eq!(events[before].action, AuditAction::KeyRevoked);
}

fn the_audit_trail_pages_and_filters(db: &dyn TestDb) {
    let store = db.open();
    for (i, id) in ["a", "b", "a", "b", "a"].iter().enumerate() {
        let account_id = format!("{id}{i}");
        store
            .create_account(&account(&account_id, 100 + i as u64), &[], &who())
            .expect("account");
    }
    let page = |query: AuditQuery| -> Vec<String> {
        store
            .audit_events(&query)
            .expect("audit")
            .into_iter()
            .map(|e| e.account_id.unwrap_or_default())
            .collect()
    };
    let first = page(AuditQuery {
        limit: 2,
        ..AuditQuery::default()
    });
    assert_eq!(first, ["a4", "b3"], "newest first");
    let newest = store
        .audit_events(&AuditQuery {
            limit: 2,
            ..AuditQuery::default()
        })
        .expect("audit");
    let next = page(AuditQuery {
        limit: 2,
        before: Some(newest[1].seq),
        ..AuditQuery::default()
    });
    assert_eq!(next, ["a2", "b1"]);
    assert_eq!(
        page(AuditQuery {
            account_id: Some("a2".into()),
            limit: 10,
            ..AuditQuery::default()
        }),
        ["a2"]
    );
    assert_eq!(
        page(AuditQuery {
            since: Some(103),
            limit: 10,
            ..AuditQuery::default()
        }),
        ["a4", "b3"]
    );
}

fn item(line: u64, account: &str, kind: KeyKind, name: &str) -> ImportItem {
    ImportItem {
        line,
        key: NewKey {
            origin: KeyOrigin::Imported,
            ..new_key(account, kind, name)
        },
    }
}

fn an_import_is_checked_whole_then_written_once_and_again_changes_nothing(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    create(&*store, "b", 1);
    let version = store.key_map_status().expect("status").version;
    let events = trail(&*store).len();
    let kind = KeyKind::ALL[1];
    let mut items: Vec<ImportItem> = (0..50)
        .map(|i| {
            item(
                i + 1,
                if i % 2 == 0 { "a" } else { "b" },
                kind,
                &format!("imp-{i}"),
            )
        })
        .collect();
    // One line names an account that does not exist: nothing is written.
    items.push(item(51, "nope", kind, "imp-orphan"));
    let refused = store.import_keys(&items, 2, &who(), true).expect("import");
    assert!(!refused.applied);
    assert_eq!(refused.problems.len(), 1);
    assert_eq!(refused.problems[0].line, 51);
    assert_eq!(refused.problems[0].field, "account");
    assert_eq!(store.key_map_status().expect("status").version, version);
    assert_eq!(store.keys(None).expect("keys").len(), 8);
    assert_eq!(trail(&*store).len(), events);
    items.pop();

    // A dry run says what would change, and changes nothing.
    let dry = store
        .import_keys(&items, 2, &who(), false)
        .expect("dry run");
    assert!(!dry.applied && dry.problems.is_empty());
    assert_eq!((dry.added.len(), dry.unchanged.len()), (50, 0));
    assert_eq!(dry.version, version);
    assert_eq!(store.keys(None).expect("keys").len(), 8);

    let done = store.import_keys(&items, 3, &who(), true).expect("import");
    assert!(done.applied);
    assert_eq!(done.added.len(), 50);
    assert_eq!(done.added[0], (1, "key_imp-0".to_string()));
    assert!(done.version > version, "one new version");
    let (map_version, map) = full(&*store, 3);
    assert_eq!((map_version, map.len()), (done.version, 58));
    assert_eq!(map[&hex("imp-7")].account_id, "b");
    let stored = store.key("key_imp-7").expect("key");
    assert_eq!(stored.origin, KeyOrigin::Imported);
    // The delta from before the import holds every key, in one version.
    match store.key_map(Some(version), 3).expect("delta") {
        keygate_sync_core::message::KeyMapMessage::Delta { upserts, .. } => {
            assert_eq!(upserts.len(), 50)
        }
        other => panic!("expected a delta, got {other:?}"),
    }
    let imported: Vec<AuditEvent> = trail(&*store)
        .into_iter()
        .filter(|e| e.action == AuditAction::KeysImported)
        .collect();
    assert_eq!(imported.len(), 2, "one event per account");
    assert_eq!(imported[0].key_ids.len() + imported[1].key_ids.len(), 50);

    // Again: everything is already stored as asked; nothing changes.
    let again = store.import_keys(&items, 4, &who(), true).expect("again");
    assert_eq!((again.added.len(), again.unchanged.len()), (0, 50));
    assert_eq!(again.unchanged[0], (1, "key_imp-0".to_string()));
    assert_eq!(again.version, done.version);
    assert_eq!(store.keys(None).expect("keys").len(), 58);
    assert_eq!(trail(&*store).len(), events + 2);
}

fn an_import_refuses_keys_of_another_account_or_kind_and_lines_given_twice(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    create(&*store, "b", 1);
    let items = vec![
        // The key "a-0" is stored for account a as ALL[0].
        item(1, "b", KeyKind::ALL[0], "a-0"),
        item(2, "a", KeyKind::ALL[2], "a-0"),
        item(3, "a", KeyKind::ALL[0], "fresh"),
        item(4, "b", KeyKind::ALL[0], "fresh"),
        item(5, "a", KeyKind::ALL[0], "a-0"),
    ];
    let report = store.import_keys(&items, 2, &who(), true).expect("import");
    assert!(!report.applied);
    let said: Vec<(u64, &str)> = report
        .problems
        .iter()
        .map(|p| (p.line, p.field.as_str()))
        .collect();
    assert_eq!(said, [(1, "key"), (2, "key"), (4, "key"), (5, "key")]);
    assert!(report.problems[0].message.contains("key_a-0"));
    assert!(report.problems[2].message.contains("line 3"));
    assert!(matches!(
        store.key("key_fresh"),
        Err(StoreError::KeyNotFound(_))
    ));
}

fn after_a_large_import_pollers_get_the_full_map_instead_of_a_larger_delta(db: &dyn TestDb) {
    use keygate_sync_core::message::KeyMapMessage;
    let store = db.open();
    create(&*store, "a", 1);
    let before = store.key_map_status().expect("status").version;
    let count = super::super::rules::LARGE_DELTA + 1;
    let items: Vec<ImportItem> = (0..count)
        .map(|i| item(i + 1, "a", KeyKind::ALL[0], &format!("bulk-{i}")))
        .collect();
    store.import_keys(&items, 2, &who(), true).expect("import");
    // More than a third of the map changed: the full map answers, not a delta.
    assert_eq!(
        store.key_map_delta(before, 2).expect("lookup"),
        DeltaLookup::NotIssued
    );
    match store.key_map(Some(before), 2).expect("map") {
        KeyMapMessage::Full { keys, .. } => assert_eq!(keys.len() as u64, count + 4),
        other => panic!("expected the full map, got a delta of {other:?}"),
    }
    // The next small change is a delta again.
    let after = store.key_map_status().expect("status").version;
    store.revoke_key("key_bulk-7", 3, &who()).expect("revoke");
    match store.key_map(Some(after), 3).expect("map") {
        KeyMapMessage::Delta { removes, .. } => assert_eq!(removes, vec![hex("bulk-7")]),
        other => panic!("expected a delta, got {other:?}"),
    }
}

fn report(id: &str, entries: &[(&str, u64, u64, u64)]) -> UsageReport {
    UsageReport {
        report_id: id.into(),
        entries: entries
            .iter()
            .map(|&(key_id, allowed, refused, last_used)| UsageEntry {
                key_id: key_id.into(),
                allowed,
                refused,
                last_used,
            })
            .collect(),
    }
}

const DAY: u64 = SECONDS_PER_DAY;

fn a_usage_report_counts_once_and_last_used_never_goes_back(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    let now = 100 * DAY + 3600;
    let version = store.key_map_status().expect("status").version;
    let first = report(
        "report-0000000001",
        &[
            ("key_a-0", 5, 1, now - 30),
            ("key_a-1", 0, 2, now - 90),
            ("key_gone", 9, 9, now),
        ],
    );
    assert_eq!(
        store.record_usage(&first, now).expect("record"),
        UsageStored::Stored { keys: 2 }
    );
    // The same report again (a retry): nothing is counted twice.
    assert_eq!(
        store.record_usage(&first, now + 5).expect("again"),
        UsageStored::Duplicate
    );
    // An older use does not move last_used back; counts of yesterday go to yesterday.
    let second = report(
        "report-0000000002",
        &[("key_a-0", 2, 0, now - DAY), ("key_a-2", 1, 0, 0)],
    );
    store.record_usage(&second, now + 10).expect("record");
    let last = store.last_used(Some("a")).expect("last used");
    assert_eq!(last.get("key_a-0"), Some(&(now - 60)), "minute precision");
    assert_eq!(last.get("key_a-1"), Some(&(now - 120)));
    assert_eq!(last.get("key_a-2"), None, "no time given");
    assert_eq!(store.last_used(None).expect("all").len(), 2);
    let days: Vec<(String, u64, u64, u64)> = store
        .daily_usage("a", 99)
        .expect("days")
        .into_iter()
        .map(|d| (d.key_id, d.day, d.allowed, d.refused))
        .collect();
    assert_eq!(
        days,
        vec![
            ("key_a-0".into(), 99, 2, 0),
            ("key_a-0".into(), 100, 5, 1),
            ("key_a-1".into(), 100, 0, 2),
            ("key_a-2".into(), 100, 1, 0),
        ]
    );
    assert_eq!(store.daily_usage("a", 100).expect("days").len(), 3);
    assert_eq!(store.last_report_at().expect("last"), Some(now + 10));
    assert_eq!(
        store.key_map_status().expect("status").version,
        version,
        "usage is no key-map change"
    );
    // Totals saturate rather than overflow.
    let huge = u64::MAX / 2;
    for i in 0..3 {
        let big = report(
            &format!("report-big-000000{i}"),
            &[("key_a-3", huge, 0, now)],
        );
        store.record_usage(&big, now).expect("record");
    }
    let total = store
        .daily_usage("a", 100)
        .expect("days")
        .into_iter()
        .find(|d| d.key_id == "key_a-3")
        .expect("counted");
    assert_eq!(total.allowed, i64::MAX as u64);
}

fn usage_older_than_the_retention_is_pruned(db: &dyn TestDb) {
    let store = db.open();
    create(&*store, "a", 1);
    let old = report("report-old-000001", &[("key_a-0", 1, 0, 10 * DAY)]);
    let new = report("report-new-000001", &[("key_a-0", 1, 0, 20 * DAY)]);
    store.record_usage(&old, 10 * DAY).expect("old");
    store.record_usage(&new, 20 * DAY).expect("new");
    let pruned = store.prune_usage(15, 15 * DAY).expect("prune");
    assert_eq!(pruned, 2, "one day and one report id");
    let days = store.daily_usage("a", 0).expect("days");
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].day, 20);
    // The pruned id is forgotten; the kept one is still a duplicate. Last use stays.
    assert_eq!(
        store.record_usage(&new, 21 * DAY).expect("again"),
        UsageStored::Duplicate
    );
    assert_eq!(
        store.record_usage(&old, 21 * DAY).expect("old again"),
        UsageStored::Stored { keys: 1 }
    );
    assert_eq!(
        store.last_used(Some("a")).expect("last")["key_a-0"],
        20 * DAY
    );
}

fn concurrent_reports_from_many_replicas_add_up_exactly(db: &dyn TestDb) {
    const REPLICAS: usize = 4;
    const REPORTS: usize = 25;
    create(&*db.open(), "a", 1);
    let now = 50 * DAY + 1000;
    let keys = ["key_a-0", "key_a-1", "key_a-2", "key_a-3"];
    std::thread::scope(|scope| {
        for replica in 0..REPLICAS {
            scope.spawn(move || {
                let store = db.open();
                for n in 0..REPORTS {
                    // Each report, and a retry of another replica's, in turns: the retries
                    // race the originals.
                    let mine = format!("replica-{replica}-report-{n:04}");
                    let other = format!("replica-{}-report-{n:04}", (replica + 1) % REPLICAS);
                    for id in [mine, other] {
                        let entries: Vec<(&str, u64, u64, u64)> = keys
                            .iter()
                            .enumerate()
                            .map(|(k, key)| (*key, 1 + k as u64, 1, now - n as u64))
                            .rev()
                            .collect();
                        store
                            .record_usage(&report(&id, &entries), now)
                            .expect("record");
                    }
                }
            });
        }
    });
    let store = db.open();
    let days = store.daily_usage("a", 0).expect("days");
    assert_eq!(days.len(), keys.len());
    let reports = (REPLICAS * REPORTS) as u64;
    for (k, day) in days.iter().enumerate() {
        assert_eq!(day.key_id, keys[k]);
        assert_eq!(day.allowed, reports * (1 + k as u64), "{}", day.key_id);
        assert_eq!(day.refused, reports);
    }
    assert_eq!(
        store.last_used(Some("a")).expect("last")["key_a-0"],
        now - now % 60
    );
}
