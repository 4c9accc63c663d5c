//! The store's behaviour through the `Store` trait, on real SQLite files.

use super::*;
use keygate_core::key::{Environment, KeyType};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn open() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keygate.db");
    let store = SqliteStore::open(&path).expect("open");
    (dir, path, store)
}

fn new_key(account_id: &str, kind: KeyKind, name: &str) -> NewKey {
    NewKey {
        key_id: format!("key_{name}"),
        account_id: account_id.into(),
        kind,
        digest: Digest::of_key(name),
        hint: format!("{}…{name}", kind.prefix()),
        origin: KeyOrigin::Issued,
    }
}

fn account(id: &str, now: u64) -> Account {
    Account {
        id: id.into(),
        name: None,
        created_at: now,
    }
}

/// Creates account `id` with its four keys named `<id>-0` … `<id>-3`.
fn create(store: &SqliteStore, id: &str, now: u64) -> Versioned<AccountWithKeys> {
    let keys: Vec<NewKey> = KeyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| new_key(id, kind, &format!("{id}-{i}")))
        .collect();
    store
        .create_account(&account(id, now), &keys)
        .expect("create account")
}

type Map = BTreeMap<String, RawKey>;

fn full(store: &SqliteStore, now: u64) -> (u64, Map) {
    match store.key_map(None, now).expect("key map") {
        KeyMapMessage::Full { version, keys } => (
            version,
            keys.into_iter().map(|k| (k.digest.clone(), k)).collect(),
        ),
        other => panic!("expected a full map, got {other:?}"),
    }
}

fn apply(map: &mut Map, message: KeyMapMessage) -> u64 {
    match message {
        KeyMapMessage::Full { version, keys } => {
            *map = keys.into_iter().map(|k| (k.digest.clone(), k)).collect();
            version
        }
        KeyMapMessage::Delta {
            version,
            upserts,
            removes,
            ..
        } => {
            for digest in removes {
                map.remove(&digest);
            }
            for key in upserts {
                map.insert(key.digest.clone(), key);
            }
            version
        }
    }
}

fn hex(name: &str) -> String {
    Digest::of_key(name).to_hex()
}

#[test]
fn an_account_is_created_with_four_keys_of_the_four_kinds() {
    let (_dir, _, store) = open();
    let created = create(&store, "acct_a", 100);
    assert_eq!(created.version, 1);
    let kinds: Vec<KeyKind> = created.value.keys.iter().map(|k| k.kind).collect();
    assert_eq!(kinds, KeyKind::ALL.to_vec());
    assert!(created
        .value
        .keys
        .iter()
        .all(|k| k.status(100) == KeyStatus::Active && k.created_at == 100));
    assert_eq!(
        store.accounts().expect("accounts"),
        vec![account("acct_a", 100)]
    );
    assert_eq!(store.keys(Some("acct_a")).expect("keys").len(), 4);
    let (version, map) = full(&store, 100);
    assert_eq!((version, map.len()), (1, 4));
    let entry = &map[&hex("acct_a-1")];
    assert_eq!(entry.key_type, KeyType::Publishable);
    assert_eq!(entry.environment, Environment::Test);
    assert_eq!((entry.expires_at, entry.disabled), (None, false));
}

#[test]
fn unknown_accounts_and_keys_are_not_found() {
    let (_dir, _, store) = open();
    assert!(matches!(
        store.account("acct_x"),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.keys(Some("acct_x")),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.key("key_x"),
        Err(StoreError::KeyNotFound(_))
    ));
    let orphan = new_key("acct_x", KeyKind::ALL[0], "orphan");
    assert!(matches!(
        store.add_key(&orphan, 1),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.revoke_key("key_x", 1),
        Err(StoreError::KeyNotFound(_))
    ));
    assert_eq!(store.key_map_status().expect("status").version, 0);
}

