//! Resource documents (YAML or JSON, one or several) as `apply` reads them: accepted, or
//! refused with an error that names where; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let parsed = vswitch::control::resource::parse_documents(std::hint::black_box(text));
        if let Err(error) = &parsed {
            // Every refusal has a message.
            assert!(!error.to_string().is_empty());
        }
        let _ = std::hint::black_box(parsed);
    }
});
