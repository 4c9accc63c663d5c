//! Which VM of an Envoy process polls keygatectl when the filter fetches for itself
//! (`keygate-standalone.wasm`): the one holding a lease in shared data. Every VM of the
//! filter (one per worker, and the main thread's) runs `LeaseKeeper::tick` on its timer; the
//! holder renews the lease each time, the others only read it, and when the holder stops
//! renewing (its VM trapped, was reloaded or removed) the first VM to find the lease expired
//! takes it.
//!
//! Envoy's shared data has compare-and-swap: a read returns a token, and a write given that
//! token succeeds only if nobody wrote the key since. So taking an expired lease and
//! renewing one's own are atomic. The one exception is the very first write: a key never
//! set is written whatever the token says, so a VM that creates the lease leads only once a
//! later renewal (compare-and-swap) confirms it is still its own.
//!
//! The value (24 bytes, little-endian): holder, expiry (Unix ms), term. A value that is not
//! that, or an expiry further ahead than any renewal sets (a clock gone back, a rogue write),
//! reads as a lease anyone may take, so nothing written there can keep the sync stopped.

#![forbid(unsafe_code)]
// Compiled without the feature only for its unit tests.
#![cfg_attr(not(feature = "standalone-sync"), allow(dead_code))]

use alloc::format;
use alloc::string::String;

/// Encoded size of a lease.
const LEASE_BYTES: usize = 24;

/// The shared-data key of a namespace's lease.
pub fn lease_key(namespace: &str) -> String {
    format!("{namespace}/lease")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it: a VM's id and its root context (`holder_id`); never 0.
    pub holder: u64,
    pub expires_ms: u64,
    /// Bumped each time the lease changes hands.
    pub term: u64,
}

/// A holder id: the VM's random id, and the root context (one VM may run several filter
/// configurations, each of which competes on its own).
pub fn holder_id(vm: u32, root: u32) -> u64 {
    (u64::from(vm) << 32) | u64::from(root)
}

/// The VM part of a holder id: what logs and the leader gauge show.
pub fn vm_of(holder: u64) -> u32 {
    (holder >> 32) as u32
}

impl Lease {
    pub fn encode(&self) -> [u8; LEASE_BYTES] {
        let mut out = [0; LEASE_BYTES];
        out[..8].copy_from_slice(&self.holder.to_le_bytes());
        out[8..16].copy_from_slice(&self.expires_ms.to_le_bytes());
        out[16..].copy_from_slice(&self.term.to_le_bytes());
        out
    }

    /// A lease, or None for anything else (garbage reads as a lease anyone may take).
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let bytes: &[u8; LEASE_BYTES] = bytes.try_into().ok()?;
        let word = |at: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let lease = Lease {
            holder: word(0),
            expires_ms: word(8),
            term: word(16),
        };
        (lease.holder != 0).then_some(lease)
    }

    /// Held and in force: not expired, and not further ahead than a renewal sets it (with
    /// a margin for two VMs' reads of the clock).
    pub fn is_live(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms < self.expires_ms && self.expires_ms - now_ms <= ttl_ms.saturating_mul(2)
    }
}

/// What the lease key held when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never written.
    Absent,
    /// Written; `lease` is None when the value is not a lease. `cas` is the token a
    /// compare-and-swap write must give.
    Held { lease: Option<Lease>, cas: u32 },
    /// The read failed: nothing is known, so this VM does not lead this tick.
    Unreadable,
}

/// What a VM does on its tick, given what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write this lease: with `Some(cas)` atomically (renewing one's own, or taking an
    /// expired or unreadable one); with None the key is new and the write cannot be
    /// compared, so it leads only once a later renewal confirms it.
    Write { lease: Lease, cas: Option<u32> },
    /// Another holder's lease is in force (0: unknown).
    Follow { holder: u64 },
}

