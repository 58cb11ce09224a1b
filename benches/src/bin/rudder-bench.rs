//! `rudder-bench`: the benchmark runner behind `cargo xtask bench`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "rudder benchmarks; results go to <out>/results.json and <out>/report.md")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The apiserver on the embedded store vs etcd (creates/s, gets/s, list and watch latency),
    /// then the scheduler and controllers with hollow nodes (pods bound per second,
    /// create-to-bound latency, controller lag, memory). With --hollow-nodes or --pods only the
    /// scheduling part runs.
    Control {
        /// The rudder binary to benchmark.
        #[arg(long)]
        rudder: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench/control")]
        out: PathBuf,
        /// Smaller sizes (a few seconds per subject; 100 hollow nodes, 3000 pods).
        #[arg(long)]
        quick: bool,
        /// Hollow nodes for the scheduling part (default 1000, 100 with --quick).
        #[arg(long)]
        hollow_nodes: Option<usize>,
        /// Pods for the scheduling part (default 30000, 3000 with --quick).
        #[arg(long)]
        pods: Option<usize>,
        /// Stores to measure (comma-separated): embedded, etcd.
        #[arg(long, value_delimiter = ',', default_value = "embedded,etcd")]
        stores: Vec<String>,
    },
    /// Pod start latency (binding to Ready) and agent memory on a two-node `rudder lab`, with
    /// the eBPF and the iptables dataplane. Needs root.
    Pods {
        /// The rudder binary to benchmark.
        #[arg(long)]
        rudder: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench/pods")]
        out: PathBuf,
        /// Fewer pods.
        #[arg(long)]
        quick: bool,
    },
    /// Cluster DNS: dnsperf against `rudder dns` and against Knot DNS serving the same records
    /// from a generated zone, at 1,000 and 10,000 Services (queries per second and per CPU core,
    /// latency, memory per Service and endpoint).
    Dns {
        /// The rudder binary to benchmark (its `server` holds the objects, its `dns` answers).
        #[arg(long)]
        rudder: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench/dns")]
        out: PathBuf,
        /// 1,000 Services only and 5 s runs.
        #[arg(long)]
        quick: bool,
        /// Service counts (comma-separated; default 1000,10000, or 1000 with --quick).
        #[arg(long, value_delimiter = ',')]
        services: Vec<usize>,
        /// Subjects (comma-separated): rudder, knot.
        #[arg(long, value_delimiter = ',', default_value = "rudder,knot")]
        subjects: Vec<String>,
    },
    /// Ingress: wrk through `rudder ingress` and through nginx-light configured for the same
    /// routes and backends (requests per second, latency, CPU per request, upstream connection
    /// reuse, memory with 1,000 routes).
    Ingress {
        /// The rudder binary to benchmark (its `server` holds the objects, its `ingress` proxies).
        #[arg(long)]
        rudder: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench/ingress")]
        out: PathBuf,
        /// 100 routes, 16 connections, 5 s runs.
        #[arg(long)]
        quick: bool,
        /// Routes (default 1000, or 100 with --quick).
        #[arg(long)]
        routes: Option<usize>,
        /// Subjects (comma-separated): rudder, nginx.
        #[arg(long, value_delimiter = ',', default_value = "rudder,nginx")]
        subjects: Vec<String>,
    },
    /// Service forwarding through none / iptables / eBPF (TC, socket-LB) at several service
    /// counts, in network namespaces. Needs root.
    Forwarding {
        /// Output directory.
        #[arg(long, default_value = "target/bench/forwarding")]
        out: PathBuf,
        /// Service counts (comma-separated).
        #[arg(long, value_delimiter = ',')]
        services: Vec<usize>,
        /// Subjects (comma-separated): none, iptables, ipvs, nftables, ebpf-tc, ebpf-xdp, socket-lb.
        #[arg(long, value_delimiter = ',')]
        dataplanes: Vec<String>,
        /// Shorter runs and fewer service counts (minutes, not tens of minutes).
        #[arg(long)]
        quick: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Control {
            rudder,
            out,
            quick,
            hollow_nodes,
            pods,
            stores,
        } => {
            use rudder_benches::{control::Sizes, scheduling::Scale};
            let (sizes, mut scale) = if quick {
                (Sizes::quick(), Scale::quick())
            } else {
                (Sizes::full(), Scale::full())
            };
            let only_scheduling = hollow_nodes.is_some() || pods.is_some();
            scale.hollow_nodes = hollow_nodes.unwrap_or(scale.hollow_nodes);
            scale.pods = pods.unwrap_or(scale.pods);
            let sizes = (!only_scheduling).then_some(sizes);
            let results =
                rudder_benches::control::run(&rudder, &out, &stores, sizes, Some(scale)).await?;
            println!("{}", results.markdown("etcd"));
            println!("written to {}", out.display());
        }
        Bench::Pods { rudder, out, quick } => {
            let sizes = if quick {
                rudder_benches::pods::Sizes::quick()
            } else {
                rudder_benches::pods::Sizes::full()
            };
            let results = tokio::task::spawn_blocking(move || {
                rudder_benches::pods::run(&rudder, &out, sizes).map(|r| (r, out))
            })
            .await??;
            println!("{}", results.0.markdown("goal"));
            println!("written to {}", results.1.display());
        }
        Bench::Dns {
            rudder,
            out,
            quick,
            services,
            subjects,
        } => {
            use rudder_benches::dns::Options;
            let mut options = if quick {
                Options::quick()
            } else {
                Options::full()
            };
            if !services.is_empty() {
                options.services = services;
            }
            options.subjects = subjects;
            rudder_benches::dns::run(&rudder, &out, &options).await?;
            println!("{}", std::fs::read_to_string(out.join("report.md"))?);
            println!("written to {}", out.display());
        }
        Bench::Ingress {
            rudder,
            out,
            quick,
            routes,
            subjects,
        } => {
            use rudder_benches::ingress::Options;
            let mut options = if quick {
                Options::quick()
            } else {
                Options::full()
            };
            if let Some(routes) = routes {
                options.routes = routes;
            }
            options.subjects = subjects;
            rudder_benches::ingress::run(&rudder, &out, &options).await?;
            println!("{}", std::fs::read_to_string(out.join("report.md"))?);
            println!("written to {}", out.display());
        }
        Bench::Forwarding {
            out,
            services,
            dataplanes,
            quick,
        } => {
            let mut options = if quick {
                rudder_benches::forwarding::Options::quick()
            } else {
                rudder_benches::forwarding::Options::full()
            };
            if !services.is_empty() {
                options.services = services;
            }
            if !dataplanes.is_empty() {
                options.dataplanes = dataplanes;
            }
            let results = tokio::task::spawn_blocking(move || {
                rudder_benches::forwarding::run(&out, &options).map(|r| (r, out))
            })
            .await??;
            println!("{}", std::fs::read_to_string(results.1.join("report.md"))?);
            println!("written to {}", results.1.display());
        }
    }
    Ok(())
}
