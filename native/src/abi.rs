//! The part of Envoy's dynamic-module C ABI that keygate uses, declared by hand for Envoy
//! 1.40 (ABI "v0.2.0"): the hooks keygate exports are in `hooks.rs`, the callbacks it calls
//! into Envoy are here, each behind a small wrapper.
//!
//! A buffer passed by value (`{ptr, length}`) travels in two registers, like a pointer and
//! a length. Every declaration was checked against the 1.40.0 binary (by its effect through
//! Envoy, and the metric and log calls by their disassembly).

use core::ffi::c_void;
use core::ptr::null;

/// Envoy's side of a filter configuration or of one stream's filter.
pub type EnvoyPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `..._on_http_filter_request_headers_status_Continue` / `_StopIteration`.
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;

/// The ABI version of Envoy 1.40, the release this module is built against: Envoy logs
/// "matched" for it, and warns for any other.
pub static ABI_VERSION: &[u8] = b"v0.2.0\0";

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    len: usize,
}

impl Buffer {
    const EMPTY: Buffer = Buffer {
        ptr: null(),
        len: 0,
    };

    /// A buffer Envoy passed as a pointer and a length.
    pub fn from_raw(ptr: *const u8, len: usize) -> Buffer {
        Buffer { ptr, len }
    }

    pub fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Envoy's bytes, lent for the duration of the current hook.
    ///
    /// # Safety
    /// `ptr` must be null or point at `len` live bytes for the returned lifetime.
    pub unsafe fn bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() {
            &[]
        } else {
            core::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

#[repr(C)]
pub struct Header {
    key: Buffer,
    value: Buffer,
}

#[cfg(not(test))]
extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: EnvoyPtr,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: EnvoyPtr,
        header_type: u32,
        result: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: EnvoyPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    /// With an empty (null) value it removes every value of the header.
    fn envoy_dynamic_module_callback_http_set_header(
        filter: EnvoyPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: EnvoyPtr,
        status: u32,
        headers: *const Header,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: EnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: EnvoyPtr,
        name: Buffer,
        label_names: *const Buffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: EnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: EnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: EnvoyPtr,
        id: usize,
        label_values: *const Buffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
}

/// Unit tests run without Envoy: its callbacks do nothing there.
#[cfg(test)]
#[allow(clippy::missing_safety_doc)]
mod no_envoy {
    use super::{Buffer, EnvoyPtr, Header};
    pub unsafe fn envoy_dynamic_module_callback_http_get_headers_size(
        _: EnvoyPtr,
        _: u32,
    ) -> usize {
        0
    }
    pub unsafe fn envoy_dynamic_module_callback_http_get_headers(
        _: EnvoyPtr,
        _: u32,
        _: *mut Header,
    ) -> bool {
        false
    }
    pub unsafe fn envoy_dynamic_module_callback_http_add_header(
        _: EnvoyPtr,
        _: u32,
        _: Buffer,
        _: Buffer,
    ) -> bool {
        false
    }
    pub use envoy_dynamic_module_callback_http_add_header as envoy_dynamic_module_callback_http_set_header;
    pub unsafe fn envoy_dynamic_module_callback_http_send_response(
        _: EnvoyPtr,
        _: u32,
        _: *const Header,
        _: usize,
        _: Buffer,
        _: Buffer,
    ) {
    }
    pub unsafe fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        _: EnvoyPtr,
        _: Buffer,
        _: *const Buffer,
        _: usize,
        _: *mut usize,
    ) -> u32 {
        1
    }
    pub use envoy_dynamic_module_callback_http_filter_config_define_counter as envoy_dynamic_module_callback_http_filter_config_define_gauge;
    pub unsafe fn envoy_dynamic_module_callback_http_filter_increment_counter(
        _: EnvoyPtr,
        _: usize,
        _: *const Buffer,
        _: usize,
        _: u64,
    ) -> u32 {
        1
    }
    pub use envoy_dynamic_module_callback_http_filter_increment_counter as envoy_dynamic_module_callback_http_filter_config_increment_counter;
    pub use envoy_dynamic_module_callback_http_filter_increment_counter as envoy_dynamic_module_callback_http_filter_config_set_gauge;
    pub unsafe fn envoy_dynamic_module_callback_log(_: u32, _: Buffer) {}
    pub unsafe fn envoy_dynamic_module_callback_log_enabled(_: u32) -> bool {
        false
    }
}
#[cfg(test)]
use no_envoy::*;

/// A request header as Envoy lends it, inside the request-headers hook.
pub type HeaderPair<'a> = (&'a [u8], &'a [u8]);

/// Every request header, as pointers into Envoy's header map.
///
/// # Safety
/// `filter` is Envoy's live stream filter, inside a hook; the pairs live as long as it.
pub unsafe fn request_headers(filter: EnvoyPtr) -> Vec<Header> {
    let count = envoy_dynamic_module_callback_http_get_headers_size(filter, REQUEST_HEADER);
    let mut headers: Vec<Header> = Vec::with_capacity(count);
    if count > 0
        && envoy_dynamic_module_callback_http_get_headers(
            filter,
            REQUEST_HEADER,
            headers.as_mut_ptr(),
        )
    {
        // SAFETY: Envoy wrote `count` entries, pointing into the live header map.
        headers.set_len(count);
    }
    headers
}

impl Header {
    /// # Safety
    /// As for `request_headers`: only while the hook that read it runs.
    pub unsafe fn pair<'a>(&self) -> HeaderPair<'a> {
        (self.key.bytes(), self.value.bytes())
    }
}

/// # Safety
/// `filter` is Envoy's live stream filter, inside the request-headers hook.
pub unsafe fn add_request_header(filter: EnvoyPtr, name: &[u8], value: &[u8]) {
    envoy_dynamic_module_callback_http_add_header(
        filter,
        REQUEST_HEADER,
        Buffer::of(name),
        Buffer::of(value),
    );
}

/// Replaces every value of the header with one.
///
/// # Safety
/// As for `add_request_header`.
pub unsafe fn set_request_header(filter: EnvoyPtr, name: &[u8], value: &[u8]) {
    envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADER,
        Buffer::of(name),
        Buffer::of(value),
    );
}

