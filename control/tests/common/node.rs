//! A `rudder server` with its node agent on a private pod network, for tests that run pods:
//! a bridge `rdrb<pid>x<slot>`, a /23 cluster CIDR `10.252.x.0/23` (the node gets the first
//! /24), a service CIDR `10.253.x.0/24`, pod namespaces `rdr-t<pid>x<slot>-…` and eBPF pins
//! under `/sys/fs/bpf/rudder-t<pid>x<slot>`. Ranges no real cluster uses; everything is removed
//! on drop, also when the test fails.

use std::path::{Path, PathBuf};

use super::Rudder;

/// A server whose node `n1` is Ready.
pub struct Node {
    /// The server (dropped first, so nothing recreates what the cleanup removes).
    pub server: Rudder,
    /// Third octet of the cluster and service ranges.
    pub octet: u32,
    /// Service CIDR.
    pub services: String,
    /// Prefix of the pod namespaces.
    pub netns_prefix: String,
    /// The eBPF datapath's pins.
    pub pin_dir: PathBuf,
    _cleanup: Cleanup,
}

impl Node {
    /// Starts the server with the agent (plus `extra` flags) and waits for node `n1` to be Ready.
    /// `slot` tells apart nodes of tests running at once in one test binary (0..=1).
    pub fn start(data: &Path, slot: u32, extra: &[&str]) -> Self {
        let pid = std::process::id();
        let octet = ((pid % 60) * 4 + slot * 2) % 240;
        let cluster = format!("10.252.{octet}.0/23");
        let services = format!("10.253.{octet}.0/24");
        let bridge = format!("rdrb{pid}x{slot}");
        let netns_prefix = format!("rdr-t{pid}x{slot}-");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/rudder-t{pid}x{slot}"));
        let cleanup = Cleanup {
            data_dir: data.to_owned(),
            bridge: bridge.clone(),
            netns_prefix: netns_prefix.clone(),
            routes: vec![cluster.clone(), services.clone()],
            pin_dir: pin_dir.clone(),
        };
        // DNS runs when the test says where (`--dns-addr`).
        let dns = extra.contains(&"--dns-addr");
        let mut args: Vec<String> = [
            "--disable",
            if dns { "ingress" } else { "dns,ingress" },
            "--node-name",
            "n1",
            "--cluster-cidr",
            &cluster,
            "--service-cidr",
            &services,
            "--pod-bridge",
            &bridge,
            "--pod-netns-prefix",
            &netns_prefix,
            "--bpf-pin-dir",
            &pin_dir.display().to_string(),
            "--kubelet-port",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let server = Rudder::start(data, &args);
        server.wait_for("node n1 to be Ready", || {
            server.kubectl(&["get", "node", "n1"]).status.success()
                && server.ok(&[
                    "get",
                    "node",
                    "n1",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ]) == "True"
        });
        Self {
            server,
            octet,
            services,
            netns_prefix,
            pin_dir,
            _cleanup: cleanup,
        }
    }

    /// Names of this node's pod namespaces that exist now.
    pub fn sandboxes(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&self.netns_prefix))
            .collect()
    }
}

/// Removes what the test's node made, without relying on the server.
struct Cleanup {
    data_dir: PathBuf,
    bridge: String,
    netns_prefix: String,
    routes: Vec<String>,
    pin_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        rudder_node::runtime::process::kill_all_under(&self.data_dir.join("agent"));
        rudder_node::runtime::cgroups::remove_pods_under(&self.data_dir.join("agent"));
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.netns_prefix) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        for r in &self.routes {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", "blackhole", r])
                .status();
        }
        // Unpinning the links detaches the programs (socket-LB included).
        let _ = rudder_node::proxy::ebpf::Datapath::remove(&self.pin_dir);
    }
}
