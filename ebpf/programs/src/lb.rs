//! Choosing a backend for a new flow: session affinity first, then Maglev (or random).

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use rudder_ebpf_common::{AffinityEntry, AffinityKey4, Backend4, SVC_RANDOM, Service};

use crate::{
    maglev,
    maps::{AFFINITY4, BACKENDS4},
};

/// Seconds on the monotonic clock that conntrack and affinity entries are stamped with.
#[inline(always)]
pub fn now_s() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    (unsafe { bpf_ktime_get_ns() }) / 1_000_000_000
}

/// The backend with id `id` if it still exists and belongs to service `service_id`.
#[inline(always)]
pub fn backend(id: u32, service_id: u32) -> Option<Backend4> {
    // SAFETY: the reference is only read within this program run.
    let backend = unsafe { BACKENDS4.get(id) }?;
    (backend.service_id == service_id).then_some(*backend)
}

/// Picks the backend for a new flow of `client` (an address, or a namespace id for socket-LB)
/// with flow hash `hash`, honouring and refreshing session affinity.
#[inline(always)]
pub fn select(svc: &Service, client: u32, hash: u32, now: u64) -> Option<(u32, Backend4)> {
    let key = AffinityKey4 {
        client,
        service_id: svc.id,
    };
    if svc.affinity_timeout != 0 {
        // SAFETY: the reference is only read within this program run.
        if let Some(entry) = unsafe { AFFINITY4.get(&key) } {
            if entry.last_used + u64::from(svc.affinity_timeout) >= now {
                let id = entry.backend_id;
                if let Some(b) = backend(id, svc.id) {
                    remember(&key, id, now);
                    return Some((id, b));
                }
            }
        }
    }
    let hash = if svc.flags & SVC_RANDOM != 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    } else {
        hash
    };
    let id = maglev::lookup(svc, hash)?;
    let chosen = backend(id, svc.id)?;
    if svc.affinity_timeout != 0 {
        remember(&key, id, now);
    }
    Some((id, chosen))
}

#[inline(always)]
fn remember(key: &AffinityKey4, backend_id: u32, now: u64) {
    let entry = AffinityEntry {
        backend_id,
        pad: 0,
        last_used: now,
    };
    // A full LRU map evicts an old entry, so this only fails on kernel memory exhaustion;
    // affinity is best effort then.
    let _ = AFFINITY4.insert(key, &entry, 0);
}
