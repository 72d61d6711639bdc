//! Bad input through the real CLI and daemon: every refusal names the problem, exits non-zero
//! and leaves the running state unchanged.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use common::{Daemon, Netns, require};

fn apply_text(daemon: &Daemon, text: &str) -> std::process::Output {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), text).expect("write");
    daemon.ctl(&["apply", "-f", file.path().to_str().expect("utf8")])
}

fn snapshot(daemon: &Daemon) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    (
        daemon.ctl_json(&["get", "networks"]),
        daemon.ctl_json(&["get", "subnets"]),
        daemon.ctl_json(&["get", "networkinterfaces"]),
    )
}

fn assert_refused(daemon: &Daemon, text: &str, words: &[&str]) {
    let before = snapshot(daemon);
    let out = apply_text(daemon, text);
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "apply should fail for:\n{text}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "an API refusal exits 1: {stderr}"
    );
    assert!(
        stderr.starts_with("vswitchctl: "),
        "errors start with `vswitchctl: `: {stderr}"
    );
    for word in words {
        assert!(
            stderr.contains(&word.to_lowercase()),
            "the error should mention {word:?}: {stderr}"
        );
    }
    assert_eq!(
        before,
        snapshot(daemon),
        "a refused apply must change nothing"
    );
}

const NET: &str =
    "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: blue\nspec: {}\n";

