//! `vswitchctl capture` end to end: the real daemon's frames of a port as a pcap that
//! `tcpdump -r` reads, with the direction and the filter applied, and the capture gone once
//! its client is.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, Netns, require, wait_until};

/// `vswitchctl --socket S capture ARGS...` in the background.
fn spawn_capture(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("capture")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vswitchctl capture")
}

/// The captures the daemon lists in `/v1/stats`.
fn captures(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon.stats()["captures"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until a capture runs on `port`.
fn wait_running(daemon: &Daemon, port: &str) {
    wait_until(
        &format!("a capture on {port}"),
        Duration::from_secs(10),
        || {
            captures(daemon)
                .iter()
                .any(|c| c["port"] == port)
                .then_some(())
        },
    );
}

/// Waits for `child` to exit by itself; panics (killing it) after `within`.
fn wait_exit(mut child: Child, within: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "vswitchctl capture did not stop by itself within {within:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tcpdump -n -r FILE`: one line per frame.
fn tcpdump(file: &Path) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .output()
        .expect("tcpdump");
    assert!(
        out.status.success(),
        "tcpdump cannot read {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|line| line.contains(needle)).count()
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn capture_shows_what_a_port_sends_and_receives() {
    require(&["ping", "tcpdump", "curl"]);
    let daemon = Daemon::start(2);
    let a = Netns::new("ca");
    let b = Netns::new("cb");
    let ip_a = daemon.attach(&a, &[]);
    let ip_b = daemon.attach(&b, &[]);
    a.ping_ok(&ip_b, 1);
    assert!(captures(&daemon).is_empty(), "no capture runs at start");

    // Everything, both directions, to a file, until the client is killed.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("all.pcap");
    let all = spawn_capture(&daemon, &[&a.name, "-w", file.to_str().expect("utf8")]);
    wait_running(&daemon, &a.name);
    // Another capture, on the other port, at the same time.
    let other_file = dir.path().join("other.pcap");
    let other = spawn_capture(
        &daemon,
        &[
            &b.name,
            "-w",
            other_file.to_str().expect("utf8"),
            "--count",
            "8",
            "icmp",
        ],
    );
    wait_running(&daemon, &b.name);
    a.exec_ok(&["ping", "-c", "4", "-i", "0.2", "-W", "1", &ip_b]);
    wait_until("8 frames captured", Duration::from_secs(5), || {
        let listed = captures(&daemon);
        let on_a = listed.iter().find(|c| c["port"] == a.name.as_str())?;
        (on_a["captured"].as_u64()? >= 8).then_some(())
    });
    let out = wait_exit(other, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = tcpdump(&other_file);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    assert_eq!(
        count(&lines, &format!("IP {ip_a} > {ip_b}: ICMP echo request")),
        4,
        "{lines:#?}"
    );
    assert_eq!(
        count(&lines, &format!("IP {ip_b} > {ip_a}: ICMP echo reply")),
        4,
        "{lines:#?}"
    );
    let mut all = all;
    all.kill().expect("kill");
    let _ = all.wait();
    // The client is gone: the capture stops.
    wait_until("the capture to stop", Duration::from_secs(5), || {
        captures(&daemon).is_empty().then_some(())
    });
    let stats_text = daemon.ctl_ok(&["stats"]);
    assert!(stats_text.contains("no captures running"), "{stats_text}");
    let lines = tcpdump(&file);
    let requests = count(&lines, &format!("IP {ip_a} > {ip_b}: ICMP echo request"));
    let replies = count(&lines, &format!("IP {ip_b} > {ip_a}: ICMP echo reply"));
    assert_eq!((requests, replies), (4, 4), "{lines:#?}");
    // Anything else can only be ARP, or IPv6 the new interfaces send on their own (DAD,
    // MLD).
    let others: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains("ICMP echo") && !l.contains("ARP") && !l.contains(" IP6 "))
        .collect();
    assert!(others.is_empty(), "{others:#?}");

    // A filter, piped into tcpdump, stopped by --count.
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --socket {} capture {} --count 4 icmp and host {} | tcpdump -n -r -",
            env!("CARGO_BIN_EXE_vswitchctl"),
            daemon.socket.display(),
            a.name,
            ip_b
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    wait_running(&daemon, &a.name);
    // ARP and pings to the gateway must not show.
    a.exec_ok(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "172.30.0.1"]);
    let _ = a.exec(&["ip", "neigh", "flush", "all"]);
    a.exec_ok(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b]);
    let out = wait_exit(piped, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        count(&lines, &format!("IP {ip_a} > {ip_b}: ICMP echo request")),
        2
    );
    assert_eq!(
        count(&lines, &format!("IP {ip_b} > {ip_a}: ICMP echo reply")),
        2
    );

    // Received frames only: what the container sent, before the switch touched it.
    let file = dir.path().join("rx.pcap");
    let rx = spawn_capture(
        &daemon,
        &[
            &a.name,
            "-w",
            file.to_str().expect("utf8"),
            "--direction",
            "rx",
            "--count",
            "3",
            "icmp",
        ],
    );
    wait_running(&daemon, &a.name);
    a.exec_ok(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip_b]);
    let out = wait_exit(rx, Duration::from_secs(10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = tcpdump(&file);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(
        count(&lines, &format!("IP {ip_a} > {ip_b}: ICMP echo request")),
        3,
        "{lines:#?}"
    );
    wait_until(
        "the finished capture to stop",
        Duration::from_secs(5),
        || captures(&daemon).is_empty().then_some(()),
    );
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn bad_capture_requests_name_the_field() {
    require(&["curl"]);
    let daemon = Daemon::start(1);
    let a = Netns::new("cx");
    daemon.attach(&a, &[]);
    let err = daemon.ctl_err(&["capture", "no-such-port"]);
    assert!(err.contains("no port \"no-such-port\""), "{err}");
    assert!(err.contains(&a.name), "the ports are listed: {err}");
    let err = daemon.ctl_err(&["capture", &a.name, "icmp", "and", "hots", "10.0.0.1"]);
    assert!(err.contains("filter") && err.contains("hots"), "{err}");
    let out = daemon.ctl(&["capture", &a.name, "--direction", "up"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    // The API names the field.
    for (query, field) in [
        (format!("port={}&direction=up", a.name), "direction"),
        (format!("port={}&count=0", a.name), "count"),
        (format!("port={}&filter=port%20x", a.name), "filter"),
        ("direction=rx".to_owned(), "port"),
        ("port=nope".to_owned(), "port"),
    ] {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(&daemon.socket)
            .arg(format!("http://localhost/v1/capture?{query}"))
            .output()
            .expect("curl");
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{query}: not JSON ({e}): {:?}", out.stdout));
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    assert!(captures(&daemon).is_empty());
}
