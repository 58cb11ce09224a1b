//! The proxy as one object, whichever dataplane runs it: what `rudder proxy` (standalone, fed
//! from a YAML file) and the node agent (fed by apiserver watches) drive.
//!
//! - eBPF: loads the programs (pins under `pin_dir`), attaches the pod program to the listed
//!   host-side interfaces, XDP NodePort to the listed uplinks and, if asked, socket-LB to a
//!   cgroup; each sync writes the planner's minimal map diff.
//! - iptables: each sync is one `iptables-restore --noflush` of kube-proxy's chains.
//!
//! Both install a blackhole route for the service CIDR first, so a service address that no rule
//! matches is dropped on this node rather than sent out of its default route. (With iptables this
//! also means a service without endpoints times out instead of being REJECTed, since kube-proxy's
//! REJECT sits behind routing; the eBPF datapath refuses before routing.)
//!
//! Stopping the proxy leaves the dataplane in place (established connections keep working and a
//! restarted proxy takes over); [`Proxy::cleanup`] removes it, like `kube-proxy --cleanup`.

use std::{
    io,
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use rudder_ebpf_common::{Config, HAIRPIN_ADDR};

use super::{
    ebpf::{self, Datapath},
    iptables::Iptables,
    model::DesiredState,
    plan::{Algorithm, Planner, Settings},
};

/// Which dataplane programs the services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// rudder's eBPF programs.
    Ebpf,
    /// kube-proxy-compatible iptables rules.
    Iptables,
}

impl std::str::FromStr for Dataplane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ebpf" => Ok(Self::Ebpf),
            "iptables" => Ok(Self::Iptables),
            other => Err(format!(
                "unknown dataplane {other:?} (expected ebpf or iptables)"
            )),
        }
    }
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The dataplane.
    pub dataplane: Dataplane,
    /// This node's addresses (NodePorts are served on them).
    pub node_ips: Vec<Ipv4Addr>,
    /// Pod host-side interfaces to attach the eBPF pod program to.
    pub interfaces: Vec<String>,
    /// Uplink interfaces to attach the XDP NodePort program to (eBPF only).
    pub uplinks: Vec<String>,
    /// cgroup v2 directory for socket-LB (eBPF only).
    pub cgroup: Option<PathBuf>,
    /// Socket-LB only for sockets of the proxy's own network namespace (Cilium's
    /// `bpf-lb-sock-hostns-only`); pods are then served by the pod program on their veths.
    pub socket_lb_host_only: bool,
    /// bpffs directory for pins (eBPF only).
    pub pin_dir: PathBuf,
    /// Backend selection (eBPF only).
    pub algorithm: Algorithm,
    /// Service CIDR to blackhole; `None` skips the route (tests that manage routes themselves).
    pub service_cidr: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            dataplane: Dataplane::Ebpf,
            node_ips: Vec::new(),
            interfaces: Vec::new(),
            uplinks: Vec::new(),
            cgroup: None,
            socket_lb_host_only: false,
            pin_dir: PathBuf::from(ebpf::DEFAULT_PIN_DIR),
            algorithm: Algorithm::Maglev,
            service_cidr: Some("10.96.0.0/12".into()),
        }
    }
}

enum Engine {
    Ebpf {
        datapath: Box<Datapath>,
        planner: Planner,
    },
    Iptables(Iptables),
}

/// A running proxy.
pub struct Proxy {
    engine: Engine,
}

/// What one sync did.
#[derive(Clone, Copy, Debug)]
pub struct SyncReport {
    /// Map operations (eBPF) or 1 (one iptables-restore).
    pub writes: usize,
    /// Time from the desired state to the dataplane holding it.
    pub elapsed: Duration,
}

fn err(what: &str) -> impl FnOnce(ebpf::Error) -> io::Error + '_ {
    move |e| {
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        io::Error::other(message)
    }
}

