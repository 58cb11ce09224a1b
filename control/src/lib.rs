//! The rudder control plane: the Kubernetes-compatible apiserver and its storage, the scheduler
//! and the controllers. The `rudder` binary (`src/main.rs`) wires these together with the node
//! agent, DNS and ingress.

pub mod store;
