//! `bench_pam` measures what sshd pays per connection, so it must run in a
//! process that has not loaded libgcc_s.so.1, as sshd's connection child has
//! not: it is linked with the static unwinder (libgcc_eh), like the module.
fn main() {
    println!("cargo:rustc-link-arg-bin=bench_pam=-Wl,--push-state,--whole-archive,-lgcc_eh,--pop-state");
    println!("cargo:rerun-if-changed=build.rs");
}
