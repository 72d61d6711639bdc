//! `vswitch-cni`: the CNI plugin that attaches containers to vswitchd (CNI spec 1.0.0 and
//! 1.1.0). Container runtimes run it; see docs/cni.md. The implementation lives in
//! [`vswitch::cli::cni`], the protocol in the `cni` crate.

fn main() -> std::process::ExitCode {
    vswitch::cli::cni::main()
}
