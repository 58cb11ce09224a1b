//! Types shared by rudder's eBPF programs (kernel side) and the node agent (user side).
//!
//! Everything here is `#[repr(C)]`, `Copy`, padded explicitly and has no dependencies, so the
//! same definitions compile for `bpfel-unknown-none` and for the host. With the `user` feature
//! every map type also implements [`aya::Pod`] so the agent can read and write the maps.
//!
//! Addresses and ports in map keys and values are stored in **network byte order**, exactly as
//! they appear in packets, so the datapath never byte-swaps on the hot path. User space converts
//! with `u32::from_ne_bytes(ip.octets())` and `port.to_be()`.
//!
//! IPv4 types carry a `4` suffix (`ServiceKey4`, `Backend4`, `CtKey4`); IPv6 gets parallel maps
//! with 16-byte addresses later. Service ids, backend ids, Maglev tables, counters and drop
//! reasons are family-independent and shared.
//!
//! The maps (names are the pinned file names under `/sys/fs/bpf/rudder/`):
//!
//! | map | kind | key → value |
//! |---|---|---|
//! | `RUDDER_SERVICES4` | hash | [`ServiceKey4`] → [`Service`] |
//! | `RUDDER_BACKENDS4` | hash | backend id (`u32`) → [`Backend4`] |
//! | `RUDDER_MAGLEV` | hash, no prealloc | service id (`u32`) → [`MaglevTable`] |
//! | `RUDDER_MAGLEV_SMALL` | hash, no prealloc | service id (`u32`) → [`MaglevSmall`] |
//! | `RUDDER_CT4` | LRU hash | [`CtKey4`] → [`CtEntry4`] |
//! | `RUDDER_AFFINITY4` | LRU hash | [`AffinityKey4`] → [`AffinityEntry`] |
//! | `RUDDER_SOCK_REVNAT4` | LRU hash | [`SockRevKey4`] → [`SockRevEntry4`] |
//! | `RUDDER_REASONS` | per-CPU array | [`Reason`] → [`Counter`] |
//! | `RUDDER_SERVICE_COUNTERS` | per-CPU array | service id → [`Counter`] |
//! | `RUDDER_POD_LINKS` | hash, no prealloc | host-side veth ifindex (`u32`) → `1` (`u32`) |
//! | `RUDDER_CONFIG` | array, 1 entry | `0` → [`Config`] |
#![no_std]

/// Slots in each service's Maglev lookup table: a prime, 16381 like Cilium's default, so that
/// removing one of `N` backends moves about `1/N` of the new flows and no others.
pub const MAGLEV_TABLE_SIZE: usize = 16381;

/// Slots in the small Maglev table of a service with at most [`MAGLEV_SMALL_MAX_BACKENDS`]
/// backends: a prime giving each backend at least 100 slots, which keeps Maglev's balance and
/// minimal disruption, in 4 KiB instead of 64 KiB. Most Services have a handful of pods, so
/// this is what keeps 10,000 Services from costing 640 MB of kernel memory.
pub const MAGLEV_SMALL_SIZE: usize = 1021;

/// Most backends a service may have and still use a small Maglev table.
pub const MAGLEV_SMALL_MAX_BACKENDS: usize = 10;

/// Most frontends (service key entries) a node holds; service ids are below this.
pub const MAX_SERVICES: u32 = 65_536;

/// Most backends a node holds.
pub const MAX_BACKENDS: u32 = 262_144;

/// Most pod links (host-side veths) a node's datapath delivers to directly.
pub const MAX_POD_LINKS: u32 = 4096;

/// Default conntrack size (entries; each flow uses two: forward and reply).
pub const CT_ENTRIES: u32 = 262_144;

/// Default session-affinity table size.
pub const AFFINITY_ENTRIES: u32 = 65_536;

