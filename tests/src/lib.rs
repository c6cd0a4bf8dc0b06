//! Test harness: see the modules.
