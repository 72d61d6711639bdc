//! Running external commands: always bounded in time, always logged, interruptible.
//!
//! Every command the harness runs goes through this module, so that
//! - no child can outlive its deadline (it is killed by pid, then reaped),
//! - Ctrl-C (SIGINT) or SIGTERM stops the run at the next poll and the caller's `Drop`
//!   guards tear the topology down (see [`interrupted`]),
//! - the exact command lines end up in `README.SETUP` (see [`command_log`]).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Every command line run so far, in order (duplicates removed when read).
static COMMAND_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How often waits poll the child and the interrupt flag.
const POLL: Duration = Duration::from_millis(5);

/// The error returned when the user interrupted the run (Ctrl-C or SIGTERM).
#[derive(Debug, Clone, Copy)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Installs the SIGINT/SIGTERM handler that turns a signal into [`Interrupted`] errors.
///
/// # Errors
/// Fails if `sigaction` fails (it does not for these signals).
pub fn install_interrupt_handler() -> Result<()> {
    super::sys::install_interrupt_handler()
        .map_err(|(signal, error)| anyhow!("sigaction({signal}): {error}"))
}

/// True once SIGINT or SIGTERM has arrived.
pub fn interrupted() -> bool {
    super::sys::interrupted()
}

/// Returns `Err(Interrupted)` once a signal has arrived.
///
/// # Errors
/// [`Interrupted`] after SIGINT/SIGTERM.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Sleeps `duration`, waking early (with an error) on interrupt.
///
/// # Errors
/// [`Interrupted`] after SIGINT/SIGTERM.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// The command line as a shell would read it (arguments with spaces or quotes are quoted).
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Records a command line for README.SETUP.
pub fn log_command(cmd: &Command) {
    let line = display(cmd);
    if let Ok(mut log) = COMMAND_LOG.lock() {
        log.push(line);
    }
}

/// Every command line run so far, first occurrences only, in order.
pub fn command_log() -> Vec<String> {
    let log = COMMAND_LOG
        .lock()
        .map(|log| log.clone())
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    log.into_iter()
        .filter(|line| seen.insert(line.clone()))
        .collect()
}

/// Runs `cmd` to completion within `limit`, capturing stdout and stderr.
///
/// # Errors
/// The command cannot start, runs past `limit` (it is killed), or the run is interrupted.
/// A non-zero exit is *not* an error here; see [`run`].
pub fn output_within(mut cmd: Command, limit: Duration) -> Result<Output> {
    log_command(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = display(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_within(&mut child, limit).with_context(|| format!("`{shown}`"))?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs this binary's hidden subcommand `args` (the subcommand first) inside `netns`, allowed
/// up to `limit`, and reads the one JSON line it prints; returns it and how long it took.
///
/// # Errors
/// The helper fails, runs too long or prints something else.
pub fn run_helper<T: serde::de::DeserializeOwned>(
    netns: &str,
    args: &[&str],
    limit: Duration,
) -> Result<(T, Duration)> {
    let exe = std::env::current_exe().context("locating the perf binary")?;
    let exe = exe.to_string_lossy();
    let mut full = vec!["netns", "exec", netns, exe.as_ref()];
    full.extend_from_slice(args);
    let started = Instant::now();
    let out = run(command("ip", &full), limit)?;
    let report = serde_json::from_str(out.trim()).with_context(|| {
        format!(
            "reading the {} helper's report: {out}",
            args.first().copied().unwrap_or("?")
        )
    })?;
    Ok((report, started.elapsed()))
}

/// Runs `cmd` within `limit` and returns its stdout; a non-zero exit is an error that
/// quotes the command and its stderr.
///
/// # Errors
/// As [`output_within`], plus a non-zero exit status.
pub fn run(cmd: Command, limit: Duration) -> Result<String> {
    let shown = display(&cmd);
    let output = output_within(cmd, limit)?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Builds a `Command` from a program and arguments.
pub fn command<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Reads a pipe to its end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Joiner {
    Joiner(pipe.map(|mut pipe| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error only truncates what we show; the exit status still tells.
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    }))
}

struct Joiner(Option<thread::JoinHandle<Vec<u8>>>);

impl Joiner {
    fn join(self) -> Option<Vec<u8>> {
        self.0.and_then(|handle| handle.join().ok())
    }
}

/// Waits for `child` until `limit`; kills it (by pid) on timeout or interrupt.
///
/// # Errors
/// Timeout, interrupt, or a failing `waitpid`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            // A child killed by the terminal's SIGINT reports a failure; say what happened.
            check_interrupted()?;
            return Ok(status);
        }
        if interrupted() {
            kill_and_reap(child);
            return Err(Interrupted.into());
        }
        if Instant::now() >= deadline {
            kill_and_reap(child);
            bail!("still running after {:.1} s, killed", limit.as_secs_f64());
        }
        thread::sleep(POLL);
    }
}

