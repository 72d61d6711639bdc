//! Network namespaces and links for one variant of one scenario, torn down in `Drop`.
//!
//! Every namespace is named `vsperf-<pid>-<seq>-<role>`: the perf process's pid makes names
//! unique between concurrent runs (and lets a later run recognise what an interrupted or
//! killed run left behind, see [`sweep_stale`]), and `<seq>` makes them unique between the
//! variants of one run. Links are created *inside* those namespaces (`ip -n NS link add ...
//! peer ... netns OTHER`), so nothing is ever added to the host's own namespace and deleting
//! the namespaces removes every link.
//!
//! Teardown runs on drop, so it happens on success, on error (`?`) and on panic (unwinding).
//! Ctrl-C and SIGTERM are turned into errors by [`crate::tools::cmd`], so they unwind the
//! same way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::tools::cmd;

/// The first word of every namespace and scratch directory the harness creates.
pub const PREFIX: &str = "vsperf";

/// Limit for one `ip` command.
const IP_LIMIT: Duration = Duration::from_secs(10);

static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// The namespaces of one variant. Dropping it kills whatever still runs in them and deletes
/// them, and removes the scratch directory.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    namespaces: Vec<String>,
    scratch: PathBuf,
    /// Host-wide sysctls raised for this topology (`/proc/sys` path, value before), put back
    /// on drop.
    raised: Vec<(PathBuf, String)>,
}

