//! The part of Envoy's dynamic-module C ABI that keygate uses, declared by hand for Envoy
//! 1.40 (ABI "v0.2.0"): the hooks keygate exports are in `hooks.rs`, the callbacks it calls
//! into Envoy are here, each behind a small wrapper.
//!
//! A buffer passed by value (`{ptr, length}`) travels in two registers, like a pointer and
//! a length. Every declaration was checked against the 1.40.0 binary (by its effect through
//! Envoy, and the metric and log calls by their disassembly).

use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::null;
use std::sync::{Arc, Mutex};

/// Envoy's side of a filter configuration or of one stream's filter.
pub type EnvoyPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_http_header_type_ResponseHeader`.
const RESPONSE_HEADER: u32 = 2;
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
            // SAFETY: the caller's promise: `len` live bytes at `ptr` for `'a`.
            unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
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

/// One stream's filter inside a hook: what Envoy lends is reachable only through this handle,
/// whose lifetime is the hook's, so no header view or pointer outlives it.
pub struct Stream<'hook> {
    filter: EnvoyPtr,
    _hook: PhantomData<&'hook mut ()>,
}

/// The request's headers as pointers into Envoy's header map, valid while the stream is
/// borrowed (a header change needs `&mut Stream`, so none can happen while these live).
pub struct RequestHeaders<'s> {
    headers: Vec<Header>,
    _stream: PhantomData<&'s Stream<'s>>,
}

/// Envoy could not list the request's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadersUnavailable;

impl<'hook> Stream<'hook> {
    /// # Safety
    /// `filter` is Envoy's live stream filter for the whole of the hook `'hook` stands for.
    pub unsafe fn new(filter: EnvoyPtr) -> Stream<'hook> {
        Stream {
            filter,
            _hook: PhantomData,
        }
    }

    pub fn request_headers(&self) -> Result<RequestHeaders<'_>, HeadersUnavailable> {
        // SAFETY: `filter` is live for the hook (`Stream::new`).
        let count = unsafe {
            envoy_dynamic_module_callback_http_get_headers_size(self.filter, REQUEST_HEADER)
        };
        let mut headers: Vec<Header> = Vec::with_capacity(count);
        if count > 0 {
            // SAFETY: room for `count` entries, which Envoy fills when it answers true.
            let listed = unsafe {
                envoy_dynamic_module_callback_http_get_headers(
                    self.filter,
                    REQUEST_HEADER,
                    headers.as_mut_ptr(),
                )
            };
            if !listed {
                return Err(HeadersUnavailable);
            }
            // SAFETY: Envoy wrote `count` entries, pointing into the live header map.
            unsafe { headers.set_len(count) };
        }
        Ok(RequestHeaders {
            headers,
            _stream: PhantomData,
        })
    }

    pub fn add_request_header(&mut self, name: &[u8], value: &[u8]) {
        // SAFETY: `filter` is live for the hook; the buffers for the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.filter,
                REQUEST_HEADER,
                Buffer::of(name),
                Buffer::of(value),
            );
        }
    }

    /// Replaces every value of the header with one.
    pub fn set_request_header(&mut self, name: &[u8], value: &[u8]) {
        self.set_header(REQUEST_HEADER, name, Buffer::of(value));
    }

    /// Sets a response header (in the response-headers hook), replacing every value.
    pub fn set_response_header(&mut self, name: &[u8], value: &[u8]) {
        self.set_header(RESPONSE_HEADER, name, Buffer::of(value));
    }

    /// Removes every value of the header (an empty value does that in this ABI).
    pub fn remove_request_header(&mut self, name: &[u8]) {
        self.set_header(REQUEST_HEADER, name, Buffer::EMPTY);
    }

    /// Replaces every value of a header in the `kind` map with `value` (bytes the caller
    /// holds for this call).
    fn set_header(&mut self, kind: u32, name: &[u8], value: Buffer) {
        // SAFETY: as in `add_request_header`.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.filter,
                kind,
                Buffer::of(name),
                value,
            );
        }
    }

    /// Answers the request locally; `details` becomes its response-code details.
    pub fn send_response<'a>(
        &mut self,
        status: u32,
        headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        body: &[u8],
        details: &str,
    ) {
        let headers: Vec<Header> = headers
            .map(|(key, value)| Header {
                key: Buffer::of(key),
                value: Buffer::of(value),
            })
            .collect();
        // SAFETY: `filter` is live for the hook; every buffer for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.filter,
                status,
                headers.as_ptr(),
                headers.len(),
                Buffer::of(body),
                Buffer::of(details.as_bytes()),
            );
        }
    }

    /// Adds one to a counter of the stream's configuration.
    pub fn increment_counter(&mut self, id: MetricId) {
        // SAFETY: `filter` is live for the hook.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.filter,
                id.0,
                null(),
                0,
                1,
            );
        }
    }
}