/// The decision of one tick.
pub fn step(me: u64, now_ms: u64, ttl_ms: u64, seen: Seen) -> Step {
    let mine = |term| Lease {
        holder: me,
        expires_ms: now_ms.saturating_add(ttl_ms),
        term,
    };
    match seen {
        Seen::Unreadable => Step::Follow { holder: 0 },
        Seen::Absent => Step::Write {
            lease: mine(1),
            cas: None,
        },
        // Renewed even when it ran out (this VM was slow): nobody took it meanwhile.
        Seen::Held {
            lease: Some(held),
            cas,
        } if held.holder == me => Step::Write {
            lease: mine(held.term),
            cas: Some(cas),
        },
        Seen::Held {
            lease: Some(held), ..
        } if held.is_live(now_ms, ttl_ms) => Step::Follow {
            holder: held.holder,
        },
        Seen::Held { lease, cas } => Step::Write {
            lease: mine(lease.map_or(1, |held| held.term.wrapping_add(1).max(1))),
            cas: Some(cas),
        },
    }
}

/// The lease key in shared data (Envoy's, or a map in tests).
pub trait LeaseStore {
    fn read(&mut self) -> Seen;
    /// Writes `lease`, comparing with `cas` when given; true when written.
    fn write(&mut self, lease: &Lease, cas: Option<u32>) -> bool;
}

/// A change of leadership seen by this VM on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// This VM leads from now on (`term`); `from` held it before, if anyone.
    Took { term: u64, from: Option<u64> },
    /// This VM no longer leads; `to` holds it now, if known.
    Lost { to: Option<u64> },
}

/// One VM's (one filter configuration's) side of the lease.
#[derive(Debug)]
pub struct LeaseKeeper {
    me: u64,
    ttl_ms: u64,
    leading: bool,
    /// When this VM last wrote its lease (a renewal), while leading.
    renewed_ms: u64,
    /// The holder seen before this VM took the lease.
    last_holder: Option<u64>,
}

impl LeaseKeeper {
    pub fn new(me: u64, ttl_ms: u64) -> LeaseKeeper {
        LeaseKeeper {
            me,
            ttl_ms,
            leading: false,
            renewed_ms: 0,
            last_holder: None,
        }
    }

    #[cfg(test)]
    pub fn me(&self) -> u64 {
        self.me
    }

    /// Whether this VM leads: its lease was confirmed by its last compare-and-swap write.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// The tick's work: read the lease, renew or take it, or follow.
    pub fn tick(&mut self, store: &mut impl LeaseStore, now_ms: u64) -> Option<Change> {
        let was_leading = self.leading;
        let seen = store.read();
        let step = step(self.me, now_ms, self.ttl_ms, seen);
        self.leading = match step {
            Step::Write { lease, cas: None } => {
                // Created: confirmed (or not) by the next tick's compare-and-swap.
                store.write(&lease, None);
                false
            }
            Step::Write {
                lease,
                cas: Some(cas),
            } => store.write(&lease, Some(cas)),
            Step::Follow { holder } => {
                if holder != 0 {
                    self.last_holder = Some(holder);
                }
                false
            }
        };
        if let Seen::Held {
            lease: Some(held), ..
        } = seen
        {
            if held.holder != self.me {
                self.last_holder = Some(held.holder);
            }
        }
        match (was_leading, self.leading, step) {
            (false, true, Step::Write { lease, .. }) => {
                self.renewed_ms = now_ms;
                Some(Change::Took {
                    term: lease.term,
                    from: self.last_holder.filter(|h| *h != self.me),
                })
            }
            (true, true, _) => {
                self.renewed_ms = now_ms;
                None
            }
            (true, false, Step::Follow { holder }) if holder != 0 => {
                Some(Change::Lost { to: Some(holder) })
            }
            (true, false, _) => Some(Change::Lost { to: None }),
            _ => None,
        }
    }

    /// During long work (a large answer): renews the lease once a quarter of its time has
    /// passed since the last renewal, so that no other VM takes it while this one still
    /// writes the map. False when this VM does not lead (any more).
    pub fn keep(&mut self, store: &mut impl LeaseStore, now_ms: u64) -> bool {
        if !self.leading {
            return false;
        }
        if now_ms.saturating_sub(self.renewed_ms) < self.ttl_ms / 4 {
            return true;
        }
        self.tick(store, now_ms);
        self.leading
    }

