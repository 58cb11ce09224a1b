//! The rudder node agent library.
//!
//! - [`proxy`]: Service load balancing on this node, programmed into eBPF maps (or iptables for
//!   comparison).
//! - [`agent`]: the node agent: Node registration, Lease, pod network, pod workers.
//! - [`join`]: joining a cluster with a join token (`rudder agent`).
//! - [`kubelet_api`]: the agent's HTTPS endpoint that serves container logs, exec sessions and
//!   resource metrics to the apiserver.
//! - [`metrics`]: the containers' and the node's CPU and memory use, read from cgroups and
//!   `/proc`, as the kubelet's `/metrics/resource`.
//! - [`exec`]: `kubectl exec` on the node: the WebSocket remote command protocol and commands
//!   run in a container's namespaces.
//! - [`runtime`]: pods as isolated processes: sandboxes, the container shim, probes, the pod
//!   worker.
//! - [`agnhost`]: the built-in test image (agnhost's netexec, serve-hostname and pause).
//! - [`lab`]: throw-away namespace networks for tests and benchmarks.
//! - [`command`]: running system tools, optionally inside a network namespace.
//! - [`quantity`]: Kubernetes resource quantities.
//!
//! This crate never depends on `rudder-control`: it reaches the apiserver through kube-rs like any
//! outside client.

pub mod agent;
pub mod agnhost;
pub mod command;
pub mod exec;
pub mod join;
pub mod kubelet_api;
pub mod lab;
pub mod metrics;
pub mod proxy;
pub mod quantity;
pub mod runtime;
