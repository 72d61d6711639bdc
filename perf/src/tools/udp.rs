//! Small-packet rate: our own UDP sender (`sendmmsg` in a loop) and counting receiver
//! (`recvmmsg`), each run as a hidden subcommand of this binary inside `ip netns exec`.
//!
//! The default payload is 18 bytes, which makes a 64-byte Ethernet frame counting the FCS
//! (14 Ethernet + 20 IPv4 + 8 UDP + 18 + 4 FCS), the classic small-packet test size.
//! The figure is packets *received* per second of sending; loss is `1 - received/sent`.
//! The receiver also reports the growth of its namespace's `Udp: RcvbufErrors`, so a loss in
//! the receiving socket can be told apart from a loss in the switch.
//!
//! Protocol between the harness and the receiver: the receiver prints `ready` once bound,
//! counts until it reads `stop` (or EOF) on stdin or hits its hard deadline, then prints one
//! JSON line. The sender prints one JSON line when its time is up.

use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::cmd::{self, Background};
use super::endpoints::Endpoints;
use super::sys::MessageBatch;

/// The UDP port the receiver binds inside the server namespace.
pub const PORT: u16 = 9000;

/// Payload bytes for a 64-byte Ethernet frame (FCS included).
pub const PAYLOAD_64B_FRAME: usize = 18;

/// Messages per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;

/// Socket buffer size forced on both ends (SO_SNDBUFFORCE/SO_RCVBUFFORCE, root only).
const SOCKET_BUFFER: usize = 4 << 20;

/// What the sender prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SenderReport {
    /// Datagrams the kernel accepted.
    pub sent_packets: u64,
    /// Calls that failed (ENOBUFS, ECONNREFUSED after an ICMP error, ...).
    pub send_errors: u64,
    /// Seconds spent sending.
    pub seconds: f64,
}

/// What the receiver prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReceiverReport {
    /// Datagrams received.
    pub received_packets: u64,
    /// Payload bytes received.
    pub received_bytes: u64,
    /// Growth of `Udp: RcvbufErrors` in the receiver's namespace while it ran.
    pub rcvbuf_errors: u64,
}

impl ReceiverReport {
    /// The sum of several receivers' reports (the backends behind a load balancer).
    pub fn total(reports: &[ReceiverReport]) -> ReceiverReport {
        reports.iter().fold(
            ReceiverReport {
                received_packets: 0,
                received_bytes: 0,
                rcvbuf_errors: 0,
            },
            |sum, report| ReceiverReport {
                received_packets: sum.received_packets + report.received_packets,
                received_bytes: sum.received_bytes + report.received_bytes,
                rcvbuf_errors: sum.rcvbuf_errors + report.rcvbuf_errors,
            },
        )
    }
}

/// One packet-rate measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    /// Packets received per second of sending.
    pub packets_per_second: f64,
    /// Packets sent.
    pub sent: u64,
    /// Packets received.
    pub received: u64,
    /// Lost share in percent.
    pub loss_percent: f64,
    /// Of the lost, how many the receiving socket dropped (buffer full).
    pub rcvbuf_errors: u64,
}

impl UdpResult {
    /// Combines the two reports.
    pub fn from_reports(sender: SenderReport, receiver: ReceiverReport) -> UdpResult {
        let seconds = sender.seconds.max(1e-9);
        let sent = sender.sent_packets;
        let received = receiver.received_packets;
        let loss_percent = if sent == 0 {
            0.0
        } else {
            sent.saturating_sub(received) as f64 * 100.0 / sent as f64
        };
        UdpResult {
            packets_per_second: received as f64 / seconds,
            sent,
            received,
            loss_percent,
            rcvbuf_errors: receiver.rcvbuf_errors,
        }
    }
}

/// Reads `Udp: RcvbufErrors` from the text of `/proc/net/snmp`.
///
/// # Errors
/// There is no `Udp:` header/value pair with that column.
pub fn parse_rcvbuf_errors(snmp: &str) -> Result<u64> {
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(header), Some(values)) = (udp.next(), udp.next()) else {
        bail!("/proc/net/snmp has no Udp: lines");
    };
    let column = header
        .split_whitespace()
        .position(|name| name == "RcvbufErrors")
        .ok_or_else(|| anyhow!("/proc/net/snmp Udp: has no RcvbufErrors"))?;
    values
        .split_whitespace()
        .nth(column)
        .ok_or_else(|| anyhow!("/proc/net/snmp Udp: values too short"))?
        .parse()
        .context("RcvbufErrors is not a number")
}

