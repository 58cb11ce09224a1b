//! A throw-away network of namespaces for tests and benchmarks: one "node" namespace that routes
//! between "pod" namespaces, wired the way rudder wires real pods.
//!
//! ```text
//!   pod ns rdr-<lab>-p0          node ns rdr-<lab>-node              pod ns rdr-<lab>-p1
//!   eth0 10.244.0.10/32  ── veth ──  p0   (route 10.244.0.10/32)  p1 ── veth ── eth0 10.244.0.11/32
//!   default via 169.254.1.1          169.254.1.1 on p0, p1; ip_forward, no rp_filter
//!                                    blackhole 10.96.0.0/12 and 10.244.0.0/16
//! ```
//!
//! Each pod has a /32 address and a default route through a link-local gateway address that
//! every host-side veth carries (the Calico/Cilium layout), so the node namespace routes every pod
//! packet and the TC hook on the host-side veth sees it. The node namespace has no route out:
//! nothing sent in a lab can leave the machine, and the blackhole routes drop any packet for an
//! unknown service or pod address.
//!
//! Everything is named `rdr-t<pid>x<seq>-…` (namespaces), `/sys/fs/bpf/rudder-t<pid>x<seq>` (pins)
//! and `/sys/fs/cgroup/unified/rudder-t<pid>x<seq>` (cgroup), removed on drop, and swept at the
//! next [`Lab::new`] if the process that made them died. Needs root and `ip` (iproute2).

use std::{
    fs,
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::command::run;

/// Service CIDR blackholed in the node namespace.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Cluster (pod) CIDR blackholed in the node namespace.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node's address on its uplink ([`Lab::add_uplink`]).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The outside client's address on the uplink.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// A second node's address on the uplink's segment ([`Lab::add_remote_pod`]).
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);
/// The second node's PodCIDR; the lab's own pods are in `10.244.0.0/24`.
pub const REMOTE_POD_CIDR: &str = "10.244.1.0/24";
/// Where cgroup v2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts like these).
fn cgroup2_root() -> PathBuf {
    crate::proxy::ebpf::cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A pod: its namespace, address and host-side interface in the node namespace.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Network namespace name.
    pub ns: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Host-side veth name (in the node namespace).
    pub host_if: String,
}

/// The lab. Dropping it removes everything it made.
#[derive(Debug)]
pub struct Lab {
    /// Unique name part, `t<pid>x<seq>`.
    pub id: String,
    /// Node namespace name.
    pub node: String,
    /// Pods, in creation order.
    pub pods: Vec<Pod>,
    /// bpffs directory for this lab's datapath.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory for processes that should go through socket-LB.
    pub cgroup: PathBuf,
    /// The outside client's namespace, once [`Lab::add_uplink`] made it.
    pub external: Option<Pod>,
    /// Pods on the second node ([`Lab::add_remote_pod`]).
    pub remote_pods: Vec<Pod>,
    /// The second node's namespace, once a remote pod exists.
    pub remote_node: Option<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

/// Runs `ip` with `args`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    run(None, "ip", args, None).map(drop)
}

/// Runs `cmd args` inside namespace `ns` (via `ip netns exec`), failing with its stderr.
pub fn exec(ns: &str, cmd: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    run(Some(ns), cmd, args, stdin)
}

/// Runs `f` on a thread that has entered namespace `ns`. Sockets made there stay in `ns`
/// wherever they are used later.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = fs::File::open(format!("/run/netns/{ns}"))?;
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

