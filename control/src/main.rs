//! `rudder`: one binary, k3s-style, with a subcommand per role. This file only parses flags and
//! starts things; the work lives in the libraries.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rudder_control::{api::allocator::Cidr, server};

/// rudder: a compact Kubernetes-style cluster whose Service networking runs as eBPF programs.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (apiserver on the embedded store, or on etcd).
    ///
    /// Writes an admin kubeconfig to DATA_DIR/kubeconfig and a node join token to DATA_DIR/token.
    Server(ServerArgs),
    /// Print the version and exit.
    Version,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, credentials and kubeconfig live.
    #[arg(long, default_value = "/var/lib/rudder")]
    data_dir: PathBuf,
    /// etcd client URLs (comma-separated); without it the embedded store is used.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Address the apiserver listens on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port of the apiserver.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// Pod network; each node gets a /24 from it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: Cidr,
    /// Service ClusterIP range.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: Cidr,
    /// Address advertised to nodes and pods (default: the bind address, or the host's first
    /// global IPv4 address).
    #[arg(long)]
    advertise_address: Option<std::net::Ipv4Addr>,
    /// Service dataplane of the local node agent.
    #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "iptables"])]
    dataplane: String,
    /// Parts not to start: any of agent, dns, ingress.
    #[arg(long, value_delimiter = ',', value_parser = ["agent", "dns", "ingress"])]
    disable: Vec<String>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("rudder {}", env!("CARGO_PKG_VERSION")),
        Command::Server(args) => {
            init_logging();
            let missing: Vec<&str> = ["agent", "dns", "ingress"]
                .into_iter()
                .filter(|part| !args.disable.iter().any(|d| d == part))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    parts = missing.join(","),
                    dataplane = args.dataplane,
                    "these parts are not part of this build yet; running the control plane only"
                );
            }
            let config = server::Config {
                data_dir: args.data_dir,
                etcd_endpoints: args.etcd_endpoints,
                bind_address: args.bind_address,
                secure_port: args.secure_port,
                service_cidr: args.service_cidr,
                cluster_cidr: args.cluster_cidr,
                advertise_address: args.advertise_address,
            };
            let started = std::time::Instant::now();
            let server = server::Server::start(config)
                .await
                .context("starting the server")?;
            tracing::info!(
                url = server.url,
                store = server.state.store.backend(),
                kubeconfig = %server.kubeconfig.display(),
                startup_ms = started.elapsed().as_millis() as u64,
                "rudder apiserver ready"
            );
            tokio::select! {
                result = server.serve() => result.context("serving")?,
                _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
            }
        }
    }
    Ok(())
}