/// Removes every value of the header (an empty value does that in this ABI).
///
/// # Safety
/// As for `add_request_header`.
pub unsafe fn remove_request_header(filter: EnvoyPtr, name: &[u8]) {
    envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADER,
        Buffer::of(name),
        Buffer::EMPTY,
    );
}

/// Answers the request locally; `details` becomes its response-code details.
///
/// # Safety
/// As for `add_request_header`.
pub unsafe fn send_response(
    filter: EnvoyPtr,
    status: u32,
    headers: &[HeaderPair<'_>],
    body: &[u8],
    details: &str,
) {
    let headers: Vec<Header> = headers
        .iter()
        .map(|(key, value)| Header {
            key: Buffer::of(key),
            value: Buffer::of(value),
        })
        .collect();
    envoy_dynamic_module_callback_http_send_response(
        filter,
        status,
        headers.as_ptr(),
        headers.len(),
        Buffer::of(body),
        Buffer::of(details.as_bytes()),
    );
}

/// A counter or gauge id Envoy gave this configuration.
#[derive(Debug, Clone, Copy)]
pub struct MetricId(usize);

/// Which kind of stat to define.
#[derive(Debug, Clone, Copy)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Defines a counter or gauge; Envoy allows it only while it creates the configuration.
/// None when refused (a lost count, never a lost request).
///
/// # Safety
/// `config` is the configuration Envoy is creating.
pub unsafe fn define_metric(config: EnvoyPtr, kind: MetricKind, name: &str) -> Option<MetricId> {
    let mut id = 0;
    let name = Buffer::of(name.as_bytes());
    let result = match kind {
        MetricKind::Counter => envoy_dynamic_module_callback_http_filter_config_define_counter(
            config,
            name,
            null(),
            0,
            &mut id,
        ),
        MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config,
            name,
            null(),
            0,
            &mut id,
        ),
    };
    (result == METRICS_SUCCESS).then_some(MetricId(id))
}

/// Adds one to a counter, from a request.
///
/// # Safety
/// `filter` is Envoy's live stream filter.
pub unsafe fn increment_counter(filter: EnvoyPtr, id: MetricId) {
    envoy_dynamic_module_callback_http_filter_increment_counter(filter, id.0, null(), 0, 1);
}

/// Adds to a counter of the configuration (Envoy's stats are atomic: any thread may).
///
/// # Safety
/// `config` is a configuration Envoy has not destroyed yet.
pub unsafe fn config_increment_counter(config: EnvoyPtr, id: MetricId, value: u64) {
    envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config,
        id.0,
        null(),
        0,
        value,
    );
}

/// # Safety
/// As for `config_increment_counter`.
pub unsafe fn config_set_gauge(config: EnvoyPtr, id: MetricId, value: u64) {
    envoy_dynamic_module_callback_http_filter_config_set_gauge(config, id.0, null(), 0, value);
}

/// Envoy's log levels (spdlog's order).
#[derive(Debug, Clone, Copy)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Writes one line to Envoy's log, under its `dynamic_modules` component.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the message is a live buffer for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level as u32, Buffer::of(message.as_bytes())) }
}

pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: a plain query.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}
