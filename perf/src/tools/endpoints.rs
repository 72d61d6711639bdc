//! The two ends of a measurement: the namespace each runs in, the server's address, and,
//! with `--pin-endpoints`, the CPU each is pinned to. Behind a load balancer the server end
//! is several backends, each running the server on its own address, while the client sends
//! to the virtual IP.
//!
//! On a machine with few cores the figures depend on where the scheduler puts the sender,
//! the receiver and the switch's worker, and it does not put them in the same place from one
//! run to the next. Pinning the endpoints apart (client on the lowest CPU, server on the
//! highest) removes that freedom from every variant alike, the kernel's included; vswitchd's
//! first worker, pinned by `--worker-cpus auto` to the highest CPU, then shares the server's.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{Result, bail};
use nix::sched::{CpuSet, sched_getaffinity};
use nix::unistd::Pid;

use crate::tools::cmd;

/// The CPUs the client and the server tools are pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointCpus {
    /// CPU of every client-side tool (iperf3 -c, the UDP sender, the ping helper).
    pub client: usize,
    /// CPU of every server-side tool (iperf3 -s, the UDP receiver, the pong helper).
    pub server: usize,
}

impl EndpointCpus {
    /// The client on the lowest CPU the harness may run on, the server on the highest.
    ///
    /// # Errors
    /// `sched_getaffinity` fails, or fewer than two CPUs are allowed (there is nothing to
    /// spread the endpoints over).
    pub fn spread() -> Result<EndpointCpus> {
        let set = sched_getaffinity(Pid::from_raw(0))?;
        let allowed: Vec<usize> = (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect();
        match (allowed.first(), allowed.last()) {
            (Some(&client), Some(&server)) if client != server => {
                Ok(EndpointCpus { client, server })
            }
            _ => bail!(
                "--pin-endpoints needs at least two CPUs; this process may run on {}",
                allowed.len()
            ),
        }
    }
}

/// One server behind a load balancer's virtual IP: its namespace and its own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The backend's network namespace.
    pub netns: String,
    /// The address its servers listen on (what the load balancer translates the virtual IP
    /// to).
    pub ip: Ipv4Addr,
}

/// Where one server runs: a namespace and the address it listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server<'a> {
    /// Its network namespace.
    pub netns: &'a str,
    /// The address it binds.
    pub ip: IpAddr,
}

/// Where a measurement's client and server run.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints<'a> {
    /// The server's network namespace (unused when `backends` is not empty).
    pub server_ns: &'a str,
    /// The client's network namespace.
    pub client_ns: &'a str,
    /// The address the client sends to: the server's own, or a load balancer's virtual IP.
    pub server_ip: IpAddr,
    /// Behind a load balancer: every backend runs the server, bound to its own address, and
    /// the client sends to `server_ip`; which backend answers is the load balancer's choice.
    /// Empty: one server, in `server_ns` at `server_ip`.
    pub backends: &'a [Backend],
    /// The CPUs the two sides are pinned to; `None` lets the scheduler place them.
    pub cpus: Option<EndpointCpus>,
}

impl<'a> Endpoints<'a> {
    /// Where the servers run: each backend, or the one server.
    pub fn servers(&self) -> Vec<Server<'a>> {
        if self.backends.is_empty() {
            vec![Server {
                netns: self.server_ns,
                ip: self.server_ip,
            }]
        } else {
            self.backends
                .iter()
                .map(|backend| Server {
                    netns: &backend.netns,
                    ip: backend.ip.into(),
                })
                .collect()
        }
    }

    /// `ip netns exec <netns> [taskset -c CPU] program args...` on the server side's CPU.
    pub fn server_command_in(&self, netns: &str, program: &str, args: &[&str]) -> Command {
        netns_command(netns, self.cpus.map(|cpus| cpus.server), program, args)
    }

    /// `ip netns exec <client_ns> [taskset -c CPU] program args...`
    pub fn client_command(&self, program: &str, args: &[&str]) -> Command {
        netns_command(
            self.client_ns,
            self.cpus.map(|cpus| cpus.client),
            program,
            args,
        )
    }
}

/// `ip netns exec <netns> [taskset -c CPU] program args...`: `taskset` execs the program, so
/// the process the caller waits on is the program itself.
fn netns_command(netns: &str, cpu: Option<usize>, program: &str, args: &[&str]) -> Command {
    let cpu = cpu.map(|cpu| cpu.to_string());
    let mut argv: Vec<&str> = vec!["netns", "exec", netns];
    if let Some(cpu) = &cpu {
        argv.extend(["taskset", "-c", cpu]);
    }
    argv.push(program);
    argv.extend_from_slice(args);
    cmd::command("ip", &argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(command: &Command) -> Vec<String> {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commands_run_in_their_namespace_and_on_their_cpu() {
        let mut endpoints = Endpoints {
            server_ns: "srv",
            client_ns: "cli",
            server_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
            backends: &[],
            cpus: None,
        };
        assert_eq!(
            argv(&endpoints.server_command_in("srv", "iperf3", &["-s"])),
            ["ip", "netns", "exec", "srv", "iperf3", "-s"]
        );
        endpoints.cpus = Some(EndpointCpus {
            client: 0,
            server: 3,
        });
        assert_eq!(
            argv(&endpoints.server_command_in("srv", "iperf3", &["-s"])),
            [
                "ip", "netns", "exec", "srv", "taskset", "-c", "3", "iperf3", "-s"
            ]
        );
        assert_eq!(
            argv(&endpoints.client_command("iperf3", &["-c", "10.0.0.2"])),
            [
                "ip", "netns", "exec", "cli", "taskset", "-c", "0", "iperf3", "-c", "10.0.0.2"
            ]
        );
    }

    #[test]
    fn servers_are_the_backends_behind_a_virtual_ip() {
        let single = Endpoints {
            server_ns: "srv",
            client_ns: "cli",
            server_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
            backends: &[],
            cpus: None,
        };
        assert_eq!(
            single.servers(),
            [Server {
                netns: "srv",
                ip: Ipv4Addr::new(10, 0, 0, 2).into()
            }]
        );
        let backends = [
            Backend {
                netns: "b1".into(),
                ip: Ipv4Addr::new(10, 0, 2, 2),
            },
            Backend {
                netns: "b2".into(),
                ip: Ipv4Addr::new(10, 0, 2, 3),
            },
        ];
        let balanced = Endpoints {
            server_ip: Ipv4Addr::new(10, 0, 0, 80).into(),
            backends: &backends,
            cpus: Some(EndpointCpus {
                client: 0,
                server: 1,
            }),
            ..single
        };
        let servers = balanced.servers();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            (servers[1].netns, servers[1].ip),
            ("b2", backends[1].ip.into())
        );
        assert_eq!(
            argv(&balanced.server_command_in(servers[1].netns, "iperf3", &["-s"])),
            [
                "ip", "netns", "exec", "b2", "taskset", "-c", "1", "iperf3", "-s"
            ]
        );
    }

    #[test]
    fn spread_puts_the_endpoints_on_different_cpus() {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
        let allowed = (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .count();
        match EndpointCpus::spread() {
            Ok(cpus) => {
                assert!(allowed >= 2);
                assert!(cpus.client < cpus.server, "{cpus:?}");
            }
            Err(error) => {
                assert!(allowed < 2, "{error}");
                assert!(error.to_string().contains("at least two CPUs"), "{error}");
            }
        }
    }
}
