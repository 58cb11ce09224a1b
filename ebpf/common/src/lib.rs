//! Types shared by rudder's eBPF programs (kernel side) and the node agent (user side).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of padding surprises and has no dependencies, so
//! the same definitions compile for `bpfel-unknown-none` and for the host. With the `user`
//! feature every map type also implements [`aya::Pod`] so the agent can read and write the maps.
//!
//! Addresses and ports in map keys are stored in **network byte order**, exactly as they appear
//! in packets, so the datapath never byte-swaps on the hot path.
#![no_std]

/// Why a packet was dropped (or, for [`Verdict::Pass`], that it was not).
///
/// Each value indexes the per-CPU verdict counters array, so the numbering is part of the
/// kernel/user contract: append new reasons, never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The packet continued on its way (possibly rewritten).
    Pass = 0,
    /// The packet was not IPv4/IPv6 or its headers were cut short.
    Malformed = 1,
}

impl Verdict {
    /// Number of verdicts, the size of the counters array.
    pub const COUNT: u32 = 2;
}

/// Per-CPU packet and byte counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (L2 length as the hook reports it).
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Counter` is `#[repr(C)]`, made only of integers, and has no padding.
    unsafe impl aya::Pod for super::Counter {}
}
