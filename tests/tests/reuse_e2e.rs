//! End to end, issue 18: a pty number the kernel hands out again describes
//! one allocation only. Each sequence runs three logins from one tmux pane
//! made before the first: the pane holds the client's pty throughout, so
//! each login gets the server pty number the previous one just freed (the
//! kernel gives the lowest free number), as `pts/0` is reused all day on a
//! server. The test checks that it did (and, on a machine where other
//! processes free lower numbers meanwhile, holds those open while a login
//! starts: `PtyHoles`).
//!
//! 1. Login 1 ends: by the enforcer at its limit, by the user's `exit`, by
//!    `sshidlectl disconnect`, or by an enforcer restarted meanwhile.
//! 2. Login 2, on the same `pts/N`, types a line every 3 s for longer than
//!    the limit: kept, never warned, and `status` shows it active.
//! 3. Login 3, on it again, idles: ended within [limit, limit + 1.5 s] of
//!    its login's last key.
//!
//! Real sshd, real users, real ptys through tmux, the real enforcer.

use sshidle_tests::session::*;
use sshidle_tests::*;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(8);
/// Login 1's limit in the restart sequence (users `rur*`).
const RESTART_LIMIT: Duration = Duration::from_secs(12);
const POLICY: &str = "user rur* idle=12s warn=3s\nuser ru* idle=8s warn=3s\n";
const WARNING: &str = "will be disconnected in";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstEnd {
    /// The enforcer ends it at its limit.
    Enforcer,
    /// The user types `exit`.
    Logout,
    /// `sshidlectl disconnect --user`.
    Disconnect,
    /// The enforcer is restarted while it idles; the new one ends it.
    Restart,
}

/// The server tty `status` gives the only session of `user`.
fn tty_of(sshd: &Sshd, l: &Login) -> String {
    let ttys = ttys_of(sshd, &l.user.name);
    assert_eq!(ttys.len(), 1, "{}: ttys {ttys:?}", l.name);
    ttys[0].clone()
}

fn warnings(pane: &Pane) -> usize {
    pane.tmux.capture().matches(WARNING).count()
}

/// Waits until `l` has ended (its client exited) and nothing of its user is
/// left.
fn assert_gone(l: &Login, enforcer: &Enforcer) {
    let ended = wait_ended(&[l], Duration::from_secs(10)).remove(0);
    assert!(ended.is_some(), "{}: still connected:\n{}\n{}", l.name, l.tmux.capture(), enforcer.output());
    assert!(
        wait_until(Duration::from_secs(8), || user_processes(&l.user).is_empty()),
        "{}: processes left: {:?}",
        l.name,
        user_processes(&l.user)
    );
}

