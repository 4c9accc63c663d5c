//! Envoy counters: one for allowed requests, one per denial reason, shown as
//! `wasmcustom.keygate.*` at `/stats` and `/stats/prometheus`. Requests only bump a number
//! in the VM; the tick flushes the sums to Envoy, so counting costs no host call per request.

use crate::abi;
use alloc::format;
use core::cell::Cell;
use keygate_core::denial::Denial;

const SLOTS: usize = Denial::ALL.len() + 1;
const ALLOWED: usize = Denial::ALL.len();

#[derive(Debug)]
pub struct Metrics {
    ids: [Option<u32>; SLOTS],
    pending: [Cell<u32>; SLOTS],
}

impl Metrics {
    /// Defines the counters (Envoy gives the same counter for the same name).
    pub fn define() -> Metrics {
        let mut ids = [None; SLOTS];
        for (slot, denial) in ids.iter_mut().zip(Denial::ALL) {
            *slot = abi::define_counter(&format!("keygate.denied.{}", denial.code())).ok();
        }
        ids[ALLOWED] = abi::define_counter("keygate.allowed").ok();
        Metrics {
            ids,
            pending: Default::default(),
        }
    }

    pub fn allowed(&self) {
        bump(&self.pending[ALLOWED]);
    }

    pub fn denied(&self, denial: Denial) {
        bump(&self.pending[denial.index()]);
    }

    /// Sends the counts gathered since the last flush to Envoy.
    pub fn flush(&self) {
        for (id, pending) in self.ids.iter().zip(&self.pending) {
            let count = pending.take();
            if let (Some(id), true) = (id, count > 0) {
                // A failed increment loses counts, never a request.
                let _ = abi::increment_metric(*id, i64::from(count));
            }
        }
    }
}

fn bump(cell: &Cell<u32>) {
    cell.set(cell.get().saturating_add(1));
}
