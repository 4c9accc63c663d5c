//! keygate's key-map fetcher, as its own wasm module (`keygate_sync.wasm`): a singleton
//! bootstrap service sharing the filter's `vm_id`, so both see the same shared data.

#![forbid(unsafe_code)]

mod service;
mod usage;

use keygate_sync_core::settings::ServiceConfig;
use log::error;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use service::SyncService;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(SyncRoot::default()));
}}

#[derive(Default)]
struct SyncRoot {
    service: Option<SyncService>,
}

impl Context for SyncRoot {
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

impl RootContext for SyncRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes =
            match proxy_wasm::hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            {
                Ok(bytes) => bytes.unwrap_or_default(),
                Err(status) => {
                    error!("keygate sync: cannot read the plugin configuration: {status:?}");
                    return false;
                }
            };
        match ServiceConfig::parse(&bytes) {
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

    fn on_tick(&mut self) {
        if let Some(service) = &mut self.service {
            service.on_tick();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        None
    }
}
