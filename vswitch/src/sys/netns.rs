//! Network namespaces: naming them (`NAME` under /run/netns, a path, or `pid:N`) and running
//! code inside one.
//!
//! A thread's network namespace decides which devices it sees and where the sockets it creates
//! live (a netlink socket, an AF_PACKET socket or a `/dev/net/tun` fd is bound to the namespace
//! of the thread that created it). [`run_in`] therefore runs code on a fresh thread that has
//! `setns()`'d into the target: the caller's thread never changes namespace, and whatever the
//! closure opens is opened inside the target.
//!
//! Whatever a closure opens belongs to (and keeps alive) the target namespace, including
//! process-wide resources created lazily on first use: tokio's signal socket pair is one,
//! which is why `netlink::run_in` builds a runtime in the caller's namespace first.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use nix::sched::CloneFlags;

/// A reference to a network namespace, as a user writes it in `spec.netns` or on the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NetnsRef {
    /// A name created by `ip netns add NAME`: the bind mount `/run/netns/NAME`.
    Name(String),
    /// Any path to a namespace file (a bind mount, or `/proc/PID/ns/net`).
    Path(PathBuf),
    /// The namespace of a running process: `/proc/PID/ns/net`.
    Pid(u32),
}

impl NetnsRef {
    /// The file that names this namespace.
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsRef::Name(name) => PathBuf::from("/run/netns").join(name),
            NetnsRef::Path(path) => path.clone(),
            NetnsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

/// Opens the file that names `ns` (read-only, close-on-exec). The fd can be given to netlink
/// (`IFLA_NET_NS_FD`) or to [`run_in_fd`].
///
/// # Errors
/// The kernel's error when the file does not exist or cannot be opened. Whether the file really
/// is a network namespace is only known when it is used.
pub fn open(ns: &NetnsRef) -> io::Result<OwnedFd> {
    // std opens files with O_CLOEXEC.
    File::open(ns.path()).map(OwnedFd::from)
}

/// Runs `f` on a new thread that has entered the network namespace `ns`, and returns its
/// result. The calling thread's namespace is untouched.
///
/// # Errors
/// An error when the namespace file cannot be opened or entered (missing, not a network
/// namespace, no permission); errors of `f` itself are part of `T`.
pub fn run_in<T, F>(ns: &NetnsRef, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = open(ns)?;
    run_in_fd(&fd, f)
}

/// Like [`run_in`], with the namespace already opened (see [`open`]).
///
/// # Errors
/// An error when `setns()` refuses `fd` (not a network namespace, no permission).
///
/// # Panics
/// Re-raises a panic of `f` on the calling thread.
pub fn run_in_fd<T, F>(fd: &OwnedFd, f: F) -> io::Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = fd.as_fd();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("vs-netns".into())
            .spawn_scoped(scope, move || {
                // setns(CLONE_NEWNET) changes only this thread's namespace; the thread ends
                // when `f` returns, so no other code ever runs in the target namespace by
                // accident.
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Why a namespace reference could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsRefError {
    /// `pid:` was not followed by a process id.
    #[error("invalid netns {0:?}: after `pid:` write a process id, e.g. pid:1234")]
    BadPid(String),
    /// The name is empty or contains a `/` without being an absolute path.
    #[error(
        "invalid netns {0:?}: use a name under /run/netns (c1), an absolute path (/proc/1234/ns/net) or pid:N"
    )]
    BadName(String),
}

impl FromStr for NetnsRef {
    type Err = NetnsRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(pid) = s.strip_prefix("pid:") {
            return pid
                .parse::<u32>()
                .ok()
                .filter(|p| *p > 0)
                .map(NetnsRef::Pid)
                .ok_or_else(|| NetnsRefError::BadPid(s.to_string()));
        }
        if s.starts_with('/') {
            return Ok(NetnsRef::Path(PathBuf::from(s)));
        }
        if s.is_empty() || s.contains('/') || s == "." || s == ".." {
            return Err(NetnsRefError::BadName(s.to_string()));
        }
        Ok(NetnsRef::Name(s.to_string()))
    }
}

impl fmt::Display for NetnsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsRef::Name(name) => f.write_str(name),
            NetnsRef::Path(path) => write!(f, "{}", path.display()),
            NetnsRef::Pid(pid) => write!(f, "pid:{pid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        assert_eq!("c1".parse::<NetnsRef>(), Ok(NetnsRef::Name("c1".into())));
        assert_eq!("pid:42".parse::<NetnsRef>(), Ok(NetnsRef::Pid(42)));
        assert_eq!(
            "/proc/1/ns/net".parse::<NetnsRef>(),
            Ok(NetnsRef::Path("/proc/1/ns/net".into()))
        );
        assert!("pid:x".parse::<NetnsRef>().is_err());
        assert!("a/b".parse::<NetnsRef>().is_err());
        assert!("".parse::<NetnsRef>().is_err());
        assert_eq!(NetnsRef::Pid(7).to_string(), "pid:7");
    }

    #[test]
    fn path_forms() {
        assert_eq!(
            NetnsRef::Name("c1".into()).path(),
            PathBuf::from("/run/netns/c1")
        );
        assert_eq!(NetnsRef::Pid(42).path(), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(
            NetnsRef::Path("/var/run/netns/x".into()).path(),
            PathBuf::from("/var/run/netns/x")
        );
    }

    #[test]
    fn missing_namespace_is_an_error() {
        let ns = NetnsRef::Name("vst-unit-no-such-namespace".into());
        let err = run_in(&ns, || ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let ns = NetnsRef::Path(file.path().to_path_buf());
        assert!(run_in(&ns, || ()).is_err());
    }

    #[test]
    #[ignore = "needs root: setns (CAP_SYS_ADMIN)"]
    fn runs_in_own_namespace() {
        // Entering even our own namespace needs CAP_SYS_ADMIN.
        let got = run_in(&NetnsRef::Pid(std::process::id()), || 7)
            .expect("setns into our own namespace (the tests must run as root)");
        assert_eq!(got, 7);
    }
}
