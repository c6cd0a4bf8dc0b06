//! `sshidlectl enforce` and `disconnect` (issue 3).

use crate::{Cli, DisconnectArgs, EnforceArgs, EXIT_PROBLEM};

pub fn run(_cli: &Cli, _args: &EnforceArgs) -> u8 {
    eprintln!("sshidlectl: enforce is not implemented yet");
    EXIT_PROBLEM
}

pub fn disconnect(_cli: &Cli, _args: &DisconnectArgs) -> u8 {
    eprintln!("sshidlectl: disconnect is not implemented yet");
    EXIT_PROBLEM
}
