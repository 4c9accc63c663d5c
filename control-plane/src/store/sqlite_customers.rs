//! `CustomerStore` on SQLite: users, sign-ups, password resets and sessions.

use super::audit::{Actor, AuditAction};
use super::customers::{
    account_switched, password_reset, sessions_ended, user_event, user_switched,
};
use super::customers::{
    CustomerStore, NewUser, PasswordReset, SessionOwner, Signup, TokenRefusal, TokenState, User,
    Verified, TOKEN_KEEP_SECONDS,
};
use super::rules::{ensure_keys_of, ChangeOp};
use super::sqlite::{insert_key, load_account};
use super::sqlite_audit::record;
use super::{Account, AccountWithKeys, NewKey, SqliteStore, StoreError, StoreResult, Versioned};
use keygate_core::digest::Digest;
use rusqlite::{params, OptionalExtension, Row, Transaction};

const USER_COLUMNS: &str =
    "id, email, account_id, password_hash, created_at, password_changed_at, disabled_at";

fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        email: r.get(1)?,
        account_id: r.get(2)?,
        password_hash: r.get(3)?,
        created_at: r.get(4)?,
        password_changed_at: r.get(5)?,
        disabled_at: r.get(6)?,
    })
}

fn load_user(tx: &Transaction, user_id: &str) -> StoreResult<User> {
    tx.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
        [user_id],
        user_from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::UserNotFound(user_id.to_string()))
}

