//! A CNI invocation: the network configuration on stdin (arbitrary bytes) with an ADD
//! environment, as a runtime hands it to `vswitch-cni`. Parsed, or a spec error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let command = match data.first().map(|b| b % 4) {
        Some(0) => "ADD",
        Some(1) => "DEL",
        Some(2) => "CHECK",
        _ => "GC",
    };
    let env = |name: &str| -> Option<String> {
        match name {
            "CNI_COMMAND" => Some(command.to_string()),
            "CNI_CONTAINERID" => Some("fuzz".to_string()),
            "CNI_NETNS" => Some("/run/netns/fuzz".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            "CNI_ARGS" => Some("IgnoreUnknown=1;K8S_POD_NAME=p".to_string()),
            _ => None,
        }
    };
    let stdin = data.get(1..).unwrap_or_default();
    let _ = std::hint::black_box(cni::Invocation::parse(&env, std::hint::black_box(stdin)));
});
