//! The control socket file: created safely, owned by this daemon, removed on shutdown.
//!
//! Invariants:
//! - The socket is never reachable by anyone but root with a mode other than 0600. It is bound
//!   inside a fresh private directory (mode 0700) next to the final path, chmod-ed to 0600 there,
//!   and only then hard-linked to the final path. This needs no process-wide `umask` change,
//!   which would race with files other threads create at the same moment.
//! - The final path is claimed with `link(2)`, which fails when the path exists, so two daemons
//!   starting at once cannot both take it.
//! - An existing socket file is only removed when nothing answers on it (a stale file left by
//!   a daemon that was killed); if something answers, startup is refused. A path that exists
//!   but is not a socket is never removed.
//! - On drop, the socket file is removed only if it is still the one this daemon created (same
//!   device and inode), so a newer daemon's socket is never deleted.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest usable socket path: `sun_path` holds 108 bytes including the terminating NUL
/// (`unix(7)`).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Mode of the socket file: only the owner (root) may connect.
const SOCKET_MODE: u32 = 0o600;

/// Mode of a socket directory we create: others may look up the path; the socket's own mode
/// decides who may connect.
const PARENT_DIR_MODE: u32 = 0o755;

/// Mode of the private directory the socket is bound in before it is published.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Why the control socket could not be created or served.
#[derive(Debug, thiserror::Error)]
pub enum ApiServeError {
    /// The path does not fit in a Unix socket address.
    #[error(
        "socket path {path:?} is too long ({len} bytes; a Unix socket path holds at most {max}); \
         choose a shorter --socket path"
    )]
    PathTooLong {
        /// The requested path.
        path: PathBuf,
        /// Its length in bytes (for the temporary path, the temporary path's length).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{path:?} exists and is not a socket; remove it or choose another --socket path")]
    NotASocket {
        /// The requested path.
        path: PathBuf,
    },
    /// Another process answers on the socket.
    #[error(
        "another vswitchd is listening on {path:?}; stop it first or choose another --socket path"
    )]
    AlreadyRunning {
        /// The requested path.
        path: PathBuf,
    },
    /// A filesystem or socket call failed.
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        /// What was being done (`create directory`, `bind socket`, ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server stopped with an error.
    #[error("control API server failed: {source}")]
    Serve {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ApiServeError {
    let path = path.to_owned();
    move |source| ApiServeError::Io {
        action,
        path,
        source,
    }
}

/// Removes the socket file on drop if it is still the inode this daemon created.
#[derive(Debug)]
pub(super) struct SocketFileGuard {
    path: PathBuf,
    device: u64,
    inode: u64,
    /// A duplicate of the listening socket, closed only after the check: a bound socket holds
    /// a reference to its file's inode (`unix_sock.path` in the kernel), so the inode number
    /// cannot be reused by a newer file while the guard compares it.
    _listener: UnixListener,
}

impl SocketFileGuard {
    /// The published socket path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFileGuard {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.device && meta.ino() == self.inode => {
                if let Err(error) = fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot remove the control socket");
                } else {
                    tracing::debug!(path = %self.path.display(), "removed the control socket");
                }
            }
            Ok(_) => tracing::info!(
                path = %self.path.display(),
                "the control socket path now belongs to another process; leaving it"
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot check the control socket")
            }
        }
    }
}

/// Removes the private directory (and the temporary socket name in it) on drop.
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), %error, "cannot remove a temporary directory");
            }
        }
    }
}

/// Outcome of probing an existing socket file.
fn is_answering(path: &Path) -> Result<bool, ApiServeError> {
    match UnixStream::connect(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => Ok(false),
        Err(error) => Err(ApiServeError::Io {
            action: "check whether another daemon listens on",
            path: path.to_owned(),
            source: error,
        }),
    }
}

/// Removes a stale socket file at `path`; refuses when something answers on it or when the
/// path is not a socket.
fn clear_stale(path: &Path) -> Result<(), ApiServeError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(io_error("inspect", path)(error)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiServeError::NotASocket {
            path: path.to_owned(),
        });
    }
    if is_answering(path)? {
        return Err(ApiServeError::AlreadyRunning {
            path: path.to_owned(),
        });
    }
    tracing::info!(path = %path.display(), "removing a stale control socket");
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove stale socket", path)(error)),
    }
}