#[test]
fn rolling_without_grace_stops_the_old_key_at_once() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    let replacement = new_key("a", KeyKind::ALL[0], "a-0-next");
    let rolled = store
        .roll_key("key_a-0", &replacement, 0, 200)
        .expect("roll");
    assert_eq!(rolled.version, 2);
    let old = &rolled.value.old;
    assert_eq!(old.status(200), KeyStatus::Expired);
    assert_eq!(
        (old.rolled_at, old.expires_at, old.removed_at),
        (Some(200), Some(200), Some(200))
    );
    assert_eq!(old.replaced_by.as_deref(), Some("key_a-0-next"));
    assert_eq!(rolled.value.new.status(200), KeyStatus::Active);
    let (_, map) = full(&store, 200);
    assert!(!map.contains_key(&hex("a-0")));
    assert!(map.contains_key(&hex("a-0-next")));
    // The roll is one change: the new key in, the old one out.
    assert_eq!(
        store.key_map(Some(1), 200).expect("delta"),
        KeyMapMessage::Delta {
            version: 2,
            since: 1,
            upserts: vec![rolled.value.new.to_raw_key()],
            removes: vec![hex("a-0")],
        }
    );
}

#[test]
fn rolling_with_grace_keeps_the_old_key_until_its_expiry_then_purges_it() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    let replacement = new_key("a", KeyKind::ALL[1], "a-1-next");
    let rolled = store
        .roll_key("key_a-1", &replacement, 3600, 200)
        .expect("roll");
    let old = &rolled.value.old;
    assert_eq!(old.status(200), KeyStatus::Expiring);
    assert_eq!((old.expires_at, old.removed_at), (Some(3800), None));
    let (version, map) = full(&store, 3799);
    assert_eq!(version, 2);
    assert_eq!(map[&hex("a-1")].expires_at, Some(3800));
    assert_eq!(
        store.key_map_status().expect("status").next_expiry,
        Some(3800)
    );
    // Nothing to purge a second early; at the expiry the key leaves in a new version.
    assert!(store.purge_expired(3799).expect("purge").value.is_empty());
    let purged = store.purge_expired(3800).expect("purge");
    assert_eq!(purged.version, 3);
    assert_eq!(purged.value.len(), 1);
    assert_eq!(purged.value[0].removed_at, Some(3800));
    assert_eq!(purged.value[0].status(3800), KeyStatus::Expired);
    assert_eq!(store.key_map_status().expect("status").next_expiry, None);
    assert_eq!(
        store.key_map(Some(2), 3800).expect("delta"),
        KeyMapMessage::Delta {
            version: 3,
            since: 2,
            upserts: vec![],
            removes: vec![hex("a-1")],
        }
    );
}

#[test]
fn reading_the_map_after_an_expiry_purges_it() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    store
        .roll_key("key_a-2", &new_key("a", KeyKind::ALL[2], "next"), 60, 100)
        .expect("roll");
    let (version, map) = full(&store, 160);
    assert_eq!(version, 3, "the read purged, in a version of its own");
    assert!(!map.contains_key(&hex("a-2")));
    assert_eq!(store.key("key_a-2").expect("key").removed_at, Some(160));
}

#[test]
fn a_key_cannot_be_rolled_twice_or_after_it_left_the_map() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    store
        .roll_key("key_a-0", &new_key("a", KeyKind::ALL[0], "n1"), 600, 100)
        .expect("roll");
    let again = store.roll_key("key_a-0", &new_key("a", KeyKind::ALL[0], "n2"), 0, 101);
    assert!(matches!(again, Err(StoreError::KeyState { .. })));
    store.revoke_key("key_a-1", 102).expect("revoke");
    let revoked = store.roll_key("key_a-1", &new_key("a", KeyKind::ALL[1], "n3"), 0, 103);
    assert!(matches!(revoked, Err(StoreError::KeyState { .. })));
    // A replacement of another kind is a caller's bug, refused.
    let mismatch = store.roll_key("key_a-2", &new_key("a", KeyKind::ALL[0], "n4"), 0, 104);
    assert!(matches!(mismatch, Err(StoreError::KeyMismatch(_))));
    assert_eq!(store.key_map_status().expect("status").version, 3);
}

#[test]
fn revoking_removes_the_key_and_records_when() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    let revoked = store.revoke_key("key_a-3", 150).expect("revoke");
    assert_eq!(revoked.version, 2);
    assert_eq!(revoked.value.revoked_at, Some(150));
    assert_eq!(revoked.value.status(150), KeyStatus::Revoked);
    assert!(!full(&store, 150).1.contains_key(&hex("a-3")));
    // Again: nothing changes, the first time stays.
    let again = store.revoke_key("key_a-3", 999).expect("revoke again");
    assert_eq!((again.version, again.value.revoked_at), (2, Some(150)));
    // A revoked key cannot come back.
    assert!(matches!(
        store.set_key_disabled("key_a-3", false, 200),
        Err(StoreError::KeyState { .. })
    ));
}

