//! Empty host-side library so that user-space crates can name `rudder-ebpf` as a build
//! dependency (cargo then rebuilds them when the programs change). The programs live in `main.rs`.
#![no_std]
