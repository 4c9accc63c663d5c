//! Per-key usage in sync mode: this VM counts each known key's requests in its own table
//! (no host call on the request path), and every few seconds hands the counts to the fetcher
//! service through shared data: appended to the usage inbox with compare-and-swap, which
//! the fetcher empties and reports to keygatectl. Counting is on while the fetcher says it
//! reports (its `usage-on` flag).

#![forbid(unsafe_code)]

use crate::abi;
use crate::vm_global::VmGlobal;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use keygate_core::digest::Digest;
use keygate_core::gate::UsageCounter;
use keygate_core::shared_data::{usage_inbox_key, usage_on_key};
use keygate_core::usage::{encode_records, UsageTable, DEFAULT_SLOTS};

/// Ticks (50 ms) between two hand-overs, and between two looks at the fetcher's flag.
const HAND_OVER_TICKS: u32 = 100;
/// While the flag is off, the looks at it made every tick (the first 5 s): the fetcher sets
/// it at its own start, about when this VM starts; after them, one look a hand-over period.
const EAGER_LOOKS: u32 = 100;
/// The inbox's largest size: past it counts are dropped (the fetcher is not emptying it).
const MAX_INBOX: usize = 8 << 20;
/// Compare-and-swap attempts for one hand-over; after them the counts wait for the next.
const ATTEMPTS: usize = 4;

/// This VM's counts, for every configuration (a key's use is the key's): allocated when
/// the fetcher first says it reports.
static TABLE: VmGlobal<Option<UsageTable>> = VmGlobal::new(|| None);

/// One configuration's usage: its namespace's inbox and flag, and the tick count.
pub struct VmUsage {
    inbox_key: String,
    on_key: String,
    on: Cell<bool>,
    ticks: Cell<u32>,
    looks: Cell<u32>,
}

impl VmUsage {
    pub fn new(namespace: &str) -> VmUsage {
        VmUsage {
            inbox_key: usage_inbox_key(namespace),
            on_key: usage_on_key(namespace),
            on: Cell::new(false),
            ticks: Cell::new(0),
            looks: Cell::new(0),
        }
    }

    /// Timer work: every `HAND_OVER_TICKS`, read the flag and hand the counts over (while
    /// the flag is off, read it every tick for the first `EAGER_LOOKS`: the fetcher may set
    /// it just after this VM started; a look is a host call, too dear for every tick).
    pub fn on_tick(&self) {
        let ticks = self.ticks.get() + 1;
        let eager = !self.on.get() && self.looks.get() < EAGER_LOOKS;
        if ticks < HAND_OVER_TICKS && !eager {
            self.ticks.set(ticks);
            return;
        }
        self.ticks.set(0);
        self.looks.set(self.looks.get().saturating_add(1));
        let on = abi::shared_data(&self.on_key).is_ok_and(|v| v.first() == Some(&1));
        self.on.set(on);
        TABLE.with_borrow_mut(|table| {
            if on && table.is_none() {
                *table = Some(UsageTable::new(DEFAULT_SLOTS));
            }
            let Some(table) = table.as_mut().filter(|t| !t.is_empty()) else {
                return;
            };
            let (usage, unattributed) = table.drain();
            let mut records = Vec::new();
            encode_records(&mut records, &usage, unattributed);
            self.hand_over(&records);
        });
    }

    fn hand_over(&self, records: &[u8]) {
        for _ in 0..ATTEMPTS {
            let (mut inbox, cas) = match abi::shared_data_with_cas(&self.inbox_key) {
                Ok(found) => found,
                Err(status) if status == abi::NOT_FOUND => (Vec::new(), 0),
                Err(_) => return,
            };
            if inbox.len() + records.len() > MAX_INBOX {
                return;
            }
            inbox.extend_from_slice(records);
            if abi::set_shared_data(&self.inbox_key, &inbox, cas).is_ok() {
                return;
            }
        }
    }
}

impl UsageCounter for VmUsage {
    fn count(&self, digest: &Digest, allowed: bool) {
        if self.on.get() {
            TABLE.with_borrow_mut(|table| {
                if let Some(table) = table {
                    table.record(digest, allowed);
                }
            });
        }
    }
}