impl RequestHeaders<'_> {
    /// `(name, value)` pairs, borrowed for as long as these headers.
    pub fn pairs(&self) -> HeaderPairs<'_> {
        HeaderPairs(self.headers.iter())
    }
}

/// The pairs of `RequestHeaders`.
pub struct HeaderPairs<'a>(core::slice::Iter<'a, Header>);

impl<'a> Iterator for HeaderPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let header = self.0.next()?;
        // SAFETY: the pointers are into Envoy's header map, live and unchanged while the
        // stream is borrowed by the `RequestHeaders` these came from.
        Some(unsafe { (header.key.bytes(), header.value.bytes()) })
    }
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

/// A configuration Envoy is creating, inside the config-new hook: stats are defined on it.
pub struct ConfigBeingCreated<'hook> {
    config: EnvoyPtr,
    alive: Arc<Mutex<Option<usize>>>,
    _hook: PhantomData<&'hook mut ()>,
}

impl<'hook> ConfigBeingCreated<'hook> {
    /// # Safety
    /// `config` is the configuration Envoy is creating in the hook `'hook` stands for, and
    /// the `ConfigLifetime` taken from this value is dropped before Envoy destroys it.
    pub unsafe fn new(config: EnvoyPtr) -> ConfigBeingCreated<'hook> {
        ConfigBeingCreated {
            config,
            alive: Arc::new(Mutex::new(Some(config as usize))),
            _hook: PhantomData,
        }
    }

    /// Defines a counter or gauge; None when refused (a lost count, never a lost request).
    pub fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<MetricId> {
        let mut id = 0;
        let name = Buffer::of(name.as_bytes());
        // SAFETY: Envoy allows defining stats on a configuration while it creates it.
        let result = unsafe {
            match kind {
                MetricKind::Counter => {
                    envoy_dynamic_module_callback_http_filter_config_define_counter(
                        self.config,
                        name,
                        null(),
                        0,
                        &mut id,
                    )
                }
                MetricKind::Gauge => envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.config,
                    name,
                    null(),
                    0,
                    &mut id,
                ),
            }
        };
        (result == METRICS_SUCCESS).then_some(MetricId(id))
    }

    /// A handle to this configuration's stats for other threads (the sync thread): it
    /// writes nothing once the configuration's `ConfigLifetime` is dropped.
    pub fn stats(&self) -> ConfigStats {
        ConfigStats {
            config: Arc::clone(&self.alive),
        }
    }

    /// Held by whatever Envoy destroys with the configuration (the filter): dropping it
    /// ends every `ConfigStats` of the configuration.
    pub fn lifetime(&self) -> ConfigLifetime {
        ConfigLifetime {
            config: Arc::clone(&self.alive),
        }
    }
}

/// See `ConfigBeingCreated::lifetime`.
pub struct ConfigLifetime {
    config: Arc<Mutex<Option<usize>>>,
}

impl Drop for ConfigLifetime {
    fn drop(&mut self) {
        // Taken under the lock: a stats call in flight on another thread ends first.
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A configuration's stats, written from any thread (Envoy's stats are atomic) while the
/// configuration lives.
#[derive(Clone)]
pub struct ConfigStats {
    /// The configuration's address while it lives, `None` after: only touched through
    /// Envoy's stats calls, under the lock.
    config: Arc<Mutex<Option<usize>>>,
}

impl ConfigStats {
    pub fn increment_counter(&self, id: MetricId, value: u64) {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = *config {
            // SAFETY: the configuration lives while its address is held (see
            // `ConfigLifetime`), and the lock keeps it so for the call.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config as EnvoyPtr,
                    id.0,
                    null(),
                    0,
                    value,
                );
            }
        }
    }

    pub fn set_gauge(&self, id: MetricId, value: u64) {
        let config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = *config {
            // SAFETY: as in `increment_counter`.
            unsafe {
                envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config as EnvoyPtr,
                    id.0,
                    null(),
                    0,
                    value,
                );
            }
        }
    }
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
