//! The host calls that only `keygate-standalone.wasm` makes (see `standalone.rs`): the HTTP
//! callouts to keygatectl's cluster and their answers, gauges, and the VM's environment. The lean
//! filter links none of them. Nothing here can panic or trap.

// Compiled without the feature only for its unit tests.
#![cfg_attr(not(feature = "standalone-sync"), allow(dead_code))]
use crate::abi::{check, now_nanos, take_buffer, Status};
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::null_mut;

/// proxy-wasm's map and buffer of an HTTP callout's answer, and its gauge kind.
const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
const METRIC_GAUGE: u32 = 1;

mod host {
    extern "C" {
        pub fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            id: *mut u32,
        ) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
        pub fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
    }
}

/// Sends a request to `cluster` (serialized header pairs, and a body if not empty); the
/// answer comes to `proxy_on_http_call_response` with the token returned here.
pub fn http_call(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let mut token = 0;
    // SAFETY: live slices for the duration of the call, an out-pointer to a local.
    check(unsafe {
        host::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            core::ptr::null(),
            0,
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// A header of the callout answer being delivered, as bytes (any value, UTF-8 or not).
/// Only inside `proxy_on_http_call_response` for an answer that has headers.
pub fn response_header(name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: a live slice, out-pointers to locals; the buffer is ours afterwards.
    unsafe {
        check(host::proxy_get_header_map_value(
            HTTP_CALL_RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        ))
        .ok()?;
        Some(take_buffer(data, size))
    }
}

/// Up to `len` bytes of the callout answer's body from `start` (empty past its end or on
/// a failed read).
pub fn response_body(start: usize, len: usize) -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the buffer is ours afterwards.
    unsafe {
        match check(host::proxy_get_buffer_bytes(
            HTTP_CALL_RESPONSE_BODY,
            start,
            len,
            &mut data,
            &mut size,
        )) {
            Ok(()) => take_buffer(data, size),
            Err(_) => Vec::new(),
        }
    }
}

pub fn define_gauge(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: a live slice and an out-pointer to a local.
    check(unsafe { host::proxy_define_metric(METRIC_GAUGE, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { host::proxy_record_metric(id, value) })
}

pub fn now_ms() -> Result<u64, Status> {
    Ok(now_nanos()? / 1_000_000)
}

/// The value of the VM's environment variable `name` (WASI's environment: what Envoy's
/// `vm_config.environment_variables` gives the VM), or None.
pub fn env_var(name: &str) -> Option<Vec<u8>> {
    let (mut count, mut size) = (0usize, 0usize);
    // SAFETY: out-pointers to locals.
    if unsafe { host::environ_sizes_get(&mut count, &mut size) } != 0 || count == 0 {
        return None;
    }
    // The host writes `count` pointers and `size` bytes of `NAME=value\0` entries.
    let mut pointers: Vec<*mut u8> = vec![null_mut(); count];
    let mut buf = vec![0u8; size];
    // SAFETY: buffers of exactly the sizes the host asked for, live for the call.
    if unsafe { host::environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return None;
    }
    find_env(&buf, name)
}

/// `name`'s value in WASI's environment block (`NAME=value\0…`).
fn find_env(block: &[u8], name: &str) -> Option<Vec<u8>> {
    block.split(|b| *b == 0).find_map(|entry| {
        let at = entry.iter().position(|b| *b == b'=')?;
        let (key, value) = entry.split_at(at);
        (key == name.as_bytes()).then(|| value.get(1..).unwrap_or_default().to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::find_env;

    #[test]
    fn an_environment_variable_is_found_by_its_whole_name() {
        let block = b"A=1\0KEYGATE_SYNC_TOKEN_X=no\0KEYGATE_SYNC_TOKEN=kgsync_x=y\0EMPTY=\0";
        assert_eq!(
            find_env(block, "KEYGATE_SYNC_TOKEN").as_deref(),
            Some(&b"kgsync_x=y"[..])
        );
        assert_eq!(find_env(block, "EMPTY").as_deref(), Some(&b""[..]));
        assert_eq!(find_env(block, "KEYGATE"), None);
        assert_eq!(find_env(b"", "A"), None);
        assert_eq!(find_env(b"NOEQUALS\0", "NOEQUALS"), None);
    }
}
