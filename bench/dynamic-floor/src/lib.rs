//! The floor of a *native* Envoy HTTP filter: an Envoy dynamic module (a shared object that
//! Envoy 1.40 loads at run time through `envoy.extensions.filters.http.dynamic_modules`),
//! written against the C ABI directly, for `make bench` only.
//!
//! Its filter configuration (a `StringValue`) picks what each request costs:
//! - `read`: reads `authorization` once and continues (what the wasm floor does);
//! - `forward`: also adds one identity header and removes `authorization` (keygate's two
//!   mutations on a valid key, with `identity_header`);
//! - `reject`: answers 401 with keygate's JSON body, `content-type` and `WWW-Authenticate`
//!   and its response-code details (keygate's answer to an unknown key).
//!
//! keygate itself as such a module is `native/` (benchmarked beside these floors).
//!
//! Only the argument shapes it relies on are declared; a buffer passed by value
//! (`{ptr, length}`) travels in two registers, the same as a pointer and a length, which is
//! how every ABI revision since Envoy 1.34 passes them. Envoy requires every hook below
//! to exist; the ones this filter does not use do nothing and answer "continue" (0).

use core::ffi::c_void;
use core::ptr::null;

const REQUEST_HEADER: u32 = 0;
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;
const AUTHORIZATION: &[u8] = b"authorization";
const IDENTITY_NAME: &[u8] = b"x-keygate-identity";
const IDENTITY_VALUE: &[u8] =
    b"account-id=\"acct_0000000\", key-id=\"key_0000000\", key-type=secret, environment=test";
const UNAUTHORIZED_BODY: &[u8] =
    br#"{"error":{"code":"invalid_api_key","message":"The API key is not valid."}}"#;
const CHALLENGE: &[u8] = b"Token realm=\"api\", Bearer realm=\"api\", Basic realm=\"api\"";
const DETAILS: &[u8] = b"keygate_invalid_api_key";

/// What the filter does per request (chosen by its configuration). Public only because the
/// hooks that hand it to Envoy are.
pub enum Config {
    Read,
    Forward,
    Reject,
}

#[repr(C)]
struct Buffer {
    ptr: *const u8,
    len: usize,
}

impl Buffer {
    const EMPTY: Buffer = Buffer {
        ptr: null(),
        len: 0,
    };

    fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes Envoy lent for the duration of the current hook.
    ///
    /// # Safety
    /// `ptr` must be null or point at `len` live bytes for the returned lifetime.
    unsafe fn bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() {
            &[]
        } else {
            core::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

#[repr(C)]
struct Header {
    key: Buffer,
    value: Buffer,
}

extern "C" {
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        result: *mut Buffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    /// With an empty (null) value it removes every value of the header.
    fn envoy_dynamic_module_callback_http_set_header(
        filter: *mut c_void,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *const Header,
        headers_len: usize,
        body: Buffer,
        details: Buffer,
    );
}

/// The ABI version this module names; Envoy only warns when it is not its own.
static ABI_VERSION: &[u8] = b"keygate-bench-dynamic-floor\0";

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

/// Returns the configuration, or null when it names no mode (Envoy then refuses it).
///
/// # Safety
/// Envoy passes live buffers for the filter name and configuration.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: *mut c_void,
    _name: *const u8,
    _name_len: usize,
    config: *const u8,
    config_len: usize,
) -> *mut Config {
    let config = Buffer {
        ptr: config,
        len: config_len,
    }
    .bytes();
    let parsed = match config {
        b"" | b"read" => Config::Read,
        b"forward" => Config::Forward,
        b"reject" => Config::Reject,
        _ => return core::ptr::null_mut(),
    };
    Box::into_raw(Box::new(parsed))
}

/// # Safety
/// `config` is what `on_http_filter_config_new` returned, and Envoy is done with it.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut Config) {
    if !config.is_null() {
        drop(Box::from_raw(config));
    }
}

/// The per-stream object is the configuration itself: nothing is allocated per stream.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const Config,
    _filter_envoy: *mut c_void,
) -> *const Config {
    config
}

/// # Safety
/// `config` is what `on_http_filter_new` returned; `filter` is Envoy's live stream filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    config: *const Config,
    _end_of_stream: bool,
) -> u32 {
    let mut value = Buffer::EMPTY;
    let mut count = 0;
    envoy_dynamic_module_callback_http_get_header(
        filter,
        REQUEST_HEADER,
        Buffer::of(AUTHORIZATION),
        &mut value,
        0,
        &mut count,
    );
    core::hint::black_box((value.ptr, value.len, count));
    match &*config {
        Config::Read => CONTINUE,
        Config::Forward => {
            envoy_dynamic_module_callback_http_add_header(
                filter,
                REQUEST_HEADER,
                Buffer::of(IDENTITY_NAME),
                Buffer::of(IDENTITY_VALUE),
            );
            envoy_dynamic_module_callback_http_set_header(
                filter,
                REQUEST_HEADER,
                Buffer::of(AUTHORIZATION),
                Buffer::EMPTY,
            );
            CONTINUE
        }
        Config::Reject => {
            let headers = [
                Header {
                    key: Buffer::of(b"content-type"),
                    value: Buffer::of(b"application/json"),
                },
                Header {
                    key: Buffer::of(b"www-authenticate"),
                    value: Buffer::of(CHALLENGE),
                },
            ];
            envoy_dynamic_module_callback_http_send_response(
                filter,
                401,
                headers.as_ptr(),
                headers.len(),
                Buffer::of(UNAUTHORIZED_BODY),
                Buffer::of(DETAILS),
            );
            STOP_ITERATION
        }
    }
}

/// Hooks Envoy looks up and this filter has no use for: each does nothing and, where Envoy
/// reads an answer, answers 0 ("continue"; a null pointer for a per-route config, which
/// the benchmark never configures).
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
    envoy_dynamic_module_on_http_filter_destroy,
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
    envoy_dynamic_module_on_http_filter_response_headers,
    envoy_dynamic_module_on_http_filter_response_trailers,
    envoy_dynamic_module_on_http_filter_scheduled,
    envoy_dynamic_module_on_http_filter_stream_complete,
);
