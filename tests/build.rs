//! `bench_pam` measures what sshd pays per connection, so it must run in a
//! process that has not loaded libgcc_s.so.1, as sshd's connection child has
//! not: it is linked with the static unwinder (libgcc_eh), like the module.
//!
//! It must come before std's `-lgcc_s`: GNU ld (rustc's linker on Debian,
//! where lld is not the default) keeps an `--as-needed` library that
//! resolves a symbol when it is met, so an unwinder named after it (a
//! `rustc-link-arg`, placed at the end) leaves libgcc_s.so.1 linked. A
//! `rustc-link-lib` of the package goes before std's libraries, and so into
//! every target of the package (the test binaries too, which do not mind).
//! Not bundled into the rlib: each binary names the archive itself.
//! `+whole-archive` because std's references to the unwinder come later on
//! the command line. GCC 14's libgcc_eh.a (Debian 13, sid) holds
//! heap-trampoline.o, which needs `__tls_get_addr` from ld.so: libc, named
//! after it, brings ld.so in (an argument after rustc's `-lc` failed with
//! "DSO missing from command line").
fn main() {
    println!("cargo:rustc-link-lib=static:+whole-archive,-bundle=gcc_eh");
    println!("cargo:rerun-if-changed=build.rs");
}
