//! The `duplex` command: run a node, or poke one from a terminal.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
