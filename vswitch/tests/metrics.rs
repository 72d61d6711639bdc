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
    // The workers' load moves too: time on both sides of epoll_wait, one batch at least per
    // frame received (each ping and reply arrives alone).
    let per_worker = |text: &str, family: &str| -> f64 {
        (0..2)
            .map(|w| {
                let series = format!("{family}{{worker=\"{w}\"}}");
                value(text, &series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
            })
            .sum()
    };
    for family in [
        "vswitch_worker_busy_seconds_total",
        "vswitch_worker_idle_seconds_total",
    ] {
        let (was, is) = (per_worker(&first, family), per_worker(&second, family));
        assert!(is > was, "{family}: {was} -> {is}");
    }
    let batches = "vswitch_worker_batch_size_count";
    let (was, is) = (per_worker(&first, batches), per_worker(&second, batches));
    assert!(is >= was + 10.0, "{batches}: {was} -> {is}");
    let single = |text: &str| -> f64 {
        (0..2)
            .map(|w| {
                let series =
                    format!("vswitch_worker_batch_size_bucket{{le=\"1.0\",worker=\"{w}\"}}");
                value(text, &series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
            })
            .sum()
    };
    assert!(
        single(&second) >= single(&first) + 10.0,
        "pings come one frame per batch"
    );
    let all = value(
        &second,
        "vswitch_worker_batch_size_bucket{le=\"+Inf\",worker=\"0\"}",
    );
    let count = value(&second, "vswitch_worker_batch_size_count{worker=\"0\"}");
    assert_eq!(all, count, "the +Inf bucket holds every batch");
    // What the workers spent: the pings were read and written one system call each (TAP
    // queues), and the workers slept in epoll_wait between them and were woken (not for
    // every frame: a reply is often ready before its request's worker waits again).
    let labelled = |text: &str, family: &str, label: &str| -> f64 {
        (0..2)
            .map(|w| {
                let series = format!("{family}{{worker=\"{w}\",{label}}}");
                value(text, &series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
            })
            .sum()
    };
    for (family, label) in [
        ("vswitch_worker_syscalls_total", "call=\"read\""),
        ("vswitch_worker_syscalls_total", "call=\"write\""),
        ("vswitch_worker_syscalls_total", "call=\"epoll_wait\""),
    ] {
        let (was, is) = (
            labelled(&first, family, label),
            labelled(&second, family, label),
        );
        assert!(is >= was + 10.0, "{family}{{{label}}}: {was} -> {is}");
    }
    let voluntary = "vswitch_worker_context_switches_total";
    let (was, is) = (
        labelled(&first, voluntary, "kind=\"voluntary\""),
        labelled(&second, voluntary, "kind=\"voluntary\""),
    );
    assert!(is > was, "the workers were woken: {was} -> {is}");
    let (was, is) = (
        per_worker(&first, "vswitch_worker_empty_reads_total"),
        per_worker(&second, "vswitch_worker_empty_reads_total"),
    );
    assert!(
        is >= was + 10.0,
        "each batch ends with a read that finds nothing: {was} -> {is}"
    );

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

/// `--metrics-address` serves `/metrics` (and only that) on TCP; `--log-format json` writes
/// one JSON object per line, and text logs to a file carry no colour codes.
#[test]
#[ignore = "needs root: starts vswitchd"]
fn metrics_on_tcp_and_json_logs() {
    require(&["curl"]);
    let port = 20_000 + (std::process::id() % 20_000);
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(1, &["--metrics-address", &address, "--log-format", "json"]);
    let get = |path: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{address}{path}"))
            .output()
            .expect("curl")
    };
    common::wait_until(
        "the metrics listener",
        std::time::Duration::from_secs(10),
        || {
            let out = get("/metrics");
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        },
    );
    let body = Command::new("curl")
        .arg("-sf")
        .arg(format!("http://{address}/metrics"))
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&body.stdout).contains("vswitch_workers 1"));
    // The control API is not on TCP.
    assert_eq!(String::from_utf8_lossy(&get("/v1/version").stdout), "404");
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("vswitchd running"))
        .unwrap_or_else(|| panic!("no start line in:\n{log}"));
    let parsed: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["level"], "INFO", "{parsed}");
    drop(daemon);

    let text = Daemon::start(1);
    let log = text.log_text();
    assert!(log.contains("vswitchd running"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}
