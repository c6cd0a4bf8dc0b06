//! `sshidlectl install` / `uninstall` (issue 5).

use crate::{Cli, EXIT_PROBLEM};
use clap::Args;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Say what would be done; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

pub fn install(_cli: &Cli, _args: &InstallArgs) -> u8 {
    eprintln!("sshidlectl: install is not implemented yet");
    EXIT_PROBLEM
}

pub fn uninstall(_cli: &Cli, _args: &InstallArgs) -> u8 {
    eprintln!("sshidlectl: uninstall is not implemented yet");
    EXIT_PROBLEM
}
