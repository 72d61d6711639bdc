//! Driving vswitchd and vswitchctl through their public CLI only, with these commands:
//! `vswitchd --socket S --state-dir D --workers N`, `vswitchctl --socket S attach NETNS
//! --kind K --name N [--label KEY=VALUE]`, `vswitchctl --socket S apply -f FILE`,
//! `vswitchctl --socket S get networkinterfaces -o json`, `vswitchctl --socket S lb NAME -o
//! json`.
//!
//! The daemon runs inside the scenario's node namespace (`ip netns exec`, which execs, so the
//! child's pid is vswitchd's: its `/proc/<pid>/stat` gives the switch's CPU time). It is
//! stopped with SIGTERM, then SIGKILL, when the [`Daemon`] is dropped.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::cmd;

/// Where vswitchd and vswitchctl are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// The daemon.
    pub vswitchd: PathBuf,
    /// The CLI.
    pub vswitchctl: PathBuf,
}

/// Finds a binary: the explicit path if given, else next to the perf binary (cargo puts all
/// of a workspace's binaries in `target/<profile>/`), else in `PATH`.
///
/// # Errors
/// None of these has an executable of that name; the message says how to build one.
pub fn locate(name: &str, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if cmd::is_executable(path) {
            return Ok(path.to_path_buf());
        }
        bail!("{} is not an executable file", path.display());
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(sibling) = sibling.filter(|path| cmd::is_executable(path)) {
        return Ok(sibling);
    }
    cmd::which(name).ok_or_else(|| {
        anyhow!(
            "{name} not found next to perf nor in PATH; build it with \
             `cargo build --release -p vswitch` or pass --{name} PATH (or use --kernel-only)"
        )
    })
}

/// The kind of port `attach` creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PortKind {
    /// A TAP device moved into the container.
    Tap,
    /// A veth pair whose host end vswitchd reads with AF_PACKET.
    Veth,
}

impl PortKind {
    /// The `--kind` value.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Veth => "veth",
        }
    }
}

/// A refusal from the daemon (vswitchctl exited non-zero): its message, verbatim.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A running vswitchd in a scratch directory.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    binaries: Binaries,
    dir: PathBuf,
    socket: PathBuf,
    netns: String,
    settings: DaemonSettings,
}

/// The vswitchd options a variant sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonSettings {
    /// `--workers`.
    pub workers: u32,
    /// `--busy-poll-us`.
    pub busy_poll_us: u32,
    /// `--worker-cpus auto` (vswitchd's default) when true, `--worker-cpus none` when false.
    pub pinned: bool,
    /// `--conntrack-max`, when a scenario needs more than the default.
    pub conntrack_max: Option<u32>,
}

/// Whether vswitchd's workers are pinned to CPUs (`--worker-cpus auto`, the daemon's default)
/// or moved by the scheduler (`--worker-cpus none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerPlacement {
    /// One CPU per worker, the highest first.
    Pinned,
    /// The scheduler places and moves the workers.
    Floating,
}

