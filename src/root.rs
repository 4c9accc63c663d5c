//! The root context: loads the plugin configuration; refuses an invalid one so that Envoy
//! keeps (or never starts without) a good one.

use crate::filter::KeygateHttp;
use crate::metrics::Metrics;
use keygate_core::config::FilterConfig;
use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

#[derive(Default)]
pub struct KeygateRoot {
    config: Option<Rc<FilterConfig>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for KeygateRoot {}

impl RootContext for KeygateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match proxy_wasm::hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        ) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => Vec::new(),
            Err(status) => {
                error!("keygate: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                info!("keygate: configuration loaded: {} keys", config.keys.len());
                self.config = Some(Rc::new(config));
                self.metrics = Some(Rc::new(Metrics::define()));
                true
            }
            Err(e) => {
                // ConfigError's message names the field; it never contains a key (configs
                // hold digests, and a plaintext key is reported by position only).
                error!("{e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never None: the SDK panics on None. Without a config every request fails closed.
        Some(Box::new(KeygateHttp::new(
            self.config.clone(),
            self.metrics.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
