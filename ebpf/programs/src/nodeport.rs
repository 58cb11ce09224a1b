//! XDP on the node's uplink: NodePort (and other external frontends) for clients outside the
//! node, before the kernel allocates a socket buffer.
//!
//! - A packet of a tracked flow goes to the flow's backend.
//! - A packet to an external frontend (`SVC_EXTERNAL`: node address + NodePort) starts a flow:
//!   affinity or Maglev picks a backend among the frontend's external backends and conntrack
//!   records both directions.
//!   - A backend on this node: the destination is rewritten in place with incremental
//!     checksums and the packet continues up the stack (`XDP_PASS`), which routes it to the
//!     backend pod's veth. The backend's reply meets the pod program on that veth, which
//!     restores the node address and NodePort from conntrack.
//!   - A backend on another node (counted as `remote_backend`): the flow is also
//!     source-translated, to the node address it arrived at and a port of `SNAT_PORTS`, so the
//!     backend answers through this node. The packet is forwarded from here, as Cilium's XDP
//!     NodePort does: a FIB lookup gives the next hop, the TTL is decremented, the MAC addresses
//!     are set, and the packet goes back out of the uplink (`XDP_TX`) or out of the interface
//!     the FIB names (`XDP_REDIRECT`). The kernel's stack never sees these packets; it would
//!     drop them anyway, since their source is the node's own address. No route or an
//!     unresolved next hop drops the packet (`no_route`); the agent keeps managed neighbour
//!     entries for the other nodes, and the client's retransmission finds the flow again.
//! - A backend's reply arriving from another node:
//!   - to a remote NodePort flow (backend → node address:SNAT port): both translations are
//!     undone (source: node address and NodePort, destination: the client) and the packet is
//!     forwarded from here as above;
//!   - to a flow a pod on this node started through a ClusterIP: the source gets the service
//!     address back and the packet continues up the stack to the pod.
//! - A frontend without backends: the packet passes untranslated, and the kernel, which has no
//!   socket on a NodePort, answers with a TCP RST or ICMP port unreachable at once.
//! - Everything else (other addresses, fragments, non-IPv4) passes untouched.
//!
//! Addresses and ports are raw network-order values as read from the packet; the one's
//! complement checksum arithmetic below is byte-order neutral, so no swapping is needed.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use rudder_ebpf_common::{
    BACKEND_LOCAL, CT_FORWARD, CT_REPLY, CtKey4, Reason, SVC_EXTERNAL, ServiceKey4, flow_hash,
    proto,
};

use crate::{conntrack, counters, lb, maps::SERVICES4};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const TX: u32 = xdp_action::XDP_TX;
const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
/// Offsets of the IPv4 total length, TTL (with the protocol: one checksummed word), checksum
/// and addresses.
const IP_TOT_LEN: usize = ETH_LEN + 2;
const IP_TTL: usize = ETH_LEN + 8;
const IP_CSUM: usize = ETH_LEN + 10;
const IP_SADDR: usize = ETH_LEN + 12;
const IP_DADDR: usize = ETH_LEN + 16;
/// No service matched (ignored by `counters::service`, which only counts ids below
/// `MAX_SERVICES`).
const NO_SERVICE: u32 = u32::MAX;

/// What to do with a packet: why (for the counters), for which service, and the XDP action.
type Outcome = (Reason, u32, u32);

/// Runs the hook and counts the outcome.
#[inline(always)]
pub fn nodeport(ctx: &XdpContext) -> u32 {
    let len = u32::try_from(ctx.data_end().saturating_sub(ctx.data())).unwrap_or(u32::MAX);
    // A plain id (NO_SERVICE for none) rather than an Option: the verifier rejects reading the
    // uninitialised payload register LLVM may leave behind for `None`.
    let (reason, service, action) = handle(ctx).unwrap_or((Reason::Malformed, NO_SERVICE, PASS));
    counters::reason(reason, len);
    counters::service(service, len);
    action
}

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    // SAFETY: `at` checked the bounds; unaligned because packet fields are not aligned.
    Ok(unsafe { core::ptr::read_unaligned(at::<T>(ctx, offset)?) })
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), ()> {
    // SAFETY: `at` checked the bounds; unaligned because packet fields are not aligned.
    unsafe { core::ptr::write_unaligned(at::<T>(ctx, offset)?, value) };
    Ok(())
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 incremental update of `csum` when a 32-bit field changes from `from` to `to`.
#[inline(always)]
fn csum_replace4(csum: u16, from: u32, to: u32) -> u16 {
    let sum = u32::from(!csum)
        + u32::from(!(from as u16))
        + u32::from(!((from >> 16) as u16))
        + (to & 0xffff)
        + (to >> 16);
    !fold(sum)
}

/// RFC 1624 incremental update of `csum` when a 16-bit field changes from `from` to `to`.
#[inline(always)]
fn csum_replace2(csum: u16, from: u16, to: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!from) + u32::from(to))
}

