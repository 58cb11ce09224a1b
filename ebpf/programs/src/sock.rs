//! Socket-LB: cgroup `connect4`, `sendmsg4` and `recvmsg4` hooks for processes in the node's own
//! network namespace. The destination is rewritten once, when the socket connects (or per
//! datagram for unconnected UDP), so packets themselves carry the backend address and cost
//! nothing more. `recvmsg4` restores the service address as the source of UDP replies.
//!
//! A service without backends refuses the connect with `ECONNREFUSED`.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use rudder_ebpf_common::{Reason, ServiceKey4, SockRevEntry4, SockRevKey4, flow_hash, proto};

use crate::{
    counters, lb,
    maps::{SERVICES4, SOCK_REVNAT4, config},
};

/// Let the call go on.
const ALLOW: i32 = 1;
/// Fail the call (with the errno set by `bpf_set_retval`).
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Whether this socket's namespace is one the datapath serves.
#[inline(always)]
fn in_scope(ctx: &SockAddrContext) -> bool {
    let want = config().netns_cookie;
    // SAFETY: helper on our own context.
    want == 0 || want == unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) }
}

/// `connect4` and `sendmsg4`: rewrite a service destination to a backend.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    if !in_scope(ctx) {
        return ALLOW;
    }
    // SAFETY: `sock_addr` is the kernel's context for this call; these fields are readable.
    let (addr, port, l4proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port as u16, sa.protocol as u8)
    };
    if l4proto != proto::TCP && l4proto != proto::UDP {
        return ALLOW;
    }
    let key = ServiceKey4 {
        addr,
        port,
        proto: l4proto,
        pad: 0,
    };
    // SAFETY: the reference is only read within this run.
    let Some(svc) = (unsafe { SERVICES4.get(&key) }) else {
        return ALLOW;
    };
    let svc = *svc;
    // SAFETY: helpers on our own context.
    let (cookie, netns) = unsafe {
        (
            bpf_get_socket_cookie(ctx.sock_addr.cast()),
            bpf_get_netns_cookie(ctx.sock_addr.cast()),
        )
    };
    let hash = flow_hash(cookie as u32, addr, (cookie >> 32) as u16, port, l4proto);
    let chosen = if svc.count == 0 {
        None
    } else {
        lb::select(&svc, netns as u32, hash, lb::now_s())
    };
    let Some((_, backend)) = chosen else {
        counters::reason(Reason::NoBackend, 0);
        counters::service(svc.id, 0);
        // SAFETY: plain helper call; makes connect()/sendmsg() fail with ECONNREFUSED.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    // SAFETY: `user_ip4` and `user_port` are writable in connect4/sendmsg4.
    unsafe {
        (*ctx.sock_addr).user_ip4 = backend.addr;
        (*ctx.sock_addr).user_port = u32::from(backend.port);
    }
    if l4proto == proto::UDP {
        let key = SockRevKey4 {
            cookie,
            addr: backend.addr,
            port: backend.port,
            pad: 0,
        };
        let value = SockRevEntry4 { addr, port, pad: 0 };
        // LRU: only fails on kernel memory exhaustion; replies then show the backend address.
        let _ = SOCK_REVNAT4.insert(&key, &value, 0);
    }
    counters::reason(Reason::SocketLb, 0);
    counters::service(svc.id, 0);
    ALLOW
}

/// `recvmsg4`: show a UDP reply as coming from the service the socket sent to.
#[inline(always)]
pub fn from_backend(ctx: &SockAddrContext) -> i32 {
    // SAFETY: `sock_addr` is the kernel's context for this call; these fields are readable.
    let (addr, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port as u16)
    };
    // SAFETY: helper on our own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let key = SockRevKey4 {
        cookie,
        addr,
        port,
        pad: 0,
    };
    // SAFETY: the reference is only read within this run.
    if let Some(front) = unsafe { SOCK_REVNAT4.get(&key) } {
        // SAFETY: `user_ip4` and `user_port` are writable in recvmsg4.
        unsafe {
            (*ctx.sock_addr).user_ip4 = front.addr;
            (*ctx.sock_addr).user_port = u32::from(front.port);
        }
    }
    ALLOW
}
