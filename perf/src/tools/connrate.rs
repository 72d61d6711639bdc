//! New TCP connections per second: our own short-connection load, each side run as a hidden
//! subcommand of this binary inside `ip netns exec`.
//!
//! The client (`conn-rate`) runs a few workers in parallel for a fixed time; each opens a TCP
//! connection to the target, reads the one byte the server sends, waits for the server to
//! close, closes, and starts over. The server (`conn-serve`) accepts, writes one byte and
//! closes at once, counting accepts. The server closes first, so the TIME_WAIT state stays on
//! the server side and the client can reuse its ports at once (it would otherwise run out of
//! ephemeral ports within seconds).
//!
//! The figure is connections completed (the byte arrived) per second of the client's run;
//! the check is completed against attempted. Behind a load balancer one server runs on each
//! backend, and their accept counts show how the connections spread.
//!
//! Protocol between the harness and the server: it prints `ready` once listening, counts
//! until `stop` (or EOF) on stdin or its hard deadline, then prints one JSON line. The client
//! prints one JSON line when its time is up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

use super::cmd::{self, Background};
use super::endpoints::Endpoints;
use super::udp::{last_json_line, watch_stdin};

/// The TCP port the server listens on in each server namespace.
pub const PORT: u16 = 9002;

/// Client workers, each with one connection in flight at a time.
pub const WORKERS: u32 = 4;

/// How long one connection may take to be set up, or to deliver its byte and close, before
/// it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(1);

/// What the client prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Connections that delivered the server's byte and were closed.
    pub completed: u64,
    /// Connections refused, timed out, reset or closed without the byte.
    pub failed: u64,
    /// Seconds from the first connection to the last worker's end.
    pub seconds: f64,
}

/// What a server prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerReport {
    /// Connections accepted.
    pub accepted: u64,
}

/// One connection-rate measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnRateResult {
    /// Completed connections per second.
    pub per_second: f64,
    /// Connections the client tried.
    pub attempted: u64,
    /// Connections that completed.
    pub completed: u64,
    /// Accepts per server, in the order of [`Endpoints::servers`].
    pub accepted: Vec<u64>,
}

impl ConnRateResult {
    /// Combines the client's report and the servers'.
    pub fn from_reports(client: ClientReport, servers: &[ServerReport]) -> ConnRateResult {
        ConnRateResult {
            per_second: client.completed as f64 / client.seconds.max(1e-9),
            attempted: client.completed + client.failed,
            completed: client.completed,
            accepted: servers.iter().map(|server| server.accepted).collect(),
        }
    }

    /// Each server's share of the accepts, in percent, as `name 34%` (with `names` in the
    /// order of the servers).
    pub fn split(&self, names: &[&str]) -> String {
        let total: u64 = self.accepted.iter().sum();
        names
            .iter()
            .zip(&self.accepted)
            .map(|(name, &count)| {
                let percent = if total == 0 {
                    0.0
                } else {
                    count as f64 * 100.0 / total as f64
                };
                format!("{name} {percent:.0}% ({count})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Accepts on `listener` (non-blocking), writing one byte to each connection and closing it,
/// until `stop` is set or `deadline` passes; returns the accepts.
///
/// # Errors
/// `poll` fails.
pub fn serve(listener: &TcpListener, stop: &AtomicBool, deadline: Instant) -> Result<u64> {
    listener.set_nonblocking(true)?;
    let mut accepted = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        // Wake at least every 50 ms to look at the stop flag.
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno).context("poll on the listener"),
        }
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    accepted += 1;
                    // A refused write (the client gave up) only costs the client its byte.
                    let _ = stream.write_all(&[1]);
                    // Dropping closes: the server ends the connection first.
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                // ECONNABORTED and the like: that connection is gone, the next may come.
                Err(_) => break,
            }
        }
    }
    Ok(accepted)
}

/// The hidden `conn-serve` subcommand: serves on `bind` until told to stop (or
/// `max_seconds`), then prints a [`ServerReport`] as JSON.
///
/// # Errors
/// The socket cannot be bound.
pub fn serve_main(bind: SocketAddr, max_seconds: f64) -> Result<()> {
    let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_stdin(Arc::clone(&stop));
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    let accepted = serve(&listener, &stop, deadline)?;
    println!("{}", serde_json::to_string(&ServerReport { accepted })?);
    Ok(())
}

/// One short connection: connect, read the server's byte, wait for its close, close.
fn one_connection(dst: &SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(dst, STEP_TIMEOUT)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    // Wait for the server's FIN, so that the server holds TIME_WAIT, not us.
    match stream.read(&mut byte)? {
        0 => Ok(()),
        _ => Err(std::io::Error::other("the server sent more than one byte")),
    }
}

