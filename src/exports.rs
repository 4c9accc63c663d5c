//! The callbacks this module exports to Envoy, and nothing more: per request Envoy calls
//! only `proxy_on_context_create` and `proxy_on_request_headers` (the SDK would export and
//! be called for seven). Each root context is one filter configuration; a stream is judged
//! by the configuration of the root that created it.
//!
//! There is no `proxy_on_delete`: Envoy would call it for every stream too. Instead each
//! tick asks Envoy which roots still exist (`proxy_set_effective_context` fails for a
//! context that is gone) and drops the configurations of the ones that do not.

use crate::abi::{self, LogLevel};
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::vm_global::VmGlobal;
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
#[cfg(not(feature = "standalone-sync"))]
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
#[cfg(not(feature = "standalone-sync"))]
use keygate_core::config::FilterConfig;

/// Rate-limit headers on allowed responses need a response-headers callback, and proxy-wasm
/// calls an exported callback for every stream whatever the setting: about 2,000 Envoy
/// instructions (1.6%) on every request, measured. The native module offers the setting.
const RATE_LIMIT_HEADERS_REFUSED: &str = "invalid keygate config: rate_limit_headers: not \
    offered by the wasm filter (its response hook would cost every request, on or off); the \
    native module offers it";

/// Timer period: counters are flushed, and in sync mode the published version re-read,
/// this often.
const TICK_MS: u32 = 50;
/// Streams remembered at once (stream id → root id); a stream's slot is its id modulo this.
/// Envoy creates a stream's context and hands it its headers in one go, so a slot is never
/// reused before it is read.
const STREAM_SLOTS: usize = 1024;

#[derive(Default)]
struct State {
    /// (root id, its configuration): one or two entries, so a list beats a hash map.
    roots: Vec<(u32, Rc<Filter>)>,
    streams: Vec<(u32, u32)>,
}

/// Counters for requests no configuration can count (a stream without a configured root):
/// Envoy hands out the same counter for the same name, so these are keygate's counters too.
static UNCONFIGURED: VmGlobal<Metrics> = VmGlobal::new(Metrics::define);

static STATE: VmGlobal<State> = VmGlobal::new(|| State {
    streams: vec![(0, 0); STREAM_SLOTS],
    ..State::default()
});

/// The ABI version marker Envoy looks for.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host hands buffers in; freed by us as a `Vec<u8>` of exactly `size`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit needs no initialisation; the host writes before we read.
    unsafe { buffer.set_len(size) };
    Box::into_raw(buffer.into_boxed_slice()) as *mut u8
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor initialisation; also installs the logger.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: called once by the host before anything else, as WASI reactors require.
    unsafe {
        __wasm_call_ctors();
    }
    crate::logger::install();
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_id: u32) {
    // A root (root_id 0) needs nothing until it is configured.
    if root_id == 0 {
        return;
    }
    STATE.with_borrow_mut(|state| {
        if let Some(slot) = state.streams.get_mut(context_id as usize % STREAM_SLOTS) {
            *slot = (context_id, root_id);
        }
    });
}

/// Parses and validates the plugin configuration; `false` makes Envoy refuse it (at boot
/// Envoy does not start; a pushed update is rejected and the last good one keeps serving).
#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, _plugin_configuration_size: usize) -> bool {
    let bytes = match abi::plugin_configuration() {
        Ok(bytes) => bytes,
        Err(status) if status == abi::NOT_FOUND => Vec::new(),
        Err(status) => {
            abi::log(
                LogLevel::Error,
                &format!(
                    "keygate: cannot read the plugin configuration: status {}",
                    status.0
                ),
            );
            return false;
        }
    };
    #[cfg(feature = "standalone-sync")]
    let (config, own_sync) = match crate::standalone::parse_config(&bytes) {
        Ok(parsed) => parsed,
        Err(message) => {
            // As below: the message names the field, never a key or the sync token.
            abi::log(LogLevel::Error, &message);
            return false;
        }
    };
    #[cfg(not(feature = "standalone-sync"))]
    let config = match FilterConfig::parse(&bytes) {
        Ok(config) => config,
        Err(e) => {
            // The message names the field; it never holds a key (configs carry digests, and
            // a pasted plaintext key is reported by position only).
            abi::log(LogLevel::Error, &e.to_string());
            return false;
        }
    };
    if config.settings.rate_limit_headers {
        abi::log(LogLevel::Error, RATE_LIMIT_HEADERS_REFUSED);
        return false;
    }
    let filter = Filter::new(config, Metrics::define());
    if let Some(synced) = &filter.synced {
        synced.refresh();
    }
    if let Err(status) = abi::set_tick_period_ms(TICK_MS) {
        abi::log(
            LogLevel::Error,
            &format!("keygate: cannot start the timer: status {}", status.0),
        );
        return false;
    }
    abi::log(
        LogLevel::Info,
        &format!(
            "keygate: configuration loaded: {} keys in config{}",
            filter.gate.config().keys.len(),
            if filter.synced.is_some() {
                ", sync mode"
            } else {
                ""
            }
        ),
    );
    STATE.with_borrow_mut(|state| {
        state.roots.retain(|(id, _)| *id != root_id);
        state.roots.push((root_id, Rc::new(filter)));
    });
    #[cfg(feature = "standalone-sync")]
    crate::standalone::install(root_id, own_sync);
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: bool,
) -> u32 {
    let filter = STATE.with_borrow(|state| {
        let (stream, root) = state
            .streams
            .get(context_id as usize % STREAM_SLOTS)
            .copied()?;
        if stream != context_id {
            return None;
        }
        root_filter(state, root)
    });
    match filter {
        // The state is not borrowed while the request is judged.
        Some(filter) => filter.on_request_headers(),
        None => {
            abi::log(
                LogLevel::Warn,
                "keygate: a request without a configured root: refused",
            );
            UNCONFIGURED.with_borrow(crate::filter::refuse_unconfigured)
        }
    }
}

fn root_filter(state: &State, root_id: u32) -> Option<Rc<Filter>> {
    state
        .roots
        .iter()
        .find(|(id, _)| *id == root_id)
        .map(|(_, filter)| Rc::clone(filter))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    let filter = STATE.with_borrow(|state| root_filter(state, root_id));
    if let Some(filter) = filter {
        filter.on_tick();
    }
    #[cfg(feature = "standalone-sync")]
    crate::standalone::on_tick(root_id);
    forget_ended_roots(root_id);
}

/// Drops the configuration of every root Envoy has ended (a replaced or removed filter
/// configuration), then points host calls back at `current_root`.
fn forget_ended_roots(current_root: u32) {
    let roots: Vec<u32> = STATE.with_borrow(|state| {
        state
            .roots
            .iter()
            .map(|(id, _)| *id)
            .filter(|&id| id != current_root)
            .collect()
    });
    // The usual case: this root is the only one, and there is nothing to ask Envoy.
    if roots.is_empty() {
        return;
    }
    let ended: Vec<u32> = roots
        .into_iter()
        .filter(|&root| abi::set_effective_context(root).is_err())
        .collect();
    let _ = abi::set_effective_context(current_root);
    if !ended.is_empty() {
        STATE.with_borrow_mut(|state| {
            state.roots.retain(|(id, _)| !ended.contains(id));
        });
        #[cfg(feature = "standalone-sync")]
        crate::standalone::forget(&ended);
        abi::log(
            LogLevel::Info,
            &format!("keygate: released {} ended configuration(s)", ended.len()),
        );
    }
}
