//! rudder's eBPF programs. Entry points are thin; each concern lives in its own module:
//!
//! - [`pod`]: TC on pods' host-side veths (ClusterIP/NodePort DNAT, reply reverse NAT, hairpin);
//! - [`sock`]: cgroup socket-LB for the node's own processes;
//! - [`nodeport`]: XDP on the node's uplink for NodePort traffic from outside the node;
//! - [`lb`] and [`maglev`]: backend choice; [`conntrack`]: flow state; [`nat`]: rewriting and
//!   rejecting; [`route`]: delivery straight into pods on this node; [`counters`]; [`maps`]:
//!   every map, pinned by name.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod lb;
mod maglev;
mod maps;
mod nat;
mod nodeport;
mod pod;
mod route;
mod sock;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};

/// TC ingress on a pod's host-side veth: traffic leaving the pod.
#[classifier]
pub fn rudder_from_pod(ctx: TcContext) -> i32 {
    pod::from_pod(&ctx)
}

/// TC egress on a pod's host-side veth: traffic entering the pod. Restores the service
/// address on replies whose backend is not a pod of this node.
#[classifier]
pub fn rudder_to_pod(ctx: TcContext) -> i32 {
    pod::to_pod(&ctx)
}

/// XDP on the node's uplink: NodePort DNAT for clients outside the node.
#[xdp(frags)]
pub fn rudder_xdp_nodeport(ctx: XdpContext) -> u32 {
    nodeport::nodeport(&ctx)
}

/// XDP that passes everything, for the far end of a veth uplink: native-mode `XDP_TX` on a veth
/// reaches its peer only if the peer runs an XDP program.
#[xdp]
pub fn rudder_xdp_pass(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// cgroup `connect4`: TCP (and connected UDP) sockets to a service connect to a backend.
#[cgroup_sock_addr(connect4)]
pub fn rudder_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// cgroup `sendmsg4`: unconnected UDP datagrams to a service go to a backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn rudder_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// cgroup `recvmsg4`: UDP replies appear to come from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn rudder_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx)
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
