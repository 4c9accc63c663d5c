//! Fuzz target `json`: see `keygate_core_fuzz::json` for the invariants.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_core_fuzz::json::check(data));

/// Without libFuzzer: replays the files (or every file of the directories) given as arguments.
#[cfg(not(fuzzing))]
fn main() {
    std::process::exit(keygate_core_fuzz::replay_main(
        "json",
        keygate_core_fuzz::json::check,
    ));
}
