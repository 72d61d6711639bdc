//! Criterion micro-benchmarks of the datapath's hot functions in `vswitch`: the Internet
//! checksum, GSO segmentation, GRO coalescing (the copying coalescer and the in-place merge of
//! a `UDP_GRO` buffer of VXLAN datagrams) and one frame of L2 forwarding through the pipeline.
//!
//! Each benchmark states its throughput (bytes or frames per iteration), so criterion reports
//! GB/s or frames/s besides the time. Run with
//! `cargo bench -p perf --bench datapath` (add `-- <filter>` for a subset); `perf/README.md`
//! says what each one measures. Before measuring, every benchmark checks once that the
//! function does the work measured (segment counts, merged length, verdict) and panics
//! otherwise: a benchmark of a refused input would measure an error path.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::ops::Range;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vswitch::pipeline::{self, Context, Local, Verdict};
use vswitch::port::PortId;
use vswitch::tables::fdb::Fdb;
use vswitch::tables::neigh::Neighbors;
use vswitch::tables::snapshot::{DEFAULT_MAC_LIMIT, PortEntry, Snapshot, SubnetId};

mod common;
use vswitch::wire::checksum;
use vswitch::wire::gro::{self, Coalescer};
use vswitch::wire::gso::Segmenter;
use vswitch::wire::{VNET_HDR_LEN, vnet_hdr};

/// Ethernet header length.
const ETH_LEN: usize = 14;
/// IPv4 header length (no options).
const IP_LEN: usize = 20;
/// TCP header length with the timestamps option Linux sends on every segment.
const TCP_LEN: usize = 20 + 12;
/// Offset of the IPv4 header in a frame (after the `virtio_net_hdr`).
const IP: usize = VNET_HDR_LEN + ETH_LEN;
/// Offset of the TCP header in a frame.
const TCP: usize = IP + IP_LEN;
/// The MSS of a TCP stream with timestamps over a 1500-byte MTU.
const MSS: usize = 1448;
/// Segments in the GSO super-frame: the most MSS-sized segments Linux puts in one 64 KiB
/// TSO frame (`tcp_tso_autosize` under `gso_max_size` 65536).
const GSO_SEGMENTS: usize = 45;
/// Segments coalesced by the GRO benchmarks (as in the unit test of `merge_in_place`).
const GRO_SEGMENTS: usize = 44;
/// IP protocol number of TCP.
const PROTOCOL_TCP: u8 = 6;
/// TCP flag ACK.
const TCP_ACK: u8 = 0x10;
/// The VXLAN header (flags I, VNI 42) in front of every datagram of the `UDP_GRO` buffer.
const VXLAN_42: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 42, 0];
/// The bytes of a merged frame's prefix that must be equal in every frame: the VXLAN header.
const VXLAN_SAME: Range<usize> = 2..10;

/// Source MAC of the TCP stream and of port 1.
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// Destination MAC of the TCP stream and of port 2.
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
/// Address of port 1.
const IP_A: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// Address of port 2.
const IP_B: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 3);

/// `len` as a throughput count (a `usize` always fits in a `u64` on the targets we build).
fn count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// `value` as a 16-bit header field; every length built here is below 65536.
fn field(value: usize) -> u16 {
    u16::try_from(value).expect("header field fits 16 bits")
}

/// `len` bytes of a non-constant pattern (so no sum is trivially 0).
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((i * 7 + seed) % 251).unwrap_or(0))
        .collect()
}

/// Writes the Ethernet header (MAC_A to MAC_B, IPv4) at the start of `eth`.
fn write_ethernet(eth: &mut [u8]) {
    eth[0..6].copy_from_slice(&MAC_B);
    eth[6..12].copy_from_slice(&MAC_A);
    eth[12..14].copy_from_slice(&[0x08, 0x00]);
}

