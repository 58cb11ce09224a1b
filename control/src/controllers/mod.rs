//! Controllers of the control plane. Each owns one concern and converges the cluster towards the
//! declared state.
//!
//! - [`namespace`]: deletes everything in a Namespace being deleted, then the Namespace.
//! - [`node_ipam`]: gives each Node a PodCIDR.

pub mod namespace;
pub mod node_ipam;
