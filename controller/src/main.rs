//! `sshidlectl`: the controller of sshidle.

mod enforce;
mod install;
mod keepalive;
mod report;
mod sshd_config;
mod syslog;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status: 0 ok, 1 the check or action found a problem, 2 bad usage.
pub const EXIT_OK: u8 = 0;
pub const EXIT_PROBLEM: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "sshidlectl",
    version,
    about = "Disconnect idle SSH sessions, per user and per group, and keep sshd's keepalives right",
    long_about = "sshidlectl reads the sessions that pam_sshidle.so records, enforces the idle and \
session-length limits of the policy file (warn on the terminal, then end the session cleanly), \
explains which rule applies to whom, and writes sshd's ClientAlive keepalive settings safely.\n\n\
Exit status: 0 ok, 1 the check or action found a problem, 2 bad usage."
)]
pub struct Cli {
    /// Policy file
    #[arg(long, global = true, value_name = "PATH", default_value = sshidle::DEFAULT_POLICY_PATH)]
    pub config: PathBuf,
    /// Directory of the shared session state
    #[arg(long, global = true, value_name = "DIR", default_value = sshidle::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List recorded sessions: id, user, ttys, origin, login, idle, limit, time left, rule
    Status(StatusArgs),
    /// Warn, then disconnect sessions past their idle or hard limit
    Enforce(EnforceArgs),
    /// Disconnect sessions now, as the enforcer would
    Disconnect(DisconnectArgs),
    /// Validate the policy file; errors are printed as FILE:LINE: message
    Check,
    /// Show which rule applies to USER and the resulting limits
    Explain {
        /// User name to explain
        user: String,
    },
    /// Write sshd's ClientAliveInterval/ClientAliveCountMax, validate, reload and verify
    #[command(long_about = keepalive::LONG_ABOUT)]
    Keepalive(keepalive::KeepaliveArgs),
    /// Install the module, the PAM line, a default policy and the enforcer service
    Install(install::InstallArgs),
    /// Remove exactly what install added
    Uninstall(install::UninstallArgs),
    /// Print a shell completion script for sshidlectl
    Completions {
        /// Shell to write the script for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON (same as --format json)
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    /// node_exporter textfile collector format
    Prometheus,
}

#[derive(Args, Debug)]
pub struct EnforceArgs {
    /// Run one sweep and exit
    #[arg(long)]
    pub once: bool,
    /// Say what would be done; warn and disconnect nobody
    #[arg(long)]
    pub dry_run: bool,
    /// utmp file listing logins that have no sshidle record (made before the
    /// module was installed); `none` to look only at recorded sessions
    #[arg(long, value_name = "FILE", default_value = sshidle::utmp::DEFAULT_UTMP)]
    pub utmp: PathBuf,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "user"])))]
pub struct DisconnectArgs {
    /// Session id, as shown by `sshidlectl status`
    pub id: Option<String>,
    /// Disconnect every session of this user
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Say what would be done; disconnect nobody
    #[arg(long)]
    pub dry_run: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Status(args) => report::status(&cli, args),
        Command::Check => report::check(&cli),
        Command::Explain { user } => report::explain(&cli, user),
        Command::Enforce(args) => enforce::run(&cli, args),
        Command::Disconnect(args) => enforce::disconnect(&cli, args),
        Command::Keepalive(args) => keepalive::run(&cli, args),
        Command::Install(args) => install::install(&cli, args),
        Command::Uninstall(args) => install::uninstall(&cli, args),
        Command::Completions { shell } => install::completions(*shell),
    };
    ExitCode::from(code)
}