impl Daemon {
    /// Starts vswitchd with `settings` inside namespace `netns`, with its socket and state
    /// under `dir` (created here, removed on drop), and waits for the socket.
    ///
    /// # Errors
    /// The daemon cannot start, exits, or does not open its socket within 15 s; the message
    /// includes the end of its log.
    pub fn start(
        binaries: &Binaries,
        netns: &str,
        settings: DaemonSettings,
        dir: &Path,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir.join("state"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("vs.sock");
        let child = spawn(binaries, netns, settings, dir, &socket, false)?;
        let mut daemon = Daemon {
            child,
            binaries: binaries.clone(),
            dir: dir.to_path_buf(),
            socket,
            netns: netns.to_owned(),
            settings,
        };
        daemon.wait_for_socket(Duration::from_secs(15))?;
        Ok(daemon)
    }

    /// Kills the daemon with SIGKILL (no shutdown: a crash, or a node lost) and starts it
    /// again on the same state directory at once; returns when the new one's socket is open.
    ///
    /// # Errors
    /// As [`Daemon::start`].
    pub fn kill9_and_restart(&mut self) -> Result<()> {
        cmd::kill_and_reap(&mut self.child);
        let _ = std::fs::remove_file(&self.socket);
        self.child = spawn(
            &self.binaries,
            &self.netns,
            self.settings,
            &self.dir,
            &self.socket,
            true,
        )?;
        self.wait_for_socket(Duration::from_secs(60))
    }

    fn wait_for_socket(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            cmd::check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "vswitchd exited ({status}) before opening {}; {}",
                    self.socket.display(),
                    self.log_note()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "vswitchd did not open {} within {limit:?}; {}",
                    self.socket.display(),
                    self.log_note()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// "its log ends with: ..." or "its log is empty", for error messages.
    fn log_note(&self) -> String {
        let tail = self.log_tail(20);
        if tail.trim().is_empty() {
            "its log is empty".to_owned()
        } else {
            format!("its log ends with:\n{tail}")
        }
    }

    /// The daemon's pid (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident memory now (`VmRSS` of `/proc/PID/status`), in bytes.
    ///
    /// # Errors
    /// The status file cannot be read or has no `VmRSS` line (the daemon is gone).
    pub fn resident_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        resident_in(&status).ok_or_else(|| anyhow::anyhow!("no VmRSS in {path}"))
    }

    /// Runs `vswitchctl --socket S ARGS...`, returning stdout.
    ///
    /// # Errors
    /// [`Refused`] with the daemon's message when vswitchctl exits non-zero; other errors when
    /// it cannot run or times out.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.ctl_within(args, Duration::from_secs(20))
    }

