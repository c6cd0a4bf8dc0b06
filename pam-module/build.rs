//! Links the unwinder statically (libgcc_eh) instead of depending on
//! libgcc_s.so.1: sshd does not load libgcc_s, so with the dependency every
//! connection would load and unload it with the module (about 100 µs of the
//! ~250 µs the module cost per connection; see tests/src/bin/bench_pam.rs).
//! Panics still unwind (`panic = "unwind"`), so `catch_unwind` in every hook
//! keeps them from crossing into libpam; the unwinder's symbols stay local
//! to the module (only the `pam_sm_*` hooks are exported).
//!
//! `+whole-archive` makes the linker take the archive before std's own
//! `-lgcc_s`, which `--as-needed` then drops as unused.
//!
//! `layout.ld` puts the code a login runs together, so that loading the
//! module and running its hooks touch fewer pages (see the script).
fn main() {
    println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
    let layout = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("layout.ld");
    // `-T FILE` as two words: `-Wl,` would split a path holding a comma.
    println!("cargo:rustc-cdylib-link-arg=-T");
    println!("cargo:rustc-cdylib-link-arg={}", layout.display());
    println!("cargo:rerun-if-changed=layout.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
