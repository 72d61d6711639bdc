//! Daemon lifecycle: restart after kill -9, clean stop, detach, refusing to run unprivileged.

// Integration tests live at the top level of their file, as cargo expects.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Daemon, Netns, require, run_any};

/// kill -9, start again on the same state directory: the containers keep their interfaces and
/// addresses, and traffic resumes without a new attach.
#[test]
fn restart_after_kill9_resumes_traffic() {
    require(&["ping"]);
    let mut daemon = Daemon::start(2);
    let c1 = Netns::new("ra");
    let c2 = Netns::new("rb");
    let ip1 = daemon.attach(&c1, &[]);
    let ip2 = daemon.attach(&c2, &["--kind", "veth"]);
    c1.ping_ok(&ip2, 2);
    let before = daemon.ctl_json(&["get", "networkinterfaces"]);

    daemon.kill9();
    // The ports survive the daemon: the TAP is persistent, the veth pair stays.
    assert!(c1.exec(&["ip", "link", "show", "eth0"]).status.success());
    assert!(c2.exec(&["ip", "link", "show", "eth0"]).status.success());

    daemon.spawn(&[]);
    assert!(
        c1.ping_until(&ip2, Duration::from_secs(10)),
        "traffic c1 -> c2 did not resume within 10 s of the restart\n{}",
        common::tail(&daemon.log_text(), 40)
    );
    c2.ping_ok(&ip1, 2);
    let after = daemon.ctl_json(&["get", "networkinterfaces"]);
    for (b, a) in before
        .as_array()
        .expect("list")
        .iter()
        .zip(after.as_array().expect("list"))
    {
        assert_eq!(b["metadata"]["name"], a["metadata"]["name"]);
        assert_eq!(
            b["status"]["ips"], a["status"]["ips"],
            "addresses must be kept"
        );
        assert_eq!(b["status"]["mac"], a["status"]["mac"], "MACs must be kept");
    }

    // Detach removes the interface from the container and releases the address.
    daemon.ctl_ok(&["detach", &c1.name]);
    assert!(
        !c1.exec(&["ip", "link", "show", "eth0"]).status.success(),
        "eth0 must be gone from {} after detach",
        c1.name
    );
    let c3 = Netns::new("rc");
    let ip3 = daemon.attach(&c3, &[]);
    c3.ping_ok(&ip2, 1);
    let list = daemon.ctl_json(&["get", "networkinterfaces"]);
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let _ = ip3;
}

/// SIGTERM stops the daemon cleanly: exit status 0, socket removed, socket mode 0600 while up.
#[test]
fn sigterm_stops_cleanly_and_socket_is_private() {
    require(&[]);
    let mut daemon = Daemon::start(1);
    let mode = std::fs::metadata(&daemon.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "control socket must be mode 0600, is {mode:o}");
    let status = daemon.terminate().expect("daemon was running");
    assert!(
        status.success(),
        "vswitchd should exit 0 on SIGTERM, got {status}\n{}",
        daemon.log_text()
    );
    assert!(
        !daemon.socket.exists(),
        "the socket file must be removed on a clean stop"
    );
}

/// Without root or CAP_NET_ADMIN vswitchd refuses to start and says why.
#[test]
fn refuses_to_run_unprivileged() {
    require(&["setpriv"]);
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("s.sock");
    let out = run_any(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            env!("CARGO_BIN_EXE_vswitchd"),
            "--socket",
            socket.to_str().expect("utf8"),
            "--state-dir",
            dir.path().join("st").to_str().expect("utf8"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "vswitchd must not start unprivileged"
    );
    assert!(
        stderr.contains("CAP_NET_ADMIN") && stderr.contains("root"),
        "the message must say root or CAP_NET_ADMIN is needed: {stderr}"
    );
}
