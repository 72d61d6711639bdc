//! Persistence of the desired state and allocations in `--state-dir`.
//!
//! Everything lives in one JSON file, `state.json`: this node's id (generated on first boot;
//! gateway MACs derive from it), the resources with their status (which carries each
//! interface's MAC and IPAM leases) and the IPAM cursor of each Subnet. It is
//! replaced atomically: written to `state.json.tmp`, fsynced, renamed over `state.json`, and
//! the directory fsynced, so a crash leaves either the old or the new file, never a mix.
//!
//! While interfaces are being created, `devices.json` lists them (key and resource as
//! planned), written the same way before the first device is touched and rewritten when the
//! change lands or is undone: a daemon killed in between finds, at the next start, which
//! devices may be half made for an interface the state file does not hold, and removes them.
//!
//! A `lock` file in the directory is held with `flock` while the store is open, so two
//! daemons never share one state directory. A file that does not parse is an error that names
//! it and says what to do; it is never silently replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use nix::fcntl::{Flock, FlockArg};

use super::ApiError;
use super::kinds::network_interface::NetworkInterface;

pub use super::kinds::{OLDEST_STATE_FORMAT, STATE_FORMAT, State, SubnetIpamState};
pub use super::node::NodeId;

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// Name of the lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Name of the file listing the interfaces whose devices are being created.
pub const DEVICES_FILE: &str = "devices.json";

/// The interfaces whose devices are being created, by key, as planned.
pub type DevicesInFlight = BTreeMap<String, NetworkInterface>;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory or a file in it could not be created, read or written.
    #[error(
        "{what} {path}: {source}; check that the state directory is writable by vswitchd (--state-dir)"
    )]
    Io {
        /// What was being done (`cannot write`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "state directory {dir} is in use by another vswitchd (lock held on {lock}); stop it or start this one with another --state-dir"
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The state file does not parse.
    #[error(
        "state file {path} is corrupt: {detail}; restore it from a backup, or move it aside to start with no resources (containers attached before will need attaching again)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        detail: String,
    },
    /// The state file was written by a newer vswitchd.
    #[error(
        "state file {path} has format {found}, newer than this vswitchd understands ({STATE_FORMAT}); run a vswitchd at least as new as the one that wrote it"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::Internal {
            message: err.to_string(),
        }
    }
}