impl Topology {
    /// A new, empty topology with a fresh prefix.
    pub fn new() -> Topology {
        let prefix = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::SeqCst)
        );
        let scratch = std::env::temp_dir().join(&prefix);
        Topology {
            prefix,
            namespaces: Vec::new(),
            scratch,
            raised: Vec::new(),
        }
    }

    /// Raises the host-wide sysctl `key` (a `/proc/sys` path under it, `net/netfilter/...`)
    /// to at least `min` until the topology is dropped, when its value is put back.
    ///
    /// # Errors
    /// The file cannot be read or written.
    pub fn raise_host_sysctl(&mut self, key: &str, min: u64) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        let before = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let current: u64 = before
            .trim()
            .parse()
            .with_context(|| format!("{} is not a number", path.display()))?;
        if current < min {
            std::fs::write(&path, min.to_string())
                .with_context(|| format!("writing {}", path.display()))?;
            self.raised.push((path, before));
        }
        Ok(())
    }

    /// The full name of the namespace made for `role`, if any.
    pub fn find(&self, role: &str) -> Option<String> {
        let name = format!("{}-{role}", self.prefix);
        self.namespaces.iter().find(|n| **n == name).cloned()
    }

    /// Creates namespace `<prefix>-<role>` with its loopback up and returns its full name.
    ///
    /// # Errors
    /// `ip netns add` fails.
    pub fn namespace(&mut self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.prefix);
        cmd::run(cmd::command("ip", &["netns", "add", &name]), IP_LIMIT)?;
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Runs `ip -n NS ARGS...`.
    ///
    /// # Errors
    /// `ip` fails; the message quotes the command and ip's stderr.
    pub fn ip(&self, netns: &str, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", netns];
        full.extend_from_slice(args);
        cmd::run(cmd::command("ip", &full), IP_LIMIT)?;
        Ok(())
    }

    /// Creates a veth pair: `a_name` in `a_ns`, `b_name` in `b_ns`, both up.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn veth(&self, a_ns: &str, a_name: &str, b_ns: &str, b_name: &str) -> Result<()> {
        self.ip(
            a_ns,
            &[
                "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b_ns,
            ],
        )?;
        self.ip(a_ns, &["link", "set", a_name, "up"])?;
        self.ip(b_ns, &["link", "set", b_name, "up"])
    }

    /// Adds `cidr` to `dev` in `netns`.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn address(&self, netns: &str, dev: &str, cidr: &str) -> Result<()> {
        self.ip(netns, &["addr", "add", cidr, "dev", dev])
    }

    /// Sets a sysctl inside `netns` (through this binary's hidden `sysctl` helper, so no
    /// `sysctl` program is needed).
    ///
    /// # Errors
    /// The helper fails.
    pub fn sysctl(&self, netns: &str, key: &str, value: &str) -> Result<()> {
        let exe = std::env::current_exe().context("locating the perf binary")?;
        let exe = exe.to_string_lossy();
        cmd::run(
            cmd::command("ip", &["netns", "exec", netns, &exe, "sysctl", key, value]),
            IP_LIMIT,
        )?;
        Ok(())
    }

    /// Runs `PROGRAM ARGS...` inside `netns` and returns its stdout.
    ///
    /// # Errors
    /// The program fails or runs past 30 s.
    pub fn exec(&self, netns: &str, program: &str, args: &[&str]) -> Result<String> {
        self.exec_within(netns, program, args, Duration::from_secs(30))
    }

    /// [`Topology::exec`] with its own time limit (a large `nft -f` takes minutes).
    ///
    /// # Errors
    /// The program fails or runs past `limit`.
    pub fn exec_within(
        &self,
        netns: &str,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<String> {
        let mut full = vec!["netns", "exec", netns, program];
        full.extend_from_slice(args);
        cmd::run(cmd::command("ip", &full), limit)
    }

    /// A scratch directory for this topology (created on first use, removed on drop).
    ///
    /// # Errors
    /// It cannot be created.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.scratch.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Default for Topology {
    fn default() -> Topology {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (path, value) in self.raised.drain(..).rev() {
            if let Err(err) = std::fs::write(&path, &value) {
                eprintln!(
                    "perf: warning: putting {} back to {}: {err}",
                    path.display(),
                    value.trim()
                );
            }
        }
        for name in self.namespaces.iter().rev() {
            if let Err(err) = delete_namespace(name) {
                eprintln!("perf: warning: cleaning up namespace {name}: {err:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Kills the processes left in `name` (ours: only our helpers run there) and deletes it.
fn delete_namespace(name: &str) -> Result<()> {
    // Run even after Ctrl-C: use plain std commands, which ignore the interrupt flag.
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .context("ip netns pids")?;
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let output = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .output()
        .context("ip netns del")?;
    if !output.status.success() {
        bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The pid that created a harness namespace or scratch directory name, if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let (pid, rest) = rest.split_once('-')?;
    // The sequence number must follow, so `vsperf-12-` alone is not ours.
    let seq = rest.split('-').next()?;
    seq.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether the process behind `/proc/<pid>/stat` (text `stat`, name `comm`) is a live
/// harness: it exists, is not a zombie, and runs the same program as we do (a reused pid
/// of another program does not count).
fn owner_alive(stat: &str, comm: &str, own_comm: &str) -> bool {
    let state = stat
        .rfind(')')
        .and_then(|at| stat[at + 1..].split_whitespace().next());
    matches!(state, Some(state) if state != "Z" && state != "X") && comm.trim() == own_comm.trim()
}

/// Removes namespaces and scratch directories left by harness runs whose process is gone
/// (killed with SIGKILL, or a crash that skipped unwinding). Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    let own_comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let alive = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        owner_alive(&stat, &comm, &own_comm)
    };
    let mut removed = Vec::new();
    let listing = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    for name in listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        if owner_pid(name).is_some_and(|pid| !alive(pid)) && delete_namespace(name).is_ok() {
            removed.push(format!("namespace {name}"));
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !alive(pid))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                removed.push(format!("directory {}", entry.path().display()));
            }
        }
    }
    removed
}

/// The hidden `sysctl` helper: writes `value` to `/proc/sys/<key with dots as slashes>` in
/// the current namespace.
///
/// # Errors
/// The key is malformed or the write fails.
pub fn sysctl_main(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.contains("..") || key.contains('/') {
        bail!("bad sysctl key {key:?}");
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("vsperf-4242-3-c1"), Some(4242));
        assert_eq!(owner_pid("vsperf-4242-3"), Some(4242));
        assert_eq!(owner_pid("vsperf-4242-x-c1"), None);
        assert_eq!(owner_pid("vsperf-abc-1-c1"), None);
        assert_eq!(owner_pid("other-4242-1-c1"), None);
        assert_eq!(owner_pid("vsperfx-1-1"), None);
    }

    #[test]
    fn owner_liveness() {
        let running = "27332 (perf) S 1 27332 27332 0 -1 4194560 10 0 0 0 1 1 0 0";
        let zombie = "27332 (perf) Z 1 27332 27332 0 -1 4194560 10 0 0 0 1 1 0 0";
        assert!(owner_alive(running, "perf\n", "perf\n"));
        assert!(!owner_alive(zombie, "perf\n", "perf\n"));
        assert!(!owner_alive(running, "bash\n", "perf\n"));
        assert!(!owner_alive("", "", "perf\n"));
    }

    #[test]
    fn prefixes_are_unique_and_carry_the_pid() {
        let first = Topology::new();
        let second = Topology::new();
        assert_ne!(first.prefix, second.prefix);
        assert_eq!(owner_pid(&first.prefix), Some(std::process::id()));
    }

    /// Needs root (it creates namespaces); fails, never passes, without it.
    #[test]
    #[ignore = "needs root: creates network namespaces and veth pairs"]
    fn namespaces_are_removed_on_drop_and_on_panic() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces: run `sudo ./scripts/test.sh -p perf`"
        );
        let exists = |name: &str| std::path::Path::new("/run/netns").join(name).exists();
        let (name, scratch) = {
            let mut topology = Topology::new();
            let a = topology.namespace("a").unwrap();
            let b = topology.namespace("b").unwrap();
            topology.veth(&a, "x0", &b, "x1").unwrap();
            topology.address(&a, "x0", "10.99.0.1/30").unwrap();
            let scratch = topology.scratch("dir").unwrap();
            assert!(exists(&a) && exists(&b) && scratch.is_dir());
            (a, scratch)
        };
        assert!(!exists(&name), "{name} survived the drop");
        assert!(!scratch.exists(), "{} survived the drop", scratch.display());

        let mut created = String::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut topology = Topology::new();
            created = topology.namespace("p").unwrap();
            panic!("deliberate panic with a topology alive");
        }));
        assert!(outcome.is_err());
        assert!(
            !created.is_empty() && !exists(&created),
            "{created} survived a panic"
        );
    }

    #[test]
    fn sysctl_refuses_path_tricks() {
        assert!(sysctl_main("../etc/passwd", "x").is_err());
        assert!(sysctl_main("net/ipv4", "1").is_err());
        assert!(sysctl_main("", "1").is_err());
    }
}
