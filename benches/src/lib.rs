//! The benchmark harness behind `cargo xtask bench <name>` (binary `rudder-bench`).
//!
//! - [`results`]: the machine-readable results file every benchmark writes
//!   (`target/bench/<name>/results.json`) and its markdown report.
//! - [`control`]: the control-plane benchmark (embedded store vs etcd, through the real apiserver
//!   and the kube-rs client), and its [`scheduling`] half with hollow nodes.
//! - [`dns`]: dnsperf against `rudder dns` and Knot DNS serving the same records.
//! - [`ingress`]: wrk through `rudder ingress` and nginx-light with the same routes.
//! - [`forwarding`]: Service forwarding through each dataplane in network namespaces, with the
//!   event-driven servers and clients of [`loadgen`].
//! - [`pods`]: pod start latency and agent memory on a two-node `rudder lab`.
//! - [`plots`]: PNG plots of a results file, one per metric, beside the report.
//! - [`stats`] computes percentiles.
//!
//! Criterion micro-benchmarks of the datapath's user-side hot paths live in `benches/datapath.rs`.

pub mod control;
pub mod dns;
pub mod forwarding;
pub mod ingress;
pub mod loadgen;
pub mod plots;
pub mod pods;
pub mod results;
pub mod scheduling;
pub mod stats;