/// The open state directory. Holds its lock until dropped.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed, mode 0700) the state directory, takes its lock and loads
    /// the state file. Returns `None` as the state when there is no state file yet.
    ///
    /// # Errors
    /// [`StoreError`] when the directory cannot be created or locked, or the file cannot be
    /// read or parsed.
    pub fn open(dir: &Path) -> Result<(Store, Option<State>), StoreError> {
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { what, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create state directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("cannot open", &lock_path))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err((_, errno)) => {
                return Err(StoreError::Io {
                    what: "cannot lock",
                    path: lock_path,
                    source: io::Error::from(errno),
                });
            }
        };
        let store = Store {
            dir: dir.to_path_buf(),
            path: dir.join(STATE_FILE),
            _lock: lock,
        };
        // A temp file left by a crash mid-write is incomplete by definition.
        for tmp in [store.tmp_path(), tmp_of(&dir.join(DEVICES_FILE))] {
            match fs::remove_file(&tmp) {
                Ok(()) => {
                    tracing::warn!(path = %tmp.display(), "removed an incomplete file left by a crash")
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("cannot remove", &tmp)(err)),
            }
        }
        let state = store.load()?;
        Ok((store, state))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tmp_path(&self) -> PathBuf {
        tmp_of(&self.path)
    }

    /// Records the interfaces whose devices are being created (see the module docs);
    /// removes the file when there are none.
    ///
    /// # Errors
    /// [`StoreError::Io`].
    pub fn save_devices(&self, devices: &DevicesInFlight) -> Result<(), StoreError> {
        let path = self.dir.join(DEVICES_FILE);
        if devices.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => self.sync_dir(),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StoreError::Io {
                    what: "cannot remove",
                    path,
                    source,
                }),
            };
        }
        let text = serde_json::to_vec_pretty(devices).map_err(|err| StoreError::Io {
            what: "cannot encode",
            path: path.clone(),
            source: io::Error::other(err),
        })?;
        self.write_atomic(&path, &text)
    }

    /// The interfaces a previous run was creating devices for when it stopped (empty when
    /// it finished its changes). A file that does not parse is reported and ignored: it
    /// only ever names devices to clean up.
    pub fn load_devices(&self) -> DevicesInFlight {
        let path = self.dir.join(DEVICES_FILE);
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), %err, "ignoring an unreadable list of devices in flight");
                DevicesInFlight::new()
            }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => DevicesInFlight::new(),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read the list of devices in flight");
                DevicesInFlight::new()
            }
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Io {
                what: "cannot sync",
                path: self.dir.clone(),
                source,
            })
    }

    /// Replaces `path` with `text`: written to `PATH.tmp`, fsynced, renamed over `path`, the
    /// directory fsynced.
    fn write_atomic(&self, path: &Path, text: &[u8]) -> Result<(), StoreError> {
        self.write_atomic_with(path, |file| file.write_all(text))
    }

    /// Writes `path`'s next version with `write` into `PATH.tmp` (buffered), syncs it and
    /// renames it over `path`.
    fn write_atomic_with(
        &self,
        path: &Path,
        write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        let tmp = tmp_of(path);
        let write = || -> io::Result<()> {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut buffered = io::BufWriter::with_capacity(1 << 16, file);
            write(&mut buffered)?;
            let file = buffered
                .into_inner()
                .map_err(io::IntoInnerError::into_error)?;
            file.sync_all()
        };
        if let Err(source) = write() {
            // Best effort: the temp file is garbage now; open() removes it otherwise.
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::Io {
                what: "cannot write",
                path: tmp,
                source,
            });
        }
        fs::rename(&tmp, path).map_err(|source| StoreError::Io {
            what: "cannot rename the new file over",
            path: path.to_path_buf(),
            source,
        })?;
        self.sync_dir()
    }

    fn load(&self) -> Result<Option<State>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "not UTF-8 text".into(),
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    what: "cannot read",
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        // Check the format first, so a newer file is reported as such, not as corrupt. Both
        // passes read the text itself: a `serde_json::Value` of the whole file first would
        // take several times the state's size in small allocations, freed but interleaved
        // with the state's and kept by the allocator (1,000,000 Routes: 5.3 GB resident
        // instead of 1.3 GB).
        #[derive(serde::Deserialize)]
        struct Format {
            format: Option<serde_json::Value>,
        }
        // A derived struct also reads a JSON array; the state is an object.
        if !text.trim_start().starts_with('{') {
            return Err(corrupt("not a JSON object".to_string()));
        }
        let format = serde_json::from_str::<Format>(&text)
            .map_err(|err| corrupt(err.to_string()))?
            .format
            .and_then(|format| format.as_u64());
        match format.map(u32::try_from) {
            Some(Ok(OLDEST_STATE_FORMAT..=STATE_FORMAT)) => {}
            Some(Ok(found)) if found > STATE_FORMAT => {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found,
                });
            }
            _ => {
                return Err(corrupt(format!(
                    "missing or unknown \"format\" (expected {OLDEST_STATE_FORMAT}..={STATE_FORMAT})"
                )));
            }
        }
        let mut reader = serde_json::Deserializer::from_str(&text);
        let mut state: State = serde_path_to_error::deserialize(&mut reader)
            .map_err(|err| corrupt(err.to_string()))?;
        reader.end().map_err(|err| corrupt(err.to_string()))?;
        state.normalize_namespaces();
        state.check_keys().map_err(&corrupt)?;
        if state.uplinks.len() > 1 {
            return Err(corrupt(format!(
                "{} Uplinks are stored; a node has at most one",
                state.uplinks.len()
            )));
        }
        // An older format holds a subset of this one; it is written back as this one.
        state.format = STATE_FORMAT;
        Ok(Some(state))
    }

    /// Replaces the state file with `state`: write to a temp file, fsync, rename, fsync the
    /// directory.
    ///
    /// # Errors
    /// [`StoreError::Io`]; the previous file is then still in place.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        // Streamed into the file: a whole-state buffer (megabytes with thousands of
        // resources) is what the allocator then keeps.
        self.write_atomic_with(&self.path, |file| {
            serde_json::to_writer_pretty(&mut *file, state).map_err(io::Error::other)?;
            file.write_all(b"\n")
        })
    }
}