/// Writes an IPv4 header (IHL 5, DF, TTL 64) with its checksum at the start of `ip`.
fn write_ipv4(ip: &mut [u8], total_len: usize, ident: u16, protocol: u8, src: Ipv4Addr) {
    let dst = if src == IP_A { IP_B } else { IP_A };
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&field(total_len).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0]);
    ip[8] = 64;
    ip[9] = protocol;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum::checksum(&ip[..IP_LEN]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Writes a TCP header with the timestamps option (ACK, window 512) at the start of `tcp`,
/// the payload after it, and the checksum: in full when `partial` is false, else the
/// pseudo-header sum a `NEEDS_CSUM` frame carries.
fn write_tcp(tcp: &mut [u8], seq: u32, payload: &[u8], partial: bool) {
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x7000_0000u32.to_be_bytes());
    tcp[12] = u8::try_from(TCP_LEN / 4).unwrap_or(5) << 4;
    tcp[13] = TCP_ACK;
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    tcp[16..20].copy_from_slice(&[0, 0, 0, 0]);
    // NOP, NOP, timestamps (value 1, echo 0x01020304).
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 1, 2, 3, 4]);
    tcp[TCP_LEN..TCP_LEN + payload.len()].copy_from_slice(payload);
    let l4_len = TCP_LEN + payload.len();
    let pseudo = checksum::pseudo_header_ipv4(IP_A, IP_B, PROTOCOL_TCP, field(l4_len));
    let value = if partial {
        pseudo
    } else {
        !checksum::combine(&[pseudo, checksum::sum(&tcp[..l4_len])])
    };
    tcp[16..18].copy_from_slice(&value.to_be_bytes());
}

/// A TCP over IPv4 GSO super-frame of `segments` MSS-sized segments, as a TAP with
/// `IFF_VNET_HDR` hands it over: `NEEDS_CSUM`, `gso_type` TCPV4, `gso_size` [`MSS`].
fn gso_super_frame(segments: usize) -> Vec<u8> {
    let payload = pattern(segments * MSS, 0);
    let ip_len = IP_LEN + TCP_LEN + payload.len();
    let mut frame = vec![0u8; IP + ip_len];
    {
        let mut vnet = vnet_hdr::Packet::new_unchecked(&mut frame[..VNET_HDR_LEN]);
        vnet.set_flags(vnet_hdr::flags::NEEDS_CSUM);
        vnet.set_gso_type(vnet_hdr::gso::TCPV4);
        vnet.set_hdr_len(field(ETH_LEN + IP_LEN + TCP_LEN));
        vnet.set_gso_size(field(MSS));
        vnet.set_csum_start(field(ETH_LEN + IP_LEN));
        vnet.set_csum_offset(16);
    }
    write_ethernet(&mut frame[VNET_HDR_LEN..IP]);
    write_ipv4(&mut frame[IP..TCP], ip_len, 0x1234, PROTOCOL_TCP, IP_A);
    write_tcp(&mut frame[TCP..], 0x1000_0000, &payload, true);
    frame
}

/// `segments` consecutive wire-sized TCP segments of one flow (MSS bytes each, incrementing
/// identification, full checksums), each a frame with a zeroed `virtio_net_hdr`.
fn tcp_stream(segments: usize) -> Vec<Vec<u8>> {
    (0..segments)
        .map(|i| {
            let payload = pattern(MSS, i);
            let ip_len = IP_LEN + TCP_LEN + MSS;
            let mut frame = vec![0u8; IP + ip_len];
            write_ethernet(&mut frame[VNET_HDR_LEN..IP]);
            let ident = 0x1000u16.wrapping_add(field(i));
            write_ipv4(&mut frame[IP..TCP], ip_len, ident, PROTOCOL_TCP, IP_A);
            let seq = 0x1000_0000u32.wrapping_add(u32::try_from(i * MSS).unwrap_or(0));
            write_tcp(&mut frame[TCP..], seq, &payload, false);
            frame
        })
        .collect()
}

/// The frames laid out as the datagrams of one `UDP_GRO` receive buffer: 2 pad bytes, then
/// per frame the VXLAN header and the Ethernet frame. View `j` starts 2 bytes before the
/// VXLAN header of frame `j`, so its 10-byte prefix is where a `virtio_net_hdr` would be.
fn udp_gro_buffer(frames: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut buf = vec![0u8; 2];
    let mut views = Vec::with_capacity(frames.len());
    for frame in frames {
        let start = buf.len() - 2;
        buf.extend_from_slice(&VXLAN_42);
        buf.extend_from_slice(&frame[VNET_HDR_LEN..]);
        views.push(start..buf.len());
    }
    (buf, views)
}

