//! TC ingress on a pod's host-side veth: every packet the pod sends passes here ([`from_pod`]);
//! TC egress ([`to_pod`]) restores the service address on replies from backends that are not
//! pods of this node.
//!
//! - A reply from a backend (found in conntrack's reply direction) gets its source restored to
//!   the service address the client used.
//! - A packet of a tracked flow goes to the flow's backend.
//! - A packet to a frontend starts a flow: affinity or Maglev picks a backend, conntrack records
//!   it, the destination is rewritten. A pod reaching itself through its service (hairpin) is
//!   also source-translated to the hairpin address so it sees a proper peer.
//! - A frontend without backends answers with ICMP port unreachable.
//! - Everything else passes untouched.
//!
//! After translation, a packet for a pod on this node goes straight into that pod (see
//! [`crate::route`]); anything else is routed by the kernel as usual. Fragments addressed to a service are
//! dropped (the ports are only in the first fragment; fragment tracking is not built yet).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use rudder_ebpf_common::{
    CT_FORWARD, CT_REPLY, CtEntry4, CtKey4, Reason, ServiceKey4, flow_hash, proto,
};

use crate::{
    conntrack, counters, lb,
    maps::{SERVICES4, config},
    nat::{self, ETH_LEN, IP_DADDR, IP_SADDR},
    route,
};

const OK: i32 = TC_ACT_OK as i32;
const SHOT: i32 = TC_ACT_SHOT as i32;
const ETH_P_IP: u16 = 0x0800;

/// The fields of an IPv4 TCP/UDP packet the datapath works with (network order).
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
    /// Whether this is a fragment.
    fragment: bool,
    /// Whether the IPv4 header has options.
    options: bool,
}

/// Runs the hook and counts the outcome.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    let len = ctx.len();
    let (reason, service, action) = handle(ctx);
    counters::reason(reason, len);
    if let Some(id) = service {
        counters::service(id, len);
    }
    if action == OK && matches!(reason, Reason::Pass | Reason::Forward | Reason::ReplyNat) {
        route::to_local_pod(ctx)
    } else {
        action
    }
}

/// TC egress on a pod's host-side veth: a reply of a service flow whose backend is the node
/// itself or another node (so it never passed a backend pod's veth, where [`from_pod`]
/// restores the source) gets the service address back before the pod sees it. Everything else
/// passes untouched; replies already translated no longer match a reply key.
#[inline(always)]
pub fn to_pod(ctx: &TcContext) -> i32 {
    let flow = match parse(ctx) {
        Ok(Some(flow)) if !flow.fragment => flow,
        _ => return OK,
    };
    let Some((reason, service, action)) = reply_nat(ctx, &flow, lb::now_s()) else {
        return OK;
    };
    let len = ctx.len();
    counters::reason(reason, len);
    if let Some(id) = service {
        counters::service(id, len);
    }
    action
}

/// A reply of a tracked service flow (found in conntrack's reply direction) gets the service
/// address back as its source; `None` when the packet is no such reply.
#[inline(always)]
fn reply_nat(ctx: &TcContext, flow: &Flow, now: u64) -> Option<(Reason, Option<u32>, i32)> {
    let entry = conntrack::get(&flow.key(CT_REPLY))?;
    conntrack::touch(entry, flow.l4proto, flow.tcp, true, now);
    // SAFETY: pointer from a successful lookup in this run.
    let e = unsafe { *entry };
    Some(match reverse(ctx, flow, &e) {
        Ok(()) => (Reason::ReplyNat, Some(e.service_id), OK),
        Err(_) => (Reason::RewriteFailed, Some(e.service_id), SHOT),
    })
}

impl Flow {
    /// The flow's conntrack key in direction `dir`.
    #[inline(always)]
    fn key(&self, dir: u8) -> CtKey4 {
        CtKey4 {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.l4proto,
            dir,
            pad: 0,
        }
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, ()> {
    let ethertype: u16 = ctx.load(12).map_err(|_| ())?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return Ok(None);
    }
    let ver_ihl: u8 = ctx.load(ETH_LEN).map_err(|_| ())?;
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(());
    }
    let l4proto: u8 = ctx.load(ETH_LEN + 9).map_err(|_| ())?;
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return Ok(None);
    }
    let frag: u16 = ctx.load(ETH_LEN + 6).map_err(|_| ())?;
    let saddr: u32 = ctx.load(IP_SADDR).map_err(|_| ())?;
    let daddr: u32 = ctx.load(IP_DADDR).map_err(|_| ())?;
    let l4 = ETH_LEN + ihl;
    let fragment = u16::from_be(frag) & 0x3fff != 0;
    let first_fragment = u16::from_be(frag) & 0x1fff == 0;
    let (sport, dport, tcp) = if first_fragment {
        let ports: [u16; 2] = ctx.load(l4).map_err(|_| ())?;
        let tcp = if l4proto == proto::TCP {
            // The TCP header must be complete: its checksum is rewritten.
            let flags: u8 = ctx.load(l4 + 13).map_err(|_| ())?;
            let _csum: u16 = ctx.load(l4 + 16).map_err(|_| ())?;
            flags
        } else {
            let _csum: u16 = ctx.load(l4 + 6).map_err(|_| ())?;
            0
        };
        (ports[0], ports[1], tcp)
    } else {
        (0, 0, 0)
    };
    Ok(Some(Flow {
        saddr,
        daddr,
        sport,
        dport,
        l4proto,
        tcp,
        l4,
        fragment,
        options: ihl != 20,
    }))
}

