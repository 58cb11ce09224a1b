//! The pod runtime: what runs a pod on this node once it is bound here.
//!
//! - [`network`]: the node bridge, per-pod network namespaces, veths and addresses.
//! - [`shim`]: the per-container process (`rudder shim`) that enters the namespaces, keeps the
//!   logs and records the exit.
//! - [`process`]: the agent's handle on a shim: start, wait (pidfd), signal, adopt.
//! - [`probe`]: startup, liveness and readiness probes.
//! - [`pod`]: the pod worker, which drives one pod to its spec and reports its status.
//!
//! There is no image registry: agnhost and pause images run the built-in
//! [`agnhost`](crate::agnhost); other images run their `command` on the host's file system in
//! their own PID, mount, UTS and IPC namespaces and the pod's network namespace.

pub mod cgroups;
pub mod network;
pub mod pod;
pub mod probe;
pub mod process;
pub mod shim;
pub mod volumes;
