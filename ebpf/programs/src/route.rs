//! Delivery to pods on this node without the node's IP stack ("host routing", as Cilium calls
//! it).
//!
//! After the pod program has translated a packet (or found it needs no translation), a FIB
//! lookup finds where the node would send it. When that is the host-side veth of a pod on this
//! node (listed in `RUDDER_POD_LINKS` by the agent), the packet is made ready as the stack
//! would make it (TTL decremented, MAC addresses of the hop) and handed straight to the pod's
//! side of that veth with `bpf_redirect_peer`: no forwarding, no netfilter, no backlog queue in
//! the node. Anything else (the node itself, other nodes, the outside, an unresolved neighbour,
//! a TTL about to expire, a packet too big for the link) goes through the stack unchanged, which
//! knows how to handle it.
//!
//! The FIB must name the pod's veth as the next hop, as with routed pod veths (a /32 route per
//! pod, the benchmark lab's layout and Cilium's). On a node whose pods hang off a bridge (the
//! agent's pod network today) the lookup names the bridge, so those packets keep taking the
//! stack; moving the agent to routed veths is what turns this on there.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams},
    helpers::generated::{bpf_fib_lookup, bpf_redirect_peer},
    programs::TcContext,
};
use rudder_ebpf_common::Reason;

use crate::{
    counters,
    maps::POD_LINKS,
    nat::{ETH_LEN, IP_DADDR, IP_SADDR},
};

const AF_INET: u8 = 2;
const ETH_P_IP: u16 = 0x0800;
/// Offset of the IPv4 TTL and protocol bytes (one 16-bit word for the checksum update).
const IP_TTL: usize = ETH_LEN + 8;
/// Offset of the IPv4 header checksum.
const IP_CSUM: usize = ETH_LEN + 10;

/// Sends the packet into its destination pod's namespace when that pod is on this node; returns
/// the TC action (`TC_ACT_REDIRECT`, or `TC_ACT_OK` to let the stack route it).
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext) -> i32 {
    redirect(ctx).unwrap_or(TC_ACT_OK as i32)
}

#[inline(always)]
fn redirect(ctx: &TcContext) -> Option<i32> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let saddr: u32 = ctx.load(IP_SADDR).ok()?;
    let daddr: u32 = ctx.load(IP_DADDR).ok()?;
    // SAFETY: all-zero is a valid lookup request; the fields below fill it in.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    // tot_len stays 0: the kernel then checks the packet (GSO included) against the MTU of the
    // interface it finds.
    // SAFETY: reading the ifindex of the packet's own skb.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the helper reads and writes only `fib`, whose size is passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    let out = fib.ifindex;
    // SAFETY: the value is only tested for presence.
    if unsafe { POD_LINKS.get(&out) }.is_none() {
        return None;
    }
    // The TTL and protocol bytes as one word, as the checksum covers them.
    let word: u16 = ctx.load(IP_TTL).ok()?;
    let ttl = word.to_ne_bytes()[0];
    if ttl <= 1 {
        // Let the stack answer with "time exceeded".
        return None;
    }
    let new = u16::from_ne_bytes([ttl - 1, word.to_ne_bytes()[1]]);
    ctx.store(IP_TTL, &new, 0).ok()?;
    // From here on the packet is half rewritten: a failure drops it rather than hand the
    // stack a packet with a decremented TTL and a stale checksum.
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&fib.dmac);
    macs[6..].copy_from_slice(&fib.smac);
    if ctx
        .l3_csum_replace(IP_CSUM, u64::from(word), u64::from(new), 2)
        .is_err()
        || ctx.store(0, &macs, 0).is_err()
    {
        return Some(TC_ACT_SHOT as i32);
    }
    counters::reason(Reason::PeerRedirect, ctx.len());
    // SAFETY: plain helper call; it only records the target for after the program returns.
    Some(unsafe { bpf_redirect_peer(out, 0) } as i32)
}
