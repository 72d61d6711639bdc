//! Network namespaces: naming them (`NAME` under /run/netns, a path, or `pid:N`) and running
//! code inside one.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
}
