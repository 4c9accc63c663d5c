//! The hooks Envoy calls (`envoy_dynamic_module_on_*`). Each filter configuration is one
//! `Filter`; a stream's filter is that same pointer (nothing is allocated per stream).
//!
//! A panic never crosses into Envoy: each hook catches it, and a request that hit one is
//! answered 500 (never let through), so a bug costs one request, not the proxy.

use crate::abi::{self, Buffer, ConfigBeingCreated, EnvoyPtr, Stream, CONTINUE, STOP_ITERATION};
use crate::filter::{refuse_unconfigured, Filter};
use core::ffi::c_void;
use keygate_core::denial::Denial;
use keygate_core::gate::Verdict;
use keygate_core::rate_limit::LimitHeaders;
use log::{error, info};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What Envoy holds for one stream. Without `rate_limit_headers` (the default) it is the
/// configuration itself, so nothing is allocated per stream. With it, a stream has its
/// own `OwnStream`, to keep the headers from the request to the response; its pointer is
/// told apart by the low bit (both types are aligned to 8, so real addresses have it 0).
pub type StreamPtr = *mut c_void;

/// The low bit of a stream pointer to an `OwnStream`.
const OWN: usize = 1;

/// A stream's own state (`rate_limit_headers` on).
struct OwnStream {
    /// The configuration, which Envoy keeps alive while any of its streams runs.
    filter: *const Filter,
    /// The rate-limit headers the request left for the response.
    response: Option<LimitHeaders>,
}

const _: () = assert!(align_of::<Filter>() > OWN && align_of::<OwnStream>() > OWN);

/// A stream pointer, read.
enum PerStream<'a> {
    Shared(&'a Filter),
    Own(&'a mut OwnStream),
}

/// # Safety
/// `ptr` is what `on_http_filter_new` returned for a stream Envoy has not destroyed, used
/// by one hook at a time (Envoy runs a stream's hooks on its worker thread, one by one).
unsafe fn per_stream<'a>(ptr: StreamPtr) -> Option<PerStream<'a>> {
    if ptr as usize & OWN == 0 {
        // SAFETY: the configuration, alive while its streams run (or null).
        unsafe { (ptr as *const Filter).as_ref() }.map(PerStream::Shared)
    } else {
        // SAFETY: made by `Box::into_raw` in `on_http_filter_new`, freed only by
        // `on_http_filter_destroy`; no other hook of the stream runs meanwhile.
        unsafe { ((ptr as usize & !OWN) as *mut OwnStream).as_mut() }.map(PerStream::Own)
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    crate::logger::install();
    // Where a panic happened, never its message: a message can quote its input (a str
    // slice error quotes the string), and the input can be a key. Each Rust module has its
    // own std, so this hook is keygate's alone.
    std::panic::set_hook(Box::new(|info| match info.location() {
        Some(at) => error!("keygate: panic at {}:{}", at.file(), at.line()),
        None => error!("keygate: panic"),
    }));
    abi::ABI_VERSION.as_ptr()
}

/// Returns the configuration, or null when it is invalid (Envoy then refuses it; the
/// reason, naming the field, is in Envoy's log).
///
/// # Safety
/// Envoy passes live buffers for the filter name and configuration.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: EnvoyPtr,
    _name: *const u8,
    _name_len: usize,
    config: *const u8,
    config_len: usize,
) -> *mut Filter {
    // SAFETY: Envoy lends the configuration's bytes for this hook.
    let json = unsafe { Buffer::from_raw(config, config_len).bytes() };
    // SAFETY: `config_envoy` is the configuration Envoy is creating in this hook.
    let mut creating = unsafe { ConfigBeingCreated::new(config_envoy) };
    match catch_unwind(AssertUnwindSafe(|| Filter::new(&mut creating, json))) {
        Ok(Ok(filter)) => Box::into_raw(Box::new(filter)),
        Ok(Err(e)) => {
            error!("keygate: {e}");
            core::ptr::null_mut()
        }
        Err(_) => {
            error!("keygate: the configuration could not be read (internal error)");
            core::ptr::null_mut()
        }
    }
}

/// # Safety
/// `filter` is what `on_http_filter_config_new` returned, and Envoy is done with it.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(filter: *mut Filter) {
    if !filter.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`; Envoy destroys it once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(filter) })));
        // Envoy destroys a configuration once the last stream using it ends.
        info!("keygate: released 1 ended configuration");
    }
}

/// The per-stream object: the configuration itself, or (`rate_limit_headers`) an
/// `OwnStream` (see `StreamPtr`).
///
/// # Safety
/// `filter` is what `on_http_filter_config_new` returned, alive while the stream runs.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    filter: *const Filter,
    _filter_envoy: EnvoyPtr,
) -> StreamPtr {
    // SAFETY: a live configuration (or null, refused at the request).
    match unsafe { filter.as_ref() } {
        Some(config) if config.rate_limit_headers() => {
            let own = Box::into_raw(Box::new(OwnStream {
                filter,
                response: None,
            }));
            (own as usize | OWN) as StreamPtr
        }
        _ => filter as StreamPtr,
    }
}

/// Frees a stream's own state, if it has one.
///
/// # Safety
/// `stream` is what `on_http_filter_new` returned; Envoy calls no hook of it after this.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: StreamPtr) {
    if stream as usize & OWN != 0 {
        let own = (stream as usize & !OWN) as *mut OwnStream;
        // SAFETY: made by `Box::into_raw` in `on_http_filter_new`; destroyed once.
        drop(unsafe { Box::from_raw(own) });
    }
}

/// # Safety
/// `per_stream` is what `on_http_filter_new` returned; `filter_envoy` is the live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: EnvoyPtr,
    per_stream_ptr: StreamPtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: `filter_envoy` is the live stream for the whole of this hook.
    let mut stream = unsafe { Stream::new(filter_envoy) };
    // SAFETY: the stream's pointer, used by this hook alone.
    let (filter, mut own) = match unsafe { per_stream(per_stream_ptr) } {
        Some(PerStream::Shared(filter)) => (Some(filter), None),
        // SAFETY: a configuration Envoy keeps alive while any of its streams runs.
        Some(PerStream::Own(own)) => (unsafe { own.filter.as_ref() }, Some(own)),
        None => (None, None),
    };
    let Some(filter) = filter else {
        refuse_unconfigured(&mut stream, Denial::NotConfigured);
        return STOP_ITERATION;
    };
    let verdict = catch_unwind(AssertUnwindSafe(|| filter.on_request_headers(&mut stream)));
    match verdict {
        Ok((verdict, response)) => {
            if let Some(own) = own.as_mut() {
                own.response = response;
            }
            match verdict {
                Verdict::Continue => CONTINUE,
                Verdict::Stop => STOP_ITERATION,
            }
        }
        Err(_) => {
            error!("keygate: internal error on a request; answered 500");
            let refused = catch_unwind(AssertUnwindSafe(|| {
                filter.refuse_after_failure(&mut stream)
            }));
            if refused.is_err() {
                error!("keygate: the 500 answer failed too");
            }
            STOP_ITERATION
        }
    }
}

/// Sets the rate-limit headers the request kept for the response (`rate_limit_headers`);
/// any other stream passes untouched.
///
/// # Safety
/// As `on_http_filter_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: EnvoyPtr,
    per_stream_ptr: StreamPtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the stream's pointer, used by this hook alone.
    if let Some(PerStream::Own(own)) = unsafe { per_stream(per_stream_ptr) } {
        if let Some(headers) = own.response.take() {
            // SAFETY: `filter_envoy` is the live stream for the whole of this hook.
            let mut stream = unsafe { Stream::new(filter_envoy) };
            let set = catch_unwind(AssertUnwindSafe(|| {
                Filter::on_response_headers(&mut stream, &headers)
            }));
            if set.is_err() {
                error!("keygate: internal error setting the rate-limit headers");
            }
        }
    }
    CONTINUE
}

