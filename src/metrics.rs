//! Envoy counters: one for allowed requests, one per denial reason. Envoy shows them under
//! `wasmcustom.keygate.*` at `/stats` and `/stats/prometheus`.

use keygate_core::denial::Denial;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Debug, Default)]
pub struct Metrics {
    allowed: Option<u32>,
    denied: [Option<u32>; Denial::ALL.len()],
}

impl Metrics {
    /// Defines the counters (idempotent in Envoy: the same name gives the same counter).
    pub fn define() -> Metrics {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        let mut denied = [None; Denial::ALL.len()];
        for (slot, denial) in denied.iter_mut().zip(Denial::ALL) {
            *slot = counter(&format!("keygate.denied.{}", denial.code()));
        }
        Metrics {
            allowed: counter("keygate.allowed"),
            denied,
        }
    }

    pub fn allowed(&self) {
        bump(self.allowed);
    }

    pub fn denied(&self, denial: Denial) {
        let index = Denial::ALL.iter().position(|d| *d == denial);
        bump(index.and_then(|i| self.denied.get(i).copied().flatten()));
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        // A failed increment loses one count; it must never fail the request.
        let _ = hostcalls::increment_metric(id, 1);
    }
}
