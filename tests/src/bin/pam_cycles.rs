//! `pam_cycles CONFDIR SERVICE USER CYCLES`: CYCLES full PAM cycles as sshd
//! runs them per connection (pam_start, a hostile PAM_RHOST, open_session,
//! close_session, pam_end), in this one process, for valgrind. Exit status:
//! 0 when every call returned PAM_SUCCESS.

use sshidle_tests::pam::{PamSession, PAM_SUCCESS};
use std::path::Path;

/// Control characters, a forged journal line, escapes, invalid UTF-8 and
/// length: what a client controlling its reverse DNS (or a bug) could send.
fn hostile_rhost(i: usize) -> Vec<u8> {
    let mut rhost = b"evil\n\tclose\tpid=1\tstart=2\n%41%\x1b[2J\x7f\xc3\x28\xff\xfe".to_vec();
    rhost.extend(std::iter::repeat_n(b'A', (i * 37) % 5000));
    rhost.extend_from_slice(b"\r\\%%");
    rhost
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: pam_cycles CONFDIR SERVICE USER CYCLES");
        std::process::exit(2);
    }
    let cycles: usize = args[4].parse().expect("CYCLES");
    let mut failures = 0;
    for i in 0..cycles {
        match PamSession::start(Path::new(&args[1]), &args[2], &args[3], None) {
            Ok(mut pam) => {
                let codes = [pam.set_rhost_bytes(&hostile_rhost(i)), pam.open_session(), pam.close_session()];
                if codes.iter().any(|c| *c != PAM_SUCCESS) {
                    eprintln!("cycle {i}: {codes:?}");
                    failures += 1;
                }
            }
            Err(code) => {
                eprintln!("cycle {i}: pam_start {code}");
                failures += 1;
            }
        }
    }
    std::process::exit(i32::from(failures > 0));
}
