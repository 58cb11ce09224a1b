//! Connection tracking: which backend a flow uses and how to translate its replies.
//!
//! Each flow has two entries in the LRU map: the forward one, keyed by the client's original
//! tuple, names the backend; the reply one, keyed by the tuple the backend answers with, names
//! the frontend address to restore. Entries carry an expiry that every packet pushes forward
//! (at most once a second, to spare cache lines); TCP flags shorten it when a connection closes.
//! The agent sweeps expired entries and entries whose backend is gone.

use aya_ebpf::bindings::BPF_NOEXIST;
use rudder_ebpf_common::{
    Backend4, CT_FIN, CT_REPLY, CT_RST, CT_SEEN_REPLY, CT_SYN, CtEntry4, CtKey4, Reason,
    SNAT_PORTS, SNAT_TRIES, ct_lifetime, proto,
};

use crate::{counters, lb, maps::CT4};

/// TCP header flag bits.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK.
pub const TCP_ACK: u8 = 0x10;

/// Conntrack state bits for a packet with TCP flags `tcp` (zero for UDP).
#[inline(always)]
pub fn state_bits(tcp: u8, reply: bool) -> u8 {
    let mut bits = 0;
    if tcp & TCP_SYN != 0 && !reply {
        bits |= CT_SYN;
    }
    if tcp & TCP_FIN != 0 {
        bits |= CT_FIN;
    }
    if tcp & TCP_RST != 0 {
        bits |= CT_RST;
    }
    if reply {
        bits |= CT_SEEN_REPLY;
    }
    bits
}

/// How long an entry lives after a packet, given the flow's protocol and state.
#[inline(always)]
pub fn lifetime(l4: u8, flags: u8, tcp: u8) -> u64 {
    if l4 != proto::TCP {
        ct_lifetime::OTHER
    } else if flags & (CT_FIN | CT_RST) != 0 {
        ct_lifetime::TCP_CLOSING
    } else if flags & CT_SEEN_REPLY != 0 || tcp & TCP_SYN == 0 {
        ct_lifetime::TCP_ESTABLISHED
    } else {
        ct_lifetime::TCP_SYN
    }
}

/// Whether a forward entry may carry this packet: it has not expired, and a fresh SYN does not
/// reuse the tuple of a connection that already closed (port reuse picks a backend anew).
#[inline(always)]
pub fn usable(entry: &CtEntry4, tcp: u8, now: u64) -> bool {
    let fresh_syn = tcp & (TCP_SYN | TCP_ACK) == TCP_SYN;
    entry.expires >= now && !(fresh_syn && entry.flags & (CT_FIN | CT_RST) != 0)
}

/// Records a packet on `entry`: merges state bits and pushes the expiry forward.
#[inline(always)]
pub fn touch(entry: *mut CtEntry4, l4: u8, tcp: u8, reply: bool, now: u64) {
    // SAFETY: `entry` comes from a successful lookup in this program run. Concurrent updates
    // from other CPUs can only lose a state bit or an expiry second, never corrupt the entry.
    unsafe {
        let flags = (*entry).flags | state_bits(tcp, reply);
        let expires = now + lifetime(l4, flags, tcp);
        if flags != (*entry).flags || expires > (*entry).expires {
            (*entry).flags = flags;
            (*entry).expires = expires;
        }
    }
}

/// Looks up `key`, returning a pointer the caller may update in place.
#[inline(always)]
pub fn get(key: &CtKey4) -> Option<*mut CtEntry4> {
    CT4.get_ptr_mut(key)
}

/// The entry and backend of the tracked flow `forward` (the client's tuple as it arrived), if
/// it may carry this packet; the entry's expiry and state are updated for the packet.
#[inline(always)]
pub fn tracked(forward: &CtKey4, tcp: u8, now: u64) -> Option<(CtEntry4, Backend4)> {
    let entry = get(forward)?;
    // SAFETY: pointer from a successful lookup in this run.
    let e = unsafe { *entry };
    if !usable(&e, tcp, now) {
        return None;
    }
    let backend = lb::backend(e.backend_id, e.service_id)?;
    touch(entry, forward.proto, tcp, false, now);
    Some((e, backend))
}