#[inline(always)]
fn handle(ctx: &TcContext) -> (Reason, Option<u32>, i32) {
    let flow = match parse(ctx) {
        Ok(Some(flow)) => flow,
        Ok(None) => return (Reason::Pass, None, OK),
        // The kernel drops broken IP headers itself; a short L4 header is only our concern if
        // it is addressed to a service, which we cannot tell. Let the stack decide.
        Err(()) => return (Reason::Malformed, None, OK),
    };
    let now = lb::now_s();

    if !flow.fragment {
        // A reply from a backend?
        if let Some(outcome) = reply_nat(ctx, &flow, now) {
            return outcome;
        }

        // A packet of a tracked flow?
        let forward = flow.key(CT_FORWARD);
        if let Some((e, backend)) = conntrack::tracked(&forward, flow.tcp, now) {
            return match translate(ctx, &flow, backend.addr, backend.port, e.snat_addr) {
                Ok(()) => (Reason::Forward, Some(e.service_id), OK),
                Err(_) => (Reason::RewriteFailed, Some(e.service_id), SHOT),
            };
        }
    }

    // A new flow to a frontend?
    let key = ServiceKey4 {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.l4proto,
        pad: 0,
    };
    // SAFETY: the reference is only read within this run.
    let Some(svc) = (unsafe { SERVICES4.get(&key) }) else {
        return (Reason::Pass, None, OK);
    };
    let svc = *svc;
    if flow.fragment {
        return (Reason::Fragment, Some(svc.id), SHOT);
    }
    let hash = flow_hash(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.l4proto);
    let Some((backend_id, backend)) = (if svc.count == 0 {
        None
    } else {
        lb::select(&svc, flow.saddr, hash, now)
    }) else {
        let action = if flow.options { SHOT } else { nat::reject(ctx) };
        return (Reason::NoBackend, Some(svc.id), action);
    };

    // Hairpin: the client is its own backend.
    let snat_addr = if backend.addr == flow.saddr {
        config().hairpin_addr
    } else {
        0
    };
    let forward = flow.key(CT_FORWARD);
    conntrack::open(
        &forward, backend_id, svc.id, &backend, snat_addr, flow.tcp, now,
    );
    match translate(ctx, &flow, backend.addr, backend.port, snat_addr) {
        Ok(()) => (Reason::Forward, Some(svc.id), OK),
        Err(_) => (Reason::RewriteFailed, Some(svc.id), SHOT),
    }
}

/// Client → backend: destination to the backend, and source to `snat_addr` when non-zero.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    flow: &Flow,
    addr: u32,
    port: u16,
    snat_addr: u32,
) -> Result<(), i64> {
    nat::set_port(ctx, flow.l4 + 2, flow.l4, flow.l4proto, flow.dport, port)?;
    nat::set_addr(ctx, IP_DADDR, flow.l4, flow.l4proto, flow.daddr, addr)?;
    if snat_addr != 0 {
        nat::set_addr(ctx, IP_SADDR, flow.l4, flow.l4proto, flow.saddr, snat_addr)?;
    }
    Ok(())
}

/// Backend → client: source back to the frontend, destination back to the client (hairpin).
#[inline(always)]
fn reverse(ctx: &TcContext, flow: &Flow, e: &CtEntry4) -> Result<(), i64> {
    nat::set_port(ctx, flow.l4, flow.l4, flow.l4proto, flow.sport, e.nat_port)?;
    nat::set_addr(ctx, IP_SADDR, flow.l4, flow.l4proto, flow.saddr, e.nat_addr)?;
    if e.nat_daddr != 0 {
        nat::set_addr(
            ctx,
            IP_DADDR,
            flow.l4,
            flow.l4proto,
            flow.daddr,
            e.nat_daddr,
        )?;
    }
    Ok(())
}
