//! Passwords: checked for length and strength before they are taken, hashed with Argon2id,
//! and hashed a few at a time so that sign-in cannot be used to burn the server's CPU.
//!
//! Parameters: Argon2id, m = 19 MiB (19,456 KiB), t = 2 passes, p = 1 lane: OWASP's Password
//! Storage Cheat Sheet's first configuration, its minimum for Argon2id. About 40 ms a hash on
//! one core of this project's machines; at most `MAX_CONCURRENT_HASHES` run at once (so at
//! most 38 MiB), and a request that cannot get a turn within `QUEUE_WAIT` is answered 503.
//! The parameters live in each stored hash (PHC string), so a later, stronger setting applies
//! to new hashes and is taken up by old ones at their owner's next sign-in.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_PASSES: u32 = 2;
pub const ARGON2_LANES: u32 = 1;
/// Hashes running at once: one per core of a small machine.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// How long a request waits for a turn before it is told to come back.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Shorter passwords are refused outright (NIST SP 800-63B asks for at least 8).
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longer passwords are refused before any hashing (and before the strength estimator, whose
/// cost grows with length). Passphrases fit easily.
pub const MAX_PASSWORD_BYTES: usize = 256;
/// zxcvbn's score (0–4) a new password must reach: 3 means "safely unguessable: moderate
/// protection from offline slow-hash scenario" (~10^10 guesses).
const MIN_SCORE: u8 = 3;

/// Why a new password is refused, in words for the person choosing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordProblem {
    #[error("Enter a password.")]
    Empty,
    #[error("The password is too short: use at least {MIN_PASSWORD_CHARS} characters.")]
    TooShort,
    #[error("The password is too long: use at most {MAX_PASSWORD_BYTES} bytes.")]
    TooLong,
    #[error("This password is too easy to guess{0}")]
    Weak(String),
}

/// The length checks every password goes through, old or new, before any hashing.
pub fn check_length(password: &str) -> Result<(), PasswordProblem> {
    if password.is_empty() {
        Err(PasswordProblem::Empty)
    } else if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordProblem::TooLong)
    } else {
        Ok(())
    }
}

/// Checks a new password: its length, then its strength as zxcvbn estimates it, knowing the
/// email it goes with (a password made of the address is weak).
pub fn check_new_password(password: &str, email: &str) -> Result<(), PasswordProblem> {
    check_length(password)?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordProblem::TooShort);
    }
    // The address, its parts, and its letters and digits run together ("annlee" for
    // ann.lee@example.com): passwords made of them are easy to guess for anyone who knows it.
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    let joined: String = local.chars().filter(|c| c.is_alphanumeric()).collect();
    let mut inputs = vec![email, local, domain, joined.as_str(), "keygate"];
    inputs.extend(
        email
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() > 1),
    );
    let estimate = zxcvbn::zxcvbn(password, &inputs);
    if u8::from(estimate.score()) >= MIN_SCORE {
        return Ok(());
    }
    let mut advice = String::new();
    if let Some(feedback) = estimate.feedback() {
        if let Some(warning) = feedback.warning() {
            advice.push_str(&format!(": {warning}"));
        }
        for suggestion in feedback.suggestions() {
            advice.push_str(&format!(" {suggestion}"));
        }
    }
    if advice.is_empty() {
        advice.push('.');
    }
    advice.push_str(" Try a longer passphrase of several unrelated words.");
    Err(PasswordProblem::Weak(advice))
}

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every turn was taken for longer than `QUEUE_WAIT`.
    #[error("the server is busy checking other passwords; try again in a moment")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// What checking a password against a stored hash found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub matches: bool,
    /// The stored hash has weaker parameters than today's: store a new one.
    pub needs_rehash: bool,
}