/// `checksum/sum/<len>`: the ones' complement sum over 64 B, 1500 B and 64 KiB.
fn bench_checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("checksum/sum");
    for len in [64, 1500, 64 * 1024] {
        let data = pattern(len, 3);
        group.throughput(Throughput::Bytes(count(len)));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| checksum::sum(black_box(data)));
        });
    }
    group.finish();
}

/// `gso/segment_tcp4_64k`: one 64 KiB TCP/IPv4 super-frame into 45 wire-sized segments,
/// each handed to an `emit` that only reads its length.
fn bench_gso(c: &mut Criterion) {
    let frame = gso_super_frame(GSO_SEGMENTS);
    let mut segmenter = Segmenter::new();
    let mut emitted = 0usize;
    let segments = segmenter
        .segment(&frame, |segment| emitted += segment.len())
        .expect("the super-frame segments");
    assert_eq!(segments, GSO_SEGMENTS, "segment count");
    assert_eq!(
        emitted,
        GSO_SEGMENTS * (TCP + TCP_LEN + MSS),
        "segment bytes"
    );

    let mut group = c.benchmark_group("gso");
    group.throughput(Throughput::Bytes(count(frame.len())));
    group.bench_function("segment_tcp4_64k", |b| {
        b.iter(|| {
            let mut total = 0usize;
            let result = segmenter.segment(black_box(&frame), |segment| {
                total += black_box(segment).len();
            });
            (result, total)
        });
    });
    group.finish();
}

