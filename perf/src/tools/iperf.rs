//! TCP throughput with iperf3: one server per measurement (`-s -1`; one on each backend
//! behind a load balancer), a client with `-J`, both inside the scenario's namespaces.
//!
//! The figure is the receiver's rate (`end.sum_received.bits_per_second`); the equivalence
//! check is the bytes the client sent against the bytes the server received.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::cmd::{self, Background};
use super::endpoints::Endpoints;

/// The TCP port iperf3 listens on inside the server namespace.
pub const PORT: u16 = 5201;

/// What one iperf3 run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpResult {
    /// Receiver-side throughput in Gbit/s (10^9 bits per second).
    pub gbits_per_second: f64,
    /// Bytes the client wrote.
    pub bytes_sent: u64,
    /// Bytes the server received.
    pub bytes_received: u64,
    /// TCP retransmissions seen by the sender.
    pub retransmits: u64,
}

/// Parses the JSON of `iperf3 -c ... -J`.
///
/// # Errors
/// iperf3 reported an `error`, or `end.sum_sent` / `end.sum_received` are missing.
pub fn parse_client_json(text: &str) -> Result<TcpResult> {
    let json: Value = serde_json::from_str(text).context("iperf3 -J output is not JSON")?;
    if let Some(error) = json.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let end = json
        .get("end")
        .ok_or_else(|| anyhow!("iperf3 JSON has no `end` section"))?;
    let sum = |section: &str, field: &str| -> Result<f64> {
        end.get(section)
            .and_then(|sum| sum.get(field))
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("iperf3 JSON has no end.{section}.{field}"))
    };
    let count = |section: &str, field: &str| -> Result<u64> {
        end.get(section)
            .and_then(|sum| sum.get(field))
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("iperf3 JSON has no integer end.{section}.{field}"))
    };
    Ok(TcpResult {
        gbits_per_second: sum("sum_received", "bits_per_second")? / 1e9,
        bytes_sent: count("sum_sent", "bytes")?,
        bytes_received: count("sum_received", "bytes")?,
        retransmits: count("sum_sent", "retransmits").unwrap_or(0),
    })
}

/// True if a `/proc/<pid>/net/tcp` table has a socket in LISTEN state on `port`.
pub fn listening_on(table: &str, port: u16) -> bool {
    const LISTEN: &str = "0A";
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        local_port == Some(port) && state == Some(LISTEN)
    })
}

/// Waits until the iperf3 server (pid `pid`) listens, reading its namespace's socket table
/// through `/proc/<pid>/net/tcp` (no need to enter the namespace).
fn wait_listening(server: &mut Background, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let pid = server.pid();
    loop {
        cmd::check_interrupted()?;
        if !server.running() {
            bail!("iperf3 server exited before listening");
        }
        // Until `ip netns exec` has exec'd iperf3, /proc/<pid>/net is the host's: only
        // trust the table once the process is iperf3.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "iperf3" {
            let v4 = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
            let v6 = std::fs::read_to_string(format!("/proc/{pid}/net/tcp6")).unwrap_or_default();
            if listening_on(&v4, PORT) || listening_on(&v6, PORT) {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("iperf3 server did not listen within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs one iperf3 TCP test from the client's namespace to the server's address.
///
/// Behind a load balancer, a one-shot server listens on every backend's own address and the
/// client connects to the virtual IP; the server that took the test exits after it, and the
/// others, which got nothing, are stopped.
///
/// # Errors
/// iperf3 fails, times out, or prints no usable JSON; or no server finished a test.
pub fn run_tcp(endpoints: &Endpoints<'_>, streams: u32, seconds: u32) -> Result<TcpResult> {
    let ip = endpoints.server_ip.to_string();
    let client_ns = endpoints.client_ns;
    let port = PORT.to_string();
    let mut servers = Vec::new();
    for server in endpoints.servers() {
        let bind = server.ip.to_string();
        let server_cmd = endpoints.server_command_in(
            server.netns,
            "iperf3",
            &["-s", "-1", "-B", &bind, "-p", &port],
        );
        let mut server = Background::spawn(server_cmd, Stdio::null())?;
        wait_listening(&mut server, Duration::from_secs(5))?;
        servers.push(server);
    }
    let client = endpoints.client_command(
        "iperf3",
        &[
            "-c",
            &ip,
            "-p",
            &port,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ],
    );
    let output = cmd::output_within(client, Duration::from_secs(u64::from(seconds) + 15))?;
    // The JSON carries iperf3's own error message even when it exits non-zero.
    let result =
        parse_client_json(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
            format!(
                "iperf3 client {client_ns} -> {ip} ({}) {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
    if let [server] = &mut servers[..] {
        server.wait(Duration::from_secs(5))?;
    } else {
        wait_any_exit(&mut servers, Duration::from_secs(5))?;
        // Dropping the servers kills those still waiting for a test.
    }
    Ok(result)
}

/// Waits until one of `servers` has exited (the one that took the test).
fn wait_any_exit(servers: &mut [Background], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        cmd::check_interrupted()?;
        if servers.iter_mut().any(|server| !server.running()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("no iperf3 server behind the virtual IP finished a test within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from a real `iperf3 -c 127.0.0.1 -t 1 -P 2 -J` (iperf 3.12).
    static CLIENT_JSON: &str = r#"{
        "start": {"version": "iperf 3.12", "test_start": {"protocol": "TCP", "num_streams": 2}},
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": {"start": 0, "end": 1.000557, "seconds": 1.000557, "bytes": 2373713920,
                         "bits_per_second": 18979139979.03168, "retransmits": 13, "sender": true},
            "sum_received": {"start": 0, "end": 1.00098, "seconds": 1.00098, "bytes": 2373713920,
                             "bits_per_second": 18971119662.730526, "sender": true},
            "cpu_utilization_percent": {"host_total": 97.3, "remote_total": 35.5}
        }
    }"#;

    #[test]
    fn parses_receiver_rate_and_bytes() {
        let result = parse_client_json(CLIENT_JSON).unwrap();
        assert!((result.gbits_per_second - 18.971_119_662_730_526).abs() < 1e-9);
        assert_eq!(result.bytes_sent, 2_373_713_920);
        assert_eq!(result.bytes_received, 2_373_713_920);
        assert_eq!(result.retransmits, 13);
    }

    #[test]
    fn reports_iperf_error() {
        let text = r#"{"start": {"connected": []}, "intervals": [], "end": {},
                       "error": "unable to connect to server: Connection refused"}"#;
        let err = parse_client_json(text).unwrap_err();
        assert!(format!("{err}").contains("Connection refused"), "{err}");
    }

    #[test]
    fn rejects_missing_sections() {
        assert!(parse_client_json("not json").is_err());
        assert!(parse_client_json(r#"{"end": {}}"#).is_err());
        let no_received = r#"{"end": {"sum_sent": {"bytes": 1, "bits_per_second": 8}}}"#;
        assert!(parse_client_json(no_received).is_err());
    }

    #[test]
    fn listen_detection() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000\n\
            1: 0100007F:1451 0100007F:C002 01 00000000:00000000 03:000016A2\n";
        assert!(listening_on(table, 0x07E8));
        // 0x1451 = 5201 is there but ESTABLISHED (01), not LISTEN.
        assert!(!listening_on(table, 5201));
        assert!(!listening_on("header only\n", 5201));
    }
}
