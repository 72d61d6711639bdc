//! Many connections at once: one UDP datagram per flow from the client namespace to the
//! server's address, each flow its own (source port, destination port) pair, so a switch
//! that tracks connections holds one entry per flow. Run as the hidden `flows` subcommand
//! inside the client's namespace; it prints one JSON line.
//!
//! Flows are laid out [`PORTS_PER_SOCKET`] to a socket (destination ports from
//! [`FIRST_PORT`]), one socket per such group, bound to a fixed source port (from
//! [`FIRST_SOURCE_PORT`]), so every run with the same count makes the same flows: a second
//! run refreshes the entries of the first and creates those a full queue lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use super::cmd;

/// Destination ports one source socket sends to.
pub const PORTS_PER_SOCKET: u32 = 60_000;

/// The first destination port.
pub const FIRST_PORT: u16 = 2_000;

/// The source port of the first socket (the next ones follow it).
pub const FIRST_SOURCE_PORT: u16 = 62_100;

/// Datagrams sent between two short pauses (a queue of the switch's port holds about 1,000
/// frames; the pause lets a worker drain it).
const BURST: u32 = 256;

/// What the sender prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsReport {
    /// Datagrams the kernel accepted.
    pub sent: u64,
    /// Sends that failed (counted, not retried).
    pub errors: u64,
}

/// Sends one datagram on each of `count` flows to `dst` (the `flows` subcommand).
///
/// # Errors
/// A socket cannot be opened.
pub fn send(dst: IpAddr, count: u32) -> Result<FlowsReport> {
    let any = match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut report = FlowsReport { sent: 0, errors: 0 };
    let mut left = count;
    let mut in_burst = 0;
    let mut source = FIRST_SOURCE_PORT;
    while left > 0 {
        let socket = UdpSocket::bind(SocketAddr::new(any, source))
            .with_context(|| format!("binding a UDP socket to port {source}"))?;
        source = source
            .checked_add(1)
            .ok_or_else(|| anyhow!("too many flows for the source ports"))?;
        let here = left.min(PORTS_PER_SOCKET);
        for offset in 0..here {
            let port = u16::try_from(u32::from(FIRST_PORT) + offset)
                .map_err(|_| anyhow!("port out of range"))?;
            match socket.send_to(&[0], SocketAddr::new(dst, port)) {
                Ok(_) => report.sent += 1,
                Err(_) => report.errors += 1,
            }
            in_burst += 1;
            if in_burst == BURST {
                in_burst = 0;
                std::thread::sleep(Duration::from_micros(2_000));
            }
        }
        left -= here;
    }
    Ok(report)
}

/// Runs the `flows` subcommand in `netns` toward `dst` and returns its report.
///
/// # Errors
/// The helper fails or runs too long.
pub fn run(netns: &str, dst: IpAddr, count: u32) -> Result<(FlowsReport, Duration)> {
    let limit = Duration::from_secs(30 + u64::from(count) / 20_000);
    let (dst, count) = (dst.to_string(), count.to_string());
    cmd::run_helper(netns, &["flows", "--dst", &dst, "--count", &count], limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_each_flow_once_and_the_same_flows_again() {
        // Twice: the second run binds the same source port (the first closed its socket).
        for _ in 0..2 {
            let report = send(IpAddr::V4(Ipv4Addr::LOCALHOST), 10).unwrap();
            assert_eq!(report.sent + report.errors, 10);
        }
    }
}
