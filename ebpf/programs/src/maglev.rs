//! Maglev lookup: a flow hash indexes the service's table of backend ids.
//!
//! The agent builds each table (node/src/proxy/maglev.rs) so that every backend owns an almost
//! equal share of the slots and a backend change moves few slots. Services with few backends
//! have a small table ([`MAGLEV_SMALL_SIZE`] slots), the others a full one
//! ([`MAGLEV_TABLE_SIZE`]); the service's `SVC_SMALL_TABLE` flag says which.

use rudder_ebpf_common::{MAGLEV_SMALL_SIZE, MAGLEV_TABLE_SIZE, SVC_SMALL_TABLE, Service};

use crate::maps::{MAGLEV, MAGLEV_SMALL};

/// The backend id for flow hash `hash` in `svc`'s table.
#[inline(always)]
pub fn lookup(svc: &Service, hash: u32) -> Option<u32> {
    if svc.flags & SVC_SMALL_TABLE != 0 {
        let table = MAGLEV_SMALL.get_ptr(svc.id)?;
        let slot = opaque(hash % MAGLEV_SMALL_SIZE as u32);
        // SAFETY: the pointer comes from a successful map lookup and stays valid for this
        // program run (RCU); `get` bounds-checks the slot.
        unsafe { (*table).0.get(slot).copied() }
    } else {
        let table = MAGLEV.get_ptr(svc.id)?;
        let slot = opaque(hash % MAGLEV_TABLE_SIZE as u32);
        // SAFETY: as above.
        unsafe { (*table).0.get(slot).copied() }
    }
}

/// LLVM knows a remainder is below the table size and would drop the bounds check, but the
/// verifier cannot follow the multiply-shift that replaces `%`. A volatile round trip through
/// the stack hides the range from LLVM, so the check stays for the verifier.
#[inline(always)]
fn opaque(slot: u32) -> usize {
    // SAFETY: reading a local that was just written.
    unsafe { core::ptr::read_volatile(&slot) as usize }
}
