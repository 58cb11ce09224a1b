//! Every map the programs share, pinned by name under the loader's pin directory
//! (`/sys/fs/bpf/rudder/` by default) so that an agent restart finds the same maps and live
//! connections keep their backends. Keys and values are defined in `rudder-ebpf-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use rudder_ebpf_common::{
    AFFINITY_ENTRIES, AffinityEntry, AffinityKey4, Backend4, CT_ENTRIES, Config, Counter, CtEntry4,
    CtKey4, MAX_BACKENDS, MAX_POD_LINKS, MAX_SERVICES, MaglevSmall, MaglevTable, Reason, Service,
    ServiceKey4, SockRevEntry4, SockRevKey4,
};

/// Frontends: service address, port and protocol → service. Not preallocated: memory follows
/// the number of services, not the capacity.
#[map(name = "RUDDER_SERVICES4")]
pub static SERVICES4: HashMap<ServiceKey4, Service> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backends by id. Not preallocated either.
#[map(name = "RUDDER_BACKENDS4")]
pub static BACKENDS4: HashMap<u32, Backend4> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

/// Maglev tables by service id. Not preallocated: a table is 64 KiB and only services with
/// backends have one.
#[map(name = "RUDDER_MAGLEV")]
pub static MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Small Maglev tables (4 KiB) by service id, for services with few backends
/// (`SVC_SMALL_TABLE`).
#[map(name = "RUDDER_MAGLEV_SMALL")]
pub static MAGLEV_SMALL: HashMap<u32, MaglevSmall> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Connection tracking (LRU: under pressure the least recently used flows go first).
#[map(name = "RUDDER_CT4")]
pub static CT4: LruHashMap<CtKey4, CtEntry4> = LruHashMap::pinned(CT_ENTRIES, 0);

/// `sessionAffinity: ClientIP` state.
#[map(name = "RUDDER_AFFINITY4")]
pub static AFFINITY4: LruHashMap<AffinityKey4, AffinityEntry> =
    LruHashMap::pinned(AFFINITY_ENTRIES, 0);

/// Socket-LB reverse translation for unconnected UDP sockets.
#[map(name = "RUDDER_SOCK_REVNAT4")]
pub static SOCK_REVNAT4: LruHashMap<SockRevKey4, SockRevEntry4> = LruHashMap::pinned(CT_ENTRIES, 0);

/// Per-CPU counters by [`Reason`].
#[map(name = "RUDDER_REASONS")]
pub static REASONS: PerCpuArray<Counter> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Per-CPU counters by service id (packets translated towards the service and back).
#[map(name = "RUDDER_SERVICE_COUNTERS")]
pub static SERVICE_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// The node's pod links: host-side veth ifindex → 1. The pod program delivers packets for these
/// interfaces straight into the pod's namespace (see `route`); anything else goes through the
/// node's stack.
#[map(name = "RUDDER_POD_LINKS")]
pub static POD_LINKS: HashMap<u32, u32> = HashMap::pinned(MAX_POD_LINKS, BPF_F_NO_PREALLOC);

/// Datapath-wide settings, one entry.
#[map(name = "RUDDER_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// The settings, or all zeroes before the agent wrote them.
#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(config) => *config,
        None => Config::default(),
    }
}
