//! Fuzz target `credentials`: see `keygate_core_fuzz::credentials` for the input format and the invariants.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_core_fuzz::credentials::check(data));

/// Without libFuzzer: replays the files (or every file of the directories) given as arguments.
#[cfg(not(fuzzing))]
fn main() {
    std::process::exit(keygate_core_fuzz::replay_main(
        "credentials",
        keygate_core_fuzz::credentials::check,
    ));
}