/// One sequence; `Err` when the kernel gave a login another number (some
/// other process on the machine took the one freed): nothing was tested.
fn sequence(sshd: &Sshd, running: &mut Option<Enforcer>, how: FirstEnd) -> Result<(), String> {
    let tag = format!("{how:?}");
    let enforcer = running.as_mut().expect("enforcer");
    let pane = Pane::new();
    // Login 1 of the restart has a longer limit (its user's rule): the
    // enforcer is restarted once the 8-s block of its last key is over, as
    // a restart within that block may end it up to the block's end late
    // (the atime is all the new enforcer can read: idle_truth_e2e).
    let prefix = if how == FirstEnd::Restart { "rur" } else { "rua" };
    let mut first = Login::in_pane(sshd, "login 1", TestUser::create(prefix, &[]), &pane, &[]);
    let tty = tty_of(sshd, &first);
    // The enforcer has watched the pty by now (a new pty is looked at
    // within a second). Login 1's last key comes after that: its first one
    // was typed while ssh connected and read as the shell started, maybe
    // before the enforcer knew the session, which then credits input up to
    // its first look (seen: ended 1.55 s past the limit, twice in a row).
    std::thread::sleep(Duration::from_millis(1500));
    first.type_last(":");
    match how {
        FirstEnd::Enforcer => {
            let ended = wait_ended(&[&first], LIMIT + Duration::from_secs(8)).remove(0);
            assert_ended_on_time(&first, ended, LIMIT, enforcer);
        }
        FirstEnd::Logout => {
            first.tmux.type_line("exit");
            assert_gone(&first, enforcer);
        }
        FirstEnd::Disconnect => {
            let out = sshd.ctl(&["disconnect", "--user", &first.user.name]);
            assert!(out.status.success(), "{tag}: disconnect: {}", describe(&out));
            assert_gone(&first, enforcer);
        }
        FirstEnd::Restart => {
            // Stopped (SIGTERM: it saves what it knows), started again.
            std::thread::sleep((first.key + Duration::from_secs(9)).saturating_duration_since(Instant::now()));
            drop(running.take());
            *running = Some(start_niced_enforcer(sshd, &[]));
            let enforcer = running.as_mut().expect("enforcer");
            let ended = wait_ended(&[&first], RESTART_LIMIT + Duration::from_secs(8)).remove(0);
            assert_ended_on_time(&first, ended, RESTART_LIMIT, enforcer);
        }
    }
    let enforcer = running.as_mut().expect("enforcer");
    let warned_before = warnings(&pane);

    // Login 2 on the same number types every 3 s, past the limit.
    let user = TestUser::create("rub", &[]);
    let holes = PtyHoles::below(&tty).ok_or_else(|| format!("{tag}: {tty} was taken before login 2"))?;
    let second = Login::in_pane(sshd, "login 2 (typing)", user, &pane, &[]);
    let again = tty_of(sshd, &second);
    drop(holes);
    if again != tty {
        return Err(format!("{tag}: login 2 got {again}, not the {tty} login 1 freed"));
    }
    let typing_until = Instant::now() + LIMIT + Duration::from_secs(3);
    let mut idle_seen = Vec::new();
    while Instant::now() < typing_until {
        std::thread::sleep(Duration::from_secs(3));
        second.tmux.type_line("true");
        std::thread::sleep(Duration::from_millis(500));
        // What status says agrees with a typist: active within the last
        // line (3 s) and the moment of the look.
        let rows = sessions_of(sshd, &second.user.name);
        idle_seen.push(rows.first().and_then(|r| r["idle_secs"].as_u64()).unwrap_or(u64::MAX));
    }
    assert!(
        second.ended().is_none(),
        "{tag}: login 2, typing every 3 s on the reused {tty}, was disconnected:\n{}\n{}",
        pane.tmux.capture(),
        enforcer.output()
    );
    assert_eq!(warnings(&pane), warned_before, "{tag}: login 2 was warned:\n{}", pane.tmux.capture());
    assert!(idle_seen.iter().all(|i| *i <= 4), "{tag}: status said login 2 was idle {idle_seen:?} s");
    second.tmux.type_line("exit");
    assert_gone(&second, enforcer);

    // Login 3 on it again idles from its first line on.
    let user = TestUser::create("ruc", &[]);
    let holes = PtyHoles::below(&tty).ok_or_else(|| format!("{tag}: {tty} was taken before login 3"))?;
    let third = Login::in_pane(sshd, "login 3 (idle)", user, &pane, &[]);
    let third_tty = tty_of(sshd, &third);
    drop(holes);
    if third_tty != tty {
        return Err(format!("{tag}: login 3 got {third_tty}, not {tty}"));
    }
    let ended = wait_ended(&[&third], LIMIT + Duration::from_secs(8)).remove(0);
    assert_ended_on_time(&third, ended, LIMIT, enforcer);
    assert_eq!(warnings(&pane), warned_before + 1, "{tag}: login 3 was not warned once:\n{}", pane.tmux.capture());
    enforcer.assert_alive();
    Ok(())
}

/// The three logins on one reused pty number, after each way login 1 ends,
/// one after the other (at the same time they would take each other's
/// numbers), with one enforcer (restarted once in the last sequence).
#[test]
fn a_reused_pty_number_inherits_nothing() {
    if !e2e_enabled() {
        return;
    }
    let _timed = timed();
    let sshd = Sshd::start("reuse", SshdOptions { policy: POLICY.into(), ..Default::default() });
    let mut enforcer = Some(start_niced_enforcer(&sshd, &[]));
    for how in [FirstEnd::Enforcer, FirstEnd::Logout, FirstEnd::Disconnect, FirstEnd::Restart] {
        // Another process's pty (other tests on a shared machine) may take
        // the number freed: tried again, at most twice.
        let mut missed = Vec::new();
        while let Err(why) = sequence(&sshd, &mut enforcer, how) {
            eprintln!("reuse_e2e: {why}: the number was not reused, the sequence runs again");
            missed.push(why);
            assert!(missed.len() < 3, "the pty number was never reused: {missed:?}");
        }
    }
}