/// Hooks Envoy looks up and keygate has no use for: each does nothing and, where Envoy
/// reads an answer, answers 0 ("continue"; a null per-route configuration).
macro_rules! unused_hooks {
    ($($name:ident),* $(,)?) => {$(
        #[no_mangle]
        pub extern "C" fn $name() -> usize {
            0
        }
    )*};
}

unused_hooks!(
    envoy_dynamic_module_on_http_filter_config_http_callout_done,
    envoy_dynamic_module_on_http_filter_config_http_stream_complete,
    envoy_dynamic_module_on_http_filter_config_http_stream_data,
    envoy_dynamic_module_on_http_filter_config_http_stream_headers,
    envoy_dynamic_module_on_http_filter_config_http_stream_reset,
    envoy_dynamic_module_on_http_filter_config_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_config_scheduled,
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark,
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark,
    envoy_dynamic_module_on_http_filter_http_callout_done,
    envoy_dynamic_module_on_http_filter_http_stream_complete,
    envoy_dynamic_module_on_http_filter_http_stream_data,
    envoy_dynamic_module_on_http_filter_http_stream_headers,
    envoy_dynamic_module_on_http_filter_http_stream_reset,
    envoy_dynamic_module_on_http_filter_http_stream_trailers,
    envoy_dynamic_module_on_http_filter_local_reply,
    envoy_dynamic_module_on_http_filter_per_route_config_destroy,
    envoy_dynamic_module_on_http_filter_per_route_config_new,
    envoy_dynamic_module_on_http_filter_request_body,
    envoy_dynamic_module_on_http_filter_request_trailers,
    envoy_dynamic_module_on_http_filter_response_body,
    envoy_dynamic_module_on_http_filter_response_trailers,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_stream_complete,
);
