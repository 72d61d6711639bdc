//! Open vSwitch as the peer: a private `ovsdb-server` and `ovs-vswitchd` (userspace datapath,
//! `datapath_type=netdev`) in a namespace of the test's, with database, sockets and logs in
//! a temporary directory, so the host's own Open vSwitch (if any) is never touched and tests
//! can run side by side. Both processes are killed on drop. (`ovs-ctl` would use the one
//! machine-wide database, keep bridges across restarts and lock all its memory.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Netns, require, wait_until};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A private Open vSwitch with bridge `br0` in namespace `ns`.
pub struct Ovs {
    /// Where it runs (its ports are interfaces of this namespace).
    pub ns: Netns,
    vswitchd: Option<Child>,
    ovsdb: Option<Child>,
    dir: tempfile::TempDir,
}

impl Ovs {
    /// Starts Open vSwitch in a new namespace with an empty netdev bridge `br0`; fails the
    /// test, saying what is missing, when Open vSwitch is not installed.
    pub fn start() -> Ovs {
        require(&[
            "ovs-vswitchd",
            "ovsdb-server",
            "ovsdb-tool",
            "ovs-vsctl",
            "ovs-appctl",
        ]);
        assert!(
            Path::new(SCHEMA).is_file(),
            "{SCHEMA} is missing: install openvswitch-switch (./scripts/test.sh does)"
        );
        let ns = Netns::new("ovs");
        let dir = tempfile::Builder::new()
            .prefix("vstovs")
            .tempdir()
            .expect("tempdir");
        let db = dir.path().join("conf.db");
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .output()
            .expect("ovsdb-tool");
        assert!(out.status.success(), "ovsdb-tool create: {out:?}");
        let mut ovs = Ovs {
            ns,
            vswitchd: None,
            ovsdb: None,
            dir,
        };
        let socket = ovs.dir.path().join("db.sock");
        ovs.ovsdb = Some(ovs.spawn(
            "ovsdb-server",
            &[
                db.to_string_lossy().as_ref(),
                &format!("--remote=punix:{}", socket.display()),
                &format!("--unixctl={}", ovs.path("ovsdb.ctl").display()),
                &format!("--log-file={}", ovs.path("ovsdb.log").display()),
                "--no-chdir",
            ],
        ));
        wait_until("ovsdb-server's socket", Duration::from_secs(10), || {
            socket.exists().then_some(())
        });
        ovs.vsctl(&["--no-wait", "init"]);
        ovs.vswitchd = Some(ovs.spawn(
            "ovs-vswitchd",
            &[
                &format!("unix:{}", socket.display()),
                &format!("--unixctl={}", ovs.path("vswitchd.ctl").display()),
                &format!("--log-file={}", ovs.path("vswitchd.log").display()),
                "--no-chdir",
            ],
        ));
        ovs.vsctl(&[
            "--timeout=20",
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ]);
        ovs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, command: &mut Command) {
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            command.env(var, self.dir.path());
        }
    }

    fn spawn(&self, program: &str, args: &[&str]) -> Child {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.env(&mut command);
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    /// Runs `ovs-vsctl args`; panics with its output when it fails.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let mut command = Command::new("ovs-vsctl");
        command
            .arg(format!("--db=unix:{}", self.path("db.sock").display()))
            .args(args);
        self.env(&mut command);
        let out = command.output().expect("ovs-vsctl");
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ovs-appctl args` against ovs-vswitchd; returns its output whatever the status.
    pub fn appctl(&self, args: &[&str]) -> String {
        let mut command = Command::new("ovs-appctl");
        command
            .arg(format!("--target={}", self.path("vswitchd.ctl").display()))
            .args(args);
        self.env(&mut command);
        let out = command.output().expect("ovs-appctl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The end of ovs-vswitchd's log (for failure messages).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.path("vswitchd.log")).unwrap_or_default();
        super::tail(&text, 30)
    }

    /// Makes a veth pair whose `peer` end goes to namespace `to` (renamed `to_name` there)
    /// and whose own end, `port`, is in OVS's namespace; both up. Returns nothing: the pair
    /// goes with the namespaces.
    pub fn link(&self, port: &str, to: &str, to_name: &str) {
        let peer = super::unique("q");
        super::run(
            "ip",
            &[
                "link",
                "add",
                port,
                "netns",
                &self.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                to,
            ],
        );
        super::run("ip", &["-n", to, "link", "set", &peer, "name", to_name]);
        super::run("ip", &["-n", to, "link", "set", to_name, "up"]);
        super::run("ip", &["-n", &self.ns.name, "link", "set", port, "up"]);
    }

    /// Waits until `ovs-appctl args` prints `text`.
    pub fn wait_for(&self, args: &[&str], text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.appctl(args);
            if out.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ovs-appctl {args:?} never said {text:?} within {timeout:?}:\n{out}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for child in [self.vswitchd.as_mut(), self.ovsdb.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