/// The fields of an IPv4 TCP/UDP packet this program works with (network order).
#[derive(Clone, Copy)]
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    l4proto: u8,
    /// TCP flags, zero for UDP.
    tcp: u8,
    /// Offset of the L4 header.
    l4: usize,
    /// Offset of the L4 checksum.
    csum_at: usize,
}

/// An address and port (network order).
#[derive(Clone, Copy)]
struct Endpoint {
    addr: u32,
    port: u16,
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> Result<Outcome, ()> {
    if u16::from_be(read::<u16>(ctx, 12)?) != ETH_P_IP {
        return Ok((Reason::Pass, NO_SERVICE, PASS));
    }
    let ver_ihl: u8 = read(ctx, ETH_LEN)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Ok((Reason::Malformed, NO_SERVICE, PASS));
    }
    let l4proto: u8 = read(ctx, ETH_LEN + 9)?;
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return Ok((Reason::Pass, NO_SERVICE, PASS));
    }
    if u16::from_be(read::<u16>(ctx, ETH_LEN + 6)?) & 0x3fff != 0 {
        // Fragments carry no ports (after the first); NodePort fragments are not reassembled.
        return Ok((Reason::Pass, NO_SERVICE, PASS));
    }
    let l4 = ETH_LEN + ihl;
    let (tcp, csum_at) = if l4proto == proto::TCP {
        (read::<u8>(ctx, l4 + 13)?, l4 + 16)
    } else {
        (0, l4 + 6)
    };
    let flow = Flow {
        saddr: read(ctx, IP_SADDR)?,
        daddr: read(ctx, IP_DADDR)?,
        sport: read(ctx, l4)?,
        dport: read(ctx, l4 + 2)?,
        l4proto,
        tcp,
        l4,
        csum_at,
    };
    // The L4 checksum must be in the packet: it is rewritten.
    let _: u16 = read(ctx, csum_at)?;
    let now = lb::now_s();

    let forward = CtKey4 {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: l4proto,
        dir: CT_FORWARD,
        pad: 0,
    };
    if let Some((e, backend)) = conntrack::tracked(&forward, tcp, now) {
        let to = Endpoint {
            addr: backend.addr,
            port: backend.port,
        };
        if e.snat_port == 0 {
            return dnat_local(ctx, &flow, to, e.service_id);
        }
        let from = Endpoint {
            addr: e.snat_addr,
            port: e.snat_port,
        };
        return Ok(forward_out(
            ctx,
            &flow,
            from,
            to,
            Reason::Forward,
            e.service_id,
        ));
    }

    // A reply from a backend on another node?
    let reply = CtKey4 {
        dir: CT_REPLY,
        ..forward
    };
    if let Some(entry) = conntrack::get(&reply) {
        // SAFETY: pointer from a successful lookup in this run.
        let e = unsafe { *entry };
        if e.nat_dport != 0 {
            conntrack::touch(entry, l4proto, tcp, true, now);
            let from = Endpoint {
                addr: e.nat_addr,
                port: e.nat_port,
            };
            let to = Endpoint {
                addr: e.nat_daddr,
                port: e.nat_dport,
            };
            return Ok(forward_out(
                ctx,
                &flow,
                from,
                to,
                Reason::ReplyNat,
                e.service_id,
            ));
        }
        if e.nat_daddr == 0 {
            conntrack::touch(entry, l4proto, tcp, true, now);
            rewrite(ctx, &flow, e.nat_addr, e.nat_port, flow.daddr, flow.dport)?;
            return Ok((Reason::ReplyNat, e.service_id, PASS));
        }
    }

    new_flow(ctx, &flow, &forward, now)
}

/// Picks and tracks the backend of a new flow to an external frontend, and sends the packet
/// on; a packet that is not for an external frontend, or is refused, goes on untranslated.
#[inline(always)]
fn new_flow(ctx: &XdpContext, flow: &Flow, forward: &CtKey4, now: u64) -> Result<Outcome, ()> {
    let key = ServiceKey4 {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.l4proto,
        pad: 0,
    };
    // SAFETY: the reference is only read within this run.
    let Some(svc) = (unsafe { SERVICES4.get(&key) }) else {
        return Ok((Reason::Pass, NO_SERVICE, PASS));
    };
    let svc = *svc;
    if svc.flags & SVC_EXTERNAL == 0 {
        return Ok((Reason::Pass, NO_SERVICE, PASS));
    }
    let hash = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.l4proto);
    let chosen = if svc.count == 0 {
        None
    } else {
        lb::select(&svc, flow.saddr, hash, now)
    };
    let Some((backend_id, backend)) = chosen else {
        return Ok((Reason::NoBackend, svc.id, PASS));
    };
    let to = Endpoint {
        addr: backend.addr,
        port: backend.port,
    };
    if backend.flags & BACKEND_LOCAL != 0 {
        conntrack::open(forward, backend_id, svc.id, &backend, 0, flow.tcp, now);
        return dnat_local(ctx, flow, to, svc.id);
    }
    let Some(port) =
        conntrack::open_remote(forward, backend_id, svc.id, &backend, hash, flow.tcp, now)
    else {
        return Ok((Reason::SnatFull, svc.id, PASS));
    };
    counters::reason(Reason::RemoteBackend, 0);
    let from = Endpoint {
        addr: flow.daddr,
        port,
    };
    Ok(forward_out(ctx, flow, from, to, Reason::Forward, svc.id))
}

