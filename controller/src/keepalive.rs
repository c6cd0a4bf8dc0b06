//! `sshidlectl keepalive` (issue 4).

use crate::{Cli, EXIT_PROBLEM};
use clap::Args;

#[derive(Args, Debug)]
pub struct KeepaliveArgs {}

pub fn run(_cli: &Cli, _args: &KeepaliveArgs) -> u8 {
    eprintln!("sshidlectl: keepalive is not implemented yet");
    EXIT_PROBLEM
}
