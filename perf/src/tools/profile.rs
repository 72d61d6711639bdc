//! `--profile DIR`: where the machine's time goes during one extra 1-stream TCP run of each
//! variant (after the measured runs, so it perturbs no figure), recorded with Linux `perf
//! record -e cpu-clock -a` (a software clock: this VM has no PMU) and written as text,
//! `DIR/<case>-<variant>.txt`: the share of samples per command, then per command, object
//! and symbol (at least 0.5%), then, for the switch's own threads (`vswitch-w*`, when the
//! variant has them), per object and symbol as a share of those threads' samples (at least
//! 0.3%).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use super::cmd::{self, Background};

/// Sampling frequency (Hz per CPU).
const FREQUENCY: &str = "999";

/// Linux's `perf`, found on `PATH` but never this harness (also called `perf`).
///
/// # Errors
/// Not installed.
pub fn linux_perf() -> Result<PathBuf> {
    let own = std::env::current_exe()
        .ok()
        .and_then(|path| path.canonicalize().ok());
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("perf"))
        .filter(|candidate| cmd::is_executable(candidate))
        .find(|candidate| candidate.canonicalize().ok() != own)
        .ok_or_else(|| {
            anyhow!("--profile needs Linux perf (install with: apt-get install linux-perf)")
        })
}

/// A machine-wide recording in progress.
#[derive(Debug)]
pub struct Recording {
    perf: PathBuf,
    data: PathBuf,
    text: PathBuf,
    child: Background,
}

/// File name part for `case` and `variant` (`l2-vswitch-tap-w1`).
pub fn file_stem(case: &str, variant: &str) -> String {
    format!("{case}-{variant}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Recording {
    /// Starts `perf record` over every CPU for `seconds` (it stops by itself).
    ///
    /// # Errors
    /// `perf` cannot start, or `dir` cannot be created.
    pub fn start(perf: &Path, dir: &Path, stem: &str, seconds: u32) -> Result<Recording> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join(format!("{stem}.data"));
        let text = dir.join(format!("{stem}.txt"));
        let mut command = cmd::command(
            perf,
            &[
                "record",
                "-e",
                "cpu-clock",
                "-F",
                FREQUENCY,
                "-a",
                "-q",
                "-o",
                &data.to_string_lossy(),
                "--",
                "sleep",
                &seconds.to_string(),
            ],
        );
        command.stdout(Stdio::null());
        let child = Background::spawn(command, Stdio::null())?;
        // perf opens its events before it runs `sleep`; give it that moment.
        cmd::sleep(Duration::from_millis(300))?;
        Ok(Recording {
            perf: perf.to_owned(),
            data,
            text,
            child,
        })
    }

    /// Waits for the recording to end and writes the text report (the raw data is
    /// removed); returns the report's path.
    ///
    /// # Errors
    /// `perf` failed.
    pub fn finish(mut self, limit: Duration) -> Result<PathBuf> {
        let status = self.child.wait(limit)?;
        if !status.success() {
            bail!("perf record exited with {status}");
        }
        let report = |sort: &str, limit: &str, extra: &[&str]| -> Result<String> {
            let data = self.data.to_string_lossy();
            let mut args = vec![
                "report",
                "-i",
                &data,
                "--stdio",
                "--no-children",
                "--sort",
                sort,
                "--percent-limit",
                limit,
            ];
            args.extend_from_slice(extra);
            cmd::run(cmd::command(&self.perf, &args), Duration::from_secs(120))
        };
        let by_command = report("comm", "0.5", &[])?;
        let by_symbol = report("comm,dso,sym", "0.5", &[])?;
        let mut text =
            format!("# by command\n{by_command}\n# by command, object and symbol\n{by_symbol}");
        let workers: Vec<String> = top_lines(&by_command, 64)
            .iter()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|comm| comm.starts_with("vswitch-w"))
            .map(str::to_owned)
            .collect();
        if !workers.is_empty() {
            let comms = format!("--comms={}", workers.join(","));
            let switch = report("dso,sym", "0.3", &[&comms, "--percentage", "relative"])?;
            text.push_str(&format!(
                "\n# the switch's threads ({}) alone, by object and symbol\n{switch}",
                workers.join(", ")
            ));
        }
        std::fs::write(&self.text, text)
            .with_context(|| format!("writing {}", self.text.display()))?;
        let _ = std::fs::remove_file(&self.data);
        Ok(self.text)
    }
}

/// The top `n` lines of a `perf report --stdio` text (its comment lines skipped).
pub fn top_lines(report: &str, n: usize) -> Vec<String> {
    report
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .take(n)
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_file_names() {
        assert_eq!(
            file_stem("l2", "vswitch-tap-w1"),
            "l2-vswitch-tap-w1".to_owned()
        );
        assert_eq!(file_stem("a/b", "c d"), "a_b-c_d");
    }

    #[test]
    fn top_lines_skip_comments() {
        let text = "# Samples: 10\n#\n    40.00%  iperf3\n    30.00%  vswitch-w0\n\n";
        assert_eq!(top_lines(text, 1), vec!["40.00% iperf3"]);
        assert_eq!(top_lines(text, 5).len(), 2);
    }
}
