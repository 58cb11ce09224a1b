//! Rewriting packets on a `__sk_buff`: address/port translation with incremental checksums, and
//! turning a packet for a service without backends into an ICMP port-unreachable reply.
//!
//! Offsets are absolute from the start of the Ethernet header. Addresses and ports are raw
//! network-order values as loaded from the packet, so checksum deltas need no byte swapping.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_SHOT},
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use rudder_ebpf_common::proto;

/// Length of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM: usize = ETH_LEN + 10;
/// Offset of the IPv4 source address.
pub const IP_SADDR: usize = ETH_LEN + 12;
/// Offset of the IPv4 destination address.
pub const IP_DADDR: usize = ETH_LEN + 16;

/// Where the L4 checksum lives and how the kernel must treat a zero one.
#[inline(always)]
fn l4_csum(l4: usize, l4proto: u8) -> (usize, u64) {
    if l4proto == proto::UDP {
        // A zero UDP checksum means "none": keep it zero, and never produce zero by accident.
        (l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    } else {
        (l4 + 16, 0)
    }
}

/// Replaces the IPv4 address at `at` (`IP_SADDR` or `IP_DADDR`) and fixes both checksums.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    at: usize,
    l4: usize,
    l4proto: u8,
    old: u32,
    new: u32,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let (csum, mangled) = l4_csum(l4, l4proto);
    ctx.l4_csum_replace(
        csum,
        u64::from(old),
        u64::from(new),
        u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
    )?;
    ctx.l3_csum_replace(IP_CSUM, u64::from(old), u64::from(new), 4)?;
    ctx.store(at, &new, 0)
}

/// Replaces the L4 port at `at` (`l4` for the source, `l4 + 2` for the destination) and fixes
/// the L4 checksum.
#[inline(always)]
pub fn set_port(
    ctx: &TcContext,
    at: usize,
    l4: usize,
    l4proto: u8,
    old: u16,
    new: u16,
) -> Result<(), i64> {
    if old == new {
        return Ok(());
    }
    let (csum, mangled) = l4_csum(l4, l4proto);
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), mangled | 2)?;
    ctx.store(at, &new, 0)
}

/// One's-complement fold of a 32-bit checksum accumulator.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Internet checksum of `words` (a multiple of four bytes, on the stack).
#[inline(always)]
fn checksum<const N: usize>(words: &mut [u32; N]) -> u16 {
    // SAFETY: the buffer is valid stack memory of exactly N * 4 bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            words.as_mut_ptr(),
            (N * 4) as u32,
            0,
        )
    };
    fold(sum as u64)
}

/// Turns the packet (an IPv4 packet without options, from a client to a service without usable
/// backends) into an ICMP "port unreachable" from the service address back to the client, and
/// sends it out of the interface it came in on. This is what kube-proxy's `REJECT` answers;
/// TCP clients see ECONNREFUSED at once instead of retrying into a black hole.
///
/// Returns the TC action.
#[inline(always)]
pub fn reject(ctx: &TcContext) -> i32 {
    match build_unreachable(ctx) {
        Ok(()) => {
            // SAFETY: plain helper call; the ifindex is the packet's own device.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            (unsafe { bpf_redirect(ifindex, 0) }) as i32
        }
        Err(_) => TC_ACT_SHOT as i32,
    }
}

/// Bytes of the original datagram quoted in the ICMP error: its IP header and 8 bytes more.
const QUOTE: usize = 28;
/// Total length of the ICMP error packet (Ethernet + IP + ICMP header + quote).
const REPLY_LEN: usize = ETH_LEN + 20 + 8 + QUOTE;

fn build_unreachable(ctx: &TcContext) -> Result<(), i64> {
    let mut macs: [u8; 12] = ctx.load(0)?;
    let quote: [u32; QUOTE / 4] = ctx.load(ETH_LEN)?;
    let client: u32 = ctx.load(IP_SADDR)?;
    let service: u32 = ctx.load(IP_DADDR)?;

    // SAFETY: plain helper call on our own skb.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb, REPLY_LEN as u32, 0) };
    if rc != 0 {
        return Err(rc);
    }

    // Ethernet: back to where it came from.
    macs.rotate_left(6);
    ctx.store(0, &macs, 0)?;

    // IPv4 header: service → client, protocol ICMP.
    let total = ((20 + 8 + QUOTE) as u16).to_be_bytes();
    let mut ip = [0u32; 5];
    // SAFETY: as above.
    let ip_bytes = unsafe { &mut *(ip.as_mut_ptr() as *mut [u8; 20]) };
    ip_bytes[0] = 0x45;
    ip_bytes[2] = total[0];
    ip_bytes[3] = total[1];
    ip_bytes[6] = 0x40; // don't fragment
    ip_bytes[8] = 64; // TTL
    ip_bytes[9] = proto::ICMP;
    ip[3] = service;
    ip[4] = client;
    let ip_csum = checksum(&mut ip);
    // SAFETY: as above.
    let ip_bytes = unsafe { &mut *(ip.as_mut_ptr() as *mut [u8; 20]) };
    let ip_csum = ip_csum.to_ne_bytes();
    ip_bytes[10] = ip_csum[0];
    ip_bytes[11] = ip_csum[1];
    ctx.store(ETH_LEN, ip_bytes, 0)?;

    // ICMP destination unreachable (3), port unreachable (3), quoting the original.
    let mut icmp = [0u32; 2 + QUOTE / 4];
    icmp[0] = u32::from_ne_bytes([3, 3, 0, 0]);
    let mut i = 0;
    while i < QUOTE / 4 {
        icmp[2 + i] = quote[i];
        i += 1;
    }
    let icmp_csum = checksum(&mut icmp).to_ne_bytes();
    icmp[0] = u32::from_ne_bytes([3, 3, icmp_csum[0], icmp_csum[1]]);
    ctx.store(ETH_LEN + 20, &icmp, 0)?;
    Ok(())
}