impl Proxy {
    /// Sets up the dataplane (needs root).
    pub fn start(config: &ProxyConfig) -> io::Result<Self> {
        if let Some(cidr) = &config.service_cidr {
            crate::command::run(None, "ip", &["route", "replace", "blackhole", cidr], None)?;
        }
        let engine = match config.dataplane {
            Dataplane::Iptables => Engine::Iptables(Iptables::new(None)),
            Dataplane::Ebpf => {
                let datapath_config = Config {
                    hairpin_addr: u32::from_ne_bytes(HAIRPIN_ADDR),
                    netns_cookie: if config.socket_lb_host_only {
                        ebpf::netns_cookie()?
                    } else {
                        0
                    },
                    ..Config::default()
                };
                let mut datapath = Datapath::open(&config.pin_dir, datapath_config)
                    .map_err(err("loading the datapath"))?;
                for ifname in &config.interfaces {
                    datapath
                        .attach_pod(ifname)
                        .map_err(err("attaching to an interface"))?;
                }
                for ifname in &config.uplinks {
                    datapath
                        .attach_uplink(ifname)
                        .map_err(err("attaching XDP to an uplink"))?;
                }
                if let Some(cgroup) = &config.cgroup {
                    datapath
                        .attach_cgroup(cgroup)
                        .map_err(err("attaching socket-LB"))?;
                }
                let planner = datapath.planner(Settings {
                    node_ips: config.node_ips.clone(),
                    algorithm: config.algorithm,
                });
                Engine::Ebpf {
                    datapath: Box::new(datapath),
                    planner,
                }
            }
        };
        Ok(Self { engine })
    }

    /// Brings the dataplane to `state`.
    pub fn sync(&mut self, state: &DesiredState) -> io::Result<SyncReport> {
        let started = Instant::now();
        let writes = match &mut self.engine {
            Engine::Iptables(iptables) => {
                iptables.sync(state)?;
                1
            }
            Engine::Ebpf { datapath, planner } => {
                let ops = planner.sync(state).map_err(io::Error::other)?;
                datapath.apply(&ops).map_err(err("writing maps"))?;
                ops.len()
            }
        };
        Ok(SyncReport {
            writes,
            elapsed: started.elapsed(),
        })
    }

    /// Attaches the pod program to a new pod's host-side interface (eBPF; iptables needs
    /// nothing per pod).
    pub fn attach_pod(&mut self, ifname: &str) -> io::Result<()> {
        match &mut self.engine {
            Engine::Ebpf { datapath, .. } => datapath
                .attach_pod(ifname)
                .map_err(err("attaching to a pod interface")),
            Engine::Iptables(_) => Ok(()),
        }
    }

    /// Forgets a pod interface that is going away (its pinned link).
    pub fn detach_pod(&mut self, ifname: &str) -> io::Result<()> {
        match &mut self.engine {
            Engine::Ebpf { datapath, .. } => datapath
                .detach_pod(ifname)
                .map_err(err("detaching from a pod interface")),
            Engine::Iptables(_) => Ok(()),
        }
    }

    /// Sweeps stale conntrack entries (eBPF); returns how many went.
    pub fn gc(&mut self) -> usize {
        match &mut self.engine {
            Engine::Ebpf { datapath, .. } => datapath.gc(),
            Engine::Iptables(_) => 0,
        }
    }

    /// Removes what [`Proxy::start`] and syncs installed for `config`'s dataplane.
    pub fn cleanup(config: &ProxyConfig) -> io::Result<()> {
        match config.dataplane {
            Dataplane::Ebpf => Datapath::remove(&config.pin_dir),
            Dataplane::Iptables => Iptables::new(None).cleanup(),
        }?;
        if let Some(cidr) = &config.service_cidr {
            // Absent already is fine.
            let _ = crate::command::run(None, "ip", &["route", "del", "blackhole", cidr], None);
        }
        Ok(())
    }
}
