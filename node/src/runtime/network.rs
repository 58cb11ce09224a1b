//! The pod network on one node (flannel host-gw style): a Linux bridge whose address is the
//! first address of the node's PodCIDR, and per pod a network namespace joined to the bridge by a
//! veth pair.
//!
//! ```text
//!  node namespace                                   pod namespace rdrpod-<uid>
//!  rudder0 10.244.1.1/24 ── rv<uid> (bridge port) ── eth0 10.244.1.7/24, default via 10.244.1.1
//!  blackhole 10.244.0.0/16, blackhole 10.96.0.0/12
//!  10.244.2.0/24 via <node 2's address>   (one route per other node)
//! ```
//!
//! Pod → pod traffic on one node is switched by the bridge; anything else goes to the gateway
//! (the bridge address) and is routed by the node. The host-side veth is a bridge port, and the
//! eBPF pod program attaches to it (TC ingress sees every packet a pod sends). The blackhole
//! routes are less specific than the node's own /24 and the routes to other nodes' /24s, so an
//! address of the cluster or service CIDR that nothing owns is dropped on this machine rather than
//! sent out of its default route.
//!
//! Addresses are handed out host-local style: one file per address under `<state>/ipam/`, named
//! after the address and holding the pod UID, created with `O_EXCL`. The files survive an agent
//! restart, so running pods keep their addresses and a restarted agent adopts them.

use std::{
    fs,
    io::{self, Write},
    net::Ipv4Addr,
    path::PathBuf,
};

