//! Interactive sessions on real ptys, driven through tmux.

use crate::util::{unique_name, wait_until};
use std::process::{Command, Output};
use std::time::Duration;

/// A detached tmux server of its own (own socket) running one command.
/// Panes stay after the command exits, so its last output can be read.
pub struct Tmux {
    socket: String,
    conf: std::path::PathBuf,
    /// The server is this one's to stop (not a [`Tmux::handle`]'s).
    owned: bool,
}

impl Tmux {
    pub fn new(argv: &[String]) -> Tmux {
        let socket = unique_name("sshidle-tmux-");
        let conf = std::env::temp_dir().join(format!("{socket}.conf"));
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g history-limit 5000\n").expect("tmux conf");
        let tmux = Tmux { socket, conf, owned: true };
        let out = tmux.tmux(&["new-session", "-d", "-s", "main", "-x", "160", "-y", "50", "--"], argv);
        assert!(out.status.success(), "tmux new-session: {}", crate::util::describe(&out));
        tmux
    }

    fn tmux(&self, args: &[&str], more: &[String]) -> Output {
        Command::new("tmux")
            .env("TERM", "xterm-256color")
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .args(more)
            .output()
            .expect("tmux")
    }

    /// Types `text` literally.
    pub fn send_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "main", "-l", "--", text], &[]);
    }

    /// Sends tmux key names, e.g. `Enter`, `C-c`.
    pub fn send_keys(&self, keys: &[&str]) {
        self.tmux(&["send-keys", "-t", "main"], &keys.iter().map(|k| k.to_string()).collect::<Vec<_>>());
    }

    /// Types a line and presses Enter.
    pub fn type_line(&self, text: &str) {
        self.send_text(text);
        self.send_keys(&["Enter"]);
    }

    /// The pane's text including scrollback.
    pub fn capture(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "main", "-S", "-5000"], &[]).stdout)
            .into_owned()
    }

    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.capture().contains(text))
    }

    /// True once the command in the pane has exited. Panics when tmux itself
    /// cannot tell (its server is gone): "not dead" must mean alive.
    pub fn is_dead(&self) -> bool {
        let out = self.tmux(&["display-message", "-p", "-t", "main", "#{pane_dead}"], &[]);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && (answer == "0" || answer == "1"),
            "tmux cannot say whether the pane is dead: {}",
            crate::util::describe(&out)
        );
        answer == "1"
    }

    /// How the pane's command ended: `status=N` (it exited with N) or
    /// `signal=N` (a signal killed it), as tmux saw it; `None` while tmux
    /// does not know yet. tmux marks a pane dead at its pty's end, which can
    /// come before it has reaped the command: wait for this, not only for
    /// [`Tmux::is_dead`].
    pub fn exit(&self, timeout: Duration) -> Option<String> {
        let read = || {
            let out =
                self.tmux(&["display-message", "-p", "-t", "main", "#{pane_dead_status}/#{pane_dead_signal}"], &[]);
            match String::from_utf8_lossy(&out.stdout).trim().split_once('/') {
                Some((status, "")) if !status.is_empty() => Some(format!("status={status}")),
                Some(("", signal)) if !signal.is_empty() => Some(format!("signal={signal}")),
                _ => None,
            }
        };
        let mut seen = None;
        wait_until(timeout, || {
            seen = read();
            seen.is_some()
        });
        seen
    }

    /// PID of the command running in the pane.
    pub fn pane_pid(&self) -> i32 {
        String::from_utf8_lossy(&self.tmux(&["display-message", "-p", "-t", "main", "#{pane_pid}"], &[]).stdout)
            .trim()
            .parse()
            .unwrap_or(-1)
    }
}

impl Tmux {
    /// Another handle on the same server and pane, which leaves the server
    /// running when dropped (the first one stops it).
    pub fn handle(&self) -> Tmux {
        Tmux { socket: self.socket.clone(), conf: self.conf.clone(), owned: false }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.tmux(&["kill-server"], &[]);
        let _ = std::fs::remove_file(&self.conf);
    }
}
