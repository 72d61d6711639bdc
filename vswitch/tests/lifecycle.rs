//! Daemon lifecycle: restart after kill -9, clean stop, detach, refusing to run unprivileged,
//! worker placement.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Daemon, Netns, require, run_any};

/// kill -9, start again on the same state directory: the containers keep their interfaces and
/// addresses, and traffic resumes without a new attach.
#[test]
#[ignore = "needs root: starts vswitchd and attaches network namespaces through TAP and veth ports"]
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
#[ignore = "needs root: starts vswitchd"]
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
#[ignore = "needs root: drops to an unprivileged user with setpriv"]
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

/// The `Cpus_allowed_list` of a `/proc/.../status` file (`0-1`, `1`).
fn cpus_allowed(status: &std::path::Path) -> String {
    let status = std::fs::read_to_string(status).expect("status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status");
    line.trim().to_string()
}

/// The CPUs thread `comm` of process `pid` may run on, as `/proc` lists them.
fn thread_cpus(pid: u32, comm: &str) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    for task in tasks {
        let task = task.expect("task entry").path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        return cpus_allowed(&task.join("status"));
    }
    panic!("no thread named {comm} in process {pid}");
}

/// By default each worker is pinned to its own CPU, the highest first; `--worker-cpus none`
/// leaves them to the scheduler, and a list pins them where it says.
#[test]
#[ignore = "needs root: starts vswitchd"]
fn workers_are_pinned_by_default() {
    require(&[]);
    let allowed = cpus_allowed(std::path::Path::new("/proc/self/status"));
    let cpus = vswitch::runtime::affinity::allowed_cpus().expect("sched_getaffinity");
    let highest = cpus.last().expect("a CPU").to_string();

    let daemon = Daemon::start(2);
    let pid = daemon.pid().expect("running");
    assert_eq!(
        thread_cpus(pid, "vswitch-w0"),
        highest,
        "worker 0: highest CPU"
    );
    let second = cpus.iter().rev().nth(1).unwrap_or(&cpus[0]).to_string();
    assert_eq!(
        thread_cpus(pid, "vswitch-w1"),
        second,
        "worker 1: next one down"
    );
    drop(daemon);

    let floating = Daemon::start_with(1, &["--worker-cpus", "none"]);
    let pid = floating.pid().expect("running");
    assert_eq!(
        thread_cpus(pid, "vswitch-w0"),
        allowed,
        "a floating worker keeps every CPU"
    );
    drop(floating);

    let listed = Daemon::start_with(2, &["--worker-cpus", &cpus[0].to_string()]);
    let pid = listed.pid().expect("running");
    for worker in ["vswitch-w0", "vswitch-w1"] {
        assert_eq!(thread_cpus(pid, worker), cpus[0].to_string(), "{worker}");
    }
}

/// A CPU list that cannot be used stops the daemon at start, naming the option.
#[test]
#[ignore = "needs root: starts vswitchd (it checks its privileges before --worker-cpus)"]
fn bad_worker_cpus_are_refused() {
    require(&["taskset"]);
    let dir = tempfile::tempdir().expect("tmp");
    let start = |prefix: &[&str], cpus: &str| {
        let socket = dir.path().join("s.sock");
        let state = dir.path().join("st");
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend([
            env!("CARGO_BIN_EXE_vswitchd"),
            "--socket",
            socket.to_str().expect("utf8"),
            "--state-dir",
            state.to_str().expect("utf8"),
            "--worker-cpus",
            cpus,
        ]);
        let out = run_any(args[0], &args[1..]);
        assert!(
            !out.status.success(),
            "vswitchd must refuse --worker-cpus {cpus}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = start(&["env"], "2-1");
    assert!(
        stderr.contains("--worker-cpus") && stderr.contains("low to high"),
        "{stderr}"
    );
    // Only CPU 0 is allowed; CPU 1 is not, whatever the machine has.
    let stderr = start(&["taskset", "-c", "0"], "1");
    assert!(
        stderr.contains("--worker-cpus: CPU 1 is not one this process may run on"),
        "{stderr}"
    );
}