/// Kills one child by its pid and reaps it. Errors are ignored: the child may be gone.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running helper child (an iperf3 server, our receivers): killed and reaped when
/// dropped, so an error or a panic never leaves it behind.
#[derive(Debug)]
pub struct Background {
    child: Child,
    name: String,
    lines: Option<mpsc::Receiver<String>>,
    stdin: Option<ChildStdin>,
}

impl Background {
    /// Starts `cmd` with stdout piped line by line and stdin piped; stderr goes to `stderr`.
    ///
    /// # Errors
    /// The command cannot start.
    pub fn spawn(mut cmd: Command, stderr: Stdio) -> Result<Background> {
        log_command(&cmd);
        let name = display(&cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{name}`"))?;
        let stdin = child.stdin.take();
        let lines = child.stdout.take().map(|stdout| {
            let (sender, receiver) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
            receiver
        });
        Ok(Background {
            child,
            name,
            lines,
            stdin,
        })
    }

    /// The child's pid (with `ip netns exec`, the pid of the program itself: `ip` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the next stdout line.
    ///
    /// # Errors
    /// Timeout, interrupt, or the child closed stdout (it exited).
    pub fn next_line(&mut self, limit: Duration) -> Result<String> {
        let lines = self
            .lines
            .as_ref()
            .ok_or_else(|| anyhow!("`{}` has no stdout pipe", self.name))?;
        let deadline = Instant::now() + limit;
        loop {
            check_interrupted()?;
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => return Ok(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("`{}` exited ({status}) before answering", self.name);
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    bail!("`{}` did not answer within {limit:?}", self.name);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Writes one line to the child's stdin (helpers read `stop` there).
    ///
    /// # Errors
    /// The child has closed its stdin (it exited).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("`{}` has no stdin pipe", self.name))?;
        writeln!(stdin, "{line}").with_context(|| format!("writing to `{}`", self.name))?;
        stdin.flush()?;
        Ok(())
    }

    /// True while the child runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the child to exit by itself within `limit`, else kills it.
    ///
    /// # Errors
    /// Timeout (the child is killed) or interrupt.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        self.stdin = None;
        wait_within(&mut self.child, limit).with_context(|| format!("`{}`", self.name))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stdin = None;
        if self.running() {
            kill_and_reap(&mut self.child);
        }
    }
}

/// Looks a program up in `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// True if `path` is a regular file with an execute bit.
pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let cmd = command(
            "ip",
            &["-n", "ns-1", "addr", "add", "10.0.0.1/24", "dev", "eth0"],
        );
        assert_eq!(display(&cmd), "ip -n ns-1 addr add 10.0.0.1/24 dev eth0");
        let cmd = command("sh", &["-c", "echo 'a b'", ""]);
        assert_eq!(display(&cmd), r"sh -c 'echo '\''a b'\''' ''");
    }

    #[test]
    fn run_reports_failure_with_stderr() {
        let err = run(
            command("sh", &["-c", "echo boom >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("boom"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[test]
    fn output_within_kills_on_timeout() {
        let started = Instant::now();
        let err = output_within(command("sleep", &["5"]), Duration::from_millis(200)).unwrap_err();
        assert!(format!("{err:#}").contains("killed"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn background_lines_and_stdin() {
        let mut child = Background::spawn(
            command("sh", &["-c", "echo ready; read x; echo got $x"]),
            Stdio::null(),
        )
        .unwrap();
        assert_eq!(child.next_line(Duration::from_secs(5)).unwrap(), "ready");
        child.send_line("stop").unwrap();
        assert_eq!(child.next_line(Duration::from_secs(5)).unwrap(), "got stop");
        assert!(child.wait(Duration::from_secs(5)).unwrap().success());
    }

    #[test]
    fn command_log_dedupes_in_order() {
        log_command(&command("echo", &["unique-a-7c1"]));
        log_command(&command("echo", &["unique-b-7c1"]));
        log_command(&command("echo", &["unique-a-7c1"]));
        let log: Vec<String> = command_log()
            .into_iter()
            .filter(|line| line.contains("7c1"))
            .collect();
        assert_eq!(log, ["echo unique-a-7c1", "echo unique-b-7c1"]);
    }
}