    /// Gives the lease up at once (the configuration is going away), so that another VM
    /// takes it on its next tick instead of after the lease's time.
    pub fn release(&mut self, store: &mut impl LeaseStore) {
        if !self.leading {
            return;
        }
        self.leading = false;
        if let Seen::Held {
            lease: Some(held),
            cas,
        } = store.read()
        {
            if held.holder == self.me {
                let released = Lease {
                    expires_ms: 0,
                    ..held
                };
                store.write(&released, Some(cas));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const TTL: u64 = 500;

    /// Envoy's shared data for one key: a write with a token compares it, except on a key
    /// never set; every write gets a new token.
    #[derive(Default)]
    struct Shared {
        value: Option<(Vec<u8>, u32)>,
        next_cas: u32,
    }

    impl Shared {
        fn set(&mut self, bytes: &[u8], cas: u32) -> bool {
            if let (Some((_, held)), true) = (&self.value, cas != 0) {
                if *held != cas {
                    return false;
                }
            }
            self.next_cas += 1;
            self.value = Some((bytes.to_vec(), self.next_cas));
            true
        }

        fn holder(&self) -> Option<u64> {
            Lease::decode(&self.value.as_ref()?.0).map(|l| l.holder)
        }
    }

    impl LeaseStore for Shared {
        fn read(&mut self) -> Seen {
            match &self.value {
                None => Seen::Absent,
                Some((bytes, cas)) => Seen::Held {
                    lease: Lease::decode(bytes),
                    cas: *cas,
                },
            }
        }

        fn write(&mut self, lease: &Lease, cas: Option<u32>) -> bool {
            self.set(&lease.encode(), cas.unwrap_or(0))
        }
    }

    fn keeper(vm: u32) -> LeaseKeeper {
        LeaseKeeper::new(holder_id(vm, 1), TTL)
    }

    #[test]
    fn a_lease_round_trips_and_garbage_is_no_lease() {
        let lease = Lease {
            holder: holder_id(7, 2),
            expires_ms: 1234,
            term: 9,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        assert_eq!(vm_of(lease.holder), 7);
        assert_eq!(Lease::decode(b"short"), None);
        assert_eq!(Lease::decode(&[0; 24]), None, "holder 0 is nobody");
        assert_eq!(Lease::decode(&[1; 25]), None);
        assert_eq!(lease_key("kg"), "kg/lease");
    }

    #[test]
    fn the_first_vm_creates_the_lease_and_leads_once_a_renewal_confirms_it() {
        let mut shared = Shared::default();
        let mut a = keeper(1);
        assert_eq!(
            a.tick(&mut shared, 1000),
            None,
            "created, not yet confirmed"
        );
        assert!(!a.leading());
        assert_eq!(
            a.tick(&mut shared, 1050),
            Some(Change::Took {
                term: 1,
                from: None
            })
        );
        assert!(a.leading());
        assert_eq!(a.tick(&mut shared, 1100), None, "renewed");
        assert!(a.leading());
    }

    #[test]
    fn two_vms_creating_at_once_end_with_one_leader() {
        let mut shared = Shared::default();
        let (mut a, mut b) = (keeper(1), keeper(2));
        // Both read "absent" before either writes: both write, the last one stays.
        let seen_a = shared.read();
        let seen_b = shared.read();
        for (k, seen) in [(&mut a, seen_a), (&mut b, seen_b)] {
            if let Step::Write { lease, cas } = step(k.me(), 1000, TTL, seen) {
                shared.write(&lease, cas);
            }
        }
        a.tick(&mut shared, 1050);
        b.tick(&mut shared, 1050);
        assert_eq!([a.leading(), b.leading()].iter().filter(|l| **l).count(), 1);
        assert_eq!(shared.holder(), Some(b.me()));
    }

    #[test]
    fn others_follow_a_live_lease_and_take_it_once_it_expires() {
        let mut shared = Shared::default();
        let (mut a, mut b, mut c) = (keeper(1), keeper(2), keeper(3));
        a.tick(&mut shared, 1000);
        a.tick(&mut shared, 1050);
        for now in [1060, 1100, 1200, 1500] {
            assert_eq!(b.tick(&mut shared, now), None);
            assert!(!b.leading());
            if now < 1500 {
                a.tick(&mut shared, now);
            }
        }
        // A stops renewing (its VM trapped) at 1200: its lease runs out at 1700.
        assert_eq!(b.tick(&mut shared, 1699), None);
        assert_eq!(
            b.tick(&mut shared, 1700),
            Some(Change::Took {
                term: 2,
                from: Some(a.me())
            })
        );
        // C, ticking right after, follows B; only one took it.
        assert_eq!(c.tick(&mut shared, 1701), None);
        assert!(!c.leading());
        // A comes back (slow, not dead): it finds B's lease and steps down.
        assert_eq!(
            a.tick(&mut shared, 1702),
            Some(Change::Lost { to: Some(b.me()) })
        );
    }

    #[test]
    fn two_vms_finding_the_same_expired_lease_cannot_both_take_it() {
        let mut shared = Shared::default();
        let mut a = keeper(1);
        a.tick(&mut shared, 1000);
        a.tick(&mut shared, 1050);
        let (mut b, mut c) = (keeper(2), keeper(3));
        let seen = shared.read();
        let (Step::Write { lease: lb, cas: cb }, Step::Write { lease: lc, cas: cc }) =
            (step(b.me(), 5000, TTL, seen), step(c.me(), 5000, TTL, seen))
        else {
            panic!("an expired lease is taken");
        };
        assert!(shared.write(&lb, cb));
        assert!(!shared.write(&lc, cc), "the second compare-and-swap fails");
        b.tick(&mut shared, 5001);
        c.tick(&mut shared, 5001);
        assert!(b.leading() && !c.leading());
    }

    #[test]
    fn a_rogue_or_far_future_lease_is_taken_over() {
        let mut shared = Shared::default();
        shared.set(b"not a lease", 0);
        let mut a = keeper(1);
        assert!(matches!(
            a.tick(&mut shared, 1000),
            Some(Change::Took { term: 1, .. })
        ));
        // A clock gone back (or a rogue write) leaves an expiry far ahead: not in force.
        let mut shared = Shared::default();
        let far = Lease {
            holder: holder_id(9, 1),
            expires_ms: 1_000_000,
            term: u64::MAX,
        };
        shared.write(&far, None);
        let mut b = keeper(2);
        assert_eq!(
            b.tick(&mut shared, 1000),
            Some(Change::Took {
                term: 1,
                from: Some(far.holder)
            }),
            "the term wraps past 0 to 1"
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_the_next_tick() {
        let mut shared = Shared::default();
        let (mut a, mut b) = (keeper(1), keeper(2));
        a.tick(&mut shared, 1000);
        a.tick(&mut shared, 1050);
        a.release(&mut shared);
        assert!(!a.leading());
        assert!(matches!(
            b.tick(&mut shared, 1060),
            Some(Change::Took { term: 2, .. })
        ));
    }

    #[test]
    fn keep_renews_during_long_work_and_says_when_the_lease_was_lost() {
        let mut shared = Shared::default();
        let mut a = keeper(1);
        a.tick(&mut shared, 1000);
        a.tick(&mut shared, 1050);
        let cas_before = shared.value.as_ref().map(|v| v.1);
        assert!(a.keep(&mut shared, 1100), "not due yet: no write");
        assert_eq!(shared.value.as_ref().map(|v| v.1), cas_before);
        assert!(a.keep(&mut shared, 1050 + TTL / 4));
        assert_ne!(shared.value.as_ref().map(|v| v.1), cas_before, "renewed");
        // Another VM takes the lease (A's thread stalled past its time): A learns it.
        let mut b = keeper(2);
        b.tick(&mut shared, 10_000);
        assert!(!a.keep(&mut shared, 10_001));
        assert!(!a.leading());
    }
}
