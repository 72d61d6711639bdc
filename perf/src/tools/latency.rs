//! Round-trip latency: our own UDP ping-pong, one request in flight at a time, recorded in
//! an HDR histogram (1 ns .. 10 s, 3 significant digits).
//!
//! The `pong` helper echoes every datagram back; `ping` sends a sequence number, waits for
//! that number to come back (a reply that arrives after its timeout is ignored and the
//! request counts as lost), and reports p50/p99/p99.9. The same pair, with `--until-reply`,
//! serves as the connectivity check before a variant is measured.

use std::io::BufRead;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::cmd::{self, Background};
use super::endpoints::Endpoints;
use super::udp::{PAYLOAD_64B_FRAME, last_json_line};

/// The UDP port the pong helper binds inside the server namespace.
pub const PORT: u16 = 9001;

/// Highest trackable round trip, in nanoseconds.
const MAX_NS: u64 = 10_000_000_000;

/// What the `ping` helper prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PingReport {
    /// Requests sent.
    pub sent: u64,
    /// Replies received in time.
    pub received: u64,
    /// Median round trip, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Fastest round trip, ns.
    pub min_ns: u64,
    /// Slowest round trip, ns.
    pub max_ns: u64,
}

impl PingReport {
    /// Summarises a histogram of round trips.
    pub fn from_histogram(histogram: &Histogram<u64>, sent: u64) -> PingReport {
        let empty = histogram.is_empty();
        let at = |quantile: f64| {
            if empty {
                0
            } else {
                histogram.value_at_quantile(quantile)
            }
        };
        PingReport {
            sent,
            received: histogram.len(),
            p50_ns: at(0.50),
            p99_ns: at(0.99),
            p999_ns: at(0.999),
            min_ns: if empty { 0 } else { histogram.min() },
            max_ns: if empty { 0 } else { histogram.max() },
        }
    }
}

/// The hidden `pong` subcommand: echoes datagrams on `bind` until stdin says `stop`, closes,
/// or `max_seconds` pass.
///
/// # Errors
/// The socket cannot be bound.
pub fn pong_main(bind: SocketAddr, max_seconds: f64) -> Result<()> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if !matches!(line, Ok(ref text) if text.trim() != "stop") {
                break;
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // Timeouts (every 50 ms) just let the loop look at the stop flag.
        if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(&buffer[..len], peer);
        }
    }
    Ok(())
}

/// Options of the `ping` helper.
#[derive(Debug, Clone, Copy)]
pub struct PingOptions {
    /// The pong helper's address.
    pub dst: SocketAddr,
    /// How long to ping.
    pub seconds: f64,
    /// Payload bytes (at least 8, for the sequence number).
    pub payload: usize,
    /// How long to wait for each reply before counting it lost.
    pub timeout: Duration,
    /// Stop at the first reply (connectivity check).
    pub until_reply: bool,
}

/// The hidden `ping` subcommand: prints a [`PingReport`] as JSON.
///
/// # Errors
/// The socket cannot be created, or the histogram cannot be built.
pub fn ping_main(options: PingOptions) -> Result<()> {
    let socket =
        UdpSocket::bind(crate::tools::udp::unspecified(options.dst)).context("bind ping socket")?;
    socket.connect(options.dst)?;
    socket.set_read_timeout(Some(options.timeout))?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3)
        .map_err(|err| anyhow!("histogram: {err}"))?;
    let mut request = vec![0u8; options.payload.max(8)];
    let mut reply = [0u8; 2048];
    let limit = Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < limit {
        sent += 1;
        request[..8].copy_from_slice(&sent.to_be_bytes());
        let sent_at = Instant::now();
        if socket.send(&request).is_err() {
            // ECONNREFUSED from an earlier ICMP error, or no route yet: a lost request.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Wait for *this* sequence number; stale replies are skipped.
        while sent_at.elapsed() < options.timeout {
            match socket.recv(&mut reply) {
                Ok(len) if len >= 8 && reply[..8] == sent.to_be_bytes() => {
                    let nanos = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(MAX_NS);
                    histogram.saturating_record(nanos.max(1));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if options.until_reply && !histogram.is_empty() {
            break;
        }
    }
    let report = PingReport::from_histogram(&histogram, sent);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs the ping helper in the client's namespace against a pong helper at the server's
/// address, port [`PORT`].
///
/// With `until_reply`, returns as soon as one reply came back (connectivity check).
///
/// # Errors
/// A helper fails or times out.
pub fn run_ping(endpoints: &Endpoints<'_>, seconds: f64, until_reply: bool) -> Result<PingReport> {
    let exe = std::env::current_exe().context("locating the perf binary")?;
    let exe = exe.to_string_lossy();
    let target = SocketAddr::new(endpoints.server_ip, PORT).to_string();
    let max = format!("{:.1}", seconds + 20.0);
    // Behind a load balancer every backend echoes; the ping's one flow reaches one of them.
    let mut pongs = Vec::new();
    for server in endpoints.servers() {
        let bind = SocketAddr::new(server.ip, PORT).to_string();
        let pong_cmd = endpoints.server_command_in(
            server.netns,
            &exe,
            &["pong", "--bind", &bind, "--max-seconds", &max],
        );
        let mut pong = Background::spawn(pong_cmd, Stdio::inherit())?;
        let ready = pong.next_line(Duration::from_secs(5))?;
        if ready != "ready" {
            bail!("pong helper said {ready:?} instead of ready");
        }
        pongs.push(pong);
    }
    let seconds_arg = format!("{seconds:.3}");
    let payload = PAYLOAD_64B_FRAME.to_string();
    let mut args = vec![
        "ping",
        "--dst",
        &target,
        "--seconds",
        &seconds_arg,
        "--payload",
        &payload,
    ];
    if until_reply {
        args.push("--until-reply");
    }
    let ping_cmd = endpoints.client_command(&exe, &args);
    let limit = Duration::from_secs_f64(seconds + 10.0);
    let report: PingReport = last_json_line(&cmd::run(ping_cmd, limit)?)?;
    for pong in &mut pongs {
        pong.send_line("stop")?;
    }
    for pong in &mut pongs {
        pong.wait(Duration::from_secs(5))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_histogram() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3).unwrap();
        for nanos in 1..=1000u64 {
            histogram.record(nanos * 1000).unwrap();
        }
        let report = PingReport::from_histogram(&histogram, 1002);
        assert_eq!(report.sent, 1002);
        assert_eq!(report.received, 1000);
        // Three significant digits: within 0.1 %.
        assert!(
            (report.p50_ns as f64 - 500_000.0).abs() <= 500.0,
            "{report:?}"
        );
        assert!(
            (report.p99_ns as f64 - 990_000.0).abs() <= 990.0,
            "{report:?}"
        );
        assert!(
            (report.p999_ns as f64 - 999_000.0).abs() <= 999.0,
            "{report:?}"
        );
        assert_eq!(report.min_ns, 1000);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let histogram = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3).unwrap();
        let report = PingReport::from_histogram(&histogram, 5);
        assert_eq!(report.received, 0);
        assert_eq!((report.p50_ns, report.max_ns, report.min_ns), (0, 0, 0));
    }
}
