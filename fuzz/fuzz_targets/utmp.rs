//! Fuzz target: the property `sshidle::props::utmp` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshidle::props::utmp(data));