/// Argon2id hashing with a bounded number of hashes at once.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)),
        }
    }
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .map_err(|e| HashError::Failed(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A PHC string for `password` with a fresh salt.
pub fn hash_now(password: &str) -> Result<String, HashError> {
    let salt = crate::random::random_bytes::<16>().map_err(|e| HashError::Failed(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Failed(e.to_string()))?;
    argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Failed(e.to_string()))
}

/// Checks `password` against `phc`; with no stored hash, against a fixed one, so that an
/// unknown email takes as long to refuse as a wrong password.
pub fn verify_now(password: &str, phc: Option<&str>) -> Result<Verdict, HashError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = match phc {
        Some(phc) => phc,
        None => {
            if DUMMY.get().is_none() {
                let _ = DUMMY.set(hash_now("no user has this password")?);
            }
            DUMMY.get().map_or("", String::as_str)
        }
    };
    let parsed = PasswordHash::new(stored).map_err(|e| HashError::Failed(e.to_string()))?;
    let matches = argon2()?
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
        && phc.is_some();
    let needs_rehash = match Params::try_from(&parsed) {
        Ok(p) => {
            parsed.algorithm.as_str() != "argon2id"
                || p.m_cost() < ARGON2_MEMORY_KIB
                || p.t_cost() < ARGON2_PASSES
        }
        Err(_) => true,
    };
    Ok(Verdict {
        matches,
        needs_rehash,
    })
}

impl Hasher {
    /// Runs `work` on the blocking pool once a turn is free.
    async fn in_turn<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(QUEUE_WAIT, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let result = tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?;
        result
    }

    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        self.in_turn(move || hash_now(&password)).await
    }

    pub async fn verify(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<Verdict, HashError> {
        self.in_turn(move || verify_now(&password, phc.as_deref()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_the_documented_parameters_and_a_fresh_salt() {
        let a = hash_now("correct horse battery staple").expect("hash");
        let b = hash_now("correct horse battery staple").expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(!a.contains("horse"));
        let ok = verify_now("correct horse battery staple", Some(&a)).expect("verify");
        assert_eq!(
            ok,
            Verdict {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(
            !verify_now("correct horse battery stapler", Some(&a))
                .expect("verify")
                .matches
        );
        // No stored hash: refused, after the same work.
        assert!(
            !verify_now("no user has this password", None)
                .expect("verify")
                .matches
        );
    }

    #[test]
    fn weaker_stored_hashes_ask_for_a_rehash() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).expect("params"),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let phc = weak.hash_password(b"pw", &salt).expect("hash").to_string();
        assert_eq!(
            verify_now("pw", Some(&phc)).expect("verify"),
            Verdict {
                matches: true,
                needs_rehash: true
            }
        );
        assert!(verify_now("pw", Some("not a hash")).is_err());
    }

    #[test]
    fn weak_short_long_and_empty_passwords_are_refused_with_a_reason() {
        let email = "ann.lee@example.com";
        assert_eq!(check_new_password("", email), Err(PasswordProblem::Empty));
        assert_eq!(
            check_new_password("Sh0rt!x", email),
            Err(PasswordProblem::TooShort)
        );
        assert_eq!(
            check_new_password(&"a".repeat(MAX_PASSWORD_BYTES + 1), email),
            Err(PasswordProblem::TooLong)
        );
        for weak in [
            "password123",
            "qwertyuiop",
            "ann.lee@example.com",
            "annlee12345",
        ] {
            match check_new_password(weak, email) {
                Err(PasswordProblem::Weak(reason)) => {
                    assert!(reason.contains("passphrase"), "{reason}")
                }
                other => panic!("{weak}: {other:?}"),
            }
        }
        assert!(check_new_password("plum-tractor-velvet-42-orbit", email).is_ok());
        // Input up to the cap is estimated (and a long passphrase passes).
        assert!(check_new_password(&"tractor velvet ".repeat(16), email).is_ok());
        assert!(check_length(&"x".repeat(MAX_PASSWORD_BYTES)).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_two_hashes_run_at_once() {
        let hasher = Hasher::default();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (hasher, running, most) = (hasher.clone(), Arc::clone(&running), Arc::clone(&most));
            tasks.push(tokio::spawn(async move {
                hasher
                    .in_turn(move || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = running.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        // Stay a while, or until a third hash runs beside this one (which
                        // the bound must prevent).
                        let until = std::time::Instant::now() + Duration::from_millis(100);
                        while running.load(SeqCst) <= MAX_CONCURRENT_HASHES
                            && std::time::Instant::now() < until
                        {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        running.fetch_sub(1, SeqCst);
                        Ok(())
                    })
                    .await
            }));
        }
        for task in tasks {
            task.await.expect("task").expect("turn");
        }
        assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= MAX_CONCURRENT_HASHES);
    }
}
