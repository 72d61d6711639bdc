//! `GET /metrics` end to end: the real daemon's counters in the Prometheus format, moving
//! as traffic flows, accepted by Prometheus' own `promtool check metrics`.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Daemon, Netns, require};

/// The daemon's `/metrics` text.
fn scrape(daemon: &Daemon) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("http://localhost/metrics")
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET /metrics failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf8")
}

/// The value of the sample `series` (name and labels exactly as written), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
#[ignore = "needs root: starts vswitchd and creates network namespaces"]
fn metrics_move_with_traffic_and_pass_promtool() {
    require(&["curl", "promtool", "ping"]);
    let daemon = Daemon::start(2);
    let a = Netns::new("ma");
    let b = Netns::new("mb");
    daemon.attach(&a, &["--label", "app=a"]);
    let ip_b = daemon.attach(&b, &["--label", "app=b"]);
    a.ping_ok(&ip_b, 3);
    let series = format!("vswitch_port_rx_packets_total{{port=\"{}\"}}", a.name);
    let first = scrape(&daemon);
    let before = value(&first, &series).unwrap_or_else(|| panic!("{series} not in:\n{first}"));
    assert!(before >= 3.0, "{series} = {before}");
    a.ping_ok(&ip_b, 5);
    let second = scrape(&daemon);
    let after = value(&second, &series).expect("still there");
    assert!(after >= before + 5.0, "{series}: {before} -> {after}");
    assert_eq!(value(&second, "vswitch_workers"), Some(2.0), "{second}");

    // A policy denying b's ingress: the denial shows per port and per policy.
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        file.path(),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Ingress]\n",
    )
    .expect("write");
    daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);
    let _ = a.exec(&["ping", "-c", "2", "-W", "1", &ip_b]);
    let third = scrape(&daemon);
    let denied = format!(
        "vswitch_port_drops_total{{port=\"{}\",reason=\"policy.ingress_denied\"}}",
        a.name
    );
    assert!(
        value(&third, &denied).unwrap_or(0.0) >= 2.0,
        "{denied} in:\n{third}"
    );
    let per_policy = "vswitch_networkpolicy_connections_total{namespace=\"default\",policy=\"deny-b\",direction=\"ingress\",verdict=\"denied\"}";
    assert!(
        value(&third, per_policy).unwrap_or(0.0) >= 2.0,
        "{per_policy} in:\n{third}"
    );

    // Prometheus' own linter accepts it.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(third.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refused it: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
