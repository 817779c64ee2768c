//! Command line: `hub serve | demo | inspect | certs | keys | bench | status |
//! snapshot | completions | man`.

pub mod bench;
pub mod demo;
pub mod inspect;
pub mod keys;
pub mod probe;
pub mod progress;
pub mod remote;
pub mod serve;
pub mod snapshot;
pub mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "hub",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("HUB_GIT_REV"), ")"),
    about = "A leaderless, persistent replication engine"
)]
pub struct Cli {
    /// Log output: human-readable or one JSON object per line. Filter with RUST_LOG.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "HUB_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (with no flags: a working node on defaults with demo sensors).
    Serve(Box<serve::ServeArgs>),
    /// Run a local cluster of N nodes with sensors, certificates included.
    Demo(demo::DemoArgs),
    /// Make the cluster CA and node certificates.
    Certs {
        #[command(subcommand)]
        cmd: hub::certs::CertsCmd,
    },
    /// Show a node's state: offline from its data directory, or live over HTTP.
    Inspect(inspect::InspectArgs),
    /// Load-test a running node over HTTP: durable PUTs or reading batches.
    Bench(bench::BenchArgs),
    /// Create, list and revoke API keys (offline on --data-dir, or live on --node).
    Keys(keys::KeysArgs),
    /// One table of every cluster member; exit 0 only when all are alive and in step.
    Status(status::StatusArgs),
    /// Exit 0 when this host's node answers /health (the image's HEALTHCHECK).
    Probe(probe::ProbeArgs),
    /// Save a node to a snapshot file, or make a data directory from one.
    Snapshot(snapshot::SnapshotArgs),
    /// Print a shell completion script: `hub completions bash > /etc/bash_completion.d/hub`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `hub man > hub.1`.
    Man,
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never into a file or pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) | Command::Demo(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Certs { cmd } => hub::certs::run(cmd),
            Command::Inspect(args) => inspect::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Snapshot(args) => snapshot::run(args).await,
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "hub", &mut std::io::stdout());
                Ok(())
            }
            Command::Man => {
                let cmd = <Cli as clap::CommandFactory>::command();
                clap_mangen::Man::new(cmd)
                    .render(&mut std::io::stdout())
                    .map_err(anyhow::Error::from)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message already includes (many of our errors print their source inline).
fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
