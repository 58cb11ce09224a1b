//! The rudder control plane: the Kubernetes-compatible apiserver and its storage, the scheduler
//! and the controllers. The `rudder` binary (`src/main.rs`) wires these together with the node
//! agent, DNS and ingress.
//!
//! - [`store`]: storage with etcd semantics (embedded redb default, or etcd);
//! - [`api`]: the apiserver (REST, watch, discovery, validation, patch, tables);
//! - [`auth`]: CA, serving certificate, tokens, kubeconfig;
//! - [`scheduler`]: binds pods to nodes;
//! - [`cached`]: the slim Pod type the scheduler's and controllers' caches keep;
//! - [`controllers`]: control loops;
//! - [`leader`]: leader election through Leases (scheduler, controllers);
//! - [`server`]: `rudder server` start-up and bootstrap;
//! - [`lab`]: `rudder lab`, a multi-node cluster of network namespaces on one machine;
//! - [`alloc`]: the binary's allocator (mimalloc for `rudder server`, the system's otherwise).

pub mod alloc;
pub mod api;
pub mod auth;
pub mod cached;
pub mod controllers;
pub mod lab;
pub mod leader;
pub mod scheduler;
pub mod server;
pub mod store;
