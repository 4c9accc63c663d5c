//! `CustomerStore` on PostgreSQL: users, sign-ups, password resets and sessions. A verified
//! sign-up creates keys, so it runs under the key map's row lock like every key change; the
//! rest takes row locks of its own (`FOR UPDATE` on the token it spends), so two replicas
//! never spend one token twice.

use super::audit::{Actor, AuditAction};
use super::customers::{
    account_switched, password_reset, sessions_ended, user_event, user_switched,
};
use super::customers::{
    CustomerStore, NewUser, PasswordReset, SessionOwner, Signup, TokenRefusal, TokenState, User,
    Verified, TOKEN_KEEP_SECONDS,
};
use super::postgres::{insert_key, load_account, signed, unsigned, unsigned_opt, WRITE_BEGIN};
use super::postgres_audit::record;
use super::rules::{ensure_keys_of, ChangeOp};
use super::{Account, AccountWithKeys, NewKey, PostgresStore, StoreError, StoreResult, Versioned};
use keygate_core::digest::Digest;
use postgres::{Client, Row};

const USER_COLUMNS: &str =
    "id, email, account_id, password_hash, created_at, password_changed_at, disabled_at";

fn user_from_row(r: &Row) -> StoreResult<User> {
    Ok(User {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        account_id: r.try_get(2)?,
        password_hash: r.try_get(3)?,
        created_at: unsigned(r.try_get(4)?)?,
        password_changed_at: unsigned(r.try_get(5)?)?,
        disabled_at: unsigned_opt(r.try_get(6)?)?,
    })
}

fn load_user(c: &mut Client, user_id: &str) -> StoreResult<User> {
    match c.query_opt(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
        &[&user_id],
    )? {
        Some(row) => user_from_row(&row),
        None => Err(StoreError::UserNotFound(user_id.to_string())),
    }
}