    /// [`Daemon::ctl`] allowed up to `limit` (vswitchctl's own `--timeout` included), for
    /// requests that carry thousands of resources.
    ///
    /// # Errors
    /// As [`Daemon::ctl`].
    pub fn ctl_within(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut command = std::process::Command::new(&self.binaries.vswitchctl);
        command.arg("--socket").arg(&self.socket);
        if limit > Duration::from_secs(60) {
            // vswitchctl gives up after 60 s unless told otherwise.
            command.arg("--timeout").arg(limit.as_secs().to_string());
        }
        command.args(args);
        let output = cmd::output_within(command, limit)?;
        if !output.status.success() {
            let mut message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            if message.is_empty() {
                message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            }
            let message = message
                .strip_prefix("vswitchctl: ")
                .unwrap_or(&message)
                .trim();
            let verb = args.first().copied().unwrap_or("vswitchctl");
            return Err(Refused(format!("`{verb}` refused: {message}")).into());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Applies a resource document (YAML) through `vswitchctl apply -f`.
    ///
    /// # Errors
    /// As [`Daemon::ctl`].
    pub fn apply(&self, name: &str, yaml: &str) -> Result<()> {
        self.apply_within(name, yaml, Duration::from_secs(20))
    }

    /// [`Daemon::apply`] allowed up to `limit`.
    ///
    /// # Errors
    /// As [`Daemon::ctl`].
    pub fn apply_within(&self, name: &str, yaml: &str, limit: Duration) -> Result<()> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        self.ctl_within(&["apply", "-f", &path.to_string_lossy()], limit)?;
        Ok(())
    }

    /// Attaches namespace `netns` as interface `name`, optionally in `subnet` with `ip`.
    ///
    /// # Errors
    /// As [`Daemon::ctl`].
    pub fn attach(
        &self,
        netns: &str,
        name: &str,
        kind: PortKind,
        subnet: Option<&str>,
        ip: Option<&str>,
    ) -> Result<()> {
        self.attach_labelled(netns, name, kind, subnet, ip, &[])
    }

    /// [`Daemon::attach`] with labels (`--label KEY=VALUE` each), which LoadBalancer
    /// selectors pick backends by.
    ///
    /// # Errors
    /// As [`Daemon::ctl`].
    pub fn attach_labelled(
        &self,
        netns: &str,
        name: &str,
        kind: PortKind,
        subnet: Option<&str>,
        ip: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let args = attach_args(netns, name, kind, subnet, ip, labels);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctl(&args)?;
        Ok(())
    }

    /// The backends of LoadBalancer `name` as the datapath serves them (`vswitchctl lb NAME
    /// -o json`).
    ///
    /// # Errors
    /// As [`Daemon::ctl`], or the JSON has no backend list.
    pub fn lb_backends(&self, name: &str) -> Result<Vec<LbBackend>> {
        parse_lb_backends(&self.ctl(&["lb", name, "-o", "json"])?)
    }

    /// The first IPv4 address of interface `name` (from `status.ips`).
    ///
    /// # Errors
    /// As [`Daemon::ctl`], or the interface or its address is missing from the JSON.
    pub fn interface_ip(&self, name: &str, netns: &str) -> Result<Ipv4Addr> {
        let json = self.ctl(&["get", "networkinterfaces", "-o", "json"])?;
        interface_ip(&json, name, netns)
    }

    /// The IPv6 address of interface `name` (from `status.ipv6`).
    ///
    /// # Errors
    /// As [`Daemon::ctl`], or the interface or its IPv6 address is missing from the JSON.
    pub fn interface_ipv6(&self, name: &str, netns: &str) -> Result<Ipv6Addr> {
        let json = self.ctl(&["get", "networkinterfaces", "-o", "json"])?;
        interface_ipv6(&json, name, netns)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = i32::try_from(self.child.id())
                .ok()
                .map(nix::unistd::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            cmd::kill_and_reap(&mut self.child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts vswitchd in `netns` with its socket at `socket` and state and log under `dir`
/// (the log appended to when `append`).
fn spawn(
    binaries: &Binaries,
    netns: &str,
    settings: DaemonSettings,
    dir: &Path,
    socket: &Path,
    append: bool,
) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(dir.join("vswitchd.log"))?;
    let mut command = std::process::Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(&binaries.vswitchd)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--workers")
        .arg(settings.workers.to_string())
        .arg("--busy-poll-us")
        .arg(settings.busy_poll_us.to_string())
        .arg("--worker-cpus")
        .arg(if settings.pinned { "auto" } else { "none" });
    if let Some(max) = settings.conntrack_max {
        command.arg("--conntrack-max").arg(max.to_string());
    }
    cmd::log_command(&command);
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    command
        .spawn()
        .with_context(|| format!("starting {}", binaries.vswitchd.display()))
}

/// The arguments of `vswitchctl attach`.
pub fn attach_args(
    netns: &str,
    name: &str,
    kind: PortKind,
    subnet: Option<&str>,
    ip: Option<&str>,
    labels: &[(&str, &str)],
) -> Vec<String> {
    let mut args: Vec<String> = ["attach", netns, "--kind", kind.as_str(), "--name", name]
        .map(str::to_owned)
        .into();
    if let Some(subnet) = subnet {
        args.extend(["--subnet".to_owned(), subnet.to_owned()]);
    }
    if let Some(ip) = ip {
        args.extend(["--ip".to_owned(), ip.to_owned()]);
    }
    for (key, value) in labels {
        args.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    args
}

/// One backend of a LoadBalancer, from `vswitchctl lb NAME -o json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbBackend {
    /// The NetworkInterface's name.
    pub interface: String,
    /// `Healthy`, `Unhealthy` or `Draining`.
    pub state: String,
}

/// Parses `vswitchctl lb NAME -o json` (`{"backends": [{"interface": .., "state": ..}, ..],
/// ..}`).
///
/// # Errors
/// Not JSON, or no `backends` array.
pub fn parse_lb_backends(json: &str) -> Result<Vec<LbBackend>> {
    let value: Value = serde_json::from_str(json).context("vswitchctl lb -o json: not JSON")?;
    let backends = value
        .get("backends")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("vswitchctl lb -o json has no `backends` list"))?;
    Ok(backends
        .iter()
        .map(|backend| {
            let text = |field: &str| {
                backend
                    .get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            LbBackend {
                interface: text("interface"),
                state: text("state"),
            }
        })
        .collect())
}

/// Finds interface `name` (or, failing that, the one in `netns`) in the JSON of
/// `vswitchctl get networkinterfaces -o json` and returns its first IPv4 address.
///
/// Accepts a JSON array of resources, an object with `items`, or a single resource.
/// Addresses may carry a prefix length (`172.30.0.2/16`).
///
/// # Errors
/// No such interface, or it has no IPv4 address in `status.ips`.
pub fn interface_ip(json: &str, name: &str, netns: &str) -> Result<Ipv4Addr> {
    interface_item(json, name, netns)?
        .pointer("/status/ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|ip| ip.split('/').next().and_then(|addr| addr.parse().ok()))
        .ok_or_else(|| anyhow!("interface {name:?} has no IPv4 address in status.ips"))
}

/// As [`interface_ip`], the interface's IPv6 address (`status.ipv6`, on a dual-stack Subnet).
///
/// # Errors
/// No such interface, or it has no `status.ipv6`.
pub fn interface_ipv6(json: &str, name: &str, netns: &str) -> Result<Ipv6Addr> {
    interface_item(json, name, netns)?
        .pointer("/status/ipv6")
        .and_then(Value::as_str)
        .and_then(|ip| ip.split('/').next()?.parse().ok())
        .ok_or_else(|| anyhow!("interface {name:?} has no IPv6 address in status.ipv6"))
}

/// The resource of interface `name` (or, failing that, the one in `netns`).
fn interface_item(json: &str, name: &str, netns: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(json).context("vswitchctl get -o json: not JSON")?;
    let items: Vec<&Value> = match &value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(map) => match map.get("items") {
            Some(Value::Array(items)) => items.iter().collect(),
            _ => vec![&value],
        },
        _ => Vec::new(),
    };
    let by_name =
        |item: &&&Value| item.pointer("/metadata/name").and_then(Value::as_str) == Some(name);
    let by_netns = |item: &&&Value| {
        item.pointer("/spec/netns")
            .and_then(Value::as_str)
            .is_some_and(|spec| spec == netns || spec.ends_with(&format!("/{netns}")))
    };
    items
        .iter()
        .find(by_name)
        .or_else(|| items.iter().find(by_netns))
        .map(|item| (**item).clone())
        .ok_or_else(|| anyhow!("vswitchctl lists no interface {name:?} (netns {netns})"))
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
fn resident_in(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_in_bytes() {
        let status = "Name:\tvswitchd\nVmHWM:\t  20000 kB\nVmRSS:\t   16716 kB\nThreads:\t4\n";
        assert_eq!(resident_in(status), Some(16_716 * 1024));
        assert_eq!(resident_in("Name:\tzombie\n"), None);
    }

    static LIST: &str = r#"[
      {"apiVersion": "vswitch/v1alpha1", "kind": "NetworkInterface",
       "metadata": {"name": "c1", "labels": {}},
       "spec": {"subnet": "default", "netns": "vsperf-1-1-c1", "kind": "tap"},
       "status": {"ips": ["172.30.0.2/16"], "ipv6": "fd00:30::2/64", "mac": "02:00:00:00:00:01",
                  "state": "Up"}},
      {"apiVersion": "vswitch/v1alpha1", "kind": "NetworkInterface",
       "metadata": {"name": "other"},
       "spec": {"netns": "/run/netns/vsperf-1-1-c2"},
       "status": {"ips": ["fd00::2/64", "172.30.0.3"]}}
    ]"#;

    #[test]
    fn finds_by_name_and_strips_prefix() {
        let ip = interface_ip(LIST, "c1", "vsperf-1-1-c1").unwrap();
        assert_eq!(ip, Ipv4Addr::new(172, 30, 0, 2));
    }

    #[test]
    fn falls_back_to_netns_and_skips_ipv6() {
        let ip = interface_ip(LIST, "c2", "vsperf-1-1-c2").unwrap();
        assert_eq!(ip, Ipv4Addr::new(172, 30, 0, 3));
    }

    #[test]
    fn accepts_items_and_single_objects() {
        let items = format!(r#"{{"items": {LIST}}}"#);
        assert_eq!(
            interface_ip(&items, "c1", "x").unwrap(),
            Ipv4Addr::new(172, 30, 0, 2)
        );
        let single = r#"{"metadata": {"name": "c1"}, "status": {"ips": ["10.1.2.3/24"]}}"#;
        assert_eq!(
            interface_ip(single, "c1", "x").unwrap(),
            Ipv4Addr::new(10, 1, 2, 3)
        );
    }

    #[test]
    fn missing_interface_or_address_is_an_error() {
        assert!(interface_ip(LIST, "c9", "nowhere").is_err());
        let no_ips = r#"[{"metadata": {"name": "c1"}, "status": {"ips": []}}]"#;
        assert!(interface_ip(no_ips, "c1", "x").is_err());
        assert!(interface_ip("garbage", "c1", "x").is_err());
    }

    #[test]
    fn ipv6_comes_from_status_ipv6() {
        assert_eq!(
            interface_ipv6(LIST, "c1", "x").unwrap(),
            "fd00:30::2".parse::<Ipv6Addr>().unwrap()
        );
        // c2 lists an IPv6 address among its IPv4 ones, not in status.ipv6.
        assert!(interface_ipv6(LIST, "c2", "vsperf-1-1-c2").is_err());
    }

    #[test]
    fn attach_arguments_carry_labels() {
        assert_eq!(
            attach_args("ns1", "c1", PortKind::Tap, None, None, &[]),
            ["attach", "ns1", "--kind", "tap", "--name", "c1"]
        );
        assert_eq!(
            attach_args(
                "ns2",
                "b1",
                PortKind::Veth,
                Some("perf-a"),
                Some("10.0.0.5"),
                &[("app", "perf"), ("tier", "x")]
            ),
            [
                "attach", "ns2", "--kind", "veth", "--name", "b1", "--subnet", "perf-a", "--ip",
                "10.0.0.5", "--label", "app=perf", "--label", "tier=x"
            ]
        );
    }

    #[test]
    fn lb_backends_from_json() {
        // As in docs/api.md, `GET /v1/lb/{name}`.
        let json = r#"{"address":"172.30.0.5","backends":[
            {"connections":2,"interface":"b1","ip":"172.30.0.2","slots":5461,"state":"Healthy"},
            {"connections":1,"interface":"b2","ip":"172.30.0.3","slots":5460,"state":"Draining"}],
            "name":"web","network":"default","tableSize":16381}"#;
        let backends = parse_lb_backends(json).unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(backends[0].interface, "b1");
        assert_eq!(backends[0].state, "Healthy");
        assert_eq!(backends[1].state, "Draining");
        assert!(parse_lb_backends(r#"{"backends": []}"#).unwrap().is_empty());
        assert!(parse_lb_backends(r#"{"name": "web"}"#).is_err());
        assert!(parse_lb_backends("nope").is_err());
    }

    #[test]
    fn explicit_path_must_be_executable() {
        let err = locate("vswitchd", Some(Path::new("/nonexistent/vswitchd"))).unwrap_err();
        assert!(format!("{err}").contains("not an executable"), "{err}");
        assert_eq!(
            locate("sh", Some(Path::new("/bin/sh"))).unwrap(),
            Path::new("/bin/sh")
        );
    }
}