/// Makes `pod`'s namespace and wires it to the node namespace `node`: a veth, the pod's /32
/// address, a default route through the link-local gateway on the host side, and the node's
/// route to the pod.
fn wire_pod(node: &str, pod: &Pod) -> io::Result<()> {
    let (ns, host, ip_addr) = (&pod.ns, &pod.host_if, pod.ip);
    ip(&["netns", "add", ns])?;
    ip(&[
        "-n", node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip_addr}/32"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    // The pod's gateway address lives on every host-side veth, so ARP just works both ways.
    ip(&["-n", node, "addr", "add", "169.254.1.1/32", "dev", host])?;
    ip(&["-n", node, "link", "set", host, "up"])?;
    exec(
        node,
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{host}.rp_filter=0")],
        None,
    )?;
    ip(&[
        "-n",
        node,
        "route",
        "add",
        &format!("{ip_addr}/32"),
        "dev",
        host,
    ])?;
    Ok(())
}

/// Removes what crashed labs left behind (their process is gone).
fn sweep() {
    let alive = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix('t') else {
            return true;
        };
        let pid = rest.split('x').next().unwrap_or("");
        pid.parse::<u32>()
            .map(|p| PathBuf::from(format!("/proc/{p}")).exists())
            .unwrap_or(true)
    };
    if let Ok(list) = run(None, "ip", &["netns", "list"], None) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(id) = name.strip_prefix("rdr-").and_then(|r| r.split('-').next())
                && !alive(id)
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    for (dir, prefix) in [
        (PathBuf::from("/sys/fs/bpf"), "rudder-"),
        (cgroup2_root(), "rudder-"),
    ] {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix(prefix)
                && id.starts_with('t')
                && !alive(id)
            {
                let _ = fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_dir(entry.path()));
            }
        }
    }
}

