//! Fuzz target `sync_binary`: see `keygate_core_fuzz::sync_binary` for the input format and the invariants.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_core_fuzz::sync_binary::check(data));

/// Without libFuzzer: replays the files (or every file of the directories) given as arguments.
#[cfg(not(fuzzing))]
fn main() {
    std::process::exit(keygate_core_fuzz::replay_main(
        "sync_binary",
        keygate_core_fuzz::sync_binary::check,
    ));
}