/// The sign-up, locked for the rest of the transaction when `lock`.
fn signup_in(c: &mut Client, token: &Digest, lock: bool) -> StoreResult<Option<Signup>> {
    let sql = format!(
        "SELECT email, password_hash, created_at, expires_at, used_at FROM signups \
         WHERE token_digest = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    c.query_opt(sql.as_str(), &[&token.to_hex()])?
        .map(|r| {
            Ok(Signup {
                email: r.try_get(0)?,
                password_hash: r.try_get(1)?,
                created_at: unsigned(r.try_get(2)?)?,
                expires_at: unsigned(r.try_get(3)?)?,
                used_at: unsigned_opt(r.try_get(4)?)?,
            })
        })
        .transpose()
}

fn reset_in(c: &mut Client, token: &Digest, lock: bool) -> StoreResult<Option<PasswordReset>> {
    let sql = format!(
        "SELECT r.user_id, u.email, r.created_at, r.expires_at, r.used_at \
         FROM password_resets r JOIN users u ON u.id = r.user_id WHERE r.token_digest = $1{}",
        if lock { " FOR UPDATE OF r" } else { "" }
    );
    c.query_opt(sql.as_str(), &[&token.to_hex()])?
        .map(|r| {
            Ok(PasswordReset {
                user_id: r.try_get(0)?,
                email: r.try_get(1)?,
                created_at: unsigned(r.try_get(2)?)?,
                expires_at: unsigned(r.try_get(3)?)?,
                used_at: unsigned_opt(r.try_get(4)?)?,
            })
        })
        .transpose()
}

fn refusal<T>(state: &TokenState<T>) -> Option<TokenRefusal> {
    match state {
        TokenState::Unknown => Some(TokenRefusal::Unknown),
        TokenState::Used => Some(TokenRefusal::Used),
        TokenState::Expired => Some(TokenRefusal::Expired),
        TokenState::Valid(_) => None,
    }
}

impl PostgresStore {
    /// A write that changes no key: it does not wait for the key map's row lock.
    fn change<T>(&self, f: impl FnOnce(&mut Client) -> StoreResult<T>) -> StoreResult<T> {
        self.transaction(WRITE_BEGIN, f)
    }
}

impl CustomerStore for PostgresStore {
    fn add_signup(&self, token: &Digest, signup: &Signup) -> StoreResult<()> {
        self.change(|c| {
            c.execute(
                "DELETE FROM signups WHERE expires_at < $1",
                &[&signed(
                    signup.created_at.saturating_sub(TOKEN_KEEP_SECONDS),
                )?],
            )?;
            c.execute(
                "INSERT INTO signups (token_digest, email, password_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &token.to_hex(),
                    &signup.email,
                    &signup.password_hash,
                    &signed(signup.created_at)?,
                    &signed(signup.expires_at)?,
                ],
            )?;
            Ok(())
        })
    }

    fn signup(&self, token: &Digest) -> StoreResult<Option<Signup>> {
        self.read(|c| signup_in(c, token, false))
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
        self.write(|c| {
            let found = signup_in(c, token, true)?;
            let state = TokenState::of(found, |s| s.used_at, |s| s.expires_at, now);
            if let Some(refused) = refusal(&state) {
                return Ok(Err(refused));
            }
            let TokenState::Valid(signup) = state else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            if c.query_opt("SELECT 1 FROM users WHERE email = $1", &[&signup.email])?
                .is_some()
            {
                return Ok(Err(TokenRefusal::EmailTaken));
            }
            if user.account_id != account.id {
                return Err(StoreError::KeyMismatch(user.id.clone()));
            }
            c.execute(
                "UPDATE signups SET used_at = $1 WHERE token_digest = $2",
                &[&signed(now)?, &token.to_hex()],
            )?;
            c.execute(
                "INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)",
                &[&account.id, &account.name, &signed(account.created_at)?],
            )?;
            ensure_keys_of(account, keys)?;
            let records = keys
                .iter()
                .map(|key| insert_key(c, key, account.created_at))
                .collect::<StoreResult<Vec<_>>>()?;
            c.execute(
                "INSERT INTO users (id, email, account_id, password_hash, created_at, \
                 password_changed_at) VALUES ($1, $2, $3, $4, $5, $5)",
                &[
                    &user.id,
                    &signup.email,
                    &account.id,
                    &signup.password_hash,
                    &signed(now)?,
                ],
            )?;
            let changes: Vec<_> = records
                .iter()
                .map(|k| (&k.digest, ChangeOp::Upsert))
                .collect();
            let version = self.issue_version(c, &changes)?;
            let user = load_user(c, &user.id)?;
            record(c, now, actor, super::customers::signed_up(&user, &records))?;
            Ok(Ok(Versioned {
                value: Verified {
                    user,
                    account: AccountWithKeys {
                        account: load_account(c, &account.id)?,
                        keys: records,
                    },
                },
                version,
            }))
        })
    }

    fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        self.read(|c| {
            c.query_opt(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
                &[&email],
            )?
            .map(|row| user_from_row(&row))
            .transpose()
        })
    }

    fn users(&self, account_id: Option<&str>) -> StoreResult<Vec<User>> {
        self.read(|c| {
            let rows = match account_id {
                Some(id) => {
                    load_account(c, id)?;
                    c.query(
                        &format!(
                            "SELECT {USER_COLUMNS} FROM users WHERE account_id = $1 \
                             ORDER BY created_at, seq"
                        ),
                        &[&id],
                    )?
                }
                None => c.query(
                    &format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, seq"),
                    &[],
                )?,
            };
            rows.iter().map(user_from_row).collect()
        })
    }

    fn set_user_disabled(
        &self,
        user_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<User> {
        self.change(|c| {
            let user = load_user(c, user_id)?;
            let at = disabled.then_some(signed(now)?);
            // Only a change is recorded, also when two replicas switch at once.
            let switched = c.execute(
                "UPDATE users SET disabled_at = $1 WHERE id = $2 \
                 AND (disabled_at IS NOT NULL) <> $3",
                &[&at, &user_id, &disabled],
            )?;
            if switched > 0 {
                record(c, now, actor, user_switched(&user, disabled))?;
            }
            if disabled {
                c.execute("DELETE FROM user_sessions WHERE user_id = $1", &[&user_id])?;
            }
            load_user(c, user_id)
        })
    }

    fn set_account_disabled(
        &self,
        account_id: &str,
        disabled: bool,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Account> {
        self.change(|c| {
            load_account(c, account_id)?;
            let at = disabled.then_some(signed(now)?);
            let switched = c.execute(
                "UPDATE accounts SET disabled_at = $1 WHERE id = $2 \
                 AND (disabled_at IS NOT NULL) <> $3",
                &[&at, &account_id, &disabled],
            )?;
            if switched > 0 {
                record(c, now, actor, account_switched(account_id, disabled))?;
            }
            if disabled {
                c.execute(
                    "DELETE FROM user_sessions WHERE user_id IN \
                     (SELECT id FROM users WHERE account_id = $1)",
                    &[&account_id],
                )?;
            }
            load_account(c, account_id)
        })
    }

    fn set_password_hash(&self, user_id: &str, password_hash: &str) -> StoreResult<()> {
        self.change(|c| {
            let changed = c.execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[&password_hash, &user_id],
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
        self.change(|c| {
            load_user(c, user_id)?;
            c.execute(
                "DELETE FROM password_resets WHERE expires_at < $1",
                &[&signed(now.saturating_sub(TOKEN_KEEP_SECONDS))?],
            )?;
            c.execute(
                "INSERT INTO password_resets (token_digest, user_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
                &[
                    &token.to_hex(),
                    &user_id,
                    &signed(now)?,
                    &signed(expires_at)?,
                ],
            )?;
            Ok(())
        })
    }

    fn password_reset(&self, token: &Digest) -> StoreResult<Option<PasswordReset>> {
        self.read(|c| reset_in(c, token, false))
    }

    fn complete_password_reset(
        &self,
        token: &Digest,
        password_hash: &str,
        now: u64,
        actor: &Actor,
    ) -> StoreResult<Result<User, TokenRefusal>> {
        self.change(|c| {
            let found = reset_in(c, token, true)?;
            let state = TokenState::of(found, |r| r.used_at, |r| r.expires_at, now);
            if let Some(refused) = refusal(&state) {
                return Ok(Err(refused));
            }
            let TokenState::Valid(reset) = state else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let at = signed(now)?;
            c.execute(
                "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE id = $3",
                &[&password_hash, &at, &reset.user_id],
            )?;
            // This link and every other one sent to the user are spent.
            c.execute(
                "UPDATE password_resets SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
                &[&at, &reset.user_id],
            )?;
            let ended = c.execute(
                "DELETE FROM user_sessions WHERE user_id = $1",
                &[&reset.user_id],
            )?;
            let user = load_user(c, &reset.user_id)?;
            record(c, now, actor, password_reset(&user, ended))?;
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
        self.change(|c| {
            let user = load_user(c, user_id)?;
            c.execute(
                "DELETE FROM user_sessions WHERE expires_at <= $1",
                &[&signed(now)?],
            )?;
            c.execute(
                "INSERT INTO user_sessions (id_digest, user_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
                &[&id.to_hex(), &user_id, &signed(now)?, &signed(expires_at)?],
            )?;
            record(c, now, actor, user_event(AuditAction::UserSignedIn, &user))?;
            Ok(())
        })
    }

    fn session(&self, id: &Digest, now: u64) -> StoreResult<Option<SessionOwner>> {
        self.read(|c| {
            let Some(row) = c.query_opt(
                "SELECT user_id, created_at, expires_at FROM user_sessions \
                 WHERE id_digest = $1 AND expires_at > $2",
                &[&id.to_hex(), &signed(now)?],
            )?
            else {
                return Ok(None);
            };
            let user_id: String = row.try_get(0)?;
            let created_at = unsigned(row.try_get(1)?)?;
            let expires_at = unsigned(row.try_get(2)?)?;
            let user = load_user(c, &user_id)?;
            let account = load_account(c, &user.account_id)?;
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
        self.change(|c| {
            let owner = c.query_opt(
                "DELETE FROM user_sessions WHERE id_digest = $1 RETURNING user_id",
                &[&id.to_hex()],
            )?;
            if let Some(row) = owner {
                let user = load_user(c, row.try_get(0)?)?;
                record(c, now, actor, user_event(AuditAction::UserSignedOut, &user))?;
            }
            Ok(())
        })
    }

    fn delete_user_sessions(&self, user_id: &str, now: u64, actor: &Actor) -> StoreResult<u64> {
        self.change(|c| {
            let user = load_user(c, user_id)?;
            let ended = c.execute("DELETE FROM user_sessions WHERE user_id = $1", &[&user_id])?;
            let event = user_event(AuditAction::UserSignedOutEverywhere, &user)
                .detail(sessions_ended(ended));
            record(c, now, actor, event)?;
            Ok(ended)
        })
    }
}
