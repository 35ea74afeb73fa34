//! `keyward`: argument parsing and dispatch. All behaviour lives in the library.

use clap::{Parser, Subcommand};
use keyward::cli::{self, CliError};
use keyward::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// The request path allocates small, short-lived buffers on every request from
/// several worker threads; mimalloc's per-thread heaps do that with far less
/// work than glibc's arenas (measured: bench/notes.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Injecting HTTPS forward proxy for AI-agent sandboxes"
)]
struct Cli {
    /// Config file (default: config/keyward.toml if present, else embedded defaults).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (and the admin API if configured).
    Serve,
    /// Write an example config, CA and master key into DIR (never overwrites).
    Init { dir: Option<PathBuf> },
    /// Manage secrets in the vault.
    Secret {
        #[command(subcommand)]
        cmd: cli::secret::SecretCmd,
    },
    /// Vault maintenance (master key rotation).
    Vault {
        #[command(subcommand)]
        cmd: cli::secret::VaultCmd,
    },
    /// Register agents.
    Agent {
        #[command(subcommand)]
        cmd: cli::agent::AgentCmd,
    },
    /// Read, verify and export the audit log.
    Audit {
        #[command(subcommand)]
        cmd: cli::audit::AuditCmd,
    },
    /// Print the environment a sandbox needs to use keyward.
    Env(cli::env::EnvArgs),
    /// Validate config, vault and CA; exit 1 on error.
    Check,
    /// The PostgreSQL store: schema, import from and export to a vault file.
    Store {
        #[command(subcommand)]
        cmd: cli::store::StoreCmd,
    },
    /// Run a command in a jail whose only way out is keyward (Linux).
    Run(cli::run::RunArgs),
}

fn main() -> ExitCode {
    let args = match Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage(e),
    };
    // A CLI piped into `head` should end quietly, not panic on EPIPE. Not for
    // `serve`: there a client that hangs up mid-response would kill the proxy
    // (SIGPIPE on the socket write) instead of failing that one write.
    if !matches!(args.command, Command::Serve) {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = run(args);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("keyward: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `--help` and `--version` exit 0; every other parse failure is a user error,
/// exit 1 (SPEC §2), not clap's default 2 (which means "internal" here).
fn usage(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // Nothing more can be said if the terminal is gone.
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

fn run(args: Cli) -> Result<u8, CliError> {
    if let Command::Init { dir } = &args.command {
        return cli::init::run(dir.as_deref(), args.config.as_deref()).map(|_| 0);
    }
    if let Command::Check = &args.command {
        return cli::check::run(args.config.as_deref());
    }
    let config = Config::load(args.config.as_deref()).map_err(|e| CliError::User(e.to_string()))?;
    match args.command {
        Command::Serve => serve(config),
        Command::Secret { cmd } => cli::secret::run(cmd, &config),
        Command::Vault { cmd } => cli::secret::run_vault(cmd, &config),
        Command::Agent { cmd } => cli::agent::run(cmd, &config),
        Command::Audit { cmd } => cli::audit::run(cmd, &config),
        Command::Env(env) => cli::env::run(env, &config),
        Command::Store { cmd } => cli::store::run(cmd, &config),
        Command::Run(run) => {
            init_log("warn");
            cli::run::run(run, &config)
        }
        Command::Init { .. } | Command::Check => unreachable!("handled above"),
    }
}

fn init_log(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(config: Config) -> Result<u8, CliError> {
    init_log("info");
    // This thread accepts and runs the admin API and the watchers; requests are
    // served by `proxy.workers` threads of their own (proxy::workers).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Internal(format!("cannot start the runtime: {e}")))?;
    rt.block_on(keyward::app::serve(config))
        .map_err(|e| CliError::User(e.to_string()))?;
    Ok(0)
}
