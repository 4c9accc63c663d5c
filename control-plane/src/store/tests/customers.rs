//! `CustomerStore` through the trait, on both backends: sign-ups verified once, password
//! resets spent once, sessions that end with their user or account.

use super::super::customers::{NewUser, Signup, TokenRefusal, Verified};
use super::super::*;
use super::{account, full, new_key, skipped, PostgresDb, SqliteDb, TestDb};
use crate::store::audit::who;
use keygate_core::key::KeyKind;

on_both_backends!(
    a_verified_signup_creates_the_user_account_and_keys_once,
    expired_and_unknown_signups_change_nothing,
    a_second_signup_for_a_taken_email_is_refused,
    a_password_reset_is_spent_once_expires_and_ends_every_session,
    sessions_end_at_expiry_sign_out_and_when_the_user_or_account_is_disabled,
);

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA";

fn token(name: &str) -> Digest {
    Digest::of_key(&format!("token-{name}"))
}

fn signup(email: &str, now: u64) -> Signup {
    Signup {
        email: email.into(),
        password_hash: HASH.into(),
        created_at: now,
        expires_at: now + 86_400,
        used_at: None,
    }
}

/// Verifies sign-up `name` for account `id` at `now`.
fn verify(
    store: &dyn Store,
    name: &str,
    id: &str,
    now: u64,
) -> Result<Versioned<Verified>, TokenRefusal> {
    let keys: Vec<NewKey> = KeyKind::ALL
        .iter()
        .enumerate()
        .map(|(i, &kind)| new_key(id, kind, &format!("{id}-{i}")))
        .collect();
    let user = NewUser {
        id: format!("usr_{id}"),
        account_id: id.into(),
    };
    store
        .complete_signup(&token(name), &user, &account(id, now), &keys, now, &who())
        .expect("complete")
}

/// A verified user `usr_<id>` of account `id`.
fn verified_user(store: &dyn Store, id: &str, now: u64) -> User {
    store
        .add_signup(&token(id), &signup(&format!("{id}@example.com"), now))
        .expect("signup");
    verify(store, id, id, now).expect("verified").value.user
}

use super::super::customers::User;

fn a_verified_signup_creates_the_user_account_and_keys_once(db: &dyn TestDb) {
    let store = db.open();
    store
        .add_signup(&token("a"), &signup("ann@example.com", 100))
        .expect("signup");
    let pending = store.signup(&token("a")).expect("read").expect("found");
    assert_eq!(pending.email, "ann@example.com");
    assert_eq!(pending.used_at, None);
    let before = store.key_map_status().expect("status").version;
    let verified = verify(&*store, "a", "acct_a", 200).expect("verified");
    assert_eq!(
        verified.version,
        before + 1,
        "one version for the four keys"
    );
    let user = &verified.value.user;
    assert_eq!(user.email, "ann@example.com");
    assert_eq!(user.account_id, "acct_a");
    assert_eq!(user.password_hash, HASH);
    assert_eq!((user.created_at, user.password_changed_at), (200, 200));
    assert_eq!(verified.value.account.keys.len(), 4);
    let (_, map) = full(&*store, 200);
    assert_eq!(map.len(), 4);
    assert_eq!(
        store.user_by_email("ann@example.com").expect("read"),
        Some(user.clone())
    );
    assert_eq!(
        store.users(Some("acct_a")).expect("users"),
        vec![user.clone()]
    );
    // The link works once; the second click is told it was used, and changes nothing.
    assert_eq!(
        verify(&*store, "a", "acct_b", 201).map(|_| ()),
        Err(TokenRefusal::Used)
    );
    assert_eq!(
        store
            .signup(&token("a"))
            .expect("read")
            .expect("kept")
            .used_at,
        Some(200)
    );
    assert!(matches!(
        store.account("acct_b"),
        Err(StoreError::AccountNotFound(_))
    ));
    assert_eq!(store.key_map_status().expect("status").version, before + 1);
}