/// Creates the control socket at `path` with mode 0600 (see the module invariants).
pub(super) fn bind(path: &Path) -> Result<(UnixListener, SocketFileGuard), ApiServeError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(ApiServeError::PathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH_BYTES,
        });
    }
    let file_name = path.file_name().ok_or_else(|| ApiServeError::Io {
        action: "use as a socket path",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PARENT_DIR_MODE)
        .create(parent)
        .map_err(io_error("create directory", parent))?;

    clear_stale(path)?;

    // A short private name keeps the temporary socket path within `sun_path` whenever the
    // final one fits (or nearly).
    let private = parent.join(format!(".vsd{}", std::process::id()));
    match fs::remove_dir_all(&private) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("remove leftover directory", &private)(error)),
    }
    fs::DirBuilder::new()
        .mode(PRIVATE_DIR_MODE)
        .create(&private)
        .map_err(io_error("create private directory", &private))?;
    let private = PrivateDir(private);
    let temporary = private.0.join(file_name);
    let temporary = if temporary.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        private.0.join("s")
    } else {
        temporary
    };
    if temporary.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        return Err(ApiServeError::PathTooLong {
            path: path.to_owned(),
            len: temporary.as_os_str().len(),
            max: MAX_SOCKET_PATH_BYTES,
        });
    }

    let listener = UnixListener::bind(&temporary).map_err(io_error("bind socket", &temporary))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_error("set the mode of", &temporary))?;
    listener
        .set_nonblocking(true)
        .map_err(io_error("configure socket", &temporary))?;

    if let Err(error) = fs::hard_link(&temporary, path) {
        if error.kind() == io::ErrorKind::AlreadyExists && is_answering(path)? {
            return Err(ApiServeError::AlreadyRunning {
                path: path.to_owned(),
            });
        }
        return Err(io_error("create socket", path)(error));
    }
    let meta = fs::symlink_metadata(path).map_err(io_error("inspect", path))?;
    let guard = SocketFileGuard {
        path: path.to_owned(),
        device: meta.dev(),
        inode: meta.ino(),
        _listener: listener
            .try_clone()
            .map_err(io_error("duplicate socket", path))?,
    };
    drop(private);
    Ok((listener, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_mode_0600_and_removes_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/vswitch/vs.sock");
        let (listener, guard) = bind(&path).expect("bind");
        let meta = fs::symlink_metadata(&path).expect("socket exists");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // The socket answers on the published path.
        UnixStream::connect(&path).expect("connect through the published path");
        // Only the socket is left in the directory: the private directory is gone.
        let entries: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("read_dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("vs.sock")]);
        drop(guard);
        drop(listener);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn refuses_when_another_daemon_answers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vs.sock");
        let (_listener, _guard) = bind(&path).expect("first bind");
        let error = bind(&path).expect_err("second bind must fail");
        assert!(
            matches!(error, ApiServeError::AlreadyRunning { .. }),
            "got {error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("another vswitchd is listening on")
        );
        assert!(path.exists(), "the running daemon's socket is kept");
    }

    #[test]
    fn replaces_a_stale_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vs.sock");
        drop(UnixListener::bind(&path).expect("stale bind"));
        assert!(path.exists(), "a closed listener leaves its file behind");
        let (_listener, _guard) = bind(&path).expect("bind over a stale socket");
        UnixStream::connect(&path).expect("connect");
    }

    #[test]
    fn refuses_a_path_that_is_not_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vs.sock");
        fs::write(&path, b"keep me").expect("write");
        let error = bind(&path).expect_err("must refuse");
        assert!(
            matches!(error, ApiServeError::NotASocket { .. }),
            "got {error:?}"
        );
        assert_eq!(fs::read(&path).expect("read"), b"keep me");
    }

    #[test]
    fn refuses_a_path_too_long() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(MAX_SOCKET_PATH_BYTES)));
        let error = bind(&path).expect_err("must refuse");
        assert!(
            matches!(error, ApiServeError::PathTooLong { .. }),
            "got {error:?}"
        );
    }

    #[test]
    fn guard_leaves_a_replaced_socket_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vs.sock");
        let (listener, guard) = bind(&path).expect("bind");
        drop(listener);
        fs::remove_file(&path).expect("remove");
        let _other = UnixListener::bind(&path).expect("another daemon's socket");
        drop(guard);
        assert!(
            path.exists(),
            "another daemon's socket must survive our shutdown"
        );
    }
}
