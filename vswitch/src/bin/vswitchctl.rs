//! `vswitchctl`: the command-line client of vswitchd's control socket. See `vswitchctl --help`
//! and docs/cli.md; the implementation lives in [`vswitch::cli`].

fn main() -> std::process::ExitCode {
    vswitch::cli::main()
}
