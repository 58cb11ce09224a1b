//! Service load balancing on a node: the desired state (Services + EndpointSlices → frontends and
//! backends) and the dataplanes that realise it.
//!
//! - [`model`]: the desired state, shared by both dataplanes;
//! - [`iptables`]: kube-proxy-compatible rules (the comparison peer);
//! - [`ebpf`]: the aya loader for the programs in `ebpf/programs`.

pub mod ebpf;
pub mod iptables;
pub mod model;
