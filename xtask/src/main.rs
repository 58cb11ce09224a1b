//! `cargo xtask`: the project's commands for developers and CI.
//!
//! - `cargo xtask ci` installs what the tests need on a fresh Debian machine, then runs fmt,
//!   clippy and every test, including the ones that need root, BPF and etcd.
//! - `cargo xtask up` installs prerequisites, builds `rudder` (release) and starts a one-node
//!   cluster (`rudder server`) in the background, or with `--nodes N` a namespace lab of N
//!   nodes (`rudder lab`); `cargo xtask down` stops it.
//! - `cargo xtask bench <name>` runs a benchmark and writes `target/bench/<name>/`.

mod cluster;
mod codegen;
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
    /// Install prerequisites, build, and start a cluster; prints the kubeconfig path.
    Up {
        /// Number of nodes (1: `rudder server` on this host; more: a network namespace per
        /// node on one bridge, `rudder server` on the first and `rudder agent` on the others).
        #[arg(long, default_value_t = 1)]
        nodes: u32,
        /// Data directory of the server.
        #[arg(long, default_value = "/var/lib/rudder")]
        data_dir: std::path::PathBuf,
        /// HTTPS port of the apiserver.
        #[arg(long, default_value_t = 6443)]
        port: u16,
    },
    /// Stop the cluster started by `up`.
    Down {
        /// Data directory of the server.
        #[arg(long, default_value = "/var/lib/rudder")]
        data_dir: std::path::PathBuf,
        /// Also delete the data directory (all objects, credentials and the kubeconfig).
        #[arg(long)]
        purge: bool,
    },
    /// Regenerate control/src/api/protobuf/schema.rs from the k8s-pb and k8s-openapi crates.
    Codegen {
        /// Only check that the committed file is up to date.
        #[arg(long)]
        check: bool,
    },
    /// Run a benchmark; results go to target/bench/<name>/ (results.json, report.md).
    Bench {
        /// Which benchmark: control, dns, forwarding, ingress, pods.
        name: String,
        /// Smaller sizes for a quick look.
        #[arg(long)]
        quick: bool,
        /// forwarding, dns: service counts, e.g. 1,1000,10000.
        #[arg(long)]
        services: Option<String>,
        /// forwarding: subjects, e.g. none,iptables,ebpf-tc,socket-lb.
        #[arg(long)]
        dataplanes: Option<String>,
        /// control: hollow nodes for the scheduling part (then only that part runs).
        #[arg(long)]
        hollow_nodes: Option<usize>,
        /// control: pods for the scheduling part (then only that part runs).
        #[arg(long)]
        pods: Option<usize>,
        /// control: stores to measure, e.g. embedded or etcd (default both).
        #[arg(long)]
        stores: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Ci => ci(),
        Cmd::Prereqs => prereqs::ensure().map(|_| ()),
        Cmd::Up {
            nodes,
            data_dir,
            port,
        } => cluster::up(nodes, &data_dir, port),
        Cmd::Down { data_dir, purge } => cluster::down(&data_dir, purge),
        Cmd::Codegen { check } => codegen::run(check),
        Cmd::Bench {
            name,
            quick,
            services,
            dataplanes,
            hollow_nodes,
            pods,
            stores,
        } => bench(
            &name,
            quick,
            services.as_deref(),
            dataplanes.as_deref(),
            (hollow_nodes, pods, stores.as_deref()),
        ),
    }
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn bench(
    name: &str,
    quick: bool,
    services: Option<&str>,
    dataplanes: Option<&str>,
    (hollow_nodes, pods, stores): (Option<usize>, Option<usize>, Option<&str>),
) -> Result<()> {
    prereqs::ensure()?;
    match name {
        // Benchmarks of the rudder binary itself.
        "control" | "dns" | "ingress" | "pods" => {
            step(
                "cargo build --release",
                cargo().args([
                    "build",
                    "--release",
                    "-p",
                    "rudder-control",
                    "-p",
                    "rudder-benches",
                ]),
            )?;
            let release = target_dir().join("release");
            let out = workspace_root().join("target/bench").join(name);
            let mut cmd = Command::new(release.join("rudder-bench"));
            cmd.arg(name)
                .arg("--rudder")
                .arg(release.join("rudder"))
                .arg("--out")
                .arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            if let Some(n) = hollow_nodes {
                cmd.arg("--hollow-nodes").arg(n.to_string());
            }
            if let Some(n) = pods {
                cmd.arg("--pods").arg(n.to_string());
            }
            if let Some(stores) = stores {
                cmd.arg("--stores").arg(stores);
            }
            if name == "dns"
                && let Some(services) = services
            {
                cmd.arg("--services").arg(services);
            }
            step(&format!("rudder-bench {name}"), &mut cmd)
        }
        "forwarding" => {
            step(
                "cargo build --release",
                cargo().args(["build", "--release", "-p", "rudder-benches"]),
            )?;
            let out = workspace_root().join("target/bench/forwarding");
            let mut cmd = Command::new(target_dir().join("release/rudder-bench"));
            cmd.arg("forwarding").arg("--out").arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            if let Some(services) = services {
                cmd.arg("--services").arg(services);
            }
            if let Some(dataplanes) = dataplanes {
                cmd.arg("--dataplanes").arg(dataplanes);
            }
            step("rudder-bench forwarding", &mut cmd)
        }
        other => {
            bail!("unknown benchmark {other:?}; available: control, dns, forwarding, ingress, pods")
        }
    }
}

fn ci() -> Result<()> {
    let tools = prereqs::ensure()?;
    step("cargo fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    codegen::run(true)?;
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

/// The workspace root (xtask lives one level below it). `cargo run` tells the binary where its
/// manifest is at run time; the compile-time path is only the fallback, because two clones
/// sharing one `CARGO_TARGET_DIR` may run an xtask binary the other clone built.
fn workspace_root() -> std::path::PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
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
