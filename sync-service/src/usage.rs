//! The fetcher's side of per-key usage: it tells the workers to count (the `usage-on`
//! flag), empties the inbox they append their counts to, names each key by the map in
//! shared data, and reports to keygatectl through its cluster (`POST /v1/usage`),
//! resending a report until keygatectl has it (keygate-sync-core's `UsageReporter`).

use keygate_core::shared_data::{bucket_key, usage_inbox_key, usage_on_key};
use keygate_sync_core::settings::ServiceConfig;
use keygate_sync_core::usage_report::{usage_url_of, ReportFate, UsageReporter, UsageStat};
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MapType, MetricType, Status};
use std::time::Duration;

/// Compare-and-swap attempts to empty the inbox; after them, the next tick tries again.
const ATTEMPTS: usize = 4;

pub struct UsageReports {
    reporter: UsageReporter,
    in_flight: Option<u32>,
    path: String,
    /// Envoy's counters of `UsageStat::ALL`, in that order.
    stats: [Option<u32>; UsageStat::ALL.len()],
}

impl UsageReports {
    /// Reports on, when the configuration asks for them: the workers start counting.
    pub fn start(config: &ServiceConfig, now_ms: u64) -> Option<UsageReports> {
        let interval_ms = config.fetch.usage_interval_ms;
        let flag = [u8::from(interval_ms.is_some())];
        if let Err(status) =
            hostcalls::set_shared_data(&usage_on_key(&config.namespace), Some(&flag), None)
        {
            warn!("keygate usage: cannot tell the workers to count: {status:?}");
        }
        Some(UsageReports {
            reporter: UsageReporter::new(interval_ms?, now_ms, now_ms),
            in_flight: None,
            path: usage_url_of(&config.path),
            stats: UsageStat::ALL
                .map(|s| hostcalls::define_metric(MetricType::Counter, s.name()).ok()),
        })
    }

    /// Timer work: gather the workers' counts, and send a report when one is due.
    pub fn on_tick(&mut self, config: &ServiceConfig, now_ms: u64) {
        if self.in_flight.is_some() {
            return;
        }
        self.gather(&config.namespace, now_ms / 1000);
        let Some(report) = self.reporter.due(now_ms) else {
            return;
        };
        let bearer = config
            .fetch
            .bearer_token
            .as_ref()
            .map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &self.path),
            (":authority", &config.authority),
            ("content-type", "application/json"),
        ];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        match hostcalls::dispatch_http_call(
            &config.cluster,
            headers,
            Some(report.body.as_bytes()),
            vec![],
            Duration::from_millis(config.fetch.timeout_ms),
        ) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => {
                self.add(UsageStat::Errors, 1);
                warn!("keygate usage: cannot call the cluster: {status:?}");
            }
        }
    }

    /// keygatectl's answer, when `token` is this reporter's call; true when it was.
    pub fn on_response(&mut self, token: u32, num_headers: usize) -> bool {
        if self.in_flight != Some(token) {
            return false;
        }
        self.in_flight = None;
        // A failed call has no headers; reading one would trap the VM.
        let status = if num_headers == 0 {
            0
        } else {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())
                .unwrap_or(0)
        };
        match self.reporter.on_answer(status) {
            ReportFate::Taken => self.add(UsageStat::Reports, 1),
            ReportFate::Dropped => {
                self.add(UsageStat::Errors, 1);
                warn!("keygate usage: report refused ({status}); dropped");
            }
            ReportFate::Kept => {
                self.add(UsageStat::Errors, 1);
                warn!("keygate usage: report answered {status}; it is sent again");
            }
        }
        true
    }

    fn add(&self, stat: UsageStat, n: u64) {
        let at = UsageStat::ALL.iter().position(|s| *s == stat);
        if let (Some(Some(id)), true) = (at.and_then(|i| self.stats.get(i)), n > 0) {
            let _ = hostcalls::increment_metric(*id, n as i64);
        }
    }

    /// Empties the workers' inbox into the reporter, naming keys by the published map.
    fn gather(&mut self, namespace: &str, now_s: u64) {
        let key = usage_inbox_key(namespace);
        for _ in 0..ATTEMPTS {
            let (bytes, cas) = match hostcalls::get_shared_data(&key) {
                Ok((Some(bytes), cas)) if !bytes.is_empty() => (bytes, cas),
                Ok(_) | Err(Status::NotFound) => return,
                Err(_) => return,
            };
            if hostcalls::set_shared_data(&key, Some(&[]), cas).is_err() {
                continue; // a worker appended meanwhile: read again
            }
            let unattributed =
                self.reporter.add_records(
                    &bytes,
                    now_s,
                    |bucket| match hostcalls::get_shared_data(&bucket_key(namespace, bucket)) {
                        Ok((Some(bytes), _)) => Some(bytes),
                        _ => None,
                    },
                );
            self.add(UsageStat::Unattributed, unattributed);
            return;
        }
    }
}
