//! Criterion micro-benchmarks of the `lb` crate: building a Maglev table (control plane, once
//! per backend change) and choosing a backend for a new flow (datapath, once per flow).
//!
//! Run with `cargo bench -p perf --bench maglev` (add `-- <filter>` for a subset, `--quick`
//! for a short run); `perf/README.md` says what each one measures. Before measuring, every
//! benchmark checks once that its input takes the path measured (a full table, a hit) and
//! panics otherwise.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lb::{
    AffinityTable, BackendId, BackendSet, BackendSpec, FlowKey, HealthCheckConfig, MaglevTable,
    TableSize, client_hash, flow_hash,
};

/// Flows per iteration of the per-flow benchmarks: distinct keys, so that the measurement is
/// not one key's hash hitting one cached slot.
const FLOWS: usize = 256;
/// IP protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;

/// `n` backends named like NetworkInterface uids, weight 1.
fn backends(n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|i| (format!("2020dcf9-e030-427e-b0fc-{i:012x}"), 1))
        .collect()
}

fn size(m: u32) -> TableSize {
    TableSize::new(m).expect("a prime table size")
}

/// Count as criterion's element type.
fn count(n: usize) -> u64 {
    u64::try_from(n).expect("fits")
}

/// `FLOWS` IPv4 flows from 64 clients with varied ports to one virtual IP.
fn flows_v4() -> Vec<FlowKey> {
    (0..FLOWS)
        .map(|i| {
            let i = u16::try_from(i).expect("FLOWS fits a u16");
            let [hi, lo] = i.to_be_bytes();
            FlowKey::new(
                IpAddr::V4(Ipv4Addr::new(192, 0, hi, lo % 64)),
                32_768u16.wrapping_add(i.wrapping_mul(7919)),
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
                443,
                PROTOCOL_TCP,
            )
        })
        .collect()
}

/// The same flows in IPv6.
fn flows_v6() -> Vec<FlowKey> {
    (0..FLOWS)
        .map(|i| {
            let i = u16::try_from(i).expect("FLOWS fits a u16");
            FlowKey::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, i % 64, 1)),
                32_768u16.wrapping_add(i.wrapping_mul(7919)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10)),
                443,
                PROTOCOL_TCP,
            )
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev/build");
    for (n, m) in [(10, 16_381), (100, 16_381), (1000, 16_381), (1000, 65_537)] {
        let input = backends(n);
        let table = MaglevTable::build(&input, size(m)).expect("builds");
        assert_eq!(table.slots().len(), m as usize, "every slot filled");
        group.throughput(Throughput::Elements(u64::from(m)));
        group.bench_with_input(
            BenchmarkId::new(format!("{n}_backends"), m),
            &input,
            |b, input| b.iter(|| MaglevTable::build(black_box(input), size(m))),
        );
    }
    // Weights 1..=10: the heap schedules uneven turns.
    let mut weighted = backends(100);
    for (i, backend) in weighted.iter_mut().enumerate() {
        backend.1 = u32::try_from(i % 10 + 1).expect("small");
    }
    let m = 16_381;
    group.throughput(Throughput::Elements(u64::from(m)));
    group.bench_with_input(
        BenchmarkId::new("100_weighted_1_to_10", m),
        &weighted,
        |b, input| b.iter(|| MaglevTable::build(black_box(input), size(m))),
    );
    group.finish();
}

fn per_flow(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev/per_flow");
    group.throughput(Throughput::Elements(count(FLOWS)));
    let v4 = flows_v4();
    let v6 = flows_v6();
    group.bench_function("flow_hash_v4", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for key in black_box(&v4) {
                acc ^= flow_hash(key, 0);
            }
            acc
        });
    });
    group.bench_function("flow_hash_v6", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for key in black_box(&v6) {
                acc ^= flow_hash(key, 0);
            }
            acc
        });
    });
    for (n, m) in [(100, 16_381), (1000, 65_537)] {
        let table = MaglevTable::build(&backends(n), size(m)).expect("builds");
        for (family, flows) in [("v4", &v4), ("v6", &v6)] {
            assert!(
                flows
                    .iter()
                    .all(|key| table.lookup(flow_hash(key, 0)).is_some())
            );
            group.bench_function(format!("hash_lookup_{family}/{n}_backends/{m}"), |b| {
                b.iter(|| {
                    let mut acc = 0usize;
                    for key in black_box(flows) {
                        acc ^= table.lookup(flow_hash(key, 0)).unwrap_or(0);
                    }
                    acc
                });
            });
        }
    }
    // What the datapath calls: a compiled BackendSet, returning the target.
    let mut set = BackendSet::new(TableSize::DEFAULT, HealthCheckConfig::default());
    for (i, (key, _)) in backends(100).into_iter().enumerate() {
        let [a, b] = u16::try_from(i).expect("small").to_be_bytes();
        set.upsert(BackendSpec::new(
            key,
            IpAddr::V4(Ipv4Addr::new(10, 0, a, b)),
            8080,
        ))
        .expect("fits");
    }
    let compiled = set.compile(0).expect("compiles");
    assert!(
        v4.iter()
            .all(|key| compiled.lookup(flow_hash(key, 0)).is_some())
    );
    group.bench_function("backend_table_lookup_v4/100_backends/16381", |b| {
        b.iter(|| {
            let mut acc = 0u16;
            for key in black_box(&v4) {
                acc ^= compiled.lookup(flow_hash(key, 0)).map_or(0, |t| t.port);
            }
            acc
        });
    });
    // ClientIP affinity: a hit in the shared table (read lock, expiry refresh).
    let affinity = AffinityTable::default();
    for key in &v4 {
        let id = BackendId(u32::try_from(client_hash(key.src, 0) % 100).expect("small"));
        affinity.insert(7, key.src, id, 0, 10_800);
    }
    assert!(
        v4.iter()
            .all(|key| affinity.lookup(7, key.src, 1, 10_800).is_some())
    );
    group.bench_function("affinity_lookup_hit_v4", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for key in black_box(&v4) {
                acc ^= affinity.lookup(7, key.src, 1, 10_800).map_or(0, |id| id.0);
            }
            acc
        });
    });
    group.finish();
}

criterion_group!(benches, build, per_flow);
criterion_main!(benches);
