//! Fuzz target: the property `sshidle::props::policy` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshidle::props::policy(data));
