//! Per-CPU counters by reason and by service, summed by user space.
//!
//! Per-CPU slots mean no atomic operations and no races: each CPU only touches its own copy.

use aya_ebpf::maps::PerCpuArray;
use rudder_ebpf_common::{Counter, MAX_SERVICES, Reason};

use crate::maps::{REASONS, SERVICE_COUNTERS};

/// Adds one packet of `len` bytes to the counter of `reason`.
#[inline(always)]
pub fn reason(reason: Reason, len: u32) {
    add(&REASONS, reason as u32, len);
}

/// Adds one packet of `len` bytes to the counter of service `id`.
#[inline(always)]
pub fn service(id: u32, len: u32) {
    if id < MAX_SERVICES {
        add(&SERVICE_COUNTERS, id, len);
    }
}

#[inline(always)]
fn add(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU's slot; no other
        // CPU writes to it.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(len);
        }
    }
}
