//! `rudder`: one binary, k3s-style, with a subcommand per role. This file only parses flags and
//! starts things; the work lives in the libraries.

use clap::{Parser, Subcommand};

/// rudder: a compact Kubernetes-style cluster whose Service networking runs as eBPF programs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("rudder {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
