//! A minimal proxy-wasm (ABI 0.2.1) HTTP filter, written against the ABI directly.
//!
//! Exports:
//! - `proxy_abi_version_0_2_1`: tells the host which ABI this module speaks;
//! - `proxy_on_memory_allocate`: the host allocates in our memory through it to return
//!   header values (a `Box<[u8]>`, so the value is freed below as a `Vec` of that size,
//!   as the Rust SDK does);
//! - `proxy_on_request_headers`: reads the `authorization` header once and continues.
//!
//! Everything else the host may call (`proxy_on_context_create`, `proxy_on_vm_start`,
//! `proxy_on_configure`, `proxy_on_done`, `proxy_on_delete`, ...) is optional in the ABI
//! and absent here. `_initialize` is defined because the module is a WASI reactor: the host
//! calls it once after instantiation (it runs the static constructors, as the SDK's
//! `proxy_wasm::main!` does).

use std::mem::MaybeUninit;

/// `MapType::HttpRequestHeaders` in the ABI.
const HTTP_REQUEST_HEADERS: u32 = 0;
/// `Status::Ok` in the ABI.
const STATUS_OK: u32 = 0;
/// `Action::Continue` in the ABI.
const ACTION_CONTINUE: u32 = 0;
const AUTHORIZATION: &[u8] = b"authorization";

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor entry point, called once by the host after instantiation.
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut vec: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: MaybeUninit<u8> needs no initialisation; the host fills the bytes.
    unsafe { vec.set_len(size) };
    Box::into_raw(vec.into_boxed_slice()) as *mut u8
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    _context_id: u32,
    _num_headers: u32,
    _end_of_stream: u32,
) -> u32 {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the key is a valid slice; the out-pointers point at our locals.
    let status = unsafe {
        proxy_get_header_map_value(
            HTTP_REQUEST_HEADERS,
            AUTHORIZATION.as_ptr(),
            AUTHORIZATION.len(),
            &mut data,
            &mut size,
        )
    };
    if status == STATUS_OK && !data.is_null() {
        // SAFETY: the host allocated `size` bytes with proxy_on_memory_allocate and gave
        // them to us: free them as the Box<[u8]> they are.
        let value = unsafe { Vec::from_raw_parts(data, size, size) };
        std::hint::black_box(&value);
    }
    ACTION_CONTINUE
}
