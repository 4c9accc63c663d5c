//! keygate's Envoy filter: a lean proxy-wasm module over `keygate-core`.
//!
//! It speaks the proxy-wasm ABI directly (`abi.rs`, `exports.rs`) rather than through the
//! SDK, so Envoy calls three callbacks per request instead of seven; the key-map fetcher,
//! which runs once per poll, is a separate SDK-based module (`sync-service/`). Built with
//! the `standalone-sync` feature (`keygate-standalone.wasm`) the filter fetches the map
//! itself, one VM per Envoy at a time (`standalone.rs`), where no fetcher service can run.

//!
//! The module is `no_std` (with `alloc`): std's panic, I/O and thread-local machinery were a
//! sixth of the module, and a filter has no use for them. It allocates with dlmalloc, and a
//! panic (which no input reaches) logs its location and traps, failing the VM as before.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod abi;
// keygate-standalone.wasm's own key-map sync (see standalone.rs); the lease logic and the
// environment reader are also unit-tested in the lean build.
#[cfg(any(test, feature = "standalone-sync"))]
mod callout;
mod exports;
mod filter;
#[cfg(feature = "standalone-sync")]
mod leader_usage;
#[cfg(any(test, feature = "standalone-sync"))]
mod lease;
mod logger;
mod metrics;
#[cfg(feature = "standalone-sync")]
mod standalone;
mod synced_map;
mod usage;
mod vm_global;

// memcmp and friends come from wasi-libc, as they do for std; only those few objects of the
// archive are linked (its allocator and stdio are not referenced).
#[cfg(target_os = "wasi")]
#[link(name = "c")]
extern "C" {}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    // The message is ours (no input reaches a panic), so it carries no key.
    if let Some(at) = info.location() {
        let message = alloc::format!("keygate: panic at {}:{}", at.file(), at.line());
        abi::log(abi::LogLevel::Critical, &message);
    }
    core::arch::wasm32::unreachable()
}
