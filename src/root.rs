//! Root contexts. One module serves two roles, chosen by the plugin's root id:
//! `keygate_sync` is the fetcher service (a singleton bootstrap extension); any other root
//! id is the HTTP filter. An invalid configuration is refused so that Envoy keeps (or never
//! starts without) a good one.

use crate::filter::KeygateHttp;
use crate::metrics::Metrics;
use crate::sync_service::SyncService;
use crate::synced_map::SyncedMap;
use keygate_core::config::FilterConfig;
use keygate_core::service_config::ServiceConfig;
use log::{error, info};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::rc::Rc;
use std::time::Duration;

/// The root id that selects the fetcher service.
pub const SYNC_ROOT_ID: &[u8] = b"keygate_sync";
/// How often a worker re-reads the published map version in sync mode.
const WORKER_TICK: Duration = Duration::from_millis(50);

/// What a filter's HTTP contexts share: the config, counters and (sync mode) the map view.
pub struct FilterShared {
    pub config: FilterConfig,
    pub metrics: Metrics,
    pub synced: Option<SyncedMap>,
}

#[derive(Default)]
pub struct KeygateRoot {
    filter: Option<Rc<FilterShared>>,
    service: Option<SyncService>,
}

impl Context for KeygateRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(service) = &mut self.service {
            service.on_response(token_id, num_headers, body_size);
        }
    }
}

fn plugin_configuration() -> Result<Vec<u8>, String> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(bytes) => Ok(bytes.unwrap_or_default()),
        Err(status) => Err(format!("cannot read the plugin configuration: {status:?}")),
    }
}

impl KeygateRoot {
    fn configure_filter(&mut self, bytes: &[u8]) -> bool {
        let config = match FilterConfig::parse(bytes) {
            Ok(config) => config,
            Err(e) => {
                // The message names the field; it never holds a key (configs carry digests,
                // and a pasted plaintext key is reported by position only).
                error!("{e}");
                return false;
            }
        };
        let synced = config.sync_namespace.as_deref().map(SyncedMap::new);
        if let Some(synced) = &synced {
            synced.refresh();
            if let Err(status) = hostcalls::set_tick_period(WORKER_TICK) {
                error!("keygate: cannot start the sync timer: {status:?}");
                return false;
            }
        }
        info!(
            "keygate: configuration loaded: {} keys in config{}",
            config.keys.len(),
            if synced.is_some() { ", sync mode" } else { "" }
        );
        self.filter = Some(Rc::new(FilterShared {
            config,
            metrics: Metrics::define(),
            synced,
        }));
        true
    }

    fn configure_service(&mut self, bytes: &[u8]) -> bool {
        match ServiceConfig::parse(bytes) {
            Ok(config) => {
                self.service = Some(SyncService::start(config));
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }
}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match plugin_configuration() {
            Ok(bytes) => bytes,
            Err(e) => {
                error!("keygate: {e}");
                return false;
            }
        };
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten()
            .unwrap_or_default();
        if root_id == SYNC_ROOT_ID {
            self.configure_service(&bytes)
        } else {
            self.configure_filter(&bytes)
        }
    }

    fn on_tick(&mut self) {
        if let Some(service) = &mut self.service {
            service.on_tick();
        }
        if let Some(synced) = self.filter.as_ref().and_then(|f| f.synced.as_ref()) {
            synced.refresh();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Without a config every request fails closed.
        Some(Box::new(KeygateHttp::new(self.filter.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
