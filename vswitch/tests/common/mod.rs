//! Shared pieces of the integration tests: namespaces, a real `vswitchd`, `vswitchctl`.
//!
//! Every test builds its own topology with a unique name prefix and tears it down in `Drop`,
//! so tests can run in parallel and leave nothing behind even when they fail. A test that
//! cannot run (not root, a tool missing) fails and says what is missing; it never passes.
//! Tests that need root are `#[ignore = "needs root: ..."]`: a plain `cargo test` skips them,
//! `sudo ./scripts/test.sh` runs them all (`--include-ignored`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod ovs;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name that no other test (or test process) uses: `vst<pid><n><tag>`, short enough for
/// interface names derived from it.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("vt{}{}{}", std::process::id() % 100_000, n, tag)
}

/// Fails the test unless it runs as root with the given tools on PATH.
pub fn require(tools: &[&str]) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it creates namespaces and TAP devices): run sudo ./scripts/test.sh"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module"
    );
    for tool in tools.iter().chain(["ip"].iter()) {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{tool}`, which is not installed: run ./scripts/test.sh, which installs it"
        );
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, and returns that value; panics naming
/// `what` once `timeout` has passed without it. Use it instead of a fixed sleep: it waits for
/// the condition itself, and only as long as the condition takes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a `proto` (`"tcp"` or `"udp"`) socket in network namespace `netns` is bound to
/// `local`: `"ADDRESS:PORT"`, or `":PORT"` for any address. Per `ss`; a TCP socket must be
/// listening.
pub fn is_listening(netns: &str, proto: &str, local: &str) -> bool {
    let flags = if proto == "udp" { "-Hlun" } else { "-Hltn" };
    let out = run_any("ip", &["netns", "exec", netns, "ss", flags]);
    String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        // State, Recv-Q, Send-Q, Local Address:Port, Peer Address:Port.
        line.split_whitespace().nth(3).is_some_and(|bound| {
            if local.starts_with(':') {
                bound.ends_with(local)
            } else {
                bound == local
            }
        })
    })
}

/// Waits (up to 10 s) until `server`, started in `netns`, listens on `proto` `local` (see
/// [`is_listening`]); panics with the server's stderr if it exits first.
pub fn wait_listening(netns: &str, proto: &str, local: &str, server: &mut Child) {
    wait_until(
        &format!("a {proto} listener on {local} in {netns}"),
        Duration::from_secs(10),
        || {
            if let Ok(Some(status)) = server.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "the server meant to listen on {proto} {local} in {netns} exited ({status}): {stderr}"
                );
            }
            is_listening(netns, proto, local).then_some(())
        },
    );
}

/// Runs a command and returns its output; panics with the full output when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs a command, returning its output whatever the exit status.
pub fn run_any(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with a unique name.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `cmd` inside the namespace; returns the output whatever the status.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        run_any("ip", &args)
    }

    /// Runs `cmd` inside the namespace; panics with its output when it fails.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        String::from_utf8_lossy(&run("ip", &args).stdout).into_owned()
    }

    /// Starts `cmd` inside the namespace in the background.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", self.name.as_str()])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?} in {}: {e}", self.name))
    }

    /// Runs `python3 -c script args...` inside the namespace; panics with its output when it
    /// fails; returns its standard output, trimmed.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = vec!["python3", "-c", script];
        cmd.extend_from_slice(args);
        let out = self.exec(&cmd);
        assert!(
            out.status.success(),
            "python in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Pings `addr` until one reply arrives or `within` passes; returns whether it did.
    pub fn ping_until(&self, addr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self
                .exec(&["ping", "-c", "1", "-W", "1", addr])
                .status
                .success()
            {
                return true;
            }
        }
        false
    }

    /// `ping -c count` must get every reply.
    pub fn ping_ok(&self, addr: &str, count: u32) -> String {
        let count = count.to_string();
        let out = self.exec(&["ping", "-c", &count, "-i", "0.2", "-W", "2", addr]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.contains(&format!("{count} received")),
            "ping from {} to {addr} failed:\n{text}{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A running `vswitchd` with its own socket and state directory, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    /// The control socket.
    pub socket: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
    workers: usize,
    /// The network namespace the daemon runs in (a "node"), if not the test's own.
    netns: Option<String>,
}

impl Daemon {
    /// Starts a daemon (embedded default config) in a fresh temporary directory.
    pub fn start(workers: usize) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("vstest")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("vs.sock");
        let state_dir = dir.path().join("state");
        let log = dir.path().join("vswitchd.log");
        let mut daemon = Daemon {
            socket,
            state_dir,
            child: None,
            log,
            _dir: Some(dir),
            workers,
            netns: None,
        };
        daemon.spawn(&[]);
        daemon
    }

    /// Starts a daemon inside network namespace `netns` (a node of a multi-node topology),
    /// with extra arguments.
    pub fn start_in(netns: &str, workers: usize, extra: &[&str]) -> Daemon {
        let mut daemon = Daemon::start_stopped(workers);
        daemon.netns = Some(netns.to_string());
        daemon.spawn(extra);
        daemon
    }

    /// Starts a daemon with extra arguments (e.g. `--config FILE`).
    pub fn start_with(workers: usize, extra: &[&str]) -> Daemon {
        let mut daemon = Daemon::start_stopped(workers);
        daemon.spawn(extra);
        daemon
    }

    /// A daemon whose directory exists but which is not running yet.
    pub fn start_stopped(workers: usize) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("vstest")
            .tempdir()
            .expect("tempdir");
        Daemon {
            socket: dir.path().join("vs.sock"),
            state_dir: dir.path().join("state"),
            log: dir.path().join("vswitchd.log"),
            child: None,
            _dir: Some(dir),
            workers,
            netns: None,
        }
    }

    /// Starts the process (again) with the same socket and state directory, and waits until
    /// it answers on its socket.
    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns])
                    .arg(env!("CARGO_BIN_EXE_vswitchd"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_vswitchd")),
        };
        let child = command
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--workers")
            .arg(self.workers.to_string())
            .arg("--log-level")
            .arg("debug")
            .args(extra)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("cannot start vswitchd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ctl(&["get", "networks"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vswitchd exited at start ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "vswitchd did not answer on {} within 20 s:\n{}",
                self.socket.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` the daemon (the state directory and the containers' ports stay).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `vswitchctl --socket S args...`, whatever its status.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("cannot run vswitchctl")
    }

    /// Runs vswitchctl and panics (with the daemon log) when it fails; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "vswitchctl {} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log (tail):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log_text(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs vswitchctl, expects it to fail, and returns its stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "vswitchctl {} should have failed but succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `vswitchctl apply -f` of `yaml` (one or more documents), which must succeed; returns
    /// what it printed.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(file.path(), yaml).expect("write");
        self.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")])
    }

    /// `vswitchctl ... -o json` parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        let text = self.ctl_ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON from vswitchctl ({e}):\n{text}"))
    }

    /// Attaches `ns` and returns its first IPv4 address (without prefix).
    pub fn attach(&self, ns: &Netns, extra: &[&str]) -> String {
        let mut args = vec!["attach", ns.name.as_str()];
        args.extend_from_slice(extra);
        self.ctl_ok(&args);
        let name = extra
            .iter()
            .position(|a| *a == "--name")
            .map(|i| extra[i + 1].to_string())
            .unwrap_or_else(|| ns.name.clone());
        self.interface_ip(&name)
    }

    /// The first IPv4 address of a NetworkInterface (from its status), without prefix.
    pub fn interface_ip(&self, name: &str) -> String {
        let nic = self.ctl_json(&["get", "networkinterface", name]);
        let ip = nic["status"]["ips"][0]
            .as_str()
            .unwrap_or_else(|| panic!("interface {name} has no status.ips: {nic}"));
        ip.split('/').next().unwrap_or(ip).to_string()
    }

    /// The `stats` report as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.ctl_json(&["stats"])
    }

    /// A drop counter of a port (0 when absent).
    pub fn port_drop(&self, port: &str, reason: &str) -> u64 {
        let stats = self.stats();
        stats["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == port)
            .and_then(|p| p["drops"][reason].as_u64())
            .unwrap_or(0)
    }

    /// A counter field of a port (`rxPackets`, ...), 0 when absent.
    pub fn port_counter(&self, port: &str, field: &str) -> u64 {
        let stats = self.stats();
        stats["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == port)
            .and_then(|p| p[field].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- vswitchd log (tail) ----\n{}",
                tail(&self.log_text(), 60)
            );
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs an iperf3 TCP test from `client` to `server_ip` (server in `server`), returns Gbit/s.
pub fn iperf3_tcp(server: &Netns, client: &Netns, server_ip: &str, seconds: u32) -> f64 {
    let port = (5201 + COUNTER.fetch_add(1, Ordering::Relaxed) % 1000).to_string();
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port]);
    wait_listening(&server.name, "tcp", &format!(":{port}"), &mut srv);
    let secs = seconds.to_string();
    let out = client.exec(&["iperf3", "-c", server_ip, "-p", &port, "-t", &secs, "-J"]);
    let _ = srv.kill();
    let _ = srv.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "iperf3 from {} to {server_ip} failed:\n{text}\n{}",
        client.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("iperf3 -J output");
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 sum_received");
    let bytes = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 0.0, "iperf3 moved no data: {text}");
    bps / 1e9
}

