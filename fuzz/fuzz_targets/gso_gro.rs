//! The virtio-net header, GSO segmentation and GRO merging, with the invariant that ties them:
//! segmenting a super-frame and merging its segments again (through the coalescer, and in
//! place as the VTEP's receive path does) gives back super-frames whose segmentation is the
//! same stream, byte for byte.
//!
//! Input: arbitrary bytes, read as a `virtio_net_hdr` followed by an Ethernet frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vswitch::wire::gro::{Coalescer, merge_in_place, write_super_frame_vnet_header};
use vswitch::wire::gso::Segmenter;
use vswitch::wire::vnet_hdr::{self, HEADER_LEN};

/// A TCP over IPv4 frame's checksum 0xffff and 0 are the same number in ones' complement;
/// the segmenter writes 0xffff in an unsplit frame and 0 in a split's segments.
fn normalise(frame: &[u8]) -> Vec<u8> {
    const IP: usize = HEADER_LEN + 14;
    let mut frame = frame.to_vec();
    if frame.len() >= IP + 20 + 18
        && frame[HEADER_LEN + 12..IP] == [0x08, 0x00]
        && frame[IP] == 0x45
        && frame[IP + 9] == 6
        && frame[IP + 20 + 16..IP + 20 + 18] == [0xff, 0xff]
    {
        frame[IP + 20 + 16..IP + 20 + 18].fill(0);
    }
    frame
}

fn is_gso(frame: &[u8]) -> bool {
    vnet_hdr::Packet::new_checked(frame).is_ok_and(|p| p.is_gso())
}

/// Segments `frames` (super-frames or plain ones) into the stream of plain frames they carry.
fn expand(segmenter: &mut Segmenter, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for frame in frames {
        if is_gso(frame) {
            segmenter
                .segment(frame, |s| out.push(normalise(s)))
                .expect("a merged super-frame segments");
        } else {
            out.push(normalise(frame));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // The header: parse, and what parses emits back to the same bytes.
    if let Ok(packet) = vnet_hdr::Packet::new_checked(data)
        && let Ok(repr) = vnet_hdr::Repr::parse(&packet)
    {
        let mut again = data[..HEADER_LEN].to_vec();
        repr.emit(&mut vnet_hdr::Packet::new_unchecked(&mut again[..]));
        let reparsed = vnet_hdr::Repr::parse(&vnet_hdr::Packet::new_unchecked(
            &[&again[..], &data[HEADER_LEN..]].concat()[..],
        ));
        assert_eq!(reparsed, Ok(repr));
    }

    let mut segmenter = Segmenter::new();
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let Ok(count) = segmenter.segment(std::hint::black_box(data), |s| segments.push(s.to_vec()))
    else {
        return;
    };
    assert_eq!(count, segments.len());
    assert!(count >= 1);
    for segment in &segments {
        let packet = vnet_hdr::Packet::new_checked(&segment[..]).expect("a segment has a header");
        assert!(!packet.is_gso() && !packet.needs_csum(), "segments are complete frames");
    }
    let stream: Vec<Vec<u8>> = segments.iter().map(|s| normalise(s)).collect();

    // Through the coalescer: the same stream comes back.
    let mut coalescer = Coalescer::new();
    let mut merged: Vec<Vec<u8>> = Vec::new();
    for segment in &segments {
        coalescer.push(segment, &mut |f| merged.push(f.to_vec()));
    }
    coalescer.flush(&mut |f| merged.push(f.to_vec()));
    assert!(merged.len() <= segments.len());
    assert_eq!(expand(&mut segmenter, &merged), stream);

    // In place, the segments back to back as a UDP_GRO buffer lays them out.
    let mut buf: Vec<u8> = segments.concat();
    let mut views = Vec::with_capacity(segments.len());
    let mut at = 0;
    for segment in &segments {
        views.push(at..at + segment.len());
        at += segment.len();
    }
    if let Some(run) = merge_in_place(&mut buf, views.len(), |j| views[j].clone(), 0..0, false) {
        assert!(run.segments >= 2 && run.segments <= segments.len());
        assert!(run.len <= buf.len());
        let mut super_frame = buf[..run.len].to_vec();
        assert!(write_super_frame_vnet_header(&mut super_frame, run.mss));
        let mut frames = vec![super_frame];
        frames.extend(segments[run.segments..].iter().cloned());
        assert_eq!(expand(&mut segmenter, &frames), stream);
    }
});