use crate::command::run;

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A network command (`ip`, `sysctl`) failed.
    #[error("{0}")]
    Command(#[source] io::Error),
    /// Reading or writing the address files failed.
    #[error("address bookkeeping in {path}")]
    Ipam {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Every address of the PodCIDR is taken.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// The PodCIDR is not a usable IPv4 range.
    #[error("pod CIDR {0:?} is not an IPv4 range of /16 to /30")]
    BadCidr(String),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IPv4 range `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `10.244.1.0/24`; host bits are cleared.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::BadCidr(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The `n`th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(n))
    }

    /// Number of addresses in the range.
    pub fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    /// The gateway: the first usable address, carried by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Told about pod interfaces as they come and go: where the eBPF proxy attaches its pod program.
pub trait LinkHook: Send + Sync {
    /// A pod's host-side interface is up (also called again for existing sandboxes after an
    /// agent restart). An error fails the sandbox, which is retried.
    fn added(&self, ifname: &str) -> std::io::Result<()>;
    /// A pod's host-side interface is about to go.
    fn removed(&self, ifname: &str);
}

/// An optional [`LinkHook`] in a [`NetworkConfig`].
#[derive(Clone, Default)]
pub struct LinkHooks(pub Option<std::sync::Arc<dyn LinkHook>>);

impl std::fmt::Debug for LinkHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "LinkHooks(set)"
        } else {
            "LinkHooks(none)"
        })
    }
}

/// How the node's pod network is laid out.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Bridge name (`rudder0`).
    pub bridge: String,
    /// This node's PodCIDR.
    pub pod_cidr: Cidr,
    /// Prefix of pod network namespace names (`rdrpod-`); the pod UID's first 12 hex digits follow.
    pub netns_prefix: String,
    /// Where the address files live.
    pub state_dir: PathBuf,
    /// Ranges blackholed on the node (cluster and service CIDRs), so they never leak out.
    pub blackholes: Vec<String>,
    /// Who hears about pod interfaces.
    pub hooks: LinkHooks,
}

/// One pod's network: its namespace, address and host-side veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Host-side veth (a bridge port).
    pub host_if: String,
}

impl Sandbox {
    /// Path of the namespace file, for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// The node's pod network.
#[derive(Clone, Debug)]
pub struct Network {
    config: NetworkConfig,
}

/// First 12 hex digits of a UID (dashes dropped): short, unique enough and valid in link names.
pub fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Whether this network namespace has a link named `name`. Asks the kernel (`if_nametoindex`)
/// rather than `/sys/class/net`: an agent started with `nsenter --net` (the multi-node lab) still
/// sees the host's sysfs, which lists the host's links.
/// The MAC address of a pod's `eth0`: `0a:58` and the pod's IPv4 address, as OVN-Kubernetes
/// does. Addresses are reused as soon as a pod is gone; with a MAC that follows the address, the
/// node's neighbour entry for a recycled address (kept REACHABLE for up to ~45 s by the old pod's
/// traffic) still points at the right pod. A random MAC made the new pod unreachable from the
/// node, probes included, until that entry expired.
pub fn pod_mac(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn link_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated string that outlives the call; the call only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn ip(args: &[&str]) -> Result<()> {
    run(None, "ip", args, None)
        .map(drop)
        .map_err(Error::Command)
}

fn ip_batch(netns: Option<&str>, script: &str) -> Result<()> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    run(None, "ip", &args, Some(script))
        .map(drop)
        .map_err(Error::Command)
}

impl Network {
    /// Creates (or adopts) the bridge with the gateway address, enables forwarding and installs
    /// the blackhole routes. Idempotent.
    pub fn setup(config: NetworkConfig) -> Result<Self> {
        let br = &config.bridge;
        if !link_exists(br) {
            ip(&["link", "add", br, "type", "bridge"])?;
        }
        let gw = format!("{}/{}", config.pod_cidr.gateway(), config.pod_cidr.prefix);
        let mut script = format!("addr replace {gw} dev {br}\nlink set {br} up\n");
        // A blackhole as specific as the node's own range would replace its bridge route.
        for cidr in config
            .blackholes
            .iter()
            .filter(|c| Cidr::parse(c).ok() != Some(config.pod_cidr))
        {
            script.push_str(&format!("route replace blackhole {cidr}\n"));
        }
        ip_batch(None, &script)?;
        // The bridge is where pods' packets enter the stack. Replies of NodePort flows carry
        // the node's own address as their source once the pod program has translated them
        // back; `accept_local` keeps the kernel from dropping them as martians.
        let accept_local = format!("net/ipv4/conf/{br}/accept_local");
        for key in [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/rp_filter",
            accept_local.as_str(),
        ] {
            let value = if key.ends_with("rp_filter") { "0" } else { "1" };
            fs::write(PathBuf::from("/proc/sys").join(key), value)
                .map_err(|e| Error::Command(io::Error::new(e.kind(), format!("{key}: {e}"))))?;
        }
        let ipam = config.state_dir.join("ipam");
        fs::create_dir_all(&ipam).map_err(|source| Error::Ipam {
            path: ipam.display().to_string(),
            source,
        })?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The names a pod's sandbox gets.
    pub fn names(&self, uid: &str) -> (String, String) {
        let short = short_uid(uid);
        (
            format!("{}{short}", self.config.netns_prefix),
            format!("rv{short}"),
        )
    }

    /// Creates the pod's namespace, veth and address. If the pod already has a sandbox (an
    /// agent restart), returns it unchanged.
    pub fn create_sandbox(&self, uid: &str) -> Result<Sandbox> {
        if let Some(existing) = self.find_sandbox(uid)? {
            if let Some(hook) = &self.config.hooks.0 {
                hook.added(&existing.host_if).map_err(Error::Command)?;
            }
            return Ok(existing);
        }
        let (netns, host_if) = self.names(uid);
        let addr = self.allocate(uid)?;
        let result = self.wire(&netns, &host_if, addr).and_then(|()| {
            self.config
                .hooks
                .0
                .as_ref()
                .map_or(Ok(()), |hook| hook.added(&host_if).map_err(Error::Command))
        });
        if result.is_err() {
            if let Some(hook) = &self.config.hooks.0 {
                hook.removed(&host_if);
            }
            let _ = ip(&["netns", "del", &netns]);
            let _ = ip(&["link", "del", &host_if]);
            self.release(uid);
        }
        result.map(|()| Sandbox {
            netns,
            ip: addr,
            host_if,
        })
    }

    fn wire(&self, netns: &str, host_if: &str, addr: Ipv4Addr) -> Result<()> {
        let br = &self.config.bridge;
        let cidr = self.config.pod_cidr;
        ip_batch(
            None,
            &format!(
                "netns add {netns}\n\
                 link add {host_if} type veth peer name eth0 netns {netns}\n\
                 link set {host_if} master {br} up\n"
            ),
        )?;
        ip_batch(
            Some(netns),
            &format!(
                "link set lo up\n\
                 link set eth0 address {}\n\
                 addr add {addr}/{} dev eth0\n\
                 link set eth0 up\n\
                 route add default via {}\n",
                pod_mac(addr),
                cidr.prefix,
                cidr.gateway()
            ),
        )?;
        // A pod that had this address a moment ago may still be in the node's neighbour table;
        // its MAC is the same (see `pod_mac`), but a FAILED or INCOMPLETE entry would hold back
        // the first packets.
        ip_batch(None, &format!("neigh flush to {addr} dev {br}\n"))
    }

    /// The pod's sandbox if its namespace and address exist.
    pub fn find_sandbox(&self, uid: &str) -> Result<Option<Sandbox>> {
        let (netns, host_if) = self.names(uid);
        if !PathBuf::from("/run/netns").join(&netns).exists() {
            return Ok(None);
        }
        Ok(self
            .address_of(uid)?
            .map(|ip| Sandbox { netns, ip, host_if }))
    }

    /// Removes the pod's namespace (its veth goes with it) and frees its address. The pod's
    /// processes must have stopped, or the namespace lives on until they do.
    pub fn remove_sandbox(&self, uid: &str) -> Result<()> {
        self.remove_by_short_uid(&short_uid(uid))
    }

    /// Namespaces with this node's prefix, by short UID: what a restarted agent finds.
    pub fn existing_sandboxes(&self) -> Vec<String> {
        fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(&self.config.netns_prefix)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Removes a sandbox found by [`Network::existing_sandboxes`] (a pod that no longer exists).
    pub fn remove_by_short_uid(&self, short: &str) -> Result<()> {
        let netns = format!("{}{short}", self.config.netns_prefix);
        let host_if = format!("rv{short}");
        if let Some(hook) = &self.config.hooks.0 {
            hook.removed(&host_if);
        }
        if PathBuf::from("/run/netns").join(&netns).exists() {
            ip(&["netns", "del", &netns])?;
        }
        if link_exists(&host_if) {
            let _ = ip(&["link", "del", &host_if]);
        }
        for (path, owner) in self.leases() {
            if short_uid(&owner) == short {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Removes the bridge and the blackhole routes (node teardown).
    pub fn teardown(&self) -> Result<()> {
        let br = &self.config.bridge;
        if link_exists(br) {
            ip(&["link", "del", br])?;
        }
        for cidr in &self.config.blackholes {
            let _ = ip(&["route", "del", "blackhole", cidr]);
        }
        let _ = fs::remove_dir_all(self.config.state_dir.join("ipam"));
        Ok(())
    }

    fn leases(&self) -> Vec<(PathBuf, String)> {
        fs::read_dir(self.config.state_dir.join("ipam"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let owner = fs::read_to_string(e.path()).ok()?;
                Some((e.path(), owner.trim().to_owned()))
            })
            .collect()
    }

    fn address_of(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self.leases().into_iter().find_map(|(path, owner)| {
            (owner == uid)
                .then(|| path.file_name()?.to_str()?.parse().ok())
                .flatten()
        }))
    }

    fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        let cidr = self.config.pod_cidr;
        let dir = self.config.state_dir.join("ipam");
        // .0 is the network, .1 the gateway, the last the broadcast address.
        for n in 2..cidr.size() - 1 {
            let addr = cidr.nth(n);
            let path = dir.join(addr.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(uid.as_bytes())
                        .map_err(|source| Error::Ipam {
                            path: path.display().to_string(),
                            source,
                        })?;
                    return Ok(addr);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(Error::Ipam {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        Err(Error::Exhausted(cidr.to_string()))
    }

    fn release(&self, uid: &str) {
        for (path, owner) in self.leases() {
            if owner == uid {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let c = Cidr::parse("10.244.1.77/24").ok();
        assert_eq!(
            c,
            Some(Cidr {
                network: Ipv4Addr::new(10, 244, 1, 0),
                prefix: 24
            })
        );
        assert_eq!(c.map(|c| c.gateway()), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.map(|c| c.size()), Some(256));
        for bad in [
            "10.244.1.0",
            "10.244.1.0/8",
            "10.244.1.0/31",
            "x/24",
            "10.0.0.0/a",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_macs_follow_the_address() {
        assert_eq!(pod_mac(Ipv4Addr::new(10, 244, 1, 17)), "0a:58:0a:f4:01:11");
    }

    #[test]
    fn short_uids_are_link_name_safe() {
        assert_eq!(
            short_uid("3F2504E0-4F89-11D3-9A0C-0305E82C3301"),
            "3f2504e04f89"
        );
        assert_eq!(short_uid("x"), "");
    }

    #[test]
    fn addresses_are_handed_out_once_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network {
            config: NetworkConfig {
                bridge: "unused".into(),
                pod_cidr: Cidr {
                    network: Ipv4Addr::new(10, 250, 0, 0),
                    prefix: 30,
                },
                netns_prefix: "x".into(),
                state_dir: dir.path().into(),
                blackholes: vec![],
                hooks: LinkHooks::default(),
            },
        };
        fs::create_dir_all(dir.path().join("ipam")).unwrap();
        // A /30 has one usable pod address: .2 (.1 is the gateway, .3 broadcast).
        assert_eq!(net.allocate("a").ok(), Some(Ipv4Addr::new(10, 250, 0, 2)));
        assert!(matches!(net.allocate("b"), Err(Error::Exhausted(_))));
        assert_eq!(
            net.address_of("a").ok().flatten(),
            Some(Ipv4Addr::new(10, 250, 0, 2))
        );
        net.release("a");
        assert_eq!(net.allocate("b").ok(), Some(Ipv4Addr::new(10, 250, 0, 2)));
    }
}