#[test]
fn disabled_keys_stay_in_the_map_marked_disabled() {
    let (_dir, _, store) = open();
    create(&store, "a", 100);
    let disabled = store
        .set_key_disabled("key_a-0", true, 110)
        .expect("disable");
    assert_eq!(disabled.version, 2);
    assert_eq!(disabled.value.status(110), KeyStatus::Disabled);
    assert!(full(&store, 110).1[&hex("a-0")].disabled);
    // Disabling twice is no change.
    assert_eq!(
        store
            .set_key_disabled("key_a-0", true, 111)
            .expect("again")
            .version,
        2
    );
    let enabled = store
        .set_key_disabled("key_a-0", false, 120)
        .expect("enable");
    assert_eq!((enabled.version, enabled.value.disabled_at), (3, None));
    assert!(!full(&store, 120).1[&hex("a-0")].disabled);
}

#[test]
fn versions_strictly_rise_with_every_change() {
    let (_dir, _, store) = open();
    let mut versions = vec![create(&store, "a", 1).version];
    versions.push(
        store
            .add_key(&new_key("a", KeyKind::ALL[0], "extra"), 2)
            .expect("add")
            .version,
    );
    versions.push(
        store
            .set_key_disabled("key_extra", true, 3)
            .expect("disable")
            .version,
    );
    versions.push(
        store
            .roll_key("key_a-0", &new_key("a", KeyKind::ALL[0], "r"), 5, 4)
            .expect("roll")
            .version,
    );
    versions.push(store.revoke_key("key_a-1", 5).expect("revoke").version);
    versions.push(store.purge_expired(10).expect("purge").version);
    versions.push(create(&store, "b", 11).version);
    assert_eq!(versions, (1..=7).collect::<Vec<u64>>());
}

#[test]
fn a_delta_since_any_version_holds_exactly_the_changes_after_it() {
    let (_dir, _, store) = open();
    let mut snapshots = vec![full(&store, 0)];
    create(&store, "a", 1);
    snapshots.push(full(&store, 1));
    create(&store, "b", 2);
    snapshots.push(full(&store, 2));
    store
        .roll_key("key_a-0", &new_key("a", KeyKind::ALL[0], "a-0-r"), 0, 3)
        .expect("roll");
    snapshots.push(full(&store, 3));
    store.set_key_disabled("key_b-1", true, 4).expect("disable");
    snapshots.push(full(&store, 4));
    store.revoke_key("key_b-2", 5).expect("revoke");
    let (current, expected) = full(&store, 5);
    assert_eq!(current, 5);
    // Since 2: exactly the roll (one in, one out), the disable and the revoke.
    let KeyMapMessage::Delta {
        upserts, removes, ..
    } = store.key_map(Some(2), 5).expect("delta")
    else {
        panic!("expected a delta");
    };
    let mut upserted: Vec<&str> = upserts.iter().map(|k| k.key_id.as_str()).collect();
    upserted.sort_unstable();
    assert_eq!(upserted, ["key_a-0-r", "key_b-1"]);
    let mut removed = removes.clone();
    removed.sort();
    let mut expected_removes = vec![hex("a-0"), hex("b-2")];
    expected_removes.sort();
    assert_eq!(removed, expected_removes);
    // From every earlier snapshot, its delta leads to the current map.
    for (version, snapshot) in snapshots {
        let mut map = snapshot;
        let delta = store.key_map(Some(version), 5).expect("delta");
        assert!(matches!(delta, KeyMapMessage::Delta { .. }));
        assert_eq!(apply(&mut map, delta), 5);
        assert_eq!(map, expected, "delta since {version}");
    }
    // Since now: an empty delta.
    assert_eq!(
        store.key_map(Some(5), 5).expect("delta"),
        KeyMapMessage::Delta {
            version: 5,
            since: 5,
            upserts: vec![],
            removes: vec![]
        }
    );
}