/// Sends raw Ethernet frames (hex strings) out of `ifname` in `ns` with an AF_PACKET socket.
pub fn send_raw_frames(ns: &Netns, ifname: &str, frames_hex: &[&str]) {
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{ifname}',0))\nfor h in sys.argv[1:]:\n    s.send(bytes.fromhex(h))\n"
    );
    let mut cmd = vec!["python3", "-c", script.as_str()];
    cmd.extend_from_slice(frames_hex);
    let out = ns.exec(&cmd);
    assert!(
        out.status.success(),
        "sending raw frames failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A python3 TCP server on `argv[1]:argv[2]` that answers each connection with the peer's
/// `ip:port` (who the server saw: NAT or not).
pub const TCP_WHOAMI: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen(8)\nwhile True:\n    c,a=s.accept()\n    c.sendall(('%s:%d'%a).encode())\n    c.close()\n";

/// A python3 UDP server on `argv[1]:argv[2]` that answers each datagram with the sender's
/// `ip:port`.
pub const UDP_WHOAMI: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],int(sys.argv[2])))\nwhile True:\n    d,a=s.recvfrom(2048)\n    s.sendto(('%s:%d'%a).encode(),a)\n";

/// A node's outside world: a namespace behind a veth pair whose host end (in the test's
/// namespace, like a node's NIC) becomes the Uplink's interface, with `eth0` there holding
/// the given addresses (TEST-NET-3, 203.0.113.1/24 is the usual gateway). Servers started
/// with [`serve`](Outside::serve) stop, and the pair goes, on drop.
#[derive(Debug)]
pub struct Outside {
    /// The outside namespace.
    pub ns: Netns,
    /// The host end of the veth pair (the Uplink's `interface`).
    pub host_end: String,
    servers: Vec<Child>,
}

