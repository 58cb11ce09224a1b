//! The eBPF dataplane's user side: loads rudder's programs with aya, attaches them, and writes
//! the planner's operations into the maps.
//!
//! The object file is built from `ebpf/programs` by this crate's build script and embedded in the
//! binary, so a node needs no files besides `rudder` itself.
//!
//! Everything the kernel keeps lives under one bpffs directory (default `/sys/fs/bpf/rudder`):
//! the maps, pinned by name, and the attachments under `links/`. A restarted agent therefore
//! finds the same services, backends and connection-tracking entries, and replaces its programs
//! in place (TCX and XDP links are updated atomically), so established connections keep their backends
//! while the agent is down and after it comes back. [`Datapath::remove`] takes it all away.

use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, FromRawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLink, XdpMode},
    },
};
use rudder_ebpf_common::{
    Backend4, Config, Counter, CtEntry4, CtKey4, MaglevSmall, MaglevTable, Reason, Service,
    ServiceKey4,
};

use super::plan::{Op, Planner, Settings};

/// The compiled eBPF object (ELF for `bpfel-unknown-none`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rudder-ebpf"));

/// Where a node keeps its pins unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rudder";

/// The TC program for pods' host-side veths.
const TC_POD: &str = "rudder_from_pod";
const TC_TO_POD: &str = "rudder_to_pod";
const XDP_NODEPORT: &str = "rudder_xdp_nodeport";
const XDP_PASS: &str = "rudder_xdp_pass";
/// The socket-LB programs.
const SOCK: [&str; 3] = [
    "rudder_sock_connect4",
    "rudder_sock_sendmsg4",
    "rudder_sock_recvmsg4",
];

/// Errors from loading, attaching or programming the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// bpffs is not mounted and could not be mounted, or a pin directory could not be made.
    #[error("preparing {path}")]
    Bpffs {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An interface setting could not be written.
    #[error("setting {path}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The object could not be parsed or its maps could not be created or reused.
    #[error("loading the eBPF object (pinned maps from an incompatible version? remove {0})")]
    Load(String, #[source] Box<EbpfError>),
    /// A program or map named in the object is missing or of the wrong type.
    #[error("{0} is missing from the eBPF object or has the wrong type")]
    Missing(&'static str),
    /// The kernel refused to load or attach a program.
    #[error("program {name}: {what}")]
    Program {
        /// Program name.
        name: &'static str,
        /// What was being done.
        what: String,
        /// What the kernel said.
        #[source]
        source: Box<ProgramError>,
    },
    /// Pinning or reading a pinned link failed.
    #[error("link {path}")]
    Link {
        /// The pin.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map read or write failed.
    #[error("map {map}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<MapError>,
    },
}

/// A loaded datapath: programs in the kernel, typed handles on its maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey4, Service>,
    backends: HashMap<MapData, u32, Backend4>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    maglev_small: HashMap<MapData, u32, MaglevSmall>,
    ct: HashMap<MapData, CtKey4, CtEntry4>,
    reasons: PerCpuArray<MapData, Counter>,
    pod_links: HashMap<MapData, u32, u32>,
}

fn prog_err(name: &'static str, what: impl Into<String>) -> impl FnOnce(ProgramError) -> Error {
    let what = what.into();
    move |source| Error::Program {
        name,
        what,
        source: Box::new(source),
    }
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, Error> {
    let map = ebpf.take_map(name).ok_or(Error::Missing(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Mounts bpffs on `/sys/fs/bpf` if nothing is mounted there, and creates `dir`.
fn prepare_bpffs(dir: &Path) -> Result<(), Error> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    });
    if !mounted {
        let target = c"/sys/fs/bpf";
        // SAFETY: static NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::Bpffs {
                path: "/sys/fs/bpf".into(),
                source: io::Error::last_os_error(),
            });
        }
    }
    fs::create_dir_all(dir.join("links")).map_err(|source| Error::Bpffs {
        path: dir.into(),
        source,
    })
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), if it is: socket-LB attaches to its root.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, ty) = (f.next(), f.next()?, f.next()?);
        (ty == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+): what
/// socket-LB compares with when it is limited to one namespace.
pub fn netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2); the descriptor is owned (and closed) right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the option writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The index of interface `name` in this thread's network namespace.
fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Whether an interface with this index exists in this thread's network namespace.
fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
}

