//! Sign-in throttling: each failed sign-in from an address doubles the wait before its answer
//! (0.5 s, 1 s, 2 s, … up to 30 s), and attempts from that address while the wait runs are
//! refused unchecked, so parallel guesses gain nothing. A success clears the address's count;
//! so do 15 minutes without a failure.
//!
//! Addresses are counted per IPv4 address and per IPv6 /64 (one host usually has a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FIRST_DELAY: Duration = Duration::from_millis(500);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// Failures older than this are forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most; past it the longest-quiet ones go first.
const MAX_ADDRESSES: usize = 4096;

/// The delay after the `failures`-th failure in a row.
pub fn delay_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// A wait as whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

/// The bucket an address counts in.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

struct Failures {
    count: u32,
    last: Instant,
    /// Attempts before this instant are refused without checking the token.
    locked_until: Instant,
}

/// A failed sign-in: how many in a row, and how long the answer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub count: u32,
    pub delay: Duration,
}

#[derive(Default)]
pub struct LoginThrottle {
    inner: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(wait)` while the address must wait before its next attempt.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        match self.lock().get(&bucket(ip)) {
            Some(f) if f.locked_until > now && now.duration_since(f.last) < FORGET_AFTER => {
                Err(f.locked_until - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure; the caller waits `delay` before answering.
    pub fn failed(&self, ip: IpAddr) -> Failure {
        let now = Instant::now();
        let mut map = self.lock();
        let key = bucket(ip);
        if !map.contains_key(&key) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            while map.len() >= MAX_ADDRESSES {
                let quietest = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k);
                match quietest {
                    Some(k) => map.remove(&k),
                    None => break,
                };
            }
        }
        let entry = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        let delay = delay_after(entry.count);
        entry.locked_until = now + delay;
        Failure {
            count: entry.count,
            delay,
        }
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&bucket(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_a_cap() {
        assert_eq!(delay_after(1), Duration::from_millis(500));
        assert_eq!(delay_after(2), Duration::from_secs(1));
        assert_eq!(delay_after(3), Duration::from_secs(2));
        assert_eq!(delay_after(6), Duration::from_secs(16));
        assert_eq!(delay_after(7), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(500)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn failures_lock_the_address_and_success_clears_it() {
        let throttle = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let other: IpAddr = "192.0.2.8".parse().expect("ip");
        assert_eq!(throttle.check(ip), Ok(()));
        assert_eq!(throttle.failed(ip).count, 1);
        let second = throttle.failed(ip);
        assert_eq!(second.count, 2);
        assert_eq!(second.delay, Duration::from_secs(1));
        assert!(throttle.check(ip).is_err());
        assert_eq!(throttle.check(other), Ok(()));
        throttle.succeeded(ip);
        assert_eq!(throttle.check(ip), Ok(()));
        assert_eq!(throttle.failed(ip).count, 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(bucket(mapped), "127.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn the_table_is_bounded() {
        let throttle = LoginThrottle::default();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            throttle.failed(IpAddr::V4(i.into()));
        }
        assert!(throttle.lock().len() <= MAX_ADDRESSES);
    }
}