impl Outside {
    /// The outside with `addresses` (`A.B.C.D/N`) on its `eth0`.
    pub fn new(addresses: &[&str]) -> Outside {
        let ns = Netns::new("out");
        let host_end = unique("u");
        let peer = unique("p");
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &peer,
            ],
        );
        run("ip", &["link", "set", &peer, "netns", &ns.name]);
        run("ip", &["link", "set", &host_end, "up"]);
        ns.exec_ok(&["ip", "link", "set", &peer, "name", "eth0"]);
        for address in addresses {
            ns.exec_ok(&["ip", "addr", "add", address, "dev", "eth0"]);
        }
        ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        Outside {
            ns,
            host_end,
            servers: Vec::new(),
        }
    }

    /// Starts the python3 `script` with arguments `ip port` in namespace `netns` (the
    /// outside's, or a container's) and waits until it listens on `proto` (`tcp` or `udp`);
    /// it is stopped when `self` is dropped.
    pub fn serve(&mut self, netns: &str, proto: &str, script: &str, ip: &str, port: u16) {
        let port_text = port.to_string();
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", netns, "python3", "-c", script, ip, &port_text,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 server");
        // ss writes IPv6 listeners bracketed.
        let local = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        wait_listening(netns, proto, &local, &mut child);
        self.servers.push(child);
    }

    /// [`serve`](Outside::serve) in the outside namespace itself.
    pub fn serve_here(&mut self, proto: &str, script: &str, ip: &str, port: u16) {
        let netns = self.ns.name.clone();
        self.serve(&netns, proto, script, ip, port);
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
    }
}

/// An underlay: a bridge in its own namespace and node namespaces joined to it by veth.
pub struct Underlay {
    /// Holds the bridge `br0` and the bridge ends of the veth pairs.
    _switch: Netns,
    /// The nodes, in the order added; each has `eth0` on the underlay.
    pub nodes: Vec<Netns>,
}

