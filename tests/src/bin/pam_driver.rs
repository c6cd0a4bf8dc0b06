//! Drives PAM sessions through libpam, the way sshd's per-connection monitors
//! do: each session is opened by a process of its own.
//!
//! `pam_driver CONFDIR SERVICE USER SESSIONS KEEP_EVERY`
//! forks SESSIONS children one after another; each opens a session, and
//! closes it again unless its index is a multiple of KEEP_EVERY, in which case
//! it prints its PID (or `fail CODE`) and stays alive (holding the session open) until killed.
//! Exit status: 0 when every PAM call returned PAM_SUCCESS.

use sshidle_tests::pam::{PamSession, PAM_SUCCESS};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: pam_driver CONFDIR SERVICE USER SESSIONS KEEP_EVERY");
        std::process::exit(2);
    }
    let (confdir, service, user) = (Path::new(&args[1]), &args[2], &args[3]);
    let sessions: usize = args[4].parse().expect("SESSIONS");
    let keep_every: usize = args[5].parse().expect("KEEP_EVERY");
    let mut failures = 0;
    for i in 0..sessions {
        let keep = keep_every > 0 && i % keep_every == 0;
        // SAFETY: single-threaded; the child only runs PAM and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match PamSession::start(confdir, service, user, Some("192.0.2.7")) {
                Ok(mut pam) => {
                    let open = pam.open_session();
                    if keep {
                        // Always answer, so the reader knows how many lines to expect.
                        use std::io::Write;
                        if open == PAM_SUCCESS {
                            println!("{}", std::process::id());
                        } else {
                            println!("fail {open}");
                        }
                        let _ = std::io::stdout().flush();
                        if open == PAM_SUCCESS {
                            loop {
                                // SAFETY: pause has no memory effects.
                                unsafe { libc::pause() };
                            }
                        }
                        // SAFETY: as below.
                        unsafe { libc::_exit(1) };
                    }
                    let close = pam.close_session();
                    i32::from(open != PAM_SUCCESS || close != PAM_SUCCESS)
                }
                Err(_) => 1,
            };
            // SAFETY: leave the child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) };
        }
        if pid < 0 {
            failures += 1;
            continue;
        }
        if !keep {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                failures += 1;
            }
        }
    }
    std::process::exit(i32::from(failures > 0));
}