fn rcvbuf_errors_now() -> u64 {
    // /proc/net follows the reading process's network namespace.
    std::fs::read_to_string("/proc/net/snmp")
        .ok()
        .and_then(|text| parse_rcvbuf_errors(&text).ok())
        .unwrap_or(0)
}

/// The unspecified address of `dst`'s family, port 0: where a client socket binds.
pub fn unspecified(dst: SocketAddr) -> SocketAddr {
    let any = if dst.is_ipv6() {
        std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    SocketAddr::new(any, 0)
}

/// The hidden `udp-send` subcommand: sends `payload`-byte datagrams to `dst` for `seconds`,
/// then prints a [`SenderReport`] as JSON.
///
/// # Errors
/// The socket cannot be created or connected.
pub fn send_main(dst: SocketAddr, seconds: f64, payload: usize) -> Result<()> {
    let socket = UdpSocket::bind(unspecified(dst)).context("bind sender socket")?;
    socket
        .connect(dst)
        .with_context(|| format!("connect {dst}"))?;
    // Best effort: without the bigger buffer the rate is lower, not wrong.
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::SndBufForce,
        &SOCKET_BUFFER,
    );
    let mut batch = MessageBatch::new(BATCH, payload.max(1));
    let started = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    while started.elapsed() < limit {
        match batch.send(&socket) {
            Ok(count) => sent += count as u64,
            Err(_) => errors += 1,
        }
    }
    let report = SenderReport {
        sent_packets: sent,
        send_errors: errors,
        seconds: started.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Sets `stop` when stdin says `stop` or closes.
pub fn watch_stdin(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) if line.trim() == "stop" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
}

/// The hidden `udp-recv` subcommand: counts datagrams on `bind` until told to stop (or
/// `max_seconds`), then prints a [`ReceiverReport`] as JSON.
///
/// # Errors
/// The socket cannot be bound.
pub fn recv_main(bind: SocketAddr, max_seconds: f64) -> Result<()> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::RcvBufForce,
        &SOCKET_BUFFER,
    );
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(Arc::clone(&stop));
    let errors_before = rcvbuf_errors_now();
    println!("ready");
    let mut batch = MessageBatch::new(BATCH * 4, 2048);
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let (mut packets, mut bytes) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // An error is EAGAIN (the 50 ms timeout) or EINTR: poll the stop flag.
        let Ok((count, received)) = batch.recv(&socket) else {
            continue;
        };
        packets += count as u64;
        bytes += received;
    }
    let report = ReceiverReport {
        received_packets: packets,
        received_bytes: bytes,
        rcvbuf_errors: rcvbuf_errors_now().saturating_sub(errors_before),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs one packet-rate measurement from the client's namespace to the server's address,
/// port [`PORT`].
///
/// # Errors
/// A helper fails, times out, or prints no report.
pub fn run_pps(endpoints: &Endpoints<'_>, seconds: f64, payload: usize) -> Result<UdpResult> {
    let exe = std::env::current_exe().context("locating the perf binary")?;
    let exe = exe.to_string_lossy();
    let target = SocketAddr::new(endpoints.server_ip, PORT).to_string();
    let max = format!("{:.1}", seconds + 20.0);
    // Behind a load balancer every backend counts; the sender's one flow reaches one of them.
    let mut receivers = Vec::new();
    for server in endpoints.servers() {
        let bind = SocketAddr::new(server.ip, PORT).to_string();
        let receiver_cmd = endpoints.server_command_in(
            server.netns,
            &exe,
            &["udp-recv", "--bind", &bind, "--max-seconds", &max],
        );
        let mut receiver = Background::spawn(receiver_cmd, Stdio::inherit())?;
        let ready = receiver.next_line(Duration::from_secs(5))?;
        if ready != "ready" {
            bail!("udp receiver said {ready:?} instead of ready");
        }
        receivers.push(receiver);
    }
    let sender_cmd = endpoints.client_command(
        &exe,
        &[
            "udp-send",
            "--dst",
            &target,
            "--seconds",
            &format!("{seconds:.3}"),
            "--payload",
            &payload.to_string(),
        ],
    );
    let limit = Duration::from_secs_f64(seconds + 10.0);
    let sender: SenderReport = last_json_line(&cmd::run(sender_cmd, limit)?)?;
    // Let the switch and the socket drain what is in flight before counting stops.
    cmd::sleep(Duration::from_millis(300))?;
    let mut reports = Vec::new();
    for receiver in &mut receivers {
        receiver.send_line("stop")?;
    }
    for receiver in &mut receivers {
        let report: ReceiverReport =
            serde_json::from_str(&receiver.next_line(Duration::from_secs(5))?)
                .context("udp receiver report")?;
        receiver.wait(Duration::from_secs(5))?;
        reports.push(report);
    }
    Ok(UdpResult::from_reports(
        sender,
        ReceiverReport::total(&reports),
    ))
}

/// Parses the last non-empty line of a helper's stdout as JSON.
///
/// # Errors
/// No line, or not the expected JSON.
pub fn last_json_line<T: for<'de> Deserialize<'de>>(stdout: &str) -> Result<T> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .ok_or_else(|| anyhow!("helper printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("helper printed {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    static SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
        Udp: 100 2 7 90 5 0 0\n\
        UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
        UdpLite: 0 0 0 0 0 0\n";

    #[test]
    fn rcvbuf_errors_column() {
        assert_eq!(parse_rcvbuf_errors(SNMP).unwrap(), 5);
        assert!(parse_rcvbuf_errors("Ip: a\nIp: 1\n").is_err());
        assert!(parse_rcvbuf_errors("Udp: InDatagrams\nUdp: 1\n").is_err());
    }

    #[test]
    fn rate_and_loss() {
        let sender = SenderReport {
            sent_packets: 1000,
            send_errors: 0,
            seconds: 2.0,
        };
        let receiver = ReceiverReport {
            received_packets: 900,
            received_bytes: 900 * 18,
            rcvbuf_errors: 40,
        };
        let result = UdpResult::from_reports(sender, receiver);
        assert_eq!(result.packets_per_second, 450.0);
        assert!((result.loss_percent - 10.0).abs() < 1e-9);
        assert_eq!(result.rcvbuf_errors, 40);
    }

    #[test]
    fn receivers_behind_a_load_balancer_add_up() {
        let report = |packets, errors| ReceiverReport {
            received_packets: packets,
            received_bytes: packets * 18,
            rcvbuf_errors: errors,
        };
        let total = ReceiverReport::total(&[report(900, 3), report(0, 0), report(5, 1)]);
        assert_eq!(total, report(905, 4));
        assert_eq!(ReceiverReport::total(&[]), report(0, 0));
    }

    #[test]
    fn nothing_sent_is_no_loss_not_nan() {
        let sender = SenderReport {
            sent_packets: 0,
            send_errors: 3,
            seconds: 0.0,
        };
        let receiver = ReceiverReport {
            received_packets: 0,
            received_bytes: 0,
            rcvbuf_errors: 0,
        };
        let result = UdpResult::from_reports(sender, receiver);
        assert_eq!(result.loss_percent, 0.0);
        assert_eq!(result.packets_per_second, 0.0);
    }

    #[test]
    fn helper_output_last_line() {
        let report: SenderReport =
            last_json_line("noise\n{\"sent_packets\":5,\"send_errors\":0,\"seconds\":1.0}\n\n")
                .unwrap();
        assert_eq!(report.sent_packets, 5);
        assert!(last_json_line::<SenderReport>("").is_err());
        assert!(last_json_line::<SenderReport>("{}").is_err());
    }

    /// Sender and receiver over loopback in this process's namespace (no root needed).
    #[test]
    fn loopback_round() {
        let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let port = receiver.local_addr().unwrap().port();
        let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.connect(dst).unwrap();
        let mut batch = MessageBatch::new(8, PAYLOAD_64B_FRAME);
        assert_eq!(batch.send(&socket).unwrap(), 8);
        let mut buffer = [0u8; 64];
        let (len, _) = receiver.recv_from(&mut buffer).unwrap();
        assert_eq!(len, PAYLOAD_64B_FRAME);
    }
}
