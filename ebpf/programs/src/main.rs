//! rudder's eBPF programs. Entry points are thin; each concern lives in its own module.
#![no_std]
#![no_main]

mod counters;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use rudder_ebpf_common::Verdict;

/// TC ingress on a pod's host-side veth: traffic leaving the pod.
///
/// Today it accounts every packet; service translation is built on top of this hook.
#[classifier]
pub fn rudder_from_pod(ctx: TcContext) -> i32 {
    counters::count(Verdict::Pass, ctx.len());
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel only lets GPL-compatible programs call some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
