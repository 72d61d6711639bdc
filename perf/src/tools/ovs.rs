//! Open vSwitch's userspace datapath (`datapath_type=netdev`) as an optional third column.
//!
//! A private ovsdb-server and ovs-vswitchd run in the foreground inside the scenario's node
//! namespace, with their database, sockets and logs in a scratch directory (`OVS_RUNDIR`,
//! `OVS_DBDIR`, `OVS_LOGDIR` point there), so the host's own Open vSwitch, if any, is never
//! touched. Both are killed by pid when the [`Ovs`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::cmd;

/// Where Debian's openvswitch-common puts the schema.
const SCHEMA_PATHS: [&str; 2] = [
    "/usr/share/openvswitch/vswitch.ovsschema",
    "/usr/local/share/openvswitch/vswitch.ovsschema",
];

/// The Open vSwitch programs the OVS column needs.
#[derive(Debug, Clone)]
pub struct OvsTools {
    vswitchd: PathBuf,
    ovsdb_server: PathBuf,
    ovsdb_tool: PathBuf,
    vsctl: PathBuf,
    schema: PathBuf,
}

/// Finds the Open vSwitch programs, or says what is missing and how to get it.
///
/// # Errors
/// A program or the schema is missing.
pub fn tools() -> Result<OvsTools> {
    let find = |name: &str| {
        cmd::which(name).with_context(|| {
            format!("{name} not found: install Open vSwitch (apt-get install openvswitch-switch)")
        })
    };
    let schema = SCHEMA_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .with_context(|| format!("Open vSwitch schema not found in {SCHEMA_PATHS:?}"))?;
    Ok(OvsTools {
        vswitchd: find("ovs-vswitchd")?,
        ovsdb_server: find("ovsdb-server")?,
        ovsdb_tool: find("ovsdb-tool")?,
        vsctl: find("ovs-vsctl")?,
        schema,
    })
}

/// A private Open vSwitch with one netdev bridge.
#[derive(Debug)]
pub struct Ovs {
    /// Started once the database answers; killed before the database on drop.
    vswitchd: Option<Child>,
    ovsdb: Child,
    tools: OvsTools,
    dir: PathBuf,
}

impl Ovs {
    /// Starts Open vSwitch in `netns`, with a netdev bridge `br0` holding `ports` (interfaces
    /// of that namespace).
    ///
    /// # Errors
    /// A step fails; the message names the command.
    pub fn start(tools: &OvsTools, netns: &str, dir: &Path, ports: &[&str]) -> Result<Ovs> {
        std::fs::create_dir_all(dir)?;
        let db = dir.join("conf.db");
        let mut create = Command::new(&tools.ovsdb_tool);
        create.arg("create").arg(&db).arg(&tools.schema);
        cmd::run(create, Duration::from_secs(10))?;
        let db_socket = dir.join("db.sock");
        let remote = format!("--remote=punix:{}", db_socket.display());
        let ovsdb = spawn_in(
            netns,
            dir,
            &tools.ovsdb_server,
            &[
                db.to_string_lossy().as_ref(),
                &remote,
                &format!("--unixctl={}", dir.join("ovsdb.ctl").display()),
                &format!("--log-file={}", dir.join("ovsdb.log").display()),
                "--no-chdir",
            ],
        )?;
        let mut ovs = Ovs {
            vswitchd: None,
            ovsdb,
            tools: tools.clone(),
            dir: dir.to_path_buf(),
        };
        wait_for_path(&db_socket, Duration::from_secs(10))?;
        ovs.vsctl(&["--no-wait", "init"])?;
        let db_arg = format!("unix:{}", db_socket.display());
        ovs.vswitchd = Some(spawn_in(
            netns,
            dir,
            &tools.vswitchd,
            &[
                &db_arg,
                &format!("--unixctl={}", dir.join("vswitchd.ctl").display()),
                &format!("--log-file={}", dir.join("vswitchd.log").display()),
                "--no-chdir",
            ],
        )?);
        ovs.vsctl(&[
            "--timeout=20",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ])?;
        for port in ports {
            ovs.vsctl(&["--timeout=20", "add-port", "br0", port])?;
        }
        Ok(ovs)
    }

    /// ovs-vswitchd's pid (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.vswitchd.as_ref().map(Child::id)
    }

    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.tools.vsctl);
        command
            .arg(format!("--db=unix:{}", self.dir.join("db.sock").display()))
            .args(args);
        set_ovs_env(&mut command, &self.dir);
        cmd::run(command, Duration::from_secs(30))
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        if let Some(vswitchd) = self.vswitchd.as_mut() {
            cmd::kill_and_reap(vswitchd);
        }
        cmd::kill_and_reap(&mut self.ovsdb);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn set_ovs_env(command: &mut Command, dir: &Path) {
    for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
        command.env(var, dir);
    }
}

/// Starts `program` in the foreground inside `netns` (`ip netns exec` execs it, so the
/// child's pid is the program's).
fn spawn_in(netns: &str, dir: &Path, program: &Path, args: &[&str]) -> Result<Child> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", netns])
        .arg(program)
        .args(args);
    set_ovs_env(&mut command, dir);
    cmd::log_command(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn wait_for_path(path: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        cmd::check_interrupted()?;
        if Instant::now() >= deadline {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
