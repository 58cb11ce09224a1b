//! XDP on the node's uplink: NodePort (and other external frontends) for clients outside the
//! node, before the kernel allocates a socket buffer.
//!
//! - A packet of a tracked flow goes to the flow's backend.
//! - A packet to an external frontend (`SVC_EXTERNAL`: node address + NodePort) starts a flow:
//!   affinity or Maglev picks a backend among the frontend's external backends, conntrack records
//!   both directions exactly as the pod program does, the destination is rewritten in place with
//!   incremental checksums and the packet continues up the stack (`XDP_PASS`), which routes it
//!   to the backend pod's veth. The backend's reply meets the pod program on that veth, which
//!   restores the node address and NodePort from conntrack.
//! - A frontend without backends: the packet passes untranslated, and the kernel, which has no
//!   socket on a NodePort, answers with a TCP RST or ICMP port unreachable at once.
//! - A backend on another node (not `BACKEND_LOCAL`): SNAT to the node is not built yet, so the
//!   packet passes untranslated (refused like the case above) and is counted as
//!   `remote_backend`. `externalTrafficPolicy: Local` services never pick one.
//! - Everything else (other addresses, ClusterIPs, fragments, non-IPv4) passes untouched.
//!
//! Addresses and ports are raw network-order values as read from the packet; the one's
//! complement checksum arithmetic below is byte-order neutral, so no swapping is needed.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use rudder_ebpf_common::{
    BACKEND_LOCAL, Backend4, CT_FORWARD, CtKey4, Reason, SVC_EXTERNAL, ServiceKey4, flow_hash,
    proto,
};

use crate::{conntrack, counters, lb, maps::SERVICES4};

const PASS: u32 = xdp_action::XDP_PASS;
const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// No service matched (ignored by `counters::service`, which only counts ids below
/// `MAX_SERVICES`).
const NO_SERVICE: u32 = u32::MAX;

/// Runs the hook and counts the outcome.
#[inline(always)]
pub fn nodeport(ctx: &XdpContext) -> u32 {
    let len = u32::try_from(ctx.data_end().saturating_sub(ctx.data())).unwrap_or(u32::MAX);
    // A plain id (NO_SERVICE for none) rather than an Option: the verifier rejects reading the
    // uninitialised payload register LLVM may leave behind for `None`.
    let (reason, service) = handle(ctx).unwrap_or((Reason::Malformed, NO_SERVICE));
    counters::reason(reason, len);
    counters::service(service, len);
    PASS
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

#[inline(always)]
fn handle(ctx: &XdpContext) -> Result<(Reason, u32), ()> {
    if u16::from_be(read::<u16>(ctx, 12)?) != ETH_P_IP {
        return Ok((Reason::Pass, NO_SERVICE));
    }
    let ver_ihl: u8 = read(ctx, ETH_LEN)?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Ok((Reason::Malformed, NO_SERVICE));
    }
    let l4proto: u8 = read(ctx, ETH_LEN + 9)?;
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return Ok((Reason::Pass, NO_SERVICE));
    }
    if u16::from_be(read::<u16>(ctx, ETH_LEN + 6)?) & 0x3fff != 0 {
        // Fragments carry no ports (after the first); NodePort fragments are not reassembled.
        return Ok((Reason::Pass, NO_SERVICE));
    }
    let saddr: u32 = read(ctx, ETH_LEN + 12)?;
    let daddr: u32 = read(ctx, ETH_LEN + 16)?;
    let l4 = ETH_LEN + ihl;
    let sport: u16 = read(ctx, l4)?;
    let dport: u16 = read(ctx, l4 + 2)?;
    let (tcp, csum_at) = if l4proto == proto::TCP {
        (read::<u8>(ctx, l4 + 13)?, l4 + 16)
    } else {
        (0, l4 + 6)
    };
    // The L4 checksum must be in the packet: it is rewritten.
    let _: u16 = read(ctx, csum_at)?;
    let now = lb::now_s();

    let forward = CtKey4 {
        saddr,
        daddr,
        sport,
        dport,
        proto: l4proto,
        dir: CT_FORWARD,
        pad: 0,
    };
    let (service_id, backend) = match conntrack::tracked(&forward, tcp, now) {
        Some((e, backend)) => (e.service_id, backend),
        None => match new_flow(&forward, tcp, now) {
            Ok(chosen) => chosen,
            Err(refusal) => return Ok(refusal),
        },
    };
    dnat(
        ctx,
        l4,
        csum_at,
        l4proto,
        daddr,
        dport,
        backend.addr,
        backend.port,
    )?;
    Ok((Reason::Forward, service_id))
}

/// Picks and tracks the backend of a new flow to an external frontend; `Err` holds why the
/// packet goes on untranslated.
#[inline(always)]
fn new_flow(forward: &CtKey4, tcp: u8, now: u64) -> Result<(u32, Backend4), (Reason, u32)> {
    let key = ServiceKey4 {
        addr: forward.daddr,
        port: forward.dport,
        proto: forward.proto,
        pad: 0,
    };
    // SAFETY: the reference is only read within this run.
    let Some(svc) = (unsafe { SERVICES4.get(&key) }) else {
        return Err((Reason::Pass, NO_SERVICE));
    };
    let svc = *svc;
    if svc.flags & SVC_EXTERNAL == 0 {
        return Err((Reason::Pass, NO_SERVICE));
    }
    let hash = flow_hash(
        forward.saddr,
        forward.daddr,
        forward.sport,
        forward.dport,
        forward.proto,
    );
    let chosen = if svc.count == 0 {
        None
    } else {
        lb::select(&svc, forward.saddr, hash, now)
    };
    let Some((backend_id, backend)) = chosen else {
        return Err((Reason::NoBackend, svc.id));
    };
    if backend.flags & BACKEND_LOCAL == 0 {
        return Err((Reason::RemoteBackend, svc.id));
    }
    conntrack::open(forward, backend_id, svc.id, &backend, 0, tcp, now);
    Ok((svc.id, backend))
}

/// Rewrites the destination to `addr:port`, updating the IPv4 and L4 checksums (the L4 one
/// covers the pseudo-header's addresses). A zero UDP checksum ("none") stays zero.
#[allow(
    clippy::too_many_arguments,
    reason = "flat values keep the verifier's job simple"
)]
#[inline(always)]
fn dnat(
    ctx: &XdpContext,
    l4: usize,
    csum_at: usize,
    l4proto: u8,
    old_addr: u32,
    old_port: u16,
    addr: u32,
    port: u16,
) -> Result<(), ()> {
    let ip_csum = at::<u16>(ctx, ETH_LEN + 10)?;
    let daddr = at::<u32>(ctx, ETH_LEN + 16)?;
    let dport = at::<u16>(ctx, l4 + 2)?;
    let l4_csum = at::<u16>(ctx, csum_at)?;
    // SAFETY: every pointer was bounds-checked by `at`; fields may be unaligned.
    unsafe {
        let ip = core::ptr::read_unaligned(ip_csum);
        core::ptr::write_unaligned(ip_csum, csum_replace4(ip, old_addr, addr));
        core::ptr::write_unaligned(daddr, addr);
        core::ptr::write_unaligned(dport, port);
        let old = core::ptr::read_unaligned(l4_csum);
        if !(l4proto == proto::UDP && old == 0) {
            let mut new = csum_replace4(old, old_addr, addr);
            new = csum_replace2(new, old_port, port);
            if l4proto == proto::UDP && new == 0 {
                new = 0xffff;
            }
            core::ptr::write_unaligned(l4_csum, new);
        }
    }
    Ok(())
}
