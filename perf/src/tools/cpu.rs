//! CPU accounting from /proc, for "CPU seconds per GB moved".
//!
//! Method (also written to README.SETUP):
//! - **machine**: the busy time of all CPUs, from the first line of `/proc/stat`
//!   (user + nice + system + irq + softirq; idle, iowait and steal excluded), read before and
//!   after a TCP run. It includes the senders, the receivers and the switch, so it is the same
//!   quantity for every variant and the fairest to compare.
//! - **switch**: the part attributed to the switching itself. For vswitchd (and ovs-vswitchd) it
//!   is the daemon's own `utime + stime` from `/proc/<pid>/stat` (all its threads). For the
//!   kernel it is the machine-wide `system + softirq` delta, which also contains the TCP/IP
//!   stack work of both endpoints: an upper bound of the kernel's switching cost.
//!
//! Both are divided by the bytes iperf3 delivered, in units of 10^9 bytes.

use anyhow::{Context, Result, anyhow, bail};

/// Jiffies counters of the whole machine (`/proc/stat`, line `cpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// system + softirq: the kernel's share.
    pub kernel: u64,
    /// Context switches since boot (the `ctxt` line; 0 when absent).
    pub switches: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
///
/// # Errors
/// The text has no `cpu ` line or fewer than 7 numeric fields on it.
pub fn parse_proc_stat(text: &str) -> Result<MachineTicks> {
    let line = text
        .lines()
        .find(|line| line.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no aggregate `cpu` line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat `cpu` line is not numeric")?;
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        bail!(
            "/proc/stat `cpu` line has {} fields, want >= 7",
            fields.len()
        );
    };
    let switches = text
        .lines()
        .find_map(|line| line.strip_prefix("ctxt "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    Ok(MachineTicks {
        busy: user + nice + system + irq + softirq,
        kernel: system + softirq,
        switches,
    })
}

/// Parses `utime + stime` (fields 14 and 15) of `/proc/<pid>/stat`.
///
/// The second field (the command name) may contain spaces and parentheses, so fields are
/// counted after the *last* `)`, as proc(5) advises.
///
/// # Errors
/// The text is not in the proc(5) format.
pub fn parse_pid_stat(text: &str) -> Result<u64> {
    let after = text
        .rfind(')')
        .map(|at| &text[at + 1..])
        .ok_or_else(|| anyhow!("no `)` in /proc/<pid>/stat"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime (15) is 12.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("/proc/<pid>/stat too short: {} fields", fields.len() + 2);
    };
    Ok(utime.parse::<u64>()? + stime.parse::<u64>()?)
}

/// Reads the machine counters now.
///
/// # Errors
/// `/proc/stat` is unreadable or malformed.
pub fn machine_now() -> Result<MachineTicks> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// Reads a process's `utime + stime` now.
///
/// # Errors
/// The process is gone or the file is malformed.
pub fn pid_now(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    parse_pid_stat(&std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?)
}

/// Seconds per clock tick (`sysconf(_SC_CLK_TCK)`, 100 on Linux in practice).
pub fn seconds_per_tick() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100);
    1.0 / ticks as f64
}

/// Where the "switch" CPU share comes from for one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchCpu {
    /// The kernel: machine-wide system + softirq.
    Kernel,
    /// A userspace switch: the summed utime + stime of these processes (one daemon per
    /// node).
    Processes(Vec<u32>),
}

/// A reading taken before a measured run.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    machine: MachineTicks,
    switch: u64,
}

/// CPU seconds spent between two marks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSpent {
    /// All CPUs' busy seconds.
    pub machine_seconds: f64,
    /// The switch's seconds (see the module doc for the kernel's definition).
    pub switch_seconds: f64,
    /// Context switches of the whole machine.
    pub machine_switches: u64,
}

impl CpuSpent {
    /// Seconds per 10^9 bytes delivered, `(machine, switch)`; `None` if nothing moved.
    pub fn per_gb(&self, bytes: u64) -> Option<(f64, f64)> {
        if bytes == 0 {
            return None;
        }
        let gb = bytes as f64 / 1e9;
        Some((self.machine_seconds / gb, self.switch_seconds / gb))
    }
}

impl SwitchCpu {
    /// Takes the "before" reading.
    ///
    /// # Errors
    /// /proc is unreadable or the switch process is gone.
    pub fn mark(&self) -> Result<CpuMark> {
        let machine = machine_now()?;
        let switch = match self {
            SwitchCpu::Kernel => machine.kernel,
            SwitchCpu::Processes(pids) => {
                pids.iter().map(|&pid| pid_now(pid)).sum::<Result<u64>>()?
            }
        };
        Ok(CpuMark { machine, switch })
    }

    /// CPU spent since `mark`.
    ///
    /// # Errors
    /// /proc is unreadable or the switch process is gone.
    pub fn since(&self, mark: CpuMark) -> Result<CpuSpent> {
        let end = self.mark()?;
        let tick = seconds_per_tick();
        Ok(CpuSpent {
            machine_seconds: end.machine.busy.saturating_sub(mark.machine.busy) as f64 * tick,
            switch_seconds: end.switch.saturating_sub(mark.switch) as f64 * tick,
            machine_switches: end.machine.switches.saturating_sub(mark.machine.switches),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_busy_and_kernel() {
        let text = "cpu  100 5 40 9000 7 3 11 2 0 0\ncpu0 50 2 20 4500 3 1 5 1 0 0\nintr 1\n\
                    ctxt 123456\n";
        let ticks = parse_proc_stat(text).unwrap();
        assert_eq!(ticks.busy, 100 + 5 + 40 + 3 + 11);
        assert_eq!(ticks.kernel, 40 + 11);
        assert_eq!(ticks.switches, 123_456);
    }

    #[test]
    fn proc_stat_rejects_garbage() {
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu  1 2 3\n").is_err());
        assert!(parse_proc_stat("cpu  1 x 3 4 5 6 7\n").is_err());
    }

    #[test]
    fn pid_stat_with_spaces_and_parens_in_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let text = "4242 (vs (worker) 1) S 1 4242 4242 0 -1 4194560 10 0 0 0 123 77 0 0 20 0\n";
        assert_eq!(parse_pid_stat(text).unwrap(), 200);
        assert!(parse_pid_stat("4242 (x) S 1 2").is_err());
        assert!(parse_pid_stat("no paren").is_err());
    }

    #[test]
    fn per_gb_divides_by_delivered_bytes() {
        let spent = CpuSpent {
            machine_seconds: 3.0,
            switch_seconds: 1.5,
            machine_switches: 10,
        };
        assert_eq!(spent.per_gb(2_000_000_000), Some((1.5, 0.75)));
        assert_eq!(spent.per_gb(0), None);
    }

    #[test]
    fn live_readings_are_monotonic() {
        let first = machine_now().unwrap();
        let second = machine_now().unwrap();
        assert!(second.busy >= first.busy);
        assert!(pid_now(std::process::id()).is_ok());
        let own = SwitchCpu::Processes(vec![std::process::id()]);
        let mark = own.mark().unwrap();
        let spent = own.since(mark).unwrap();
        assert!(spent.switch_seconds >= 0.0 && spent.machine_seconds >= 0.0);
    }
}
