//! Service load balancing on a node: the desired state (Services + EndpointSlices → frontends and
//! backends) and the dataplanes that realise it.
//!
//! - [`model`]: the desired state, shared by both dataplanes;
//! - [`plan`] and [`maglev`]: the eBPF dataplane's map contents and minimal updates;
//! - [`ebpf`]: the aya loader, attachment and map writes for the programs in `ebpf/programs`;
//! - [`iptables`]: kube-proxy-compatible rules (the comparison peer);
//! - [`nftables`]: kube-proxy's nftables mode with incremental updates (the second peer);
//! - [`standalone`]: either dataplane behind one `Proxy` (what `rudder proxy` runs);
//! - [`cluster`]: the same `Proxy` fed from apiserver watches (what the node agent runs).

pub mod cluster;
pub mod ebpf;
pub mod iptables;
pub mod maglev;
pub mod model;
pub mod nftables;
pub mod plan;
pub mod standalone;