/// Source address that hairpin traffic (a pod reaching itself through its own service) is
/// rewritten to, so the pod sees a peer that is not itself. Link-local, never routed off a node;
/// Cilium uses the same idea (169.254.42.1).
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// What happened to a packet. Each value indexes the per-CPU reason counters, so the numbering
/// is part of the kernel/user contract: append new reasons, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not service traffic: passed on untouched.
    Pass = 0,
    /// A packet to a service was translated to a backend (new or existing flow).
    Forward = 1,
    /// A reply from a backend was translated back to the service address.
    ReplyNat = 2,
    /// Dropped: the IP or L4 header is cut short or inconsistent.
    Malformed = 3,
    /// Dropped: an IP fragment addressed to a service (fragments are not tracked yet).
    Fragment = 4,
    /// Refused: the service has no usable backend (TCP RST or ICMP port unreachable sent back).
    NoBackend = 5,
    /// Dropped: a service was matched but the packet could not be rewritten.
    RewriteFailed = 6,
    /// A socket's destination was rewritten at connect/sendmsg time (socket-LB).
    SocketLb = 7,
    /// A new flow was tracked in conntrack.
    CtNew = 8,
    /// Conntrack could not store a new flow (the flow is still forwarded, statelessly).
    CtFull = 9,
    /// Counted besides `forward`: XDP NodePort started a flow to a backend on another node,
    /// source-translated to the node address and a port of [`SNAT_PORTS`].
    RemoteBackend = 10,
    /// Counted besides the packet's reason: the packet was delivered straight into a pod on this
    /// node (`bpf_redirect_peer`), skipping the node's IP stack.
    PeerRedirect = 11,
    /// Dropped: XDP translated a packet for another node or an outside client but the node
    /// has no route to it or has not resolved the next hop's link address yet (the agent keeps
    /// managed neighbour entries for the other nodes so this stays rare).
    NoRoute = 12,
    /// Refused: every SNAT port tried for a new remote NodePort flow was taken (the packet went
    /// on untranslated and the node refused it).
    SnatFull = 13,
}

impl Reason {
    /// Number of reasons, the size of the counters array.
    pub const COUNT: u32 = 14;

    /// Every reason with its stable lower-case name, in index order.
    pub const ALL: [(Reason, &'static str); Self::COUNT as usize] = [
        (Reason::Pass, "pass"),
        (Reason::Forward, "forward"),
        (Reason::ReplyNat, "reply_nat"),
        (Reason::Malformed, "malformed"),
        (Reason::Fragment, "fragment"),
        (Reason::NoBackend, "no_backend"),
        (Reason::RewriteFailed, "rewrite_failed"),
        (Reason::SocketLb, "socket_lb"),
        (Reason::CtNew, "ct_new"),
        (Reason::CtFull, "ct_full"),
        (Reason::RemoteBackend, "remote_backend"),
        (Reason::PeerRedirect, "peer_redirect"),
        (Reason::NoRoute, "no_route"),
        (Reason::SnatFull, "snat_full"),
    ];
}

/// Per-CPU packet and byte counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (the length the hook reports).
    pub bytes: u64,
}

/// Datapath-wide settings written by the agent before it attaches anything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Address used as the source of hairpin traffic (network order); see [`HAIRPIN_ADDR`].
    pub hairpin_addr: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// Non-zero: socket-LB programs skip processes whose network namespace cookie differs from
    /// this one (used by tests and the namespace lab so a program on a shared cgroup only serves
    /// its own node). Zero: serve every namespace.
    pub netns_cookie: u64,
}

/// IP protocol numbers used in keys.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP.
    pub const ICMP: u8 = 1;
}

/// A frontend: a service address, port and protocol (ClusterIP:port, NodeIP:nodePort, or an
/// external/LoadBalancer IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey4 {
    /// Frontend address (network order).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// Reserved, zero.
    pub pad: u8,
}

/// `Service::flags`: pick backends with `bpf_get_prandom_u32` instead of the Maglev flow hash.
pub const SVC_RANDOM: u32 = 1;
/// `Service::flags`: a NodePort/external frontend (XDP may SNAT to remote backends).
pub const SVC_EXTERNAL: u32 = 2;
/// `Service::flags`: the service's Maglev table is the small one (`RUDDER_MAGLEV_SMALL`).
pub const SVC_SMALL_TABLE: u32 = 4;

/// What a frontend balances over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Service id: indexes the Maglev table and per-service counters; `< MAX_SERVICES`.
    pub id: u32,
    /// Number of backends new flows may choose. Zero: refuse (RST / ICMP unreachable).
    pub count: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; zero means no affinity.
    pub affinity_timeout: u32,
    /// [`SVC_RANDOM`], [`SVC_EXTERNAL`].
    pub flags: u32,
}

