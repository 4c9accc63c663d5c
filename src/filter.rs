//! The per-request path: one read of the header map, one decision, then either the identity
//! headers for the upstream or a local answer. No client input reaches a panic.

use crate::host;
use crate::root::FilterShared;
use keygate_core::bucket::{self, KeyInfo};
use keygate_core::config::Settings;
use keygate_core::decision::{decide, Decision, Request};
use keygate_core::denial::Denial;
use keygate_core::digest::Digest;
use keygate_core::header_pairs;
use keygate_core::request_scan;
use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::OnceCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

pub struct KeygateHttp {
    shared: Option<Rc<FilterShared>>,
}

impl KeygateHttp {
    pub fn new(shared: Option<Rc<FilterShared>>) -> Self {
        KeygateHttp { shared }
    }

    fn deny(&self, settings: Option<&Settings>, denial: Denial) -> Action {
        if let Some(shared) = &self.shared {
            shared.metrics.denied(denial);
        }
        let mut headers: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"application/json")];
        match (denial.status(), settings) {
            (401, Some(settings)) => {
                headers.push((b"www-authenticate", settings.www_authenticate.as_bytes()))
            }
            (503, _) => headers.push((b"retry-after", b"1")),
            _ => {}
        }
        let body = denial.body();
        if let Err(status) =
            host::send_local_response(denial.status(), denial.details(), &headers, body.as_bytes())
        {
            warn!(
                "keygate: cannot send the {} answer: {status:?}",
                denial.status()
            );
        }
        Action::Pause
    }

    /// Replaces client-sent identity headers with ours and drops the credential.
    fn forward(&self, settings: &Settings, entry: &KeyInfo<'_>) -> Action {
        let names = &settings.identity_headers;
        let values: [&str; 4] = [
            entry.account_id,
            entry.key_id,
            entry.kind.key_type.as_str(),
            entry.kind.environment.as_str(),
        ];
        for (name, value) in names.names().iter().zip(values) {
            // Replace drops every client-sent copy and sets ours in one host call.
            let _ = hostcalls::set_map_value_bytes(
                MapType::HttpRequestHeaders,
                name,
                Some(value.as_bytes()),
            );
        }
        if !settings.keep_authorization {
            let _ =
                hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, "authorization", None);
        }
        if let Some(shared) = &self.shared {
            shared.metrics.allowed();
        }
        Action::Continue
    }
}

impl Context for KeygateHttp {}

impl HttpContext for KeygateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if let Ok(Some(b"trap")) =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-keygate-fault")
                .as_ref()
                .map(|v| v.as_deref())
        {
            panic!("fault injection: trap requested");
        }
        let Some(shared) = self.shared.clone() else {
            return self.deny(None, Denial::KeyMapUnavailable);
        };
        let config = &shared.config;
        let settings = &config.settings;
        // Sync mode serves the synced map once one is published; until then the config's
        // bootstrap keys, and with none of those, 503 (fail closed).
        let synced = shared.synced.as_ref().filter(|s| {
            if s.version().is_none() {
                s.refresh();
            }
            s.version().is_some()
        });
        if shared.synced.is_some() && synced.is_none() && config.keys.is_empty() {
            return self.deny(Some(settings), Denial::KeyMapUnavailable);
        }
        let Ok(buf) = host::request_header_map() else {
            return self.deny(Some(settings), Denial::MalformedCredentials);
        };
        let Ok(pairs) = header_pairs::parse(&buf) else {
            return self.deny(Some(settings), Denial::MalformedCredentials);
        };
        let scanned = request_scan::scan(pairs, &settings.identity_headers);
        let overrides = scanned.method_overrides();
        let request = Request {
            authorization: scanned.authorization(),
            method: scanned.method,
            path: scanned.path,
            method_overrides: overrides,
        };
        // Holds the looked-up bucket for as long as the decision borrows from it.
        let bucket_holder = OnceCell::new();
        let lookup = |digest: &Digest| match synced {
            Some(map) => {
                let bytes = bucket_holder.get_or_init(|| map.bucket(bucket::bucket_of(digest)));
                bucket::find(bytes, digest)
            }
            None => config.keys.get(digest).map(|e| e.info()),
        };
        match decide(settings, lookup, &request, now_unix_seconds) {
            Decision::Allow(entry) => self.forward(settings, &entry),
            Decision::Deny(denial) => {
                // The access log reads request headers: a refused client must not be able
                // to write an identity there.
                remove_sent_identity(settings, &scanned.identity_sent);
                self.deny(Some(settings), denial)
            }
        }
    }
}

fn remove_sent_identity(settings: &Settings, sent: &[bool; 4]) {
    for (name, _) in settings
        .identity_headers
        .names()
        .iter()
        .zip(sent)
        .filter(|(_, sent)| **sent)
    {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
    }
}

/// The host's clock in Unix seconds; if the host cannot tell, "the far future", so an
/// expiring key is refused rather than trusted.
fn now_unix_seconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(u64::MAX, |d| d.as_secs())
}
