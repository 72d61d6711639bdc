//! Criterion benchmarks of the datapath's table lookups as the tables grow, everything else
//! held still: a connection-tracking hit among N connections (1 to 1,000,000), a learned-MAC
//! hit among N MACs (1 to 100,000), a longest-prefix match among N IPv4 routes (1 to
//! 1,000,000) and N IPv6 routes, and a masqueraded connection's creation and removal (a new
//! NAT mapping) among N mappings (1 to 60,000, the ports one NAT address has). The
//! load-balancer and policy curves are in `maglev` and `policy`.
//!
//! Each lookup walks a list of 4,096 keys spread over the whole table, so the figures include
//! the cache misses a large table costs (a table of one entry stays in cache: that is its
//! curve's floor). A lookup whose cost grows faster than logarithmically with N is a defect.
//! Run with `cargo bench -p perf --bench scale` (add `-- <filter>`); `perf/README.md` has the
//! figures. Before measuring, every benchmark checks that its lookups hit. Each table's heap
//! size is printed as it is built (`memory:` lines, bytes per entry), counted by a global
//! allocator that tallies live bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipnet::{Ipv4Net, Ipv6Net};
use nat::{
    Conntrack, ConntrackConfig, Endpoint, FlowKey, Gateway, InterfaceId, NatPlan, PacketInfo,
    PacketKind, Protocol, Snat, Tuple, Zone,
};
use vswitch::port::PortId;
use vswitch::tables::fdb::Fdb;
use vswitch::tables::snapshot::{
    NetworkEntry, NetworkId, NextHop, RouteEntry, RouteEntry6, RouteOrigin, SubnetId,
};

mod common;

/// Keys each benchmark cycles through.
const PROBES: usize = 4096;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` with the caller's arguments; the counter
// only observes sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Prints what building a table of `n` entries allocated (`before`: [`LIVE`] before it).
fn report_memory(table: &str, n: usize, before: usize) {
    let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "memory: {table} with {n} entries: {:.1} MiB, {} bytes per entry",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / n.max(1)
    );
}

/// A deterministic generator (SplitMix64): the same tables every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value below `n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

/// The `i`-th of a family of distinct UDP flows: client 10.a.b.c:port to one server.
fn flow(i: usize) -> Tuple {
    let host = u32::try_from(i / 50_000).expect("fits") + 1;
    let port = u16::try_from(1024 + i % 50_000).expect("fits");
    let src = Ipv4Addr::from(0x0a00_0000 | host);
    Tuple::new(
        Protocol::Udp,
        Endpoint::new(IpAddr::V4(src), port),
        Endpoint::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 53),
    )
}

fn udp(tuple: Tuple) -> PacketInfo {
    PacketInfo {
        tuple,
        kind: PacketKind::Udp,
    }
}

/// Probe indices spread over `0..n`.
fn probes(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    (0..PROBES).map(|_| rng.below(n)).collect()
}

fn conntrack_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/conntrack_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [1, 1_000, 100_000, 1_000_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let table = Conntrack::new(ConntrackConfig {
            max_entries: n,
            ..ConntrackConfig::default()
        });
        let zone = Zone(0);
        for i in 0..n {
            table
                .create(
                    zone,
                    &udp(flow(i)),
                    &NatPlan::none(zone),
                    Default::default(),
                    0,
                )
                .expect("room for every flow");
        }
        assert_eq!(table.len(), n);
        report_memory("conntrack", n, before);
        let packets: Vec<PacketInfo> = probes(n, 1).into_iter().map(|i| udp(flow(i))).collect();
        assert!(packets.iter().all(|p| table.lookup(zone, p, 1).is_some()));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                next = (next + 1) % PROBES;
                black_box(table.lookup(zone, black_box(&packets[next]), 1))
            });
        });
    }
    group.finish();
}

/// The `i`-th locally administered unicast MAC.
fn mac(i: usize) -> [u8; 6] {
    let [_, _, _, _, a, b, c, d] = u64::try_from(i).expect("fits").to_be_bytes();
    [0x02, 0x42, a, b, c, d]
}

fn fdb_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/fdb_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [1, 1_000, 10_000, 100_000] {
        let subnet = common::subnet(n);
        let before = LIVE.load(Ordering::Relaxed);
        let fdb = Fdb::new();
        for i in 0..n {
            let port = PortId(u32::try_from(i % 2).expect("fits") + 1);
            fdb.learn(&subnet, mac(i), port, 0);
        }
        assert_eq!(fdb.len(), n);
        report_memory("fdb", n, before);
        let macs: Vec<[u8; 6]> = probes(n, 2).into_iter().map(mac).collect();
        assert!(macs.iter().all(|m| fdb.lookup(&subnet, *m, 1).is_some()));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                next = (next + 1) % PROBES;
                black_box(fdb.lookup(&subnet, black_box(macs[next]), 1))
            });
        });
    }
    group.finish();
}