/// `Backend4::flags`: the backend runs on this node.
pub const BACKEND_LOCAL: u8 = 1;

/// One backend of one service. Backend ids are never shared between services and are not
/// reused soon after deletion, so a stale conntrack or affinity entry can only miss, never
/// point at somebody else's backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend4 {
    /// Backend (pod) address (network order).
    pub addr: u32,
    /// Backend port (network order).
    pub port: u16,
    /// [`BACKEND_LOCAL`].
    pub flags: u8,
    /// Reserved, zero.
    pub pad: u8,
    /// The service id this backend belongs to.
    pub service_id: u32,
}

/// A service's Maglev lookup table: slot → backend id.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaglevTable(pub [u32; MAGLEV_TABLE_SIZE]);

/// A small service's Maglev lookup table ([`MAGLEV_SMALL_SIZE`] slots): slot → backend id.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaglevSmall(pub [u32; MAGLEV_SMALL_SIZE]);

impl core::fmt::Debug for MaglevSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "MaglevSmall([{}, {}, {}, ...])",
            self.0[0], self.0[1], self.0[2]
        )
    }
}

impl core::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "MaglevTable([{}, {}, {}, ...])",
            self.0[0], self.0[1], self.0[2]
        )
    }
}

/// Source ports XDP NodePort uses when it translates a flow to a backend on another node
/// (first..=last, host order). They lie above Linux's default ephemeral range (32768–60999), so
/// they do not clash with the node's own connections; each backend address and port can hold
/// this many flows from one node address at a time.
pub const SNAT_PORTS: (u16, u16) = (61_000, 65_535);

/// How many ports XDP tries for a new SNAT flow before it refuses it ([`Reason::SnatFull`]).
pub const SNAT_TRIES: u32 = 16;

/// `CtKey4::dir`: the key is the client's original tuple (client → frontend).
pub const CT_FORWARD: u8 = 0;
/// `CtKey4::dir`: the key is the reply tuple as it leaves the backend (backend → client).
pub const CT_REPLY: u8 = 1;

/// Conntrack key: a 5-tuple as seen in packets, plus direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// Source port (network order; ICMP: echo id).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`CT_FORWARD`] or [`CT_REPLY`].
    pub dir: u8,
    /// Reserved, zero.
    pub pad: u16,
}

/// `CtEntry4::flags`: a SYN was seen from the client.
pub const CT_SYN: u8 = 1;
/// `CtEntry4::flags`: a FIN was seen (either side).
pub const CT_FIN: u8 = 2;
/// `CtEntry4::flags`: a RST was seen (either side).
pub const CT_RST: u8 = 4;
/// `CtEntry4::flags`: a packet was seen from the backend (the flow is established).
pub const CT_SEEN_REPLY: u8 = 8;

/// Conntrack lifetimes in seconds (as Cilium's defaults).
pub mod ct_lifetime {
    /// TCP connection seen in both directions.
    pub const TCP_ESTABLISHED: u64 = 21_600;
    /// TCP before the first reply.
    pub const TCP_SYN: u64 = 60;
    /// TCP after FIN or RST.
    pub const TCP_CLOSING: u64 = 10;
    /// UDP and anything else.
    pub const OTHER: u64 = 60;
}

