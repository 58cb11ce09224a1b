//! `cargo xtask`: the project's commands for developers and CI.
//!
//! - `cargo xtask ci` installs what the tests need on a fresh Debian machine, then runs fmt,
//!   clippy and every test, including the ones that need root, BPF and etcd.

mod prereqs;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "rudder's developer and CI commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites, then run fmt, clippy -D warnings and all tests (root needed).
    Ci,
    /// Install the prerequisites only (Debian packages, kubectl, nightly rust-src, bpf-linker).
    Prereqs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Ci => ci(),
        Cmd::Prereqs => prereqs::ensure().map(|_| ()),
    }
}

fn ci() -> Result<()> {
    let tools = prereqs::ensure()?;
    step("cargo fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "rudder-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "cargo test",
        cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "rudder-ebpf",
                "--",
                "--include-ignored",
            ])
            .env("RUDDER_KUBECTL", &tools.kubectl),
    )?;
    eprintln!("xtask ci: all green");
    Ok(())
}

/// A `cargo` command run from the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(ToOwned::to_owned).unwrap_or(manifest)
}

/// Runs `cmd`, announcing it, and fails with `name` if it does not succeed.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {name}");
    let status = cmd.status().with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