/// Seconds on `CLOCK_MONOTONIC`, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_s() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// Every pinned map with its key size, value size and capacity, as this build defines them.
fn map_layouts() -> [(&'static str, usize, usize, u32); 11] {
    use rudder_ebpf_common::{
        AFFINITY_ENTRIES, AffinityEntry, AffinityKey4, CT_ENTRIES, MAX_BACKENDS, MAX_POD_LINKS,
        MAX_SERVICES, SockRevEntry4, SockRevKey4,
    };
    use std::mem::size_of;
    [
        (
            "RUDDER_SERVICES4",
            size_of::<ServiceKey4>(),
            size_of::<Service>(),
            MAX_SERVICES,
        ),
        ("RUDDER_BACKENDS4", 4, size_of::<Backend4>(), MAX_BACKENDS),
        ("RUDDER_MAGLEV", 4, size_of::<MaglevTable>(), MAX_SERVICES),
        (
            "RUDDER_MAGLEV_SMALL",
            4,
            size_of::<MaglevSmall>(),
            MAX_SERVICES,
        ),
        (
            "RUDDER_CT4",
            size_of::<CtKey4>(),
            size_of::<CtEntry4>(),
            CT_ENTRIES,
        ),
        (
            "RUDDER_AFFINITY4",
            size_of::<AffinityKey4>(),
            size_of::<AffinityEntry>(),
            AFFINITY_ENTRIES,
        ),
        (
            "RUDDER_SOCK_REVNAT4",
            size_of::<SockRevKey4>(),
            size_of::<SockRevEntry4>(),
            CT_ENTRIES,
        ),
        ("RUDDER_REASONS", 4, size_of::<Counter>(), Reason::COUNT),
        (
            "RUDDER_SERVICE_COUNTERS",
            4,
            size_of::<Counter>(),
            MAX_SERVICES,
        ),
        ("RUDDER_POD_LINKS", 4, 4, MAX_POD_LINKS),
        ("RUDDER_CONFIG", 4, size_of::<Config>(), 1),
    ]
}

/// Removes pinned maps an older build left with another layout (key or value size, capacity),
/// so the loader creates them afresh instead of failing. Their state (conntrack, affinity,
/// counters) is lost, which is logged; maps whose layout did not change keep theirs. Programs
/// still attached keep using the old maps until the new programs replace them.
fn drop_stale_pins(pin_dir: &Path) {
    for (name, key, value, entries) in map_layouts() {
        let pin = pin_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let found = MapData::from_pin(&pin).and_then(|m| m.info()).map(|info| {
            (
                info.key_size() as usize,
                info.value_size() as usize,
                info.max_entries(),
            )
        });
        match found {
            Ok(layout) if layout == (key, value, entries) => {}
            other => {
                tracing::warn!(
                    map = name,
                    found = ?other.as_ref().ok(),
                    expected = ?(key, value, entries),
                    "pinned map from another build has a different layout; starting it afresh (its entries are lost)"
                );
                if let Err(e) = fs::remove_file(&pin) {
                    tracing::warn!(map = name, error = %e, "removing the stale pin");
                }
            }
        }
    }
}

impl Datapath {
    /// Loads the programs and opens (or creates) the pinned maps under `pin_dir`, then writes
    /// `config`. Needs root. Nothing is attached yet.
    pub fn open(pin_dir: &Path, config: Config) -> Result<Self, Error> {
        prepare_bpffs(pin_dir)?;
        drop_stale_pins(pin_dir);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|e| Error::Load(pin_dir.display().to_string(), Box::new(e)))?;
        let prog: &mut SchedClassifier = program(&mut ebpf, TC_POD)?;
        prog.load().map_err(prog_err(TC_POD, "load"))?;
        let prog: &mut SchedClassifier = program(&mut ebpf, TC_TO_POD)?;
        prog.load().map_err(prog_err(TC_TO_POD, "load"))?;
        for name in [XDP_NODEPORT, XDP_PASS] {
            let prog: &mut Xdp = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name, "load"))?;
        }
        for name in SOCK {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(prog_err(name, "load"))?;
        }
        let mut cfg: Array<MapData, Config> = take(&mut ebpf, "RUDDER_CONFIG")?;
        cfg.set(0, config, 0).map_err(map_err("RUDDER_CONFIG"))?;
        Ok(Self {
            services: take(&mut ebpf, "RUDDER_SERVICES4")?,
            backends: take(&mut ebpf, "RUDDER_BACKENDS4")?,
            maglev: take(&mut ebpf, "RUDDER_MAGLEV")?,
            maglev_small: take(&mut ebpf, "RUDDER_MAGLEV_SMALL")?,
            ct: take(&mut ebpf, "RUDDER_CT4")?,
            reasons: take(&mut ebpf, "RUDDER_REASONS")?,
            pod_links: take(&mut ebpf, "RUDDER_POD_LINKS")?,
            ebpf,
            pin_dir: pin_dir.into(),
        })
    }

    /// A planner that knows what the (possibly pinned, pre-existing) maps hold.
    pub fn planner(&self, settings: Settings) -> Planner {
        let services: Vec<(ServiceKey4, Service)> =
            self.services.iter().filter_map(Result::ok).collect();
        let backends: Vec<(u32, Backend4)> = self.backends.iter().filter_map(Result::ok).collect();
        Planner::recover(settings, services, backends)
    }

    /// Attaches the pod program to TC ingress of `ifname` (a pod's host-side veth). If a previous
    /// agent attached one there, it is replaced atomically.
    ///
    /// Also sets `accept_local` on the interface: replies of NodePort flows leave the pod
    /// program with the node's own address as their source, which the kernel would otherwise
    /// drop as martians before routing them out of the uplink.
    pub fn attach_pod(&mut self, ifname: &str) -> Result<(), Error> {
        let sysctl = format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local");
        fs::write(&sysctl, "1").map_err(|source| Error::Sysctl {
            path: sysctl.into(),
            source,
        })?;
        self.attach_tc(TC_POD, TcAttachType::Ingress, "tc", ifname)?;
        // Replies of flows whose backend is not a pod of this node (the node itself, another
        // node) reach the client pod through its veth's egress: their source is restored there.
        self.attach_tc(TC_TO_POD, TcAttachType::Egress, "tc-egress", ifname)?;
        // Listed last: packets are only redirected to a pod whose own program is in place.
        // Best effort: a pod whose link is not listed is still served, through the stack.
        match ifindex(ifname) {
            Ok(index) => {
                if let Err(e) = self.pod_links.insert(index, 1, 0) {
                    tracing::warn!(ifname, error = %e, "pod link not listed for direct delivery");
                }
            }
            Err(e) => tracing::warn!(ifname, error = %e, "pod link not listed for direct delivery"),
        }
        Ok(())
    }

    /// Attaches TC program `name` to `direction` of `ifname`, pinned as `links/<tag>-<ifname>`;
    /// a program a previous agent attached there is replaced atomically through its pin.
    fn attach_tc(
        &mut self,
        name: &'static str,
        direction: TcAttachType,
        tag: &str,
        ifname: &str,
    ) -> Result<(), Error> {
        let pin = self.pin_dir.join("links").join(format!("{tag}-{ifname}"));
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let attach_err = |what: String| prog_err(name, what);
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link =
                    SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| Error::Link {
                        path: pin.clone(),
                        source: Box::new(e),
                    });
                match link.and_then(|l| {
                    prog.attach_to_link(l)
                        .map_err(attach_err(format!("replace on {ifname}")))
                }) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        // The old link is defunct (its interface went away): start afresh.
                        let _ = fs::remove_file(&pin);
                        None
                    }
                }
            }
            Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Link {
                    path: pin,
                    source: Box::new(e),
                });
            }
        };
        let was_replaced = replaced.is_some();
        let id = match replaced {
            Some(id) => id,
            None => prog
                .attach_with_options(
                    ifname,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(attach_err(format!("attach to {ifname}")))?,
        };
        let link = prog.take_link(id).map_err(attach_err("take link".into()))?;
        pin_link(link, &pin, was_replaced)?;
        Ok(())
    }

    /// Removes pod links whose interface is gone from the direct-delivery list (the pod program
    /// only ever redirects to listed interfaces, and a stale index could one day name another
    /// device).
    fn prune_pod_links(&mut self) -> Result<(), Error> {
        let gone: Vec<u32> = self
            .pod_links
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !interface_exists(*i))
            .collect();
        for index in gone {
            ignore_missing(self.pod_links.remove(&index)).map_err(map_err("RUDDER_POD_LINKS"))?;
        }
        Ok(())
    }

    /// Attaches the NodePort program to XDP of `ifname` (the node's uplink), in native (driver)
    /// mode when the driver has it, else generic. A program a previous agent attached there is
    /// replaced atomically through its pinned link.
    ///
    /// When the uplink is a veth (namespace labs, nodes in containers), the NodePort program's
    /// `XDP_TX` to other nodes reaches the veth's other end only if an XDP program runs there
    /// too: see [`Datapath::attach_veth_peer`].
    pub fn attach_uplink(&mut self, ifname: &str) -> Result<(), Error> {
        self.attach_xdp(XDP_NODEPORT, "xdp", ifname)
    }

    /// Attaches a program that passes every packet to XDP of `ifname`, the other end of a veth
    /// uplink. In native mode a veth delivers frames that XDP sends back out (`XDP_TX`, remote
    /// NodePort flows) only to a peer that runs an XDP program itself; turning on GRO there is
    /// not enough on the kernels we run. Detach with [`Datapath::detach_veth_peer`].
    pub fn attach_veth_peer(&mut self, ifname: &str) -> Result<(), Error> {
        self.attach_xdp(XDP_PASS, "xdp-pass", ifname)
    }

    /// Detaches the pass-through program from `ifname`.
    pub fn detach_veth_peer(&mut self, ifname: &str) -> Result<(), Error> {
        unpin(
            &self
                .pin_dir
                .join("links")
                .join(format!("xdp-pass-{ifname}")),
        )
    }

    fn attach_xdp(&mut self, name: &'static str, tag: &str, ifname: &str) -> Result<(), Error> {
        let pin = self.pin_dir.join("links").join(format!("{tag}-{ifname}"));
        let prog: &mut Xdp = program(&mut self.ebpf, name)?;
        let attach_err = |what: String| prog_err(name, what);
        let replaced = match PinnedLink::from_pin(&pin) {
            Ok(old) => XdpLink::try_from(FdLink::from(old))
                .ok()
                .and_then(|l| prog.attach_to_link(l).ok()),
            Err(_) => None,
        };
        if replaced.is_none() {
            let _ = fs::remove_file(&pin);
        }
        let was_replaced = replaced.is_some();
        let id = match replaced {
            Some(id) => id,
            None => match prog.attach(ifname, XdpMode::Driver) {
                Ok(id) => id,
                Err(_) => prog
                    .attach(ifname, XdpMode::Skb)
                    .map_err(attach_err(format!("attach to {ifname}")))?,
            },
        };
        let link = prog.take_link(id).map_err(attach_err("take link".into()))?;
        pin_link(link, &pin, was_replaced)
    }

    /// Detaches the NodePort program from `ifname`.
    pub fn detach_uplink(&mut self, ifname: &str) -> Result<(), Error> {
        let pin = self.pin_dir.join("links").join(format!("xdp-{ifname}"));
        unpin(&pin)
    }

    /// Detaches the pod program from `ifname` (when the pod goes away).
    pub fn detach_pod(&mut self, ifname: &str) -> Result<(), Error> {
        if let Ok(index) = ifindex(ifname) {
            ignore_missing(self.pod_links.remove(&index)).map_err(map_err("RUDDER_POD_LINKS"))?;
        }
        self.prune_pod_links()?;
        let egress = unpin(
            &self
                .pin_dir
                .join("links")
                .join(format!("tc-egress-{ifname}")),
        );
        let pin = self.pin_dir.join("links").join(format!("tc-{ifname}"));
        unpin(&pin)?;
        egress
    }

    /// Attaches the socket-LB programs to the cgroup v2 directory `cgroup` (the cgroup2 root on a
    /// node). Programs of a previous agent are replaced: the new ones are attached first (cgroup
    /// BPF links always allow several programs), so no connect() slips through untranslated.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), Error> {
        let dir = fs::File::open(cgroup).map_err(|source| Error::Bpffs {
            path: cgroup.into(),
            source,
        })?;
        let tag = format!("{:08x}", fnv(cgroup.as_os_str().as_encoded_bytes()));
        for name in SOCK {
            let pin = self
                .pin_dir
                .join("links")
                .join(format!("cgroup-{tag}-{name}"));
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let err = prog_err(name, format!("attach to {}", cgroup.display()));
            let id = prog
                .attach(dir.as_fd(), CgroupAttachMode::Single)
                .map_err(err)?;
            let link = prog.take_link(id).map_err(prog_err(name, "take link"))?;
            let fd: FdLink = link.try_into().map_err(|e: LinkError| Error::Link {
                path: pin.clone(),
                source: Box::new(e),
            })?;
            // bpffs names may not contain dots.
            let tmp = pin.with_file_name(format!("cgroup-{tag}-{name}-new"));
            let _ = fs::remove_file(&tmp);
            fd.pin(&tmp).map_err(|e| Error::Link {
                path: tmp.clone(),
                source: Box::new(e),
            })?;
            unpin(&pin)?;
            fs::rename(&tmp, &pin).map_err(|e| Error::Link {
                path: pin.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Writes the planner's operations, in order.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), Error> {
        for op in ops {
            match op {
                Op::Backend(id, b) => self
                    .backends
                    .insert(id, b, 0)
                    .map_err(map_err("RUDDER_BACKENDS4"))?,
                Op::Maglev(id, t) => self
                    .maglev
                    .insert(id, t.as_ref(), 0)
                    .map_err(map_err("RUDDER_MAGLEV"))?,
                Op::MaglevSmall(id, t) => self
                    .maglev_small
                    .insert(id, t.as_ref(), 0)
                    .map_err(map_err("RUDDER_MAGLEV_SMALL"))?,
                Op::Service(k, s) => self
                    .services
                    .insert(k, s, 0)
                    .map_err(map_err("RUDDER_SERVICES4"))?,
                Op::RemoveService(k) => {
                    ignore_missing(self.services.remove(k)).map_err(map_err("RUDDER_SERVICES4"))?
                }
                Op::RemoveMaglev(id) => {
                    ignore_missing(self.maglev.remove(id)).map_err(map_err("RUDDER_MAGLEV"))?
                }
                Op::RemoveMaglevSmall(id) => ignore_missing(self.maglev_small.remove(id))
                    .map_err(map_err("RUDDER_MAGLEV_SMALL"))?,
                Op::RemoveBackend(id) => {
                    ignore_missing(self.backends.remove(id)).map_err(map_err("RUDDER_BACKENDS4"))?
                }
            }
        }
        Ok(())
    }

    /// Removes conntrack entries that expired or whose backend is gone. Returns how many.
    pub fn gc(&mut self) -> usize {
        let now = monotonic_s();
        let stale: Vec<CtKey4> = self
            .ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| {
                e.expires < now
                    || match self.backends.get(&e.backend_id, 0) {
                        Ok(b) => b.service_id != e.service_id,
                        Err(_) => true,
                    }
            })
            .map(|(k, _)| k)
            .collect();
        stale.iter().filter(|k| self.ct.remove(k).is_ok()).count()
    }

    /// Sums of the per-CPU reason counters, by reason name.
    pub fn counters(&self) -> Vec<(&'static str, Counter)> {
        Reason::ALL
            .iter()
            .map(|(reason, name)| (*name, self.counter(*reason)))
            .collect()
    }

    /// The counter of one reason, summed over CPUs.
    pub fn counter(&self, reason: Reason) -> Counter {
        self.reasons
            .get(&(reason as u32), 0)
            .map(|per_cpu| {
                per_cpu.iter().fold(Counter::default(), |a, c| Counter {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                })
            })
            .unwrap_or_default()
    }

    /// Runs the pod program once on `packet` (an Ethernet frame) with `BPF_PROG_TEST_RUN`,
    /// against the live maps, and returns the TC verdict and the packet as the program left it.
    /// Nothing is sent anywhere: this is how the datapath's unit tests feed crafted packets.
    pub fn test_run(&self, packet: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        self.test_run_program(TC_POD, packet)
    }

    /// Runs the uplink (XDP NodePort) program once on `packet`, as [`Datapath::test_run`] does;
    /// returns the XDP action and the packet.
    pub fn test_run_uplink(&self, packet: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        self.test_run_program(XDP_NODEPORT, packet)
    }

    /// Runs the pod program `repeat` times on `packet` in the kernel and returns the mean time
    /// of one run in nanoseconds, as `BPF_PROG_TEST_RUN` measures it. The kernel reuses one
    /// packet buffer, so every run after the first sees the first run's output.
    pub fn time_pod_program(&self, packet: &[u8], repeat: u32) -> io::Result<u32> {
        self.run_program(TC_POD, packet, repeat)
            .map(|(_, _, ns)| ns)
    }

    fn test_run_program(&self, name: &str, packet: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        self.run_program(name, packet, 1)
            .map(|(verdict, out, _)| (verdict, out))
    }

    fn run_program(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> io::Result<(u32, Vec<u8>, u32)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = self
            .ebpf
            .program(name)
            .ok_or_else(|| io::Error::other(format!("program {name} missing")))?;
        let fd = prog.fd().map_err(io::Error::other)?;
        let raw = fd.as_fd().as_raw_fd();
        // Room for programs that grow the packet (the ICMP refusal).
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(raw).map_err(io::Error::other)?,
            data_size_in: u32::try_from(packet.len()).map_err(io::Error::other)?,
            data_size_out: u32::try_from(out.len()).map_err(io::Error::other)?,
            data_in: packet.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is a valid BPF_PROG_TEST_RUN attribute block whose pointers reference
        // `packet` and `out`, both alive and sized as declared for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        out.truncate(usize::try_from(attr.data_size_out).unwrap_or(0));
        Ok((attr.retval, out, attr.duration))
    }

    /// Detaches everything and deletes every pin under `pin_dir`: programs leave the kernel once
    /// this process drops them, maps with them. Used by `rudder proxy --cleanup` and tests.
    pub fn remove(pin_dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(pin_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `bpf(2)` command number of `BPF_PROG_TEST_RUN`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|_| Error::Missing(name))
}

/// Keeps an attachment alive beyond this process by pinning its link at `pin`. A link that
/// replaced the program of an already pinned one keeps that pin.
fn pin_link<L: TryInto<FdLink, Error = LinkError>>(
    link: L,
    pin: &Path,
    already_pinned: bool,
) -> Result<(), Error> {
    let link_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Link {
        path: pin.into(),
        source: e,
    };
    let fd: FdLink = link.try_into().map_err(|e| link_err(Box::new(e)))?;
    if !already_pinned {
        fd.pin(pin).map_err(|e| link_err(Box::new(e)))?;
    }
    Ok(())
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Removes a link pin; the link goes away with its last reference.
fn unpin(pin: &Path) -> Result<(), Error> {
    match fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Link {
            path: pin.into(),
            source: Box::new(e),
        }),
        _ => Ok(()),
    }
}

