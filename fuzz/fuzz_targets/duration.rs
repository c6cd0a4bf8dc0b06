//! Fuzz target: the property `sshidle::props::duration` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshidle::props::duration(data));
