//! keygate as an Envoy dynamic module: the same API-key check as the wasm filter (the
//! decision is keygate-core's, shared), as a native shared object Envoy 1.40 loads through
//! `envoy.extensions.filters.http.dynamic_modules` without being rebuilt. It costs about a
//! third of the wasm filter's per-request work (BENCHMARKS.md): Envoy lends header bytes by
//! pointer instead of copying them into a VM.
//!
//! Its configuration is the wasm filter's plugin configuration, except the `sync` block,
//! which names keygatectl's key-map URL (`sync.rs`): there is no separate fetcher service.
//! The trade against the wasm filter: no sandbox (panics are caught at every hook, see
//! `hooks.rs`), and a build per Envoy release line (the ABI is Envoy's, not a standard).

#![deny(unsafe_op_in_unsafe_fn)]

mod abi;
mod fetch;
mod filter;
mod hooks;
mod logger;
mod sync;
mod synced_map;
mod usage;