fn expired_and_unknown_signups_change_nothing(db: &dyn TestDb) {
    let store = db.open();
    store
        .add_signup(&token("old"), &signup("old@example.com", 100))
        .expect("signup");
    assert_eq!(
        verify(&*store, "old", "acct_old", 100 + 86_400).map(|_| ()),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(
        verify(&*store, "never-sent", "acct_x", 100).map(|_| ()),
        Err(TokenRefusal::Unknown)
    );
    assert!(store.accounts().expect("accounts").is_empty());
    assert!(store.users(None).expect("users").is_empty());
    assert_eq!(store.key_map_status().expect("status").version, 0);
    // One second before its expiry it still works.
    assert!(verify(&*store, "old", "acct_old", 100 + 86_399).is_ok());
}

fn a_second_signup_for_a_taken_email_is_refused(db: &dyn TestDb) {
    let store = db.open();
    for name in ["first", "second"] {
        store
            .add_signup(&token(name), &signup("dup@example.com", 100))
            .expect("signup");
    }
    verify(&*store, "first", "acct_1", 101).expect("first link");
    assert_eq!(
        verify(&*store, "second", "acct_2", 102).map(|_| ()),
        Err(TokenRefusal::EmailTaken)
    );
    assert_eq!(store.accounts().expect("accounts").len(), 1);
    assert_eq!(store.users(None).expect("users").len(), 1);
    assert!(matches!(
        store.users(Some("acct_nope")),
        Err(StoreError::AccountNotFound(_))
    ));
}

fn a_password_reset_is_spent_once_expires_and_ends_every_session(db: &dyn TestDb) {
    let store = db.open();
    let user = verified_user(&*store, "r", 100);
    let other = verified_user(&*store, "s", 100);
    for name in ["one", "two"] {
        store
            .add_session(&token(name), &user.id, 110, 10_000, &who())
            .expect("session");
    }
    store
        .add_session(&token("other"), &other.id, 110, 10_000, &who())
        .expect("session");
    store
        .add_password_reset(&token("reset"), &user.id, 120, 120 + 3600)
        .expect("reset");
    store
        .add_password_reset(&token("reset2"), &user.id, 121, 121 + 3600)
        .expect("reset");
    store
        .add_password_reset(&token("late"), &user.id, 122, 130)
        .expect("reset");
    let pending = store
        .password_reset(&token("reset"))
        .expect("read")
        .expect("found");
    assert_eq!(
        (pending.user_id.as_str(), pending.email.as_str()),
        (user.id.as_str(), "r@example.com")
    );
    assert_eq!(
        store
            .complete_password_reset(&token("late"), "new-hash", 130, &who())
            .expect("reset"),
        Err(TokenRefusal::Expired)
    );
    assert_eq!(
        store
            .complete_password_reset(&token("nope"), "new-hash", 125, &who())
            .expect("reset"),
        Err(TokenRefusal::Unknown)
    );
    assert_eq!(
        store
            .user_by_email(&user.email)
            .expect("user")
            .expect("found")
            .password_hash,
        HASH
    );
    let changed = store
        .complete_password_reset(&token("reset"), "new-hash", 125, &who())
        .expect("reset")
        .expect("done");
    assert_eq!(changed.password_hash, "new-hash");
    assert_eq!(changed.password_changed_at, 125);
    for name in ["one", "two"] {
        assert_eq!(store.session(&token(name), 126).expect("read"), None);
    }
    assert!(store.session(&token("other"), 126).expect("read").is_some());
    // Spent, and so is the other link sent before it.
    for name in ["reset", "reset2"] {
        assert_eq!(
            store
                .complete_password_reset(&token(name), "third-hash", 127, &who())
                .expect("reset"),
            Err(TokenRefusal::Used)
        );
    }
    assert_eq!(
        store
            .user_by_email(&user.email)
            .expect("user")
            .expect("found")
            .password_hash,
        "new-hash"
    );
    assert!(matches!(
        store.add_password_reset(&token("x"), "usr_nobody", 1, 2),
        Err(StoreError::UserNotFound(_))
    ));
}

fn sessions_end_at_expiry_sign_out_and_when_the_user_or_account_is_disabled(db: &dyn TestDb) {
    let store = db.open();
    let user = verified_user(&*store, "u", 100);
    store
        .add_session(&token("s1"), &user.id, 100, 200, &who())
        .expect("session");
    let live = store
        .session(&token("s1"), 199)
        .expect("read")
        .expect("live");
    assert_eq!(live.user, user);
    assert_eq!(live.account.id, "u");
    assert_eq!((live.created_at, live.expires_at), (100, 200));
    assert_eq!(
        store.session(&token("s1"), 200).expect("read"),
        None,
        "expired"
    );
    assert_eq!(store.session(&token("unknown"), 150).expect("read"), None);

    store
        .add_session(&token("s2"), &user.id, 150, 1000, &who())
        .expect("session");
    store
        .delete_session(&token("s2"), 1, &who())
        .expect("sign out");
    assert_eq!(store.session(&token("s2"), 151).expect("read"), None);

    // Added after s1 expired: s1 is pruned, and only these two remain.
    for name in ["s3", "s4"] {
        store
            .add_session(&token(name), &user.id, 200, 1000, &who())
            .expect("session");
    }
    assert_eq!(
        store
            .delete_user_sessions(&user.id, 1, &who())
            .expect("everywhere"),
        2
    );
    assert_eq!(store.session(&token("s3"), 151).expect("read"), None);

    // A disabled user: sessions end, and new ones are not live while disabled.
    store
        .add_session(&token("s5"), &user.id, 150, 1000, &who())
        .expect("session");
    let disabled = store
        .set_user_disabled(&user.id, true, 160, &who())
        .expect("disable");
    assert_eq!(disabled.disabled_at, Some(160));
    assert_eq!(store.session(&token("s5"), 161).expect("read"), None);
    store
        .add_session(&token("s6"), &user.id, 162, 1000, &who())
        .expect("session");
    assert_eq!(store.session(&token("s6"), 163).expect("read"), None);
    assert_eq!(
        store
            .set_user_disabled(&user.id, false, 170, &who())
            .expect("enable")
            .disabled_at,
        None
    );
    assert!(store.session(&token("s6"), 171).expect("read").is_some());

    // A disabled account: the same for every user of it; its keys are untouched.
    let version = store.key_map_status().expect("status").version;
    let account = store
        .set_account_disabled("u", true, 180, &who())
        .expect("disable");
    assert_eq!(account.disabled_at, Some(180));
    assert_eq!(store.account("u").expect("account").disabled_at, Some(180));
    assert_eq!(store.session(&token("s6"), 181).expect("read"), None);
    store
        .add_session(&token("s7"), &user.id, 182, 1000, &who())
        .expect("session");
    assert_eq!(store.session(&token("s7"), 183).expect("read"), None);
    store
        .set_account_disabled("u", false, 190, &who())
        .expect("enable");
    assert!(store.session(&token("s7"), 191).expect("read").is_some());
    assert_eq!(store.key_map_status().expect("status").version, version);
    assert!(matches!(
        store.set_account_disabled("nope", true, 1, &who()),
        Err(StoreError::AccountNotFound(_))
    ));
    assert!(matches!(
        store.set_user_disabled("usr_nope", true, 1, &who()),
        Err(StoreError::UserNotFound(_))
    ));
    store
        .set_password_hash(&user.id, "stronger")
        .expect("rehash");
    assert_eq!(
        store
            .user_by_email(&user.email)
            .expect("user")
            .expect("found")
            .password_hash,
        "stronger"
    );
}
