//! keygate-core: the pure logic of keygate, with no proxy-wasm in it, so that it is tested and
//! fuzzed on the host and shared by the Envoy filter and `keygatectl`.

pub mod bucket;
pub mod config;
pub mod credentials;
pub mod decision;
pub mod denial;
pub mod digest;
pub mod digest_cache;
pub mod header_pairs;
pub mod identity;
pub mod key;
pub mod keymap;
pub mod path;
pub mod policy;
pub mod request_scan;
pub mod service_config;
pub mod sync;
