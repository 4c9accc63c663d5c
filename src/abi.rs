//! The proxy-wasm ABI (0.2.1) host calls the filter makes, as safe functions returning
//! `Result`. Hand-written instead of the SDK so that the module exports only the callbacks
//! it uses (see `exports.rs`): Envoy skips every callback a module does not export, and each
//! one skipped is CPU saved on every request. Nothing here can panic or trap.

use alloc::vec::Vec;
use core::ptr::null_mut;

/// A host call's non-Ok status (1 = not found, 2 = bad argument, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
pub const NOT_FOUND: Status = Status(1);

const REQUEST_HEADERS: u32 = 0;
const PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;

#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // the panic handler
    Critical = 5,
}

mod host {
    extern "C" {
        pub fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn random_get(buf: *mut u8, size: usize) -> u16;
    }
}

pub(crate) fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of a buffer the host allocated through `proxy_on_memory_allocate`.
///
/// # Safety
/// `data` must be null or come from `exports::proxy_on_memory_allocate(size)`.
pub(crate) unsafe fn take_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: a live slice for the duration of the call.
    unsafe {
        host::proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// The whole request header map, serialized, in one host call: every value of a repeated
/// header is there (the single-header getter returns only the first).
pub fn request_header_map() -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the buffer is ours afterwards (see take_buffer).
    unsafe {
        check(host::proxy_get_header_map_pairs(
            REQUEST_HEADERS,
            &mut data,
            &mut size,
        ))?;
        Ok(take_buffer(data, size))
    }
}

/// Sets a request header, replacing every value it had.
pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: live slices for the duration of the call.
    check(unsafe {
        host::proxy_replace_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Adds a request header value: cheaper for Envoy than a replace, which first searches the
/// map and removes; for headers known to be absent.
pub fn add_request_header(name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: live slices for the duration of the call.
    check(unsafe {
        host::proxy_add_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a request header.
pub fn remove_request_header(name: &str) -> Result<(), Status> {
    // SAFETY: a live slice for the duration of the call.
    check(unsafe {
        host::proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len())
    })
}

/// Answers the request from Envoy; `details` becomes the response-code details that access
/// logs show as `%RESPONSE_CODE_DETAILS%`.
pub fn send_local_response(
    status: u32,
    details: &str,
    serialized_headers: &[u8],
    body: &[u8],
) -> Result<(), Status> {
    // SAFETY: live slices for the duration of the call.
    check(unsafe {
        host::proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            serialized_headers.as_ptr(),
            serialized_headers.len(),
            -1,
        )
    })
}

pub fn plugin_configuration() -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in request_header_map.
    unsafe {
        check(host::proxy_get_buffer_bytes(
            PLUGIN_CONFIGURATION,
            0,
            usize::MAX,
            &mut data,
            &mut size,
        ))?;
        Ok(take_buffer(data, size))
    }
}

/// A shared-data value; `Err(NOT_FOUND)` when the key was never set.
pub fn shared_data(key: &str) -> Result<Vec<u8>, Status> {
    shared_data_with_cas(key).map(|(value, _)| value)
}

/// A shared-data value and its compare-and-swap token.
pub fn shared_data_with_cas(key: &str) -> Result<(Vec<u8>, u32), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: as in request_header_map.
    unsafe {
        check(host::proxy_get_shared_data(
            key.as_ptr(),
            key.len(),
            &mut data,
            &mut size,
            &mut cas,
        ))?;
        Ok((take_buffer(data, size), cas))
    }
}

/// Sets a shared-data value if it is still at `cas` (0: whatever it is).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), Status> {
    // SAFETY: live slices for the duration of the call.
    check(unsafe {
        host::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { host::proxy_set_tick_period_milliseconds(period) })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: a live slice and an out-pointer to a local.
    check(unsafe {
        host::proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id)
    })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { host::proxy_increment_metric(id, by) })
}

/// Makes `context_id` the context of the host calls that follow in this callback;
/// `Err` when Envoy has no such context (any more).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { host::proxy_set_effective_context(context_id) })
}

/// Bytes from the host's secure random source (WASI `random_get`).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Status> {
    let mut bytes = [0; N];
    // SAFETY: a live, writable buffer of N bytes.
    let errno = unsafe { host::random_get(bytes.as_mut_ptr(), N) };
    if errno == 0 {
        Ok(bytes)
    } else {
        Err(Status(u32::from(errno)))
    }
}

/// Wall-clock time in Unix seconds.
pub fn now_unix_seconds() -> Result<u64, Status> {
    Ok(now_nanos()? / 1_000_000_000)
}

pub fn now_micros() -> Result<u64, Status> {
    Ok(now_nanos()? / 1_000)
}

pub(crate) fn now_nanos() -> Result<u64, Status> {
    let mut nanos = 0;
    // SAFETY: an out-pointer to a local.
    check(unsafe { host::proxy_get_current_time_nanoseconds(&mut nanos) })?;
    Ok(nanos)
}