fn signup_in(tx: &Transaction, token: &Digest) -> StoreResult<Option<Signup>> {
    Ok(tx
        .query_row(
            "SELECT email, password_hash, created_at, expires_at, used_at FROM signups \
             WHERE token_digest = ?1",
            [token.to_hex()],
            |r| {
                Ok(Signup {
                    email: r.get(0)?,
                    password_hash: r.get(1)?,
                    created_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    used_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}

fn reset_in(tx: &Transaction, token: &Digest) -> StoreResult<Option<PasswordReset>> {
    Ok(tx
        .query_row(
            "SELECT r.user_id, u.email, r.created_at, r.expires_at, r.used_at \
             FROM password_resets r JOIN users u ON u.id = r.user_id WHERE r.token_digest = ?1",
            [token.to_hex()],
            |r| {
                Ok(PasswordReset {
                    user_id: r.get(0)?,
                    email: r.get(1)?,
                    created_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    used_at: r.get(4)?,
                })
            },
        )
        .optional()?)
}

fn refusal<T>(state: &TokenState<T>) -> Option<TokenRefusal> {
    match state {
        TokenState::Unknown => Some(TokenRefusal::Unknown),
        TokenState::Used => Some(TokenRefusal::Used),
        TokenState::Expired => Some(TokenRefusal::Expired),
        TokenState::Valid(_) => None,
    }
}

impl CustomerStore for SqliteStore {
    fn add_signup(&self, token: &Digest, signup: &Signup) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM signups WHERE expires_at < ?1",
                [signup.created_at.saturating_sub(TOKEN_KEEP_SECONDS)],
            )?;
            tx.execute(
                "INSERT INTO signups (token_digest, email, password_hash, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.to_hex(),
                    signup.email,
                    signup.password_hash,
                    signup.created_at,
                    signup.expires_at
                ],
            )?;
            Ok(())
        })
    }

    fn signup(&self, token: &Digest) -> StoreResult<Option<Signup>> {
        self.read(|tx| signup_in(tx, token))
    }

    fn complete_signup(
        &self,
        token: &Digest,
        user: &NewUser,
        account: &Account,
        keys: &[NewKey],
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Result<Versioned<Verified>, TokenRefusal>> {
        self.write(|tx| {
            let state = TokenState::of(signup_in(tx, token)?, |s| s.used_at, |s| s.expires_at, now);
            if let Some(refused) = refusal(&state) {
                return Ok(Err(refused));
            }
            let TokenState::Valid(signup) = state else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE email = ?1)",
                [&signup.email],
                |r| r.get(0),
            )?;
            if taken {
                return Ok(Err(TokenRefusal::EmailTaken));
            }
            tx.execute(
                "UPDATE signups SET used_at = ?1 WHERE token_digest = ?2",
                params![now, token.to_hex()],
            )?;
            if user.account_id != account.id {
                return Err(StoreError::KeyMismatch(user.id.clone()));
            }
            tx.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![account.id, account.name, account.created_at],
            )?;
            ensure_keys_of(account, keys)?;
            let records = keys
                .iter()
                .map(|key| insert_key(tx, key, account.created_at))
                .collect::<StoreResult<Vec<_>>>()?;
            tx.execute(
                "INSERT INTO users (id, email, account_id, password_hash, created_at, \
                 password_changed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![user.id, signup.email, account.id, signup.password_hash, now],
            )?;
            let changes: Vec<_> = records
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(tx, &changes)?;
            let user = load_user(tx, &user.id)?;
            record(tx, now, actor, super::customers::signed_up(&user, &records))?;
            Ok(Ok(Versioned {
                value: Verified {
                    user,
                    account: AccountWithKeys {
                        account: load_account(tx, &account.id)?,
                        keys: records,
                    },
                },
                version,
            }))
        })
    }

    fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.read(|tx| {
            Ok(tx
                .query_row(
                    &format!("SELECT {USER_COLUMNS} FROM users WHERE email = ?1"),
                    [email],
                    user_from_row,
                )
                .optional()?)
        })
    }

    fn users(&self, account_id: Option<&str>) -> StoreResult<Vec<User>> {
        self.read(|tx| {
            let (sql, args) = match account_id {
                Some(id) => {
                    load_account(tx, id)?;
                    ("WHERE account_id = ?1 ORDER BY created_at, rowid", vec![id])
                }
                None => ("ORDER BY created_at, rowid", vec![]),
            };
            let mut stmt = tx.prepare(&format!("SELECT {USER_COLUMNS} FROM users {sql}"))?;
            let users = stmt
                .query_map(rusqlite::params_from_iter(args), user_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(users)
        })
    }

    fn set_user_disabled(
        &self,
        user_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<User> {
        self.write(|tx| {
            let user = load_user(tx, user_id)?;
            if user.disabled_at.is_some() != disabled {
                tx.execute(
                    "UPDATE users SET disabled_at = ?1 WHERE id = ?2",
                    params![disabled.then_some(now), user_id],
                )?;
                record(tx, now, actor, user_switched(&user, disabled))?;
            }
            if disabled {
                tx.execute("DELETE FROM user_sessions WHERE user_id = ?1", [user_id])?;
            }
            load_user(tx, user_id)
        })
    }

    fn set_account_disabled(
        &self,
        account_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Account> {
        self.write(|tx| {
            let account = load_account(tx, account_id)?;
            if account.disabled_at.is_some() != disabled {
                tx.execute(
                    "UPDATE accounts SET disabled_at = ?1 WHERE id = ?2",
                    params![disabled.then_some(now), account_id],
                )?;
                record(tx, now, actor, account_switched(account_id, disabled))?;
            }
            if disabled {
                tx.execute(
                    "DELETE FROM user_sessions WHERE user_id IN \
                     (SELECT id FROM users WHERE account_id = ?1)",
                    [account_id],
                )?;
            }
            load_account(tx, account_id)
        })
    }

    fn set_password_hash(&self, user_id: &str, password_hash: &str) -> StoreResult<()> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE users SET password_hash = ?1 WHERE id = ?2",
                params![password_hash, user_id],
            )?;
            if changed == 0 {
                return Err(StoreError::UserNotFound(user_id.to_string()));
            }
            Ok(())
        })
    }

    fn add_password_reset(
        &self,
        token: &Digest,
        user_id: &str,
        now: u64,
        expires_at: u64,
    ) -> StoreResult<()> {
        self.write(|tx| {
            load_user(tx, user_id)?;
            tx.execute(
                "DELETE FROM password_resets WHERE expires_at < ?1",
                [now.saturating_sub(TOKEN_KEEP_SECONDS)],
            )?;
            tx.execute(
                "INSERT INTO password_resets (token_digest, user_id, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![token.to_hex(), user_id, now, expires_at],
            )?;
            Ok(())
        })
    }

    fn password_reset(&self, token: &Digest) -> StoreResult<Option<PasswordReset>> {
        self.read(|tx| reset_in(tx, token))
    }

    fn complete_password_reset(
        &self,
        token: &Digest,
        password_hash: &str,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Result<User, TokenRefusal>> {
        self.write(|tx| {
            let state = TokenState::of(reset_in(tx, token)?, |r| r.used_at, |r| r.expires_at, now);
            if let Some(refused) = refusal(&state) {
                return Ok(Err(refused));
            }
            let TokenState::Valid(reset) = state else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            tx.execute(
                "UPDATE users SET password_hash = ?1, password_changed_at = ?2 WHERE id = ?3",
                params![password_hash, now, reset.user_id],
            )?;
            // This link and every other one sent to the user are spent.
            tx.execute(
                "UPDATE password_resets SET used_at = ?1 WHERE user_id = ?2 AND used_at IS NULL",
                params![now, reset.user_id],
            )?;
            let ended = tx.execute(
                "DELETE FROM user_sessions WHERE user_id = ?1",
                [&reset.user_id],
            )?;
            let user = load_user(tx, &reset.user_id)?;
            record(tx, now, actor, password_reset(&user, ended as u64))?;
            Ok(Ok(user))
        })
    }

    fn add_session(
        &self,
        id: &Digest,
        user_id: &str,
        now: u64,
        expires_at: u64,
        actor: &Actor,
    ) -> StoreResult<()> {
        self.write(|tx| {
            let user = load_user(tx, user_id)?;
            tx.execute("DELETE FROM user_sessions WHERE expires_at <= ?1", [now])?;
            tx.execute(
                "INSERT INTO user_sessions (id_digest, user_id, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id.to_hex(), user_id, now, expires_at],
            )?;
            record(tx, now, actor, user_event(AuditAction::UserSignedIn, &user))?;
            Ok(())
        })
    }

    fn session(&self, id: &Digest, now: u64) -> StoreResult<Option<SessionOwner>> {
        self.read(|tx| {
            let found: Option<(String, u64, u64)> = tx
                .query_row(
                    "SELECT user_id, created_at, expires_at FROM user_sessions \
                     WHERE id_digest = ?1 AND expires_at > ?2",
                    params![id.to_hex(), now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((user_id, created_at, expires_at)) = found else {
                return Ok(None);
            };
            let user = load_user(tx, &user_id)?;
            let account = load_account(tx, &user.account_id)?;
            if user.disabled_at.is_some() || account.disabled_at.is_some() {
                return Ok(None);
            }
            Ok(Some(SessionOwner {
                user,
                account,
                created_at,
                expires_at,
            }))
        })
    }

    fn delete_session(&self, id: &Digest, now: u64, actor: &Actor) -> StoreResult<()> {
        self.write(|tx| {
            let owner: Option<String> = tx
                .query_row(
                    "DELETE FROM user_sessions WHERE id_digest = ?1 RETURNING user_id",
                    [id.to_hex()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(user_id) = owner {
                let user = load_user(tx, &user_id)?;
                record(
                    tx,
                    now,
                    actor,
                    user_event(AuditAction::UserSignedOut, &user),
                )?;
            }
            Ok(())
        })
    }

    fn delete_user_sessions(&self, user_id: &str, now: u64, actor: &Actor) -> StoreResult<u64> {
        self.write(|tx| {
            let user = load_user(tx, user_id)?;
            let ended = tx.execute("DELETE FROM user_sessions WHERE user_id = ?1", [user_id])?;
            let event = user_event(AuditAction::UserSignedOutEverywhere, &user)
                .detail(sessions_ended(ended as u64));
            record(tx, now, actor, event)?;
            Ok(ended as u64)
        })
    }
}
