//! The few host calls keygate makes where the SDK's wrappers would panic on a host error or
//! lack a parameter. Each returns a `Result`; nothing here can trap the VM.

use proxy_wasm::types::{MapType, Status};
use std::ptr::null_mut;

extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;

    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
}

/// The whole request header map, serialized, in one host call. Every value of a repeated
/// header is there (a single-header read would return only the first).
pub fn request_header_map() -> Result<Vec<u8>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated through this module's exported allocator
    // (the SDK's `proxy_on_memory_allocate`, a `Vec<u8>` allocation of exactly `size` bytes),
    // so ownership passes to us as a Vec of that length and capacity.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Ok(Vec::from_raw_parts(data, size, size)),
            Status::Ok => Ok(Vec::new()),
            status => Err(status),
        }
    }
}

/// Answers the request from Envoy with `details` recorded as the response-code details, so
/// access logs show why (`%RESPONSE_CODE_DETAILS%`).
pub fn send_local_response(
    status: u32,
    details: &str,
    headers: &[(&[u8], &[u8])],
    body: &[u8],
) -> Result<(), Status> {
    let headers = keygate_core::header_pairs::serialize(headers);
    // SAFETY: every pointer/length pair describes a live slice for the duration of the call.
    let status = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    match status {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}