/// FNV-1a, for short stable names derived from paths.
fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_a_bpf_elf() {
        assert!(OBJECT.len() > 64, "the eBPF object is empty: was it built?");
        assert_eq!(&OBJECT[..4], b"\x7fELF");
        // e_machine 247 = EM_BPF
        assert_eq!(u16::from_le_bytes([OBJECT[18], OBJECT[19]]), 247);
    }

    /// Needs root and a BPF-capable kernel: run by `cargo xtask ci`.
    #[test]
    #[ignore = "needs root and BPF; run by cargo xtask ci"]
    fn pinned_maps_of_another_layout_are_started_afresh() {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/rudder-test-stale-{}",
            std::process::id()
        ));
        prepare_bpffs(&dir).unwrap();
        // What an older build left: a conntrack map with 32-byte entries, fewer reason counters.
        pin_map(&dir.join("RUDDER_CT4"), 1, 16, 32, 16);
        pin_map(&dir.join("RUDDER_REASONS"), 6, 4, 16, 12);
        let loaded = Datapath::open(&dir, Config::default());
        let info = |name: &str| {
            let info = MapData::from_pin(dir.join(name)).unwrap().info().unwrap();
            (info.value_size(), info.max_entries())
        };
        let layouts = loaded
            .is_ok()
            .then(|| (info("RUDDER_CT4"), info("RUDDER_REASONS")));
        let removed = Datapath::remove(&dir);
        loaded.expect("load the datapath over stale pins");
        removed.unwrap();
        assert_eq!(
            layouts,
            Some((
                (size_of::<CtEntry4>() as u32, rudder_ebpf_common::CT_ENTRIES),
                (size_of::<Counter>() as u32, Reason::COUNT)
            ))
        );
    }

    /// Creates a map with the raw `bpf(2)` call and pins it at `path`.
    fn pin_map(path: &Path, map_type: u32, key: u32, value: u32, entries: u32) {
        let mut attr = [0u32; 32];
        attr[..4].copy_from_slice(&[map_type, key, value, entries]);
        // SAFETY: BPF_MAP_CREATE (0) reads the zero-padded attribute block it is given.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), 128) };
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut pin = [0u64; 16];
        pin[0] = c_path.as_ptr() as u64;
        pin[1] = fd as u64;
        // SAFETY: BPF_OBJ_PIN (6) reads the path pointer and fd; both outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), 128) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: the fd was created above and is closed once; the pin keeps the map.
        unsafe { libc::close(fd as i32) };
    }

    #[test]
    #[ignore = "needs root and BPF; run by cargo xtask ci"]
    fn programs_pass_the_verifier() {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/rudder-test-verifier-{}",
            std::process::id()
        ));
        let loaded = Datapath::open(&dir, Config::default());
        let removed = Datapath::remove(&dir);
        let datapath = loaded.expect("load the datapath");
        removed.expect("remove pins");
        assert!(datapath.counters().iter().all(|(_, c)| c.packets == 0));
    }
}
