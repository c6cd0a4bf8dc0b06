//! Fuzz target: the property `sshidle::props::journal` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshidle::props::journal(data));
