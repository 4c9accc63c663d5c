//! keygate's Envoy filter: a lean proxy-wasm module over `keygate-core`.
//!
//! It speaks the proxy-wasm ABI directly (`abi.rs`, `exports.rs`) rather than through the
//! SDK, so Envoy calls three callbacks per request instead of seven; the key-map fetcher,
//! which runs once per poll, is a separate SDK-based module (`sync-service/`).

mod abi;
mod exports;
mod filter;
mod logger;
mod metrics;
mod synced_map;