/// `PATH.tmp`, where `path`'s next version is written first.
fn tmp_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::resource::{Resource, parse_documents};
    use std::net::Ipv4Addr;

    fn sample() -> State {
        let text = "\
apiVersion: vswitch/v1alpha1
kind: Network
metadata: {name: blue}
---
apiVersion: vswitch/v1alpha1
kind: Subnet
metadata: {name: web}
spec: {network: blue, cidr: 10.1.0.0/24, gateway: 10.1.0.1}
---
apiVersion: vswitch/v1alpha1
kind: NetworkInterface
metadata: {name: c1, labels: {app: x}}
spec: {subnet: web, netns: c1}
status: {ips: [10.1.0.2/24], mac: '02:00:00:00:00:01', state: up}
---
apiVersion: vswitch/v1alpha1
kind: Route
metadata: {name: lab}
spec: {network: blue, destination: 192.168.50.0/24, nextHop: 10.1.0.2}
";
        let mut state = State {
            node_id: Some(NodeId([7; 16])),
            ..State::default()
        };
        for doc in parse_documents(text).unwrap() {
            match doc.resource {
                Resource::Network(r) => drop(state.networks.insert(r.metadata.name.clone(), r)),
                Resource::Subnet(r) => drop(state.subnets.insert(r.metadata.name.clone(), r)),
                Resource::NetworkInterface(r) => {
                    drop(state.network_interfaces.insert(r.metadata.name.clone(), r))
                }
                Resource::Route(r) => drop(state.routes.insert(r.metadata.name.clone(), r)),
                other => panic!("sample holds no {}", other.kind()),
            }
        }
        state.ipam.insert(
            "web".into(),
            SubnetIpamState {
                last_allocated: Some(Ipv4Addr::new(10, 1, 0, 2)),
                last_allocated_v6: None,
            },
        );
        state
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let (store, loaded) = Store::open(&state_dir).unwrap();
        assert_eq!(loaded, None);
        let state = sample();
        store.save(&state).unwrap();
        assert!(!state_dir.join("state.json.tmp").exists());
        drop(store);
        let (_store, loaded) = Store::open(&state_dir).unwrap();
        assert_eq!(loaded, Some(state));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&state_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = fs::metadata(state_dir.join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn nat_resources_round_trip_and_one_uplink_at_most() {
        let text = "\
apiVersion: vswitch/v1alpha1
kind: Uplink
metadata: {name: wan}
spec: {interface: eth1, addresses: [198.51.100.10/24], gateway: 198.51.100.1}
status: {mac: '02:00:00:00:00:09', mtu: 1500, state: up}
---
apiVersion: vswitch/v1alpha1
kind: NATGateway
metadata: {name: gw}
spec: {network: blue, ips: [198.51.100.10]}
---
apiVersion: vswitch/v1alpha1
kind: PortForward
metadata: {name: web}
spec: {ip: 198.51.100.10, protocol: udp, port: 53, target: {interface: c1, port: 53}}
---
apiVersion: vswitch/v1alpha1
kind: VirtualIP
metadata: {name: v}
spec: {type: Public}
status: {ip: 198.51.100.10}
";
        let mut state = sample();
        for doc in parse_documents(text).unwrap() {
            match doc.resource {
                Resource::Uplink(r) => drop(state.uplinks.insert(r.metadata.name.clone(), r)),
                Resource::NatGateway(r) => {
                    drop(state.nat_gateways.insert(r.metadata.name.clone(), r))
                }
                Resource::PortForward(r) => {
                    drop(state.port_forwards.insert(r.metadata.name.clone(), r))
                }
                Resource::VirtualIp(r) => {
                    drop(state.virtual_ips.insert(r.metadata.name.clone(), r))
                }
                other => panic!("unexpected {}", other.kind()),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.save(&state).unwrap();
        drop(store);
        let (reopened, loaded) = Store::open(dir.path()).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded, state);
        assert_eq!(
            loaded.virtual_ips["v"].status.ip,
            Some(std::net::IpAddr::from([198, 51, 100, 10]))
        );
        drop(reopened);
        let mut value = serde_json::to_value(&state).unwrap();
        value["uplinks"]["wan2"] = value["uplinks"]["wan"].clone();
        value["uplinks"]["wan2"]["metadata"]["name"] = "wan2".into();
        fs::write(dir.path().join(STATE_FILE), value.to_string()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("2 Uplinks are stored; a node has at most one"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(STATE_FILE),
            "{\"format\": 1, \"networks\": ",
        )
        .unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        let path = dir.path().join(STATE_FILE);
        assert!(
            err.starts_with(&format!("state file {} is corrupt: ", path.display())),
            "{err}"
        );
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("move it aside"), "{err}");
        // The file is left as it was.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"format\": 1, \"networks\": "
        );
    }

    #[test]
    fn invalid_content_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(sample()).unwrap();
        value["subnets"]["web"]["spec"]["cidr"] = "10.1.0.0/99".into();
        fs::write(dir.path().join(STATE_FILE), value.to_string()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("subnets.web.spec.cidr: invalid CIDR"), "{err}");
        let mut value = serde_json::to_value(sample()).unwrap();
        value["networks"]["red"] = value["networks"]["blue"].clone();
        fs::write(dir.path().join(STATE_FILE), value.to_string()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("Network stored under \"red\" is \"blue\""),
            "{err}"
        );
    }

    #[test]
    fn format_1_is_read_and_written_back_as_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(sample()).unwrap();
        let object = value.as_object_mut().unwrap();
        object.insert("format".into(), 1.into());
        object.remove("nodeId");
        object.remove("routes");
        fs::write(dir.path().join(STATE_FILE), value.to_string()).unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(loaded.format, STATE_FORMAT);
        assert_eq!(loaded.node_id, None);
        assert!(loaded.routes.is_empty());
        assert_eq!(loaded.subnets, sample().subnets);
        store.save(&loaded).unwrap();
        let text = fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"format\": 4"), "{text}");
    }

    #[test]
    fn node_ids_are_random_hex() {
        let a = NodeId::generate();
        let b = NodeId::generate();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<NodeId>(), Ok(a));
        assert_eq!(
            NodeId([0xab; 16]).to_string(),
            "abababababababababababababababab"
        );
        for bad in ["", "ab", &"g".repeat(32), &"é".repeat(16), &"a".repeat(33)] {
            let err = bad.parse::<NodeId>().unwrap_err();
            assert!(err.contains("expected 32 hex digits"), "{bad}: {err}");
        }
        // A bad id in the file names the field.
        let dir = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(sample()).unwrap();
        value["nodeId"] = "xyz".into();
        fs::write(dir.path().join(STATE_FILE), value.to_string()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("nodeId: invalid node id \"xyz\""), "{err}");
    }

    #[test]
    fn a_file_that_is_not_one_object_with_a_format_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        let sample = serde_json::to_string(&sample()).unwrap();
        for (text, says) in [
            (format!("{sample} {{}}"), "trailing characters"),
            (format!("{sample}x"), "trailing characters"),
            ("[4]".to_string(), "not a JSON object"),
            ("4".to_string(), "not a JSON object"),
            ("{}".to_string(), "missing or unknown \"format\""),
            (
                "{\"format\": \"4\"}".to_string(),
                "missing or unknown \"format\"",
            ),
            (
                "{\"format\": 0}".to_string(),
                "missing or unknown \"format\"",
            ),
        ] {
            fs::write(&path, &text).unwrap();
            let err = Store::open(dir.path()).unwrap_err().to_string();
            assert!(err.contains(" is corrupt: "), "{text}: {err}");
            assert!(err.contains(says), "{text}: {err}");
        }
        // The sample itself loads.
        fs::write(&path, &sample).unwrap();
        assert!(Store::open(dir.path()).unwrap().1.is_some());
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STATE_FILE), "{\"format\": 7}").unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("has format 7, newer"), "{err}");
    }

    #[test]
    fn devices_in_flight_round_trip_and_empty_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        assert!(
            store.load_devices().is_empty(),
            "no file, nothing in flight"
        );
        let state = sample();
        let devices: DevicesInFlight = state
            .network_interfaces
            .iter()
            .map(|(name, nic)| (name.clone(), nic.clone()))
            .collect();
        assert!(!devices.is_empty());
        store.save_devices(&devices).unwrap();
        assert_eq!(store.load_devices(), devices);
        store.save_devices(&DevicesInFlight::new()).unwrap();
        assert!(!dir.path().join(DEVICES_FILE).exists());
        // Emptying twice is fine; a garbled file is ignored (it only names clean-ups).
        store.save_devices(&DevicesInFlight::new()).unwrap();
        fs::write(dir.path().join(DEVICES_FILE), "{\"x\": [").unwrap();
        assert!(store.load_devices().is_empty());
    }

    #[test]
    fn leftover_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("state.json.tmp"), "{\"form").unwrap();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, None);
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another vswitchd"), "{err}");
        drop(store);
        assert!(Store::open(dir.path()).is_ok());
    }

    #[test]
    fn unwritable_directory_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, "").unwrap();
        let err = Store::open(&file.join("state")).unwrap_err().to_string();
        assert!(err.starts_with("cannot create state directory"), "{err}");
        assert!(err.contains("--state-dir"), "{err}");
    }
}