#[test]
#[ignore = "needs root: starts vswitchd"]
fn bad_resource_files_are_refused_whole() {
    require(&[]);
    let daemon = Daemon::start(1);
    assert_refused(&daemon, "kind: [Subnet\nmetadata: {", &["yaml"]);
    assert_refused(
        &daemon,
        "apiVersion: vswitch/v1alpha1\nkind: Router\nmetadata:\n  name: r\nspec: {}\n",
        &["Router", "Subnet"],
    );
    assert_refused(
        &daemon,
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: default\n  cidr: 10.9.0.0/24\n  gateway: 10.9.0.1\n  colour: red\n",
        &["colour"],
    );
    assert_refused(
        &daemon,
        &format!(
            "{NET}---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: blue\n  cidr: 10.9.0.0/33\n  gateway: 10.9.0.1\n"
        ),
        &["cidr", "10.9.0.0/33"],
    );
    // The gateway must be inside the CIDR; the valid Network in the same file is not applied.
    assert_refused(
        &daemon,
        &format!(
            "{NET}---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: blue\n  cidr: 10.9.0.0/24\n  gateway: 10.8.0.1\n"
        ),
        &["gateway"],
    );
    assert_refused(
        &daemon,
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: nowhere\n  cidr: 10.9.0.0/24\n  gateway: 10.9.0.1\n",
        &["nowhere"],
    );
    // A correct file applies, and applying it again changes nothing.
    let ok = format!(
        "{NET}---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: blue\n  cidr: 10.9.0.0/24\n  gateway: 10.9.0.1\n"
    );
    let out = apply_text(&daemon, &ok);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = apply_text(&daemon, &ok);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let subnets = daemon.ctl_ok(&["get", "subnets"]);
    assert!(subnets.contains("10.9.0.0/24"), "{subnets}");
    // Kinds are accepted in any case and in plural.
    daemon.ctl_ok(&["get", "Subnet", "s"]);
    daemon.ctl_ok(&["get", "SUBNETS"]);
    daemon.ctl_ok(&["describe", "subnet", "s"]);
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn bad_attach_requests_are_refused() {
    require(&[]);
    let daemon = Daemon::start(1);
    let c1 = Netns::new("xa");
    let c2 = Netns::new("xb");
    daemon.attach(&c1, &["--ip", "172.30.5.5/16"]);

    let before = snapshot(&daemon);
    let err = daemon.ctl_err(&["attach", &c2.name, "--ip", "10.1.2.3/16"]);
    assert!(
        err.contains("10.1.2.3"),
        "IP outside the subnet must be named: {err}"
    );
    let err = daemon.ctl_err(&["attach", &c2.name, "--ip", "172.30.5.5/16"]);
    assert!(
        err.contains("172.30.5.5") && err.to_lowercase().contains("use"),
        "taken IP: {err}"
    );
    let err = daemon.ctl_err(&["attach", "vst-no-such-netns"]);
    assert!(
        err.contains("vst-no-such-netns"),
        "unknown netns must be named: {err}"
    );
    let err = daemon.ctl_err(&["attach", &c1.name]);
    assert!(
        err.contains(&c1.name),
        "attaching the same name twice must fail: {err}"
    );
    let err = daemon.ctl_err(&["attach", &c2.name, "--subnet", "nope"]);
    assert!(err.contains("nope"), "unknown subnet must be named: {err}");
    let err = daemon.ctl_err(&["attach", &c2.name, "--mac", "01:00:5e:00:00:01"]);
    assert!(
        err.to_lowercase().contains("mac"),
        "multicast MAC refused: {err}"
    );
    assert_eq!(
        before,
        snapshot(&daemon),
        "refused attaches must change nothing"
    );
    // Nothing was left in c2 by the refused attaches.
    assert!(!c2.exec(&["ip", "link", "show", "eth0"]).status.success());

    // Errors for missing things, and the exit code when the daemon is unreachable.
    let err = daemon.ctl_err(&["get", "subnet", "missing"]);
    assert!(err.contains("missing"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .args(["--socket", "/nonexistent/vs.sock", "get", "networks"])
        .output()
        .expect("vswitchctl");
    assert_eq!(out.status.code(), Some(3), "unreachable daemon exits 3");
    // Deleting a subnet with interfaces is refused and names them.
    let err = daemon.ctl_err(&["delete", "subnet", "default"]);
    assert!(err.contains(&c1.name), "dependants must be named: {err}");
}

/// `--config FILE` applies a resource file at boot.
#[test]
#[ignore = "needs root: starts vswitchd"]
fn config_file_is_applied_at_boot() {
    require(&[]);
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        file.path(),
        format!("{NET}---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: s\nspec:\n  network: blue\n  cidr: 10.9.0.0/24\n  gateway: 10.9.0.1\n"),
    )
    .expect("write");
    let daemon = Daemon::start_with(1, &["--config", file.path().to_str().expect("utf8")]);
    let subnets = daemon.ctl_ok(&["get", "subnets"]);
    assert!(subnets.contains("10.9.0.0/24"), "{subnets}");

    // A bad config file stops the daemon with a message naming the problem.
    std::fs::write(file.path(), "kind: Subnet\nspec: [").expect("write");
    let mut bad = Daemon::start_stopped(1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vswitchd"))
        .arg("--socket")
        .arg(&bad.socket)
        .arg("--state-dir")
        .arg(&bad.state_dir)
        .arg("--config")
        .arg(file.path())
        .output()
        .expect("vswitchd");
    assert!(!out.status.success(), "a bad --config must stop the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(file.path().to_str().expect("utf8")),
        "names the file: {stderr}"
    );
    bad.kill9();
}

/// Attaches and detaches running at the same time (their device work runs without the
/// controller's lock): every interface comes up with an address of its own, configured in
/// its namespace; reads answer throughout; the state file ends with exactly what exists;
/// after the detaches nothing is left.
#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn concurrent_attaches_and_detaches() {
    require(&[]);
    let daemon = Daemon::start(1);
    let namespaces: Vec<Netns> = (0..8).map(|i| Netns::new(&format!("cc{i}"))).collect();
    std::thread::scope(|scope| {
        let attaches: Vec<_> = namespaces
            .iter()
            .map(|ns| scope.spawn(|| daemon.ctl(&["attach", &ns.name])))
            .collect();
        // Reads keep answering while the attaches run.
        for _ in 0..5 {
            daemon.ctl_json(&["get", "networkinterfaces"]);
        }
        for attach in attaches {
            let out = attach.join().expect("attach thread");
            assert!(
                out.status.success(),
                "a concurrent attach failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    let mut ips = std::collections::BTreeSet::new();
    for ns in &namespaces {
        let nic = daemon.ctl_json(&["get", "networkinterface", &ns.name]);
        assert_eq!(nic["status"]["state"], "Up", "{nic}");
        let ip = daemon.interface_ip(&ns.name);
        let shown = ns.exec_ok(&["ip", "-4", "addr", "show", "eth0"]);
        assert!(
            shown.contains(&format!("{ip}/")),
            "{} lacks {ip}: {shown}",
            ns.name
        );
        assert!(ips.insert(ip.clone()), "address {ip} was given twice");
    }
    let saved = std::fs::read_to_string(daemon.state_dir.join("state.json")).expect("state");
    for ns in &namespaces {
        assert!(
            saved.contains(&format!("\"{}\"", ns.name)),
            "{} not saved",
            ns.name
        );
    }
    // Every container reaches the first one through the switch.
    let first = daemon.interface_ip(&namespaces[0].name);
    for ns in &namespaces[1..] {
        assert!(
            ns.ping_until(&first, std::time::Duration::from_secs(10)),
            "{} cannot reach {first}",
            ns.name
        );
    }

    std::thread::scope(|scope| {
        let detaches: Vec<_> = namespaces
            .iter()
            .map(|ns| scope.spawn(|| daemon.ctl(&["detach", &ns.name])))
            .collect();
        for detach in detaches {
            let out = detach.join().expect("detach thread");
            assert!(
                out.status.success(),
                "a concurrent detach failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    let left = daemon.ctl_json(&["get", "networkinterfaces"]);
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
    for ns in &namespaces {
        assert!(
            !ns.exec(&["ip", "link", "show", "eth0"]).status.success(),
            "{} still has its device",
            ns.name
        );
    }
    let saved = std::fs::read_to_string(daemon.state_dir.join("state.json")).expect("state");
    for ns in &namespaces {
        assert!(
            !saved.contains(&format!("\"{}\"", ns.name)),
            "{} still saved",
            ns.name
        );
    }
}
