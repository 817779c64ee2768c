//! The `hub` binary: parses the command line and runs one subcommand.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