impl Lab {
    /// Creates the node namespace. Needs root.
    pub fn new() -> io::Result<Self> {
        sweep();
        let id = format!(
            "t{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let node = format!("rdr-{id}-node");
        let lab = Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/rudder-{id}")),
            cgroup: cgroup2_root().join(format!("rudder-{id}")),
            node: node.clone(),
            id,
            pods: Vec::new(),
            external: None,
            remote_pods: Vec::new(),
            remote_node: None,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        };
        ip(&["netns", "add", &node])?;
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            exec(&node, "sysctl", &["-qw", &format!("{key}={value}")], None)?;
        }
        for cidr in [SERVICE_CIDR, CLUSTER_CIDR] {
            ip(&["-n", &node, "route", "add", "blackhole", cidr])?;
        }
        Ok(lab)
    }

    /// Adds a pod namespace wired to the node; its address is `10.244.0.(10 + index)`.
    pub fn add_pod(&mut self) -> io::Result<Pod> {
        let index = self.pods.len();
        let octet = u8::try_from(10 + index).map_err(|_| io::Error::other("too many pods"))?;
        let ip_addr = Ipv4Addr::new(10, 244, 0, octet);
        let pod = Pod {
            ns: format!("rdr-{}-p{index}", self.id),
            ip: ip_addr,
            host_if: format!("p{index}"),
        };
        wire_pod(&self.node, &pod)?;
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Adds the node's uplink: a veth `up0` in the node namespace with the node address
    /// [`NODE_IP`]/24, whose peer sits in a namespace standing for the world outside the node
    /// ([`EXTERNAL_IP`], no other routes). The returned [`Pod`] describes that outside client
    /// (`host_if` is the uplink). NodePort traffic comes in this way.
    pub fn add_uplink(&mut self) -> io::Result<Pod> {
        let ext = Pod {
            ns: format!("rdr-{}-ext", self.id),
            ip: EXTERNAL_IP,
            host_if: "up0".into(),
        };
        ip(&["netns", "add", &ext.ns])?;
        self.external = Some(ext.clone());
        ip(&[
            "-n", &self.node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
            "netns", &ext.ns,
        ])?;
        ip(&["-n", &ext.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ext.ns,
            "addr",
            "add",
            &format!("{EXTERNAL_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ext.ns, "link", "set", "eth0", "up"])?;
        // Frames from a wire carry complete checksums; a local veth sender would leave them to
        // "hardware" (CHECKSUM_PARTIAL), which is not what an uplink sees.
        exec(&ext.ns, "ethtool", &["-K", "eth0", "tx", "off"], None)?;
        ip(&[
            "-n",
            &self.node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "up0",
        ])?;
        ip(&["-n", &self.node, "link", "set", "up0", "up"])?;
        Ok(ext)
    }

    /// Adds a pod on a second node, `10.244.1.(10 + index)`. The first call turns the outside
    /// namespace into a switch: a bridge `br0` (which now carries [`EXTERNAL_IP`]) joins the
    /// node's uplink and the second node's (`rdr-<lab>-n2`, [`REMOTE_NODE_IP`]). Each node routes
    /// the other's PodCIDR via the other's address, flannel host-gw style, and the node keeps a
    /// managed neighbour entry for the second node (the kernel keeps it resolved, so XDP can
    /// forward to it). The second node runs no datapath of its own. Needs [`Lab::add_uplink`].
    ///
    /// Senders in the outside namespace and the remote pod have checksum offload off, as frames
    /// from a real wire would: the uplink's XDP program sees complete checksums. A node that
    /// sends frames back out of its uplink with XDP needs `Datapath::attach_veth_peer` on the
    /// outside namespace's `eth0`.
    pub fn add_remote_pod(&mut self) -> io::Result<Pod> {
        let ext = self
            .external
            .clone()
            .ok_or_else(|| io::Error::other("add_uplink before add_remote_pod"))?;
        let n2 = format!("rdr-{}-n2", self.id);
        if self.remote_node.is_none() {
            ip(&["netns", "add", &n2])?;
            self.remote_node = Some(n2.clone());
            let e = ext.ns.as_str();
            let subnet = format!("{EXTERNAL_IP}/24");
            ip(&["-n", e, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", e, "addr", "del", &subnet, "dev", "eth0"])?;
            ip(&["-n", e, "addr", "add", &subnet, "dev", "br0"])?;
            ip(&["-n", e, "link", "set", "eth0", "master", "br0"])?;
            ip(&[
                "-n", &n2, "link", "add", "up0", "type", "veth", "peer", "name", "n2", "netns", e,
            ])?;
            ip(&["-n", e, "link", "set", "n2", "master", "br0"])?;
            ip(&["-n", e, "link", "set", "n2", "up"])?;
            ip(&["-n", e, "link", "set", "br0", "up"])?;
            exec(e, "ethtool", &["-K", "br0", "tx", "off"], None)?;
            ip(&["-n", &n2, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &n2,
                "addr",
                "add",
                &format!("{REMOTE_NODE_IP}/24"),
                "dev",
                "up0",
            ])?;
            ip(&["-n", &n2, "link", "set", "up0", "up"])?;
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ] {
                exec(&n2, "sysctl", &["-qw", &format!("{key}={value}")], None)?;
            }
            let node_ip = NODE_IP.to_string();
            let remote_ip = REMOTE_NODE_IP.to_string();
            ip(&["-n", &n2, "route", "add", "10.244.0.0/24", "via", &node_ip])?;
            ip(&[
                "-n",
                &self.node,
                "route",
                "add",
                REMOTE_POD_CIDR,
                "via",
                &remote_ip,
            ])?;
            ip(&[
                "-n",
                &self.node,
                "neigh",
                "replace",
                &remote_ip,
                "dev",
                "up0",
                "managed",
                "extern_learn",
            ])?;
        }
        let index = self.remote_pods.len();
        let octet = u8::try_from(10 + index).map_err(|_| io::Error::other("too many pods"))?;
        let pod = Pod {
            ns: format!("rdr-{}-r{index}", self.id),
            ip: Ipv4Addr::new(10, 244, 1, octet),
            host_if: format!("r{index}"),
        };
        wire_pod(&n2, &pod)?;
        exec(&pod.ns, "ethtool", &["-K", "eth0", "tx", "off"], None)?;
        self.remote_pods.push(pod.clone());
        Ok(pod)
    }

    /// Replaces the node's blackhole route for the service CIDR with a route into a veth whose
    /// peer is down (which discards everything sent to it; `dummy` is not in every kernel). kube-proxy's `REJECT` for services
    /// without endpoints sits in the filter table's FORWARD chain, after routing, so a blackhole
    /// route would swallow those packets before the rule could answer; the iptables peer needs a
    /// route that reaches FORWARD. Nothing can leave either way. rudder's eBPF datapath refuses
    /// before routing and keeps the blackhole.
    pub fn route_services_to_sink(&self) -> io::Result<()> {
        ip(&[
            "-n",
            &self.node,
            "link",
            "add",
            "sink",
            "type",
            "veth",
            "peer",
            "name",
            "sink-peer",
        ])?;
        ip(&["-n", &self.node, "link", "set", "sink", "up"])?;
        ip(&[
            "-n",
            &self.node,
            "route",
            "replace",
            SERVICE_CIDR,
            "dev",
            "sink",
        ])
    }

    /// Creates this lab's cgroup (v2) and returns its path.
    pub fn make_cgroup(&self) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.cgroup)?;
        Ok(self.cgroup.clone())
    }

    /// Starts a TCP server in `pod` on `port`: each connection first gets `name\n`, then every
    /// line it sends is answered with `name\n` again (so one connection can ask many times).
    pub fn serve_tcp(&mut self, pod: &Pod, port: u16, name: &str) -> io::Result<()> {
        let listener = in_ns(&pod.ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))??;
        listener.set_nonblocking(true)?;
        let stop = self.stop.clone();
        let name = format!("{name}\n");
        self.servers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let name = name.clone();
                        let stop = stop.clone();
                        thread::spawn(move || answer(conn, &name, &stop));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        Ok(())
    }

    /// Starts a UDP server in `pod` on `port` answering every datagram with `name`.
    pub fn serve_udp(&mut self, pod: &Pod, port: u16, name: &str) -> io::Result<()> {
        let socket = in_ns(&pod.ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))??;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = self.stop.clone();
        let name = name.to_owned();
        self.servers.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(name.as_bytes(), peer);
                }
            }
        }));
        Ok(())
    }
}

