//! keygate-standalone.wasm's usage reports: the VM that leads the key-map sync (`standalone.rs`)
//! is also the one reporter of its Envoy. As the fetcher service does
//! (`sync-service/src/usage.rs`), it tells every VM to count (the `usage-on` flag), empties
//! the inbox the VMs (itself included) append their counts to, names each key by the map in
//! shared data, and posts the report to keygatectl's cluster (`POST /v1/usage`), resending it
//! unchanged until keygatectl has it (keygate-sync-core's `UsageReporter`).
//!
//! The counts wait in the shared inbox, which outlives any VM, until the leader takes them;
//! what a leader gathered but had not reported when it died (at most one interval's counts)
//! is lost: counted once or not at all, never twice.

#![deny(unsafe_code)]

use crate::abi::{self, LogLevel};
use crate::callout;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use keygate_core::header_pairs;
use keygate_core::shared_data::{bucket_key, usage_inbox_key, usage_on_key};
use keygate_sync_core::settings::ServiceConfig;
use keygate_sync_core::usage_report::{usage_url_of, ReportFate, UsageReporter, UsageStat};

/// Compare-and-swap attempts to empty the inbox; after them, the next tick tries again.
const ATTEMPTS: usize = 4;

/// Envoy answers every callout by its timeout; a report still unanswered this long after
/// it is given up (and sent again at the next interval), so the reporter never stalls.
const LOST_CALL_GRACE_MS: u64 = 1000;

pub struct LeaderUsage {
    reporter: UsageReporter,
    in_flight: Option<(u32, u64)>,
    path: String,
    /// Envoy's counters of `UsageStat::ALL`, in that order (the fetcher service's names:
    /// one stat per Envoy whichever VM counts).
    stats: [Option<u32>; UsageStat::ALL.len()],
}

impl LeaderUsage {
    /// Sets the workers' flag as the configuration says; the reporter when reports are on.
    pub fn start(config: &ServiceConfig, now_ms: u64, seed: u64) -> Option<LeaderUsage> {
        let interval_ms = config.fetch.usage_interval_ms;
        let flag = [u8::from(interval_ms.is_some())];
        if let Err(status) = abi::set_shared_data(&usage_on_key(&config.namespace), &flag, 0) {
            abi::log(
                LogLevel::Warn,
                &format!(
                    "keygate usage: cannot tell the VMs to count: status {}",
                    status.0
                ),
            );
        }
        Some(LeaderUsage {
            reporter: UsageReporter::new(interval_ms?, now_ms, seed),
            in_flight: None,
            path: usage_url_of(&config.path),
            stats: UsageStat::ALL.map(|s| abi::define_counter(s.name()).ok()),
        })
    }

    /// Timer work: gather the VMs' counts, and send a report when one is due.
    pub fn on_tick(&mut self, config: &ServiceConfig, now_ms: u64) {
        if let Some((_, sent_ms)) = self.in_flight {
            let limit = sent_ms
                .saturating_add(config.fetch.timeout_ms)
                .saturating_add(LOST_CALL_GRACE_MS);
            if now_ms < limit {
                return;
            }
            self.in_flight = None;
            self.add(UsageStat::Errors, 1);
        }
        self.gather(&config.namespace, now_ms / 1000);
        let Some(report) = self.reporter.due(now_ms) else {
            return;
        };
        let bearer = config
            .fetch
            .bearer_token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let mut pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", self.path.as_bytes()),
            (b":authority", config.authority.as_bytes()),
            (b"content-type", b"application/json"),
        ];
        if let Some(bearer) = &bearer {
            pairs.push((b"authorization", bearer.as_bytes()));
        }
        let headers = header_pairs::serialize(&pairs);
        // timeout_ms is at most 60 s (the settings' range): it fits.
        let timeout = u32::try_from(config.fetch.timeout_ms).unwrap_or(u32::MAX);
        match callout::http_call(&config.cluster, &headers, report.body.as_bytes(), timeout) {
            Ok(token) => self.in_flight = Some((token, now_ms)),
            Err(status) => {
                self.add(UsageStat::Errors, 1);
                abi::log(
                    LogLevel::Warn,
                    &format!(
                        "keygate usage: cannot call cluster {}: status {}",
                        config.cluster, status.0
                    ),
                );
            }
        }
    }

    /// keygatectl's answer, when `token` is this reporter's call; true when it was.
    pub fn on_response(&mut self, token: u32, num_headers: usize) -> bool {
        if self.in_flight.map(|(sent, _)| sent) != Some(token) {
            return false;
        }
        self.in_flight = None;
        // A failed call has no headers; reading one would trap the VM.
        let status = if num_headers == 0 {
            0
        } else {
            callout::response_header(":status")
                .and_then(|s| core::str::from_utf8(&s).ok()?.parse::<u16>().ok())
                .unwrap_or(0)
        };
        match self.reporter.on_answer(status) {
            ReportFate::Taken => self.add(UsageStat::Reports, 1),
            ReportFate::Dropped => {
                self.add(UsageStat::Errors, 1);
                abi::log(
                    LogLevel::Warn,
                    &format!("keygate usage: report refused ({status}); dropped"),
                );
            }
            ReportFate::Kept => {
                self.add(UsageStat::Errors, 1);
                abi::log(
                    LogLevel::Warn,
                    &format!("keygate usage: report answered {status}; it is sent again"),
                );
            }
        }
        true
    }

    fn add(&self, stat: UsageStat, n: u64) {
        let at = UsageStat::ALL.iter().position(|s| *s == stat);
        if let (Some(Some(id)), Ok(n @ 1..)) =
            (at.and_then(|i| self.stats.get(i)), i64::try_from(n))
        {
            let _ = abi::increment_metric(*id, n);
        }
    }

    /// Empties the VMs' inbox into the reporter, naming keys by the published map.
    fn gather(&mut self, namespace: &str, now_s: u64) {
        let key = usage_inbox_key(namespace);
        for _ in 0..ATTEMPTS {
            let (bytes, cas) = match abi::shared_data_with_cas(&key) {
                Ok((bytes, cas)) if !bytes.is_empty() => (bytes, cas),
                _ => return,
            };
            if abi::set_shared_data(&key, &[], cas).is_err() {
                continue; // a VM appended meanwhile: read again
            }
            let unattributed = self.reporter.add_records(&bytes, now_s, |bucket| {
                abi::shared_data(&bucket_key(namespace, bucket)).ok()
            });
            self.add(UsageStat::Unattributed, unattributed);
            return;
        }
    }
}
