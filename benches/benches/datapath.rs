//! Criterion micro-benchmarks of the eBPF dataplane's user-side hot paths: building a Maglev
//! table, planning the whole state at 10k services, and planning one service change at 10k
//! services (what a single watch event costs). Map writes need root and live in
//! `cargo xtask bench forwarding` (`update_one_service_us`).
#![allow(clippy::unwrap_used, reason = "benchmark setup")]

use std::{hint::black_box, net::Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use rudder_benches::forwarding::{filler, state};
use rudder_ebpf_common::MAGLEV_TABLE_SIZE;
use rudder_node::proxy::{
    maglev,
    plan::{Planner, Settings},
};

fn maglev_build(c: &mut Criterion) {
    for n in [2u32, 10, 100] {
        let backends: Vec<(u32, String)> = (0..n)
            .map(|i| (i + 1, format!("10.244.{}.{}:8080", i / 250, i % 250)))
            .collect();
        c.bench_function(
            &format!("maglev build, {n} backends, {MAGLEV_TABLE_SIZE} slots"),
            |b| b.iter(|| maglev::build(black_box(&backends), MAGLEV_TABLE_SIZE)),
        );
    }
}

fn plan(c: &mut Criterion) {
    let backends = [Ipv4Addr::new(10, 244, 0, 11), Ipv4Addr::new(10, 244, 0, 12)];
    let desired = state(10_000, &backends, 0);
    c.bench_function("plan: whole state from scratch, 10k services", |b| {
        b.iter(|| {
            Planner::new(Settings::default())
                .sync(black_box(&desired))
                .unwrap()
                .len()
        })
    });
    let mut planner = Planner::new(Settings::default());
    planner.sync(&desired).unwrap();
    c.bench_function("plan: unchanged state, 10k services (full diff)", |b| {
        b.iter(|| planner.sync(black_box(&desired)).unwrap().len())
    });
    let mut generation = 0;
    c.bench_function("plan: one service changes, 10k services", |b| {
        b.iter(|| {
            generation = (generation + 1) % 1000;
            let f = filler(1, generation);
            planner.update(&f.name.clone(), Some(&f)).unwrap().len()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = maglev_build, plan
}
criterion_main!(benches);
