//! `sshidlectl`: the controller of sshidle.

mod enforce;
mod install;
mod keepalive;
mod metrics;
mod report;
mod sshd_config;
mod sshd_control;
mod syslog;
mod ttywatch;

use clap::{Parser, Subcommand};
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
    Status(report::StatusArgs),
    /// Warn, then disconnect sessions past their idle or hard limit
    Enforce(enforce::EnforceArgs),
    /// Disconnect sessions now, as the enforcer would
    Disconnect(enforce::DisconnectArgs),
    /// Validate the policy file; errors are printed as FILE:LINE: message
    Check,
    /// Show which rule applies to USER (logging in from HOST) and why, the
    /// resulting limits, and what ending the session ends
    Explain {
        /// User name to explain
        user: String,
        /// Where the login comes from, as sshd gives it to PAM: the client's
        /// address (or its name with UseDNS yes). Without it, rules with
        /// `from` are listed, not applied
        #[arg(long, value_name = "HOST")]
        from: Option<String>,
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

/// The paths of the global options, for the commands that need them.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

/// How a command failed. Mapped to the exit status in one place,
/// [`exit_code`].
#[derive(Debug)]
pub enum Failure {
    /// The check or action found a problem (exit 1); the message is printed
    /// as `sshidlectl: MESSAGE`.
    Problem(String),
    /// A problem already told to the admin (exit 1).
    Reported,
    /// Bad usage (exit 2).
    Usage(String),
}

pub type Outcome = Result<(), Failure>;

impl From<sshidle::state::StateError> for Failure {
    fn from(err: sshidle::state::StateError) -> Failure {
        Failure::Problem(err.to_string())
    }
}

impl Failure {
    /// The outcome of a command that still returns its exit status itself
    /// (install, uninstall), having told the admin already.
    fn from_code(code: u8) -> Outcome {
        match code {
            EXIT_OK => Ok(()),
            EXIT_USAGE => Err(Failure::Usage(String::new())),
            _ => Err(Failure::Reported),
        }
    }
}

fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Ok(()) => EXIT_OK,
        Err(Failure::Problem(message)) => {
            eprintln!("sshidlectl: {message}");
            EXIT_PROBLEM
        }
        Err(Failure::Reported) => EXIT_PROBLEM,
        Err(Failure::Usage(message)) => {
            if !message.is_empty() {
                eprintln!("sshidlectl: {message}");
            }
            EXIT_USAGE
        }
    }
}

fn main() -> ExitCode {
    syslog::init();
    let cli = Cli::parse();
    let paths = Paths { config: cli.config.clone(), state_dir: cli.state_dir.clone() };
    let outcome = match &cli.command {
        Command::Status(args) => report::status(&paths.state_dir, &paths.config, args),
        Command::Check => report::check(&paths.config),
        Command::Explain { user, from } => report::explain(&paths.config, user, from.as_deref()),
        Command::Enforce(args) => enforce::run(&paths, args),
        Command::Disconnect(args) => enforce::disconnect(&paths.state_dir, args),
        Command::Keepalive(args) => keepalive::run(&paths.config, args),
        Command::Install(args) => Failure::from_code(install::install(&paths, args)),
        Command::Uninstall(args) => Failure::from_code(install::uninstall(&paths, args)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "sshidlectl", &mut std::io::stdout());
            Ok(())
        }
    };
    ExitCode::from(exit_code(outcome))
}