/// Conntrack value. A forward entry names the backend; a reply entry names the frontend address
/// the reply's source must be restored to.
///
/// A NodePort flow that XDP sends to a backend on another node is translated both ways: its
/// forward entry carries the node address and port it leaves with (`snat_addr`, `snat_port`),
/// and its reply entry, keyed by backend → node address and SNAT port, restores the frontend as
/// source and the client as destination (`nat_daddr`, `nat_dport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry4 {
    /// Forward entries: the chosen backend id. Reply entries: the same, for GC.
    pub backend_id: u32,
    /// The service id (counters; GC).
    pub service_id: u32,
    /// Reply entries: source address to restore (the frontend address, network order).
    pub nat_addr: u32,
    /// Reply entries: destination address to restore (the client, for hairpin SNAT), or zero.
    pub nat_daddr: u32,
    /// Reply entries: source port to restore (frontend port, network order).
    pub nat_port: u16,
    /// Reply entries of remote NodePort flows: destination port to restore (the client's, network
    /// order); zero otherwise.
    pub nat_dport: u16,
    /// Forward entries with hairpin or remote-NodePort SNAT: the source address used (network
    /// order), else zero.
    pub snat_addr: u32,
    /// Forward entries of remote NodePort flows: the source port used (network order), else
    /// zero (the client's port is kept).
    pub snat_port: u16,
    /// TCP state bits ([`CT_SYN`], [`CT_FIN`], [`CT_RST`], [`CT_SEEN_REPLY`]).
    pub flags: u8,
    /// Reserved, zero.
    pub pad: u8,
    /// Reserved, zero.
    pub pad2: u32,
    /// When the entry expires, `bpf_ktime_get_ns` seconds.
    pub expires: u64,
}

/// Session-affinity key: client address and service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey4 {
    /// Client address (network order); for socket-LB the low half of the netns cookie.
    pub client: u32,
    /// Service id.
    pub service_id: u32,
}

/// Session-affinity value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    /// Backend the client sticks to.
    pub backend_id: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// Last use, `bpf_ktime_get_ns` seconds.
    pub last_used: u64,
}

/// Socket-LB reverse translation key for UDP replies: which socket talked to which backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey4 {
    /// Socket cookie.
    pub cookie: u64,
    /// Backend address (network order).
    pub addr: u32,
    /// Backend port (network order).
    pub port: u16,
    /// Reserved, zero.
    pub pad: u16,
}

/// Socket-LB reverse translation value: the frontend the socket believes it talks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevEntry4 {
    /// Frontend address (network order).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// Reserved, zero.
    pub pad: u16,
}

/// Hash of a flow's 5-tuple, used to index Maglev tables. Both the datapath and the agent's
/// tests compute it, so it lives here. Inputs are the packet's network-order fields.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    // Three rounds of a multiply-xorshift mixer (the murmur3 finaliser), enough to spread
    // neighbouring ports and addresses evenly over the table.
    let mut h = saddr ^ 0x9e37_79b9;
    h = mix(h ^ daddr.rotate_left(16));
    h = mix(h ^ ((u32::from(sport) << 16) | u32::from(dport)));
    mix(h ^ u32::from(proto))
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY (all impls below): each type is `#[repr(C)]`, made only of integers (or arrays of
    // them), with every padding byte spelled out as a named field, so any bit pattern is valid
    // and there is no uninitialised padding.
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ServiceKey4 {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for MaglevSmall {}
    unsafe impl aya::Pod for CtKey4 {}
    unsafe impl aya::Pod for CtEntry4 {}
    unsafe impl aya::Pod for AffinityKey4 {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for SockRevKey4 {}
    unsafe impl aya::Pod for SockRevEntry4 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ServiceKey4>(), 8);
        assert_eq!(size_of::<Service>(), 16);
        assert_eq!(size_of::<Backend4>(), 12);
        assert_eq!(size_of::<CtKey4>(), 16);
        assert_eq!(size_of::<CtEntry4>(), 40);
        assert_eq!(size_of::<AffinityKey4>(), 8);
        assert_eq!(size_of::<AffinityEntry>(), 16);
        assert_eq!(size_of::<SockRevKey4>(), 16);
        assert_eq!(size_of::<SockRevEntry4>(), 8);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<MaglevTable>(), 4 * MAGLEV_TABLE_SIZE);
    }

    #[test]
    fn reasons_are_numbered_in_order() {
        for (i, (reason, _)) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }

    #[test]
    fn flow_hash_spreads_ports() {
        // 1000 consecutive source ports over 10 buckets: every bucket gets a fair share.
        let mut buckets = [0u32; 10];
        for port in 40_000u16..41_000 {
            let h = flow_hash(
                0x0a00_0001,
                0x0a60_0001,
                port.to_be(),
                80u16.to_be(),
                proto::TCP,
            );
            buckets[(h % 10) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (60..=140).contains(&n)),
            "{buckets:?}"
        );
    }
}
