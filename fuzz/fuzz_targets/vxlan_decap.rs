//! VXLAN decapsulation of arbitrary UDP payloads, with and without remote checksum offload
//! accepted: a decapsulated frame's range lies inside the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decapsulated) = vxlan::encap::decapsulate(std::hint::black_box(data)) {
        assert!(decapsulated.inner.end <= data.len());
        assert!(decapsulated.inner.start <= decapsulated.inner.end);
    }
    if let Ok((_, decapsulated)) = vxlan::encap::decapsulate_with_rco(data, true, Some) {
        assert!(decapsulated.inner.end <= data.len());
    }
});