#[test]
fn a_since_older_than_the_change_log_or_in_the_future_gets_the_full_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open_with_change_log_limit(&dir.path().join("k.db"), 3).expect("open");
    for i in 0..6 {
        create(&store, &format!("acct_{i}"), i);
    }
    // Version 6, log kept for versions 4..=6: deltas answer since 3 and later.
    assert!(matches!(
        store.key_map(Some(2), 6),
        Ok(KeyMapMessage::Full { version: 6, .. })
    ));
    assert!(matches!(
        store.key_map(Some(3), 6),
        Ok(KeyMapMessage::Delta { since: 3, .. })
    ));
    assert!(matches!(
        store.key_map(Some(7), 6),
        Ok(KeyMapMessage::Full { version: 6, .. })
    ));
    let KeyMapMessage::Delta { upserts, .. } = store.key_map(Some(3), 6).expect("delta") else {
        panic!("expected a delta");
    };
    assert_eq!(upserts.len(), 12);
}

#[test]
fn a_failing_change_leaves_nothing_half_written() {
    let (_dir, _, store) = open();
    create(&store, "a", 1);
    // The third key's digest is taken: the account and its first two keys must not stay.
    let mut keys: Vec<NewKey> = KeyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| new_key("b", kind, &format!("b-{i}")))
        .collect();
    keys[2].digest = Digest::of_key("a-2");
    let failed = store.create_account(&account("b", 2), &keys);
    assert!(matches!(failed, Err(StoreError::DuplicateDigest(ref holder)) if holder == "key_a-2"));
    assert!(matches!(
        store.account("b"),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.key("key_b-0"),
        Err(StoreError::KeyNotFound(_))
    ));
    // A roll whose replacement collides leaves the old key as it was.
    let before = store.key("key_a-0").expect("key");
    let mut replacement = new_key("a", KeyKind::ALL[0], "r");
    replacement.digest = Digest::of_key("a-1");
    assert!(store.roll_key("key_a-0", &replacement, 0, 3).is_err());
    assert_eq!(store.key("key_a-0").expect("key"), before);
    assert!(matches!(
        store.key("key_r"),
        Err(StoreError::KeyNotFound(_))
    ));
    // No version was used and no change recorded.
    assert_eq!(store.key_map_status().expect("status").version, 1);
    assert_eq!(
        store.key_map(Some(1), 3).expect("delta"),
        KeyMapMessage::Delta {
            version: 1,
            since: 1,
            upserts: vec![],
            removes: vec![]
        }
    );
}

#[test]
fn the_schema_is_versioned_and_data_survives_reopening() {
    let (_dir, path, store) = open();
    create(&store, "a", 1);
    store
        .set_admin_token_digest(&Digest::of_key("token"))
        .expect("set token");
    drop(store);
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.keys(None).expect("keys").len(), 4);
    assert_eq!(
        store.admin_token_digest().expect("token"),
        Some(Digest::of_key("token"))
    );
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, 1);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", 99).expect("set");
    drop(conn);
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

/// Several processes' worth of connections roll keys and read the map at once: every change
/// gets its own version, each writer sees its versions rise, and the map ends consistent.
#[test]
fn concurrent_rolls_and_reads_keep_the_store_consistent() {
    const THREADS: usize = 6;
    const ROLLS: usize = 15;
    let (_dir, path, store) = open();
    for t in 0..THREADS {
        create(&store, &format!("t{t}"), 1);
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = SqliteStore::open(&path).expect("open");
                let mut versions = Vec::new();
                let mut current = format!("key_t{t}-0");
                for r in 0..ROLLS {
                    let name = format!("t{t}-roll{r}");
                    let replacement = new_key(&format!("t{t}"), KeyKind::ALL[0], &name);
                    let rolled = store.roll_key(&current, &replacement, 0, 2).expect("roll");
                    versions.push(rolled.version);
                    current = rolled.value.new.key_id;
                    let read = store.key_map(None, 2).expect("read").version();
                    assert!(read >= rolled.version);
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        let versions = handle.join().expect("thread");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        THREADS * ROLLS,
        "every roll had a version of its own"
    );
    let (version, map) = full(&store, 2);
    assert_eq!(version, (THREADS + THREADS * ROLLS) as u64);
    assert_eq!(map.len(), THREADS * 4);
    for t in 0..THREADS {
        assert!(map.contains_key(&hex(&format!("t{t}-roll{}", ROLLS - 1))));
        assert!(!map.contains_key(&hex(&format!("t{t}-0"))));
    }
    // The deltas since the start lead to the same map.
    let mut replayed = Map::new();
    apply(&mut replayed, store.key_map(Some(0), 2).expect("delta"));
    assert_eq!(replayed, map);
}
