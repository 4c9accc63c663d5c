//! Envoy counters: one for allowed requests, one per denial reason (names from
//! `keygate_core::gate::Count`), shown as `wasmcustom.keygate.*` at `/stats` and
//! `/stats/prometheus`. Requests only bump a number in the VM; the tick flushes the sums to
//! Envoy, so counting costs no host call per request.

#![forbid(unsafe_code)]

use crate::abi;
use core::cell::Cell;
use keygate_core::gate::Count;

const SLOTS: usize = Count::LEN;

#[derive(Debug)]
pub struct Metrics {
    ids: [Option<u32>; SLOTS],
    pending: [Cell<u32>; SLOTS],
}

impl Metrics {
    /// Defines the counters (Envoy gives the same counter for the same name).
    pub fn define() -> Metrics {
        let mut ids = [None; SLOTS];
        for (slot, count) in ids.iter_mut().zip(Count::all()) {
            *slot = abi::define_counter(&count.name()).ok();
        }
        Metrics {
            ids,
            pending: Default::default(),
        }
    }

    pub fn count(&self, event: Count) {
        if let Some(cell) = self.pending.get(event.index()) {
            cell.set(cell.get().saturating_add(1));
        }
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
