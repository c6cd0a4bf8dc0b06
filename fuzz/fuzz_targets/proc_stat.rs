//! Fuzz target: the property `sshidle::props::proc_stat` on libFuzzer's inputs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshidle::props::proc_stat(data));
