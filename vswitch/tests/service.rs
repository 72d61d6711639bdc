//! vswitchd as a service: the readiness notification systemd's `Type=notify` waits for, the
//! boot config read from a directory (in order, all or nothing), the unit file as systemd
//! reads it, and the install layout.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, require};

/// The next notification on `socket`, as text.
fn next_notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = socket
        .recv(&mut buf)
        .expect("no notification from vswitchd within 30 s");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[test]
#[ignore = "needs root: starts vswitchd"]
fn readiness_is_notified_once_the_socket_answers_and_stopping_on_sigterm() {
    require(&[]);
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let socket = dir.path().join("vs.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--workers")
        .arg("1")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vswitchd");
    let ready = next_notification(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means ready: the first request after READY=1 is answered, without retrying.
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["get", "subnets"])
        .output()
        .expect("vswitchctl");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("172.30.0.0/16"),
        "{out:?}"
    );
    // SIGTERM: STOPPING=1, then a clean exit.
    let pid = i32::try_from(child.id()).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to our own child");
    let stopping = next_notification(&notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
}

/// A Network and a Subnet, as one file's text.
const NETWORK: &str = "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {name: boot}\n";

fn subnet(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {name}}}\nspec: {{network: boot, cidr: {cidr}}}\n"
    )
}

/// Runs vswitchd with `--config dir` until it fails at start; its stderr.
fn refused_start(dir: &Path) -> String {
    let state = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("--socket")
        .arg(state.path().join("vs.sock"))
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .arg("--config")
        .arg(dir)
        .output()
        .expect("vswitchd");
    assert!(!out.status.success(), "a bad --config must stop the start");
    // Nothing of the good files was kept: a later start without the bad file starts clean.
    let state_file =
        std::fs::read_to_string(state.path().join("state/state.json")).unwrap_or_default();
    assert!(
        !state_file.contains("\"boot\""),
        "half a config was saved: {state_file}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "needs root: starts vswitchd"]
fn config_directory_is_applied_in_order_all_or_nothing() {
    require(&[]);
    let config = tempfile::tempdir().expect("tmp");
    let dir = config.path();
    // The Subnet in 20 names the Network in 10; files that are not YAML or JSON, and hidden
    // ones, are not read.
    std::fs::write(dir.join("10-network.yaml"), NETWORK).expect("write");
    std::fs::write(dir.join("20-subnet.yml"), subnet("boot-a", "10.61.0.0/24")).expect("write");
    std::fs::write(
        dir.join("30-subnet.json"),
        r#"{"apiVersion": "vswitch/v1alpha1", "kind": "Subnet", "metadata": {"name": "boot-b"}, "spec": {"network": "boot", "cidr": "10.62.0.0/24"}}"#,
    )
    .expect("write");
    std::fs::write(dir.join("README"), "not a resource").expect("write");
    std::fs::write(dir.join(".99-draft.yaml"), "kind: [").expect("write");
    let daemon = Daemon::start_with(1, &["--config", dir.to_str().expect("utf8")]);
    let subnets = daemon.ctl_ok(&["get", "subnets"]);
    assert!(
        subnets.contains("10.61.0.0/24") && subnets.contains("10.62.0.0/24"),
        "{subnets}"
    );
    drop(daemon);

    // A bad file stops the start, naming the file and the document; the good ones are not
    // applied either.
    std::fs::write(
        dir.join("40-bad.yaml"),
        format!(
            "{}---\n{}",
            subnet("boot-c", "10.63.0.0/24"),
            subnet("boot-d", "10.64.0.0/33")
        ),
    )
    .expect("write");
    let stderr = refused_start(dir);
    let bad = dir.join("40-bad.yaml");
    assert!(
        stderr.contains(&format!(
            "{}: document 2 (Subnet \"boot-d\"): spec.cidr",
            bad.display()
        )),
        "{stderr}"
    );
    // Problems in several files are all reported.
    std::fs::write(dir.join("50-worse.yaml"), "kind: Subnet\nspec: [").expect("write");
    let stderr = refused_start(dir);
    assert!(
        stderr.contains("40-bad.yaml") && stderr.contains("50-worse.yaml"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs root: installs into a staging directory and runs systemd-analyze"]
fn unit_verifies_and_install_stages_the_layout() {
    require(&["systemd-analyze"]);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vswitchd"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    // The unit as systemd reads it, pointing at the binaries just built.
    let unit = std::fs::read_to_string(root.join("packaging/vswitchd.service")).expect("unit");
    assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
    let staged = tempfile::tempdir().expect("tmp");
    let rendered = staged.path().join("vswitchd.service");
    std::fs::write(
        &rendered,
        unit.replace("@BINDIR@", bin_dir.to_str().expect("utf8")),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&rendered)
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The install script, staged.
    let destdir = staged.path().join("root");
    let install = || {
        let out = Command::new(root.join("scripts/install.sh"))
            .arg("--destdir")
            .arg(&destdir)
            .arg("--from")
            .arg(&bin_dir)
            .output()
            .expect("install.sh");
        assert!(out.status.success(), "{out:?}");
    };
    install();
    for path in [
        "usr/local/bin/vswitchd",
        "usr/local/bin/vswitchctl",
        "usr/lib/cni/vswitch-cni",
        "etc/systemd/system/vswitchd.service",
        "etc/vswitch/00-default.yaml",
        "usr/local/share/doc/vswitch/README.md",
        "usr/local/share/doc/vswitch/docs/api.md",
        "usr/local/share/doc/vswitch/examples/10-vswitch.conflist",
    ] {
        assert!(destdir.join(path).exists(), "{path} not installed");
    }
    let installed =
        std::fs::read_to_string(destdir.join("etc/systemd/system/vswitchd.service")).expect("unit");
    assert!(
        installed.contains("ExecStart=/usr/local/bin/vswitchd --config /etc/vswitch"),
        "{installed}"
    );
    // The default config is the daemon's own.
    let default =
        std::fs::read_to_string(destdir.join("etc/vswitch/00-default.yaml")).expect("config");
    assert!(default.contains("cidr: 172.30.0.0/16"), "{default}");
    // A second install keeps the administrator's config.
    std::fs::write(destdir.join("etc/vswitch/00-default.yaml"), "# mine\n").expect("write");
    install();
    assert_eq!(
        std::fs::read_to_string(destdir.join("etc/vswitch/00-default.yaml")).expect("config"),
        "# mine\n"
    );
}
