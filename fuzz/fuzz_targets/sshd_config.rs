//! Fuzz target: reading and rewriting an admin's sshd_config
//! (`check_properties` in the controller's sshd_config.rs, compiled in here
//! from its source, since the controller is a binary crate).
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../controller/src/sshd_config.rs"]
mod sshd_config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| sshd_config::check_properties(data));