impl Underlay {
    /// A bridge namespace and one node namespace per address (`A.B.C.D/N`).
    pub fn new(addresses: &[&str]) -> Underlay {
        let switch = Netns::new("ul");
        switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for address in addresses {
            let node = Netns::new("nd");
            let bridge_end = unique("ub");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &bridge_end,
                    "netns",
                    &switch.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &node.name,
                ],
            );
            switch.exec_ok(&["ip", "link", "set", &bridge_end, "master", "br0", "up"]);
            let mut add = vec!["ip", "addr", "add", address, "dev", "eth0"];
            if address.contains(':') {
                // An IPv6 underlay: usable at once, not tentative (a VTEP cannot bind it).
                add.push("nodad");
            }
            node.exec_ok(&add);
            node.exec_ok(&["ip", "link", "set", "eth0", "up"]);
            nodes.push(node);
        }
        // Every node reaches every other one before a test starts.
        for node in &nodes[1..] {
            let first = addresses[0].split('/').next().unwrap_or(addresses[0]);
            assert!(
                node.ping_until(first, Duration::from_secs(5)),
                "the underlay does not work: {} cannot ping {first}",
                node.name
            );
        }
        Underlay {
            _switch: switch,
            nodes,
        }
    }

    /// Node `index`, in the order of the addresses.
    pub fn node(&self, index: usize) -> &Netns {
        &self.nodes[index]
    }
}

/// A node built only from Linux kernel pieces: `vx0` (a kernel VXLAN device, no learning),
/// bridge `br0`, and a container namespace joined to the bridge by a veth pair, with `ip`
/// on its `eth0` (MTU 1450). Unknown unicast and broadcast go to `remote`.
pub fn kernel_vxlan_node(
    node: &Netns,
    vni: u32,
    local: &str,
    remote: &str,
    container: &Netns,
    ip: &str,
) {
    kernel_vxlan_node_with(node, vni, local, remote, container, ip, &[]);
}

/// [`kernel_vxlan_node`] with more options for the vxlan device (`udpcsum`, `remcsumtx`...).
pub fn kernel_vxlan_node_with(
    node: &Netns,
    vni: u32,
    local: &str,
    remote: &str,
    container: &Netns,
    ip: &str,
    options: &[&str],
) {
    let vni = vni.to_string();
    let mut add = vec![
        "ip",
        "link",
        "add",
        "vx0",
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        &vni,
        "dstport",
        "4789",
        "local",
        local,
        "nolearning",
    ];
    add.extend_from_slice(options);
    node.exec_ok(&add);
    node.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    node.exec_ok(&["ip", "link", "set", "vx0", "master", "br0"]);
    node.exec_ok(&[
        "ip",
        "link",
        "add",
        "vb0",
        "mtu",
        "1450",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &container.name,
    ]);
    node.exec_ok(&["ip", "link", "set", "vb0", "master", "br0"]);
    for link in ["vx0", "vb0", "br0"] {
        node.exec_ok(&["ip", "link", "set", link, "up"]);
    }
    node.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vx0",
        "dst",
        remote,
    ]);
    container.exec_ok(&["ip", "link", "set", "eth0", "mtu", "1450"]);
    container.exec_ok(&["ip", "addr", "add", ip, "dev", "eth0"]);
    container.exec_ok(&["ip", "link", "set", "eth0", "up"]);
}

/// An etcd server (Debian's `etcd-server`, 3.4) of one member, on `ADDRESS:2379` inside a
/// node namespace, with a temporary data directory; killed and removed when dropped.
pub struct Etcd {
    child: Option<Child>,
    netns: String,
    address: String,
    /// Its client URL (`http://ADDRESS:2379`).
    pub endpoint: String,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd in `netns` on `address` and waits until it answers.
    pub fn start_in(netns: &Netns, address: &str) -> Etcd {
        let mut etcd = Etcd::stopped_in(netns, address);
        etcd.start();
        etcd
    }

    /// An etcd of `netns` on `address`, not started yet ([`Etcd::start`]).
    pub fn stopped_in(netns: &Netns, address: &str) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("vstest-etcd")
            .tempdir()
            .expect("tempdir");
        Etcd {
            child: None,
            netns: netns.name.clone(),
            address: address.to_owned(),
            endpoint: format!("http://{address}:2379"),
            dir,
        }
    }

    /// Kills it (`kill -9`); its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again, on the same data) and waits until it answers.
    pub fn start(&mut self) {
        let address = &self.address;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let client = format!("http://{address}:2379");
        let peer = format!("http://{address}:2380");
        let data = self.dir.path().join("data");
        let child = Command::new("ip")
            .args(["netns", "exec", self.netns.as_str(), "etcd"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd (apt-get install etcd-server): {e}"));
        self.child = Some(child);
        wait_until("etcd to answer", Duration::from_secs(30), || {
            let out = self.ctl_output(&["endpoint", "health"]);
            out.status.success().then_some(())
        });
    }

    fn ctl_output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", self.netns.as_str(), "etcdctl"])
            .args(["--endpoints", self.endpoint.as_str()])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap_or_else(|e| panic!("cannot run etcdctl (apt-get install etcd-client): {e}"))
    }

    /// Runs `etcdctl ARGS` against it; panics with its output when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Its log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