/// Tracks a new flow `forward` (the client's tuple as it arrived) to `backend`: the forward
/// entry names the backend (and the hairpin source `snat_addr`, or 0), the reply entry, keyed
/// by the tuple the backend answers with, restores the frontend address and port (and the
/// client's address after hairpin). Counts `ct_new`, or `ct_full` when the kernel could not
/// store the entries (the flow is then forwarded statelessly).
#[inline(always)]
pub fn open(
    forward: &CtKey4,
    backend_id: u32,
    service_id: u32,
    backend: &Backend4,
    snat_addr: u32,
    tcp: u8,
    now: u64,
) {
    let bits = state_bits(tcp, false);
    let expires = now + lifetime(forward.proto, bits, tcp);
    let fwd = CtEntry4 {
        backend_id,
        service_id,
        flags: bits,
        snat_addr,
        expires,
        ..CtEntry4::default()
    };
    let hairpin = snat_addr != 0;
    let reply = CtKey4 {
        saddr: backend.addr,
        daddr: if hairpin { snat_addr } else { forward.saddr },
        sport: backend.port,
        dport: forward.sport,
        proto: forward.proto,
        dir: CT_REPLY,
        pad: 0,
    };
    let rev = CtEntry4 {
        backend_id,
        service_id,
        nat_addr: forward.daddr,
        nat_daddr: if hairpin { forward.saddr } else { 0 },
        nat_port: forward.dport,
        expires,
        ..CtEntry4::default()
    };
    // Reply entry first: once the forward entry exists, packets take the fast path and their
    // replies must already find the translation.
    let stored = CT4.insert(&reply, &rev, 0).is_ok() && CT4.insert(forward, &fwd, 0).is_ok();
    counters::reason(
        if stored {
            Reason::CtNew
        } else {
            Reason::CtFull
        },
        0,
    );
}

/// Tracks a new NodePort flow `forward` (the client's tuple as it arrived at the node) to a
/// backend on another node. The flow leaves with the node address it arrived at
/// (`forward.daddr`) as source and a port from [`SNAT_PORTS`], starting at one derived from
/// `hash` and trying [`SNAT_TRIES`] ports; a port is free when no live reply entry uses it for
/// this backend. The reply entry (backend → node address:port) restores the frontend as source
/// and the client as destination. Returns the SNAT port (network order), or `None` when every
/// port tried was taken or the entries could not be stored.
#[inline(always)]
pub fn open_remote(
    forward: &CtKey4,
    backend_id: u32,
    service_id: u32,
    backend: &Backend4,
    hash: u32,
    tcp: u8,
    now: u64,
) -> Option<u16> {
    let bits = state_bits(tcp, false);
    let expires = now + lifetime(forward.proto, bits, tcp);
    let rev = CtEntry4 {
        backend_id,
        service_id,
        nat_addr: forward.daddr,
        nat_port: forward.dport,
        nat_daddr: forward.saddr,
        nat_dport: forward.sport,
        expires,
        ..CtEntry4::default()
    };
    let (first, last) = SNAT_PORTS;
    let span = u32::from(last - first) + 1;
    let mut port = 0u16;
    let mut i = 0;
    while i < SNAT_TRIES {
        // Consecutive tries walk a stride through the range from the flow's own start.
        let candidate = first + ((hash.wrapping_add(i.wrapping_mul(7919))) % span) as u16;
        let reply = CtKey4 {
            saddr: backend.addr,
            daddr: forward.daddr,
            sport: backend.port,
            dport: candidate.to_be(),
            proto: forward.proto,
            dir: CT_REPLY,
            pad: 0,
        };
        if CT4.insert(&reply, &rev, u64::from(BPF_NOEXIST)).is_ok() {
            port = candidate.to_be();
            break;
        }
        // Taken: reusable only once its flow expired (the agent's sweep may not have run yet).
        if let Some(old) = get(&reply) {
            // SAFETY: pointer from a successful lookup in this run.
            if unsafe { (*old).expires } < now && CT4.insert(&reply, &rev, 0).is_ok() {
                port = candidate.to_be();
                break;
            }
        }
        i += 1;
    }
    if port == 0 {
        return None;
    }
    let fwd = CtEntry4 {
        backend_id,
        service_id,
        flags: bits,
        snat_addr: forward.daddr,
        snat_port: port,
        expires,
        ..CtEntry4::default()
    };
    let stored = CT4.insert(forward, &fwd, 0).is_ok();
    counters::reason(
        if stored {
            Reason::CtNew
        } else {
            Reason::CtFull
        },
        0,
    );
    stored.then_some(port)
}
