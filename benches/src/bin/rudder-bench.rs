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
    /// The apiserver on the embedded store vs etcd: creates/s, gets/s, list and watch latency.
    Control {
        /// The rudder binary to benchmark.
        #[arg(long)]
        rudder: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench/control")]
        out: PathBuf,
        /// Smaller sizes (a few seconds per subject).
        #[arg(long)]
        quick: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Control { rudder, out, quick } => {
            let sizes = if quick {
                rudder_benches::control::Sizes::quick()
            } else {
                rudder_benches::control::Sizes::full()
            };
            let results = rudder_benches::control::run(&rudder, &out, sizes).await?;
            println!("{}", results.markdown("etcd"));
            println!("written to {}", out.display());
        }
    }
    Ok(())
}