/// Runs `workers` threads of short connections to `dst` for `duration`.
pub fn run_clients(dst: SocketAddr, duration: Duration, workers: u32) -> ClientReport {
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..workers.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let (mut completed, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    if one_connection(&dst).is_ok() {
                        completed += 1;
                    } else {
                        failed += 1;
                        // A refusal comes back at once: do not spin on it.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                (completed, failed)
            })
        })
        .collect();
    let (mut completed, mut failed) = (0u64, 0u64);
    for handle in handles {
        // A worker only panics on a bug; count what the others did.
        if let Ok((done, lost)) = handle.join() {
            completed += done;
            failed += lost;
        }
    }
    ClientReport {
        completed,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The hidden `conn-rate` subcommand: prints a [`ClientReport`] as JSON.
///
/// # Errors
/// The report cannot be printed.
pub fn client_main(dst: SocketAddr, seconds: f64, workers: u32) -> Result<()> {
    let report = run_clients(dst, Duration::from_secs_f64(seconds), workers);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Measures new connections per second from the client's namespace to `target`, port
/// [`PORT`], with a server on each of the endpoints' servers.
///
/// # Errors
/// A helper fails, times out, or prints no report.
pub fn run(
    endpoints: &Endpoints<'_>,
    target: std::net::IpAddr,
    seconds: f64,
) -> Result<ConnRateResult> {
    let exe = std::env::current_exe().context("locating the perf binary")?;
    let exe = exe.to_string_lossy();
    let max = format!("{:.1}", seconds + 20.0);
    let mut servers = Vec::new();
    for server in endpoints.servers() {
        let bind = SocketAddr::new(server.ip, PORT).to_string();
        let command = endpoints.server_command_in(
            server.netns,
            &exe,
            &["conn-serve", "--bind", &bind, "--max-seconds", &max],
        );
        let mut background = Background::spawn(command, Stdio::inherit())?;
        let ready = background.next_line(Duration::from_secs(5))?;
        if ready != "ready" {
            bail!("connection server said {ready:?} instead of ready");
        }
        servers.push(background);
    }
    let dst = SocketAddr::new(target, PORT).to_string();
    let client = endpoints.client_command(
        &exe,
        &[
            "conn-rate",
            "--dst",
            &dst,
            "--seconds",
            &format!("{seconds:.3}"),
            "--workers",
            &WORKERS.to_string(),
        ],
    );
    let limit = Duration::from_secs_f64(seconds + 15.0);
    let client: ClientReport = last_json_line(&cmd::run(client, limit)?)?;
    for server in &mut servers {
        server.send_line("stop")?;
    }
    let mut reports = Vec::new();
    for server in &mut servers {
        let report: ServerReport = last_json_line(&server.next_line(Duration::from_secs(5))?)
            .context("connection server report")?;
        server.wait(Duration::from_secs(5))?;
        reports.push(report);
    }
    Ok(ConnRateResult::from_reports(client, &reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_from_the_helpers_last_line() {
        let client: ClientReport =
            last_json_line("{\"completed\":3000,\"failed\":12,\"seconds\":1.5}\n").unwrap();
        assert_eq!(
            client,
            ClientReport {
                completed: 3000,
                failed: 12,
                seconds: 1.5
            }
        );
        let server: ServerReport = last_json_line("ready\n{\"accepted\":1001}\n").unwrap();
        assert_eq!(server.accepted, 1001);
        assert!(last_json_line::<ServerReport>("ready\n").is_err());
        assert!(last_json_line::<ClientReport>("{\"completed\":1}").is_err());
    }

    #[test]
    fn rate_attempts_and_split() {
        let client = ClientReport {
            completed: 3000,
            failed: 12,
            seconds: 1.5,
        };
        let servers = [
            ServerReport { accepted: 1000 },
            ServerReport { accepted: 1500 },
            ServerReport { accepted: 503 },
        ];
        let result = ConnRateResult::from_reports(client, &servers);
        assert!((result.per_second - 2000.0).abs() < 1e-9);
        assert_eq!((result.attempted, result.completed), (3012, 3000));
        assert_eq!(result.accepted, [1000, 1500, 503]);
        assert_eq!(
            result.split(&["b1", "b2", "b3"]),
            "b1 33% (1000), b2 50% (1500), b3 17% (503)"
        );
        let none = ConnRateResult::from_reports(
            ClientReport {
                completed: 0,
                failed: 0,
                seconds: 0.0,
            },
            &[ServerReport { accepted: 0 }],
        );
        assert_eq!(none.per_second, 0.0);
        assert_eq!(none.split(&["b1"]), "b1 0% (0)");
    }

    /// Client and server over loopback in this process's namespace (no root needed).
    #[test]
    fn loopback_connections_complete() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let server = std::thread::spawn(move || {
            serve(&listener, &flag, Instant::now() + Duration::from_secs(30)).unwrap()
        });
        let report = run_clients(addr, Duration::from_millis(200), 2);
        stop.store(true, Ordering::SeqCst);
        let accepted = server.join().unwrap();
        assert!(report.completed > 0, "{report:?}");
        assert!(accepted >= report.completed, "{accepted} < {report:?}");
    }
}
