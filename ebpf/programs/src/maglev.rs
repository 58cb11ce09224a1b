//! Maglev lookup: a flow hash indexes the service's table of backend ids.
//!
//! The agent builds each table (node/src/proxy/maglev.rs) so that every backend owns an almost
//! equal share of the [`MAGLEV_TABLE_SIZE`] slots and a backend change moves few slots.

use rudder_ebpf_common::MAGLEV_TABLE_SIZE;

use crate::maps::MAGLEV;

/// The backend id in slot `hash % MAGLEV_TABLE_SIZE` of service `service_id`'s table.
#[inline(always)]
pub fn lookup(service_id: u32, hash: u32) -> Option<u32> {
    let table = MAGLEV.get_ptr(service_id)?;
    let slot = hash % MAGLEV_TABLE_SIZE as u32;
    // LLVM knows `slot < MAGLEV_TABLE_SIZE` and would drop the bounds check below, but the
    // verifier cannot follow the multiply-shift that replaces `%`. A volatile round trip
    // through the stack hides the range from LLVM, so the check stays for the verifier.
    // SAFETY: reading a local that was just written.
    let slot = unsafe { core::ptr::read_volatile(&slot) } as usize;
    // SAFETY: the pointer comes from a successful map lookup and stays valid for this program
    // run (RCU); `get` bounds-checks the slot.
    unsafe { (*table).0.get(slot).copied() }
}
