//! keygate's Envoy filter: thin proxy-wasm glue over `keygate-core`.
//!
//! The root context parses and validates the plugin configuration once per VM; each request
//! is then decided by `keygate_core::decision::decide` from one read of the header map.

mod filter;
mod host;
mod metrics;
mod root;
mod sync_service;
mod synced_map;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::KeygateRoot::default()));
}}
