//! The pipeline's `parse` stage on arbitrary bytes (virtio header and Ethernet frame): every
//! input is a parsed frame or a drop reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = std::hint::black_box(vswitch::pipeline::parse::parse(std::hint::black_box(data)));
});
