//! The rudder node agent library.
//!
//! - [`proxy`]: Service load balancing on this node, programmed into eBPF maps (or iptables for
//!   comparison).
//! - [`lab`]: throw-away namespace networks for tests and benchmarks.
//! - [`command`]: running system tools, optionally inside a network namespace.
//!
//! This crate never depends on `rudder-control`: it reaches the apiserver through kube-rs like any
//! outside client.

pub mod command;
pub mod lab;
pub mod proxy;