/// `gro/coalescer_44x1448`: 44 consecutive segments pushed into a [`Coalescer`] and flushed
/// as one super-frame; `gro/merge_in_place_44x1448`: the same segments merged in place in a
/// `UDP_GRO` buffer of VXLAN datagrams (the buffer is re-copied, untimed, before each run).
fn bench_gro(c: &mut Criterion) {
    let frames = tcp_stream(GRO_SEGMENTS);
    let merged_len = IP + IP_LEN + TCP_LEN + GRO_SEGMENTS * MSS;

    let mut coalescer = Coalescer::new();
    let mut out = Vec::new();
    {
        let mut emit = |frame: &[u8]| out.push(frame.len());
        for frame in &frames {
            coalescer.push(frame, &mut emit);
        }
        coalescer.flush(&mut emit);
    }
    assert_eq!(out, [merged_len], "one super-frame of every segment");

    let (pristine, views) = udp_gro_buffer(&frames);
    let mut check = pristine.clone();
    let merged = gro::merge_in_place(
        &mut check,
        views.len(),
        |j| views[j].clone(),
        VXLAN_SAME,
        false,
    )
    .expect("the buffer merges");
    assert_eq!(merged.segments, GRO_SEGMENTS, "merged segments");
    assert_eq!(merged.len, merged_len, "merged length");
    assert_eq!(usize::from(merged.mss), MSS, "merged MSS");

    let mut group = c.benchmark_group("gro");
    group.throughput(Throughput::Elements(count(GRO_SEGMENTS)));
    group.bench_function("coalescer_44x1448", |b| {
        b.iter(|| {
            let mut total = 0usize;
            let mut emit = |frame: &[u8]| total += black_box(frame).len();
            for frame in &frames {
                coalescer.push(black_box(frame), &mut emit);
            }
            coalescer.flush(&mut emit);
            total
        });
    });
    group.bench_function("merge_in_place_44x1448", |b| {
        b.iter_batched_ref(
            || pristine.clone(),
            |buf| {
                gro::merge_in_place(
                    black_box(buf),
                    GRO_SEGMENTS,
                    |j| views[j].clone(),
                    VXLAN_SAME,
                    false,
                )
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// A TAP port of subnet 1 with one address.
fn port(id: u32, mac: [u8; 6], ip: Ipv4Addr) -> PortEntry {
    PortEntry::detached_tap(PortId(id), SubnetId(1), mac, vec![ip])
}

/// A 64-byte UDP frame (60 bytes plus the FCS the wire adds; 18 bytes of payload, as the
/// harness's UDP sender) from port 1 to port 2, behind a zeroed `virtio_net_hdr`.
fn udp_64_byte_frame() -> Vec<u8> {
    const UDP_LEN: usize = 8 + 18;
    let mut frame = vec![0u8; VNET_HDR_LEN + 60];
    write_ethernet(&mut frame[VNET_HDR_LEN..IP]);
    write_ipv4(&mut frame[IP..TCP], IP_LEN + UDP_LEN, 1, 17, IP_A);
    let udp = &mut frame[TCP..TCP + UDP_LEN];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    udp[4..6].copy_from_slice(&field(UDP_LEN).to_be_bytes());
    udp[8..].copy_from_slice(&pattern(18, 5));
    let pseudo = checksum::pseudo_header_ipv4(IP_A, IP_B, 17, field(UDP_LEN));
    let sum = !checksum::combine(&[pseudo, checksum::sum(udp)]);
    udp[6..8].copy_from_slice(&if sum == 0 { 0xffff } else { sum }.to_be_bytes());
    frame
}

/// `pipeline/l2_forward_64b`: one 64-byte frame through `pipeline::process` (parse, port
/// security, learning of a known source, FDB lookup) to a `Forward` verdict.
fn bench_pipeline(c: &mut Criterion) {
    let subnet = common::subnet(DEFAULT_MAC_LIMIT);
    let snapshot = Snapshot::new(
        vec![port(1, MAC_A, IP_A), port(2, MAC_B, IP_B)],
        vec![subnet.clone()],
    );
    let ingress = snapshot.port(PortId(1)).expect("port 1");
    let fdb = Fdb::new();
    // Port 2's MAC is known, as after its first frame.
    fdb.learn(&subnet, MAC_B, PortId(2), 0);
    let neighbors = Neighbors::new();
    let remote_fdb = vxlan::VxlanSharedFdb::new(Default::default());
    let ctx = Context {
        snapshot: &snapshot,
        fdb: &fdb,
        neighbors: &neighbors,
        remote_fdb: &remote_fdb,
        now_ms: 0,
        trace: None,
    };
    let mut local = Local::new(0);
    let mut frame = udp_64_byte_frame();
    let outcome = pipeline::process(&ctx, ingress, &mut frame, &mut local);
    assert_eq!(outcome.verdict, Verdict::Forward(PortId(2)), "forwarded");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("l2_forward_64b", |b| {
        b.iter(|| pipeline::process(&ctx, ingress, black_box(&mut frame), &mut local).verdict);
    });
    group.finish();
}

/// `vlan/push_1500` and `vlan/push_64`: a frame copied with an 802.1Q tag pushed, as a
/// VLAN's frames leave the uplink; `bond/member_for`: the member a TCP/IPv4 frame's flow
/// leaves a two-member bond on (hash, bucket, one relaxed load).
fn bench_vlan_bond(c: &mut Criterion) {
    let mut group = c.benchmark_group("vlan");
    for len in [64usize, 1500] {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(&pattern(len, 5));
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        let mut out = Vec::with_capacity(frame.len() + 4);
        vswitch::pipeline::tx::push_vlan(&frame, 0x8100, 10, &mut out);
        assert_eq!(out.len(), frame.len() + 4, "the tag is pushed");
        group.throughput(Throughput::Bytes(count(len)));
        group.bench_function(format!("push_{len}"), |b| {
            b.iter(|| vswitch::pipeline::tx::push_vlan(black_box(&frame), 0x8100, 10, &mut out));
        });
    }
    group.finish();
    let bond = vswitch::tables::bond::Bond::new(vswitch::tables::bond::BondMode::Lacp, 2);
    bond.publish(&[true, true], None);
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 12]);
    frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x40, 0x00, 0x50]);
    frame.resize(VNET_HDR_LEN + 54, 0);
    assert!(
        bond.member_for(&frame).is_some(),
        "a member carries the flow"
    );
    let mut group = c.benchmark_group("bond");
    group.throughput(Throughput::Elements(1));
    group.bench_function("member_for", |b| {
        b.iter(|| bond.member_for(black_box(&frame)));
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_checksum,
    bench_gso,
    bench_gro,
    bench_pipeline,
    bench_vlan_bond
);
criterion_main!(benches);
