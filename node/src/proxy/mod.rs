//! Service load balancing on a node: the desired state (Services + EndpointSlices → frontends and
//! backends) and the dataplanes that realise it.
//!
//! - [`ebpf`]: the aya loader for the programs in `ebpf/programs`.

pub mod ebpf;
