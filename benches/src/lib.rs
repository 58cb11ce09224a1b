//! The benchmark harness behind `cargo xtask bench <name>`.
//!
//! - [`results`]: the machine-readable results file every benchmark writes
//!   (`target/bench/<name>/results.json`) and its markdown report.

pub mod results;
