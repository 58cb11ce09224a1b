//! Per-CPU verdict counters: one slot per [`Verdict`], summed by user space.
//!
//! Per-CPU slots mean no atomic operations and no races: each CPU only touches its own copy.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use rudder_ebpf_common::{Counter, Verdict};

#[map(name = "RUDDER_VERDICTS")]
static VERDICTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Adds one packet of `len` bytes to the counter of `verdict`.
#[inline(always)]
pub fn count(verdict: Verdict, len: u32) {
    if let Some(slot) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU's slot; no other
        // CPU writes to it.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(len);
        }
    }
}