/// Sends a packet to a backend on this node: destination rewritten, then up the stack.
#[inline(always)]
fn dnat_local(ctx: &XdpContext, flow: &Flow, to: Endpoint, service: u32) -> Result<Outcome, ()> {
    rewrite(ctx, flow, flow.saddr, flow.sport, to.addr, to.port)?;
    Ok((Reason::Forward, service, PASS))
}

/// Rewrites the packet to `from` → `to` and forwards it from XDP: FIB lookup, TTL, MAC
/// addresses, then out of the uplink again or of the interface the FIB names. Nothing is
/// rewritten when the packet cannot be forwarded: a TTL about to expire goes to the stack
/// untranslated (which answers "time exceeded"), no route drops it.
#[inline(always)]
fn forward_out(
    ctx: &XdpContext,
    flow: &Flow,
    from: Endpoint,
    to: Endpoint,
    reason: Reason,
    service: u32,
) -> Outcome {
    match try_forward_out(ctx, flow, from, to) {
        Ok(Some(action)) => (reason, service, action),
        Ok(None) => (Reason::NoRoute, service, DROP),
        Err(()) => (Reason::Malformed, service, DROP),
    }
}

#[inline(always)]
fn try_forward_out(
    ctx: &XdpContext,
    flow: &Flow,
    from: Endpoint,
    to: Endpoint,
) -> Result<Option<u32>, ()> {
    let word: u16 = read(ctx, IP_TTL)?;
    let [ttl, l4proto] = word.to_ne_bytes();
    if ttl <= 1 {
        return Ok(Some(PASS));
    }
    // SAFETY: all-zero is a valid lookup request; the fields below fill it in.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = l4proto;
    fib.__bindgen_anon_1.tot_len = u16::from_be(read::<u16>(ctx, IP_TOT_LEN)?);
    // SAFETY: reading the ingress interface of this program's own context.
    fib.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    fib.__bindgen_anon_3.ipv4_src = from.addr;
    fib.__bindgen_anon_4.ipv4_dst = to.addr;
    // SAFETY: the helper reads and writes only `fib`, whose size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Ok(None);
    }
    rewrite(ctx, flow, from.addr, from.port, to.addr, to.port)?;
    let new = u16::from_ne_bytes([ttl - 1, l4proto]);
    write(ctx, IP_TTL, new)?;
    let csum: u16 = read(ctx, IP_CSUM)?;
    write(ctx, IP_CSUM, csum_replace2(csum, word, new))?;
    write(ctx, 0, fib.dmac)?;
    write(ctx, 6, fib.smac)?;
    // SAFETY: reading the ingress interface of this program's own context.
    if fib.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        Ok(Some(TX))
    } else {
        // SAFETY: plain helper call; it records the target for after the program returns.
        Ok(Some(unsafe { bpf_redirect(fib.ifindex, 0) } as u32))
    }
}

/// Rewrites the packet's addresses and ports to `saddr:sport` → `daddr:dport`, updating the
/// IPv4 and L4 checksums (the L4 one covers the pseudo-header's addresses). A zero UDP checksum
/// ("none") stays zero.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    flow: &Flow,
    saddr: u32,
    sport: u16,
    daddr: u32,
    dport: u16,
) -> Result<(), ()> {
    let ip: u16 = read(ctx, IP_CSUM)?;
    let ip = csum_replace4(csum_replace4(ip, flow.saddr, saddr), flow.daddr, daddr);
    write(ctx, IP_CSUM, ip)?;
    write(ctx, IP_SADDR, saddr)?;
    write(ctx, IP_DADDR, daddr)?;
    write(ctx, flow.l4, sport)?;
    write(ctx, flow.l4 + 2, dport)?;
    let old: u16 = read(ctx, flow.csum_at)?;
    if !(flow.l4proto == proto::UDP && old == 0) {
        let mut new = csum_replace4(old, flow.saddr, saddr);
        new = csum_replace4(new, flow.daddr, daddr);
        new = csum_replace2(new, flow.sport, sport);
        new = csum_replace2(new, flow.dport, dport);
        if flow.l4proto == proto::UDP && new == 0 {
            new = 0xffff;
        }
        write(ctx, flow.csum_at, new)?;
    }
    Ok(())
}