/// `n` distinct IPv4 prefixes of lengths 8 to 32 (random, as a real table's are not),
/// and one address inside each of `PROBES` of them.
fn routes4(n: usize) -> (Vec<RouteEntry>, Vec<Ipv4Addr>) {
    let mut rng = Rng(3);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut routes = Vec::with_capacity(n);
    while routes.len() < n {
        let len = u8::try_from(8 + rng.below(25)).expect("fits");
        let addr = Ipv4Addr::from(u32::try_from(rng.next() >> 32).expect("fits"));
        let prefix = Ipv4Net::new(addr, len).expect("valid length").trunc();
        if seen.insert(prefix) {
            routes.push(RouteEntry {
                prefix,
                subnet: SubnetId(1),
                next_hop: NextHop::Direct,
                origin: RouteOrigin::Connected,
            });
        }
    }
    let destinations = probes(n, 4)
        .into_iter()
        .map(|i| {
            let net = routes[i].prefix;
            // The host part of a random address: any address inside the prefix.
            let random = u32::try_from(rng.next() >> 32).expect("fits");
            Ipv4Addr::from(u32::from(net.network()) | (random & !u32::from(net.netmask())))
        })
        .collect();
    (routes, destinations)
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/route_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [1, 1_000, 100_000, 1_000_000] {
        let (routes, destinations) = routes4(n);
        let before = LIVE.load(Ordering::Relaxed);
        let network = NetworkEntry::new(NetworkId(0), "default".into(), routes);
        report_memory("IPv4 routes", n, before);
        assert!(destinations.iter().all(|d| network.lookup(*d).is_some()));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                next = (next + 1) % PROBES;
                black_box(network.lookup(black_box(destinations[next])))
            });
        });
    }
    group.finish();
}

fn route6_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/route6_lookup");
    group.throughput(Throughput::Elements(1));
    for n in [1, 1_000, 100_000] {
        let mut rng = Rng(5);
        let mut seen = std::collections::HashSet::with_capacity(n);
        let mut routes = Vec::with_capacity(n);
        while routes.len() < n {
            let len = u8::try_from(16 + rng.below(113)).expect("fits");
            let bits = u128::from(rng.next()) << 64 | u128::from(rng.next());
            let prefix = Ipv6Net::new(Ipv6Addr::from(bits), len)
                .expect("valid length")
                .trunc();
            if seen.insert(prefix) {
                routes.push(RouteEntry6 {
                    prefix,
                    subnet: SubnetId(1),
                    next_hop: NextHop::Direct,
                    origin: RouteOrigin::Connected,
                });
            }
        }
        let destinations: Vec<Ipv6Addr> = probes(n, 6)
            .into_iter()
            .map(|i| routes[i].prefix.network())
            .collect();
        let network =
            NetworkEntry::new(NetworkId(0), "default".into(), Vec::new()).with_routes6(routes);
        assert!(destinations.iter().all(|d| network.lookup6(*d).is_some()));
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                next = (next + 1) % PROBES;
                black_box(network.lookup6(black_box(destinations[next])))
            });
        });
    }
    group.finish();
}

/// Creating and removing one masqueraded connection (a new NAT mapping, its port taken and
/// given back) while `n` other mappings exist, spread over interfaces, 2,000 each (a block holds
/// 2,048 ports by default), all on one NAT address.
fn nat_mapping(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale/nat_new_mapping");
    group.throughput(Throughput::Elements(1));
    let gateway = Gateway::new(vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))]);
    let zone = Zone(0);
    let per_interface = 2_000;
    for n in [1, 1_000, 10_000, 60_000] {
        let table = Conntrack::new(ConntrackConfig {
            max_entries: n + 16,
            ..ConntrackConfig::default()
        });
        let plan = |interface: usize| NatPlan {
            dnat: None,
            snat: Snat::Masquerade {
                gateway: &gateway,
                interface: InterfaceId(u32::try_from(interface).expect("fits")),
            },
            reply_zone: zone,
        };
        // Flow i comes from interface i / per_interface (its own source address).
        let from = |i: usize| {
            let interface = i / per_interface;
            let host = u32::try_from(interface).expect("fits") + 1;
            let port = u16::try_from(1024 + i % per_interface).expect("fits");
            Tuple::new(
                Protocol::Udp,
                Endpoint::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host)), port),
                Endpoint::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 53),
            )
        };
        for i in 0..n {
            table
                .create(
                    zone,
                    &udp(from(i)),
                    &plan(i / per_interface),
                    Default::default(),
                    0,
                )
                .expect("a port for every mapping");
        }
        assert_eq!(table.len(), n);
        // The new flow: from the last interface, a port none of its flows uses.
        let last = (n - 1) / per_interface;
        let fresh = Tuple::new(
            Protocol::Udp,
            Endpoint::new(from(last * per_interface).src, 60_000),
            Endpoint::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 53),
        );
        let key = FlowKey::new(zone, fresh);
        let packet = udp(fresh);
        let new_plan = plan(last);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let tracked = table
                    .create(zone, black_box(&packet), &new_plan, Default::default(), 1)
                    .expect("a free port");
                assert!(table.remove(&key));
                black_box(tracked)
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    conntrack_lookup,
    fdb_lookup,
    route_lookup,
    route6_lookup,
    nat_mapping
);
criterion_main!(benches);