fn answer(conn: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if writer.write_all(name.as_bytes()).is_err() {
        return;
    }
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(name.as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// A client connection made from inside a namespace that can ask its server for its name.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects from namespace `ns` to `to` and reads the greeting. Returns the client and the
    /// server's name.
    pub fn connect(ns: &str, to: SocketAddr) -> io::Result<(Self, String)> {
        let stream = in_ns(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut client = Self {
            reader: BufReader::new(stream),
        };
        let name = client.read_name()?;
        Ok((client, name))
    }

    /// Asks again on the same connection.
    pub fn ask(&mut self) -> io::Result<String> {
        self.reader.get_mut().write_all(b"?\n")?;
        self.read_name()
    }

    fn read_name(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end().to_owned())
    }
}

/// Sends one UDP datagram from namespace `ns` to `to` and returns the reply's text and source.
pub fn udp_ask(ns: &str, to: SocketAddr) -> io::Result<(String, SocketAddr)> {
    let socket = in_ns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.send_to(b"?", to)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// `GET path` over HTTP/1.1 from this process's namespace; returns the response body.
pub fn http_get(ip: &str, port: u16, path: &str) -> io::Result<String> {
    let addr: SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|_| io::Error::other(format!("bad address {ip}:{port}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // One write: a server reading the request line from one segment sees all of it.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    io::Write::write_all(&mut s, request.as_bytes())?;
    let mut out = String::new();
    io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
        for pod in self
            .pods
            .iter()
            .chain(&self.remote_pods)
            .chain(&self.external)
        {
            let _ = ip(&["netns", "del", &pod.ns]);
        }
        if let Some(n2) = &self.remote_node {
            let _ = ip(&["netns", "del", n2]);
        }
        let _ = ip(&["netns", "del", &self.node]);
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir(&self.cgroup);
    }
}
