//! `vswitch-cni` end to end: the plugin run as the CNI spec says a runtime runs it
//! (`CNI_*` variables, the network config on stdin, one JSON document on stdout) against a
//! real vswitchd; then under podman 4.3 with its CNI backend (`podman run --rootfs`, no image
//! registry needed) and containerd's `ctr run --cni`.
//!
//! Every test has its own daemon, namespaces, containers and directories, with unique names,
//! removed in `Drop`. The tests need root (`#[ignore = "needs root: ..."]`); the runtime tests
//! also need podman, runc, containerd and busybox-static, which `scripts/test.sh` installs.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, Netns, Outside, require, unique, wait_until};
use serde_json::{Value, json};

/// The plugin binary under test.
const PLUGIN: &str = env!("CARGO_BIN_EXE_vswitch-cni");

/// One run of the plugin: its stdout parsed (Null when empty) and whether it exited 0.
#[derive(Debug)]
struct Answer {
    ok: bool,
    json: Value,
    raw: String,
}

/// Runs the plugin with `CNI_COMMAND=command`, the other variables in `env`, `stdin` as the
/// config.
fn invoke(command: &str, env: &[(&str, &str)], stdin: &Value) -> Answer {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run vswitch-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.to_string().as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if raw.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw)
            .unwrap_or_else(|e| panic!("{command}: stdout is not JSON ({e}): {raw}"))
    };
    Answer {
        ok: out.status.success(),
        json,
        raw,
    }
}

fn container_env<'a>(id: &'a str, netns: &'a str, args: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ]
}

fn expect_ok(what: &str, answer: &Answer, daemon: &Daemon) {
    assert!(
        answer.ok,
        "{what} failed: {}\ndaemon log (tail):\n{}",
        answer.raw,
        common::tail(&daemon.log_text(), 30)
    );
}

fn expect_code(what: &str, answer: &Answer, code: u64) {
    assert!(!answer.ok, "{what} should have failed: {}", answer.raw);
    assert_eq!(answer.json["code"], code, "{what}: {}", answer.raw);
    assert!(
        answer.json["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no msg: {}",
        answer.raw
    );
}

/// The NetworkInterfaces of every namespace, as the API lists them.
fn interfaces(daemon: &Daemon) -> Vec<Value> {
    daemon
        .ctl_json(&["get", "networkinterfaces", "--all-namespaces"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_interface(daemon: &Daemon, name: &str) -> bool {
    interfaces(daemon)
        .iter()
        .any(|i| i["metadata"]["name"] == name)
}

#[test]
#[ignore = "needs root: creates network namespaces and runs vswitchd"]
fn cni_direct_add_check_del_gc_status_version() {
    require(&["ping"]);
    let mut daemon = Daemon::start(1);
    let network = unique("net");
    let socket = daemon.socket.clone();
    let conf = |cni_version: &str, extra: Value| {
        let mut conf = json!({
            "cniVersion": cni_version, "name": network, "type": "vswitch-cni",
            "socket": socket, "subnet": "default",
            "dns": {"nameservers": ["10.0.0.53"], "search": ["svc.test"]},
        });
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), extra.as_object()) {
            conf.extend(extra.clone());
        }
        conf
    };

    // VERSION, STATUS.
    let version = invoke("VERSION", &[], &json!({"cniVersion": "1.0.0"}));
    assert!(version.ok, "{}", version.raw);
    assert_eq!(version.json["cniVersion"], "1.0.0");
    assert_eq!(
        version.json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let status = invoke("STATUS", &[], &conf("1.1.0", json!({})));
    expect_ok("STATUS", &status, &daemon);
    let missing_subnet = invoke("STATUS", &[], &conf("1.1.0", json!({"subnet": "nope"})));
    expect_code("STATUS with a missing Subnet", &missing_subnet, 50);

    // ADD a TAP container (namespace from the config), a veth one (namespace from CNI_ARGS).
    let ns1 = Netns::new("c1");
    let ns2 = Netns::new("c2");
    let path1 = format!("/run/netns/{}", ns1.name);
    let path2 = format!("/run/netns/{}", ns2.name);
    let id1 = format!("{:0<64}", format!("{:x}a1", std::process::id()));
    let id2 = unique("ctr");
    let add1 = invoke(
        "ADD",
        &container_env(&id1, &path1, "IgnoreUnknown=1;K8S_POD_NAME=web-1"),
        &conf(
            "1.1.0",
            json!({"namespace": "blog", "labels": {"app": "web"}}),
        ),
    );
    expect_ok("ADD 1", &add1, &daemon);
    let result = &add1.json;
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
    assert_eq!(
        result["interfaces"][0]["sandbox"],
        path1.as_str(),
        "{result}"
    );
    assert!(
        result["interfaces"][0]["mac"]
            .as_str()
            .is_some_and(|m| m.len() == 17),
        "{result}"
    );
    assert_eq!(result["ips"][0]["interface"], 0, "{result}");
    assert_eq!(result["ips"][0]["gateway"], "172.30.0.1", "{result}");
    let ip1 = result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert!(
        ip1.starts_with("172.30.") && ip1.ends_with("/16"),
        "{result}"
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "172.30.0.1"}])
    );
    assert_eq!(result["dns"]["nameservers"], json!(["10.0.0.53"]));
    let name1 = format!("cni-{}", &id1[..12]);
    let nic = daemon.ctl_json(&["get", "nic", &name1, "-n", "blog"]);
    assert_eq!(nic["metadata"]["labels"]["app"], "web", "{nic}");
    assert_eq!(
        nic["metadata"]["labels"]["vswitch.dev/pod-name"], "web-1",
        "{nic}"
    );
    assert_eq!(
        nic["metadata"]["labels"]["vswitch.dev/cni-network"],
        network.as_str()
    );
    assert_eq!(nic["spec"]["kind"], "tap");
    let addr = ns1.exec_ok(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&ip1), "{addr}");

    let add2 = invoke(
        "ADD",
        &container_env(&id2, &path2, "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db"),
        &conf("1.0.0", json!({"kind": "veth"})),
    );
    expect_ok("ADD 2 (veth)", &add2, &daemon);
    let result2 = &add2.json;
    assert_eq!(result2["cniVersion"], "1.0.0");
    assert!(
        result2["interfaces"][0]["sandbox"].is_null(),
        "host end first: {result2}"
    );
    assert_eq!(result2["interfaces"][1]["name"], "eth0", "{result2}");
    assert_eq!(result2["ips"][0]["interface"], 1, "{result2}");
    let ip2 = result2["ips"][0]["address"].as_str().expect("address");
    let ip2 = ip2.split('/').next().expect("ip").to_string();
    let name2 = format!("cni-{id2}");
    let nic2 = daemon.ctl_json(&["get", "nic", &name2, "-n", "shop"]);
    assert_eq!(nic2["metadata"]["namespace"], "shop", "{nic2}");

    // Traffic: each container reaches the gateway and the other.
    assert!(
        ns1.ping_until("172.30.0.1", Duration::from_secs(10)),
        "c1 -> gateway"
    );
    ns2.ping_ok("172.30.0.1", 2);
    ns1.ping_ok(&ip2, 3);

    // ADD again for the same attachment answers the same interface.
    let again = invoke(
        "ADD",
        &container_env(&id1, &path1, "IgnoreUnknown=1;K8S_POD_NAME=web-1"),
        &conf(
            "1.1.0",
            json!({"namespace": "blog", "labels": {"app": "web"}}),
        ),
    );
    expect_ok("ADD again", &again, &daemon);
    assert_eq!(again.json["ips"][0]["address"], ip1.as_str());

    // Without `dns` in the config, the result carries the Subnet's.
    let subnet_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        subnet_file.path(),
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {name: default}\nspec: {network: default, cidr: 172.30.0.0/16, gateway: 172.30.0.1, dns: {nameservers: [172.30.0.53], search: [pods.test]}}\n",
    )
    .expect("write");
    daemon.ctl_ok(&["apply", "-f", subnet_file.path().to_str().expect("utf8")]);
    let mut plain = conf(
        "1.1.0",
        json!({"namespace": "blog", "labels": {"app": "web"}}),
    );
    plain.as_object_mut().expect("object").remove("dns");
    let with_subnet_dns = invoke(
        "ADD",
        &container_env(&id1, &path1, "IgnoreUnknown=1;K8S_POD_NAME=web-1"),
        &plain,
    );
    expect_ok("ADD with the Subnet's DNS", &with_subnet_dns, &daemon);
    assert_eq!(
        with_subnet_dns.json["dns"],
        json!({"nameservers": ["172.30.0.53"], "domain": "pods.test", "search": ["pods.test"]}),
        "{}",
        with_subnet_dns.raw
    );

    // CHECK: fine with the ADD result; a wrong address is reported.
    let check = invoke(
        "CHECK",
        &container_env(&id1, &path1, ""),
        &conf("1.1.0", json!({"prevResult": add1.json.clone()})),
    );
    expect_ok("CHECK", &check, &daemon);
    let mut wrong = add1.json.clone();
    wrong["ips"][0]["address"] = json!("172.30.99.99/16");
    let check = invoke(
        "CHECK",
        &container_env(&id1, &path1, ""),
        &conf("1.1.0", json!({"prevResult": wrong})),
    );
    expect_code("CHECK with a wrong address", &check, 104);

    // Port mappings without an Uplink: refused (101), and nothing is left behind.
    let ns3 = Netns::new("c3");
    let path3 = format!("/run/netns/{}", ns3.name);
    let id3 = unique("pm");
    let ports = invoke(
        "ADD",
        &container_env(&id3, &path3, ""),
        &conf(
            "1.0.0",
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}),
        ),
    );
    expect_code("ADD with portMappings and no Uplink", &ports, 101);
    assert!(
        ports.json["details"]
            .as_str()
            .unwrap_or("")
            .contains("Uplink"),
        "{}",
        ports.raw
    );
    assert!(!has_interface(&daemon, &format!("cni-{id3}")));

    // GC keeps what the runtime lists (container 1), removes the rest (container 2).
    let gc = invoke(
        "GC",
        &[],
        &conf(
            "1.1.0",
            json!({"cni.dev/valid-attachments": [{"containerID": id1, "ifname": "eth0"}]}),
        ),
    );
    expect_ok("GC", &gc, &daemon);
    assert!(has_interface(&daemon, &name1), "GC kept container 1");
    assert!(!has_interface(&daemon, &name2), "GC removed container 2");
    let check2 = invoke(
        "CHECK",
        &container_env(&id2, &path2, ""),
        &conf("1.0.0", json!({"prevResult": add2.json.clone()})),
    );
    expect_code("CHECK after GC", &check2, 103);

    // ADD for the same container in a new namespace (a restarted sandbox) replaces the
    // interface.
    let ns4 = Netns::new("c4");
    let path4 = format!("/run/netns/{}", ns4.name);
    let moved = invoke(
        "ADD",
        &container_env(&id1, &path4, "IgnoreUnknown=1;K8S_POD_NAME=web-1"),
        &conf(
            "1.1.0",
            json!({"namespace": "blog", "labels": {"app": "web"}}),
        ),
    );
    expect_ok("ADD in a new namespace", &moved, &daemon);
    let nic = daemon.ctl_json(&["get", "nic", &name1, "-n", "blog"]);
    assert_eq!(nic["spec"]["netns"], path4.as_str(), "{nic}");
    let moved_ip = moved.json["ips"][0]["address"].as_str().expect("address");
    let addr = ns4.exec_ok(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(moved_ip), "{addr}");

    // DEL, and DEL again: both succeed; the address is released.
    let del = invoke(
        "DEL",
        &container_env(&id1, &path1, ""),
        &conf("1.1.0", json!({})),
    );
    expect_ok("DEL", &del, &daemon);
    assert!(del.json.is_null(), "DEL prints nothing: {}", del.raw);
    assert!(!has_interface(&daemon, &name1));
    let del = invoke(
        "DEL",
        &container_env(&id1, &path1, ""),
        &conf("1.1.0", json!({})),
    );
    expect_ok("DEL again", &del, &daemon);

    // DEL after the namespace is gone (and without CNI_NETNS).
    let add3 = invoke(
        "ADD",
        &container_env(&id3, &path3, ""),
        &conf("1.0.0", json!({})),
    );
    expect_ok("ADD 3", &add3, &daemon);
    drop(ns3);
    let del = invoke(
        "DEL",
        &[("CNI_CONTAINERID", id3.as_str()), ("CNI_IFNAME", "eth0")],
        &conf("1.0.0", json!({})),
    );
    expect_ok("DEL without a namespace", &del, &daemon);
    assert!(!has_interface(&daemon, &format!("cni-{id3}")));

    // vswitchd down: STATUS says not available (50), ADD try again later (11).
    daemon.kill9();
    expect_code(
        "STATUS, daemon down",
        &invoke("STATUS", &[], &conf("1.1.0", json!({}))),
        50,
    );
    expect_code(
        "ADD, daemon down",
        &invoke(
            "ADD",
            &container_env(&id1, &path1, ""),
            &conf("1.1.0", json!({})),
        ),
        11,
    );
}

// ---------------------------------------------------------------------------------------
// Real runtimes.

/// A busybox root filesystem and a CNI config directory in a temporary directory.
struct Rootfs {
    dir: tempfile::TempDir,
}

impl Rootfs {
    fn new() -> Rootfs {
        let dir = tempfile::Builder::new()
            .prefix("vscni")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("rootfs");
        for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "www"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::fs::write(root.join("www/index.html"), "hello from vswitch-cni\n").expect("index");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox is missing: install busybox-static (scripts/test.sh does)");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "sleep", "ping", "ip", "cat", "nc", "httpd", "wget"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
        }
        Rootfs { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Files this test put in the host's fixed CNI directories (`/etc/cni/net.d`,
/// `/opt/cni/bin`, which ctr cannot be pointed elsewhere), removed on drop.
struct HostFiles {
    paths: Vec<PathBuf>,
    /// Directories this test created, removed (when empty) after the files.
    dirs: Vec<PathBuf>,
}

impl HostFiles {
    /// Creates `dir` and its missing parents, remembering which were missing.
    fn create_dir(&mut self, dir: &Path) {
        let missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.exists())
            .map(Path::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).expect("CNI directory");
        self.dirs.extend(missing);
    }

    /// Writes `path` (failing if it exists: it is not ours to replace).
    fn write(&mut self, path: &Path, contents: &[u8]) {
        assert!(
            !path.exists(),
            "{} exists already; remove it first",
            path.display()
        );
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("CNI directory");
        }
        std::fs::write(path, contents).expect("write a CNI file");
        self.paths.push(path.to_path_buf());
    }

    /// Links `path` to `target` unless something is there already.
    fn link_if_missing(&mut self, target: &str, path: &Path) {
        if path.exists() {
            return;
        }
        std::os::unix::fs::symlink(target, path).expect("link a CNI plugin");
        self.paths.push(path.to_path_buf());
    }
}

impl Drop for HostFiles {
    fn drop(&mut self) {
        for path in self.paths.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        // Deepest first (the order `create_dir` found them in); a directory someone else
        // filled meanwhile stays.
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// podman with a private `containers.conf` (CNI backend, cgroupfs, ulimits the sandbox
/// allows) and private storage, so the host's podman setup is neither used nor changed.
struct Podman {
    fs: Rootfs,
    containers: Vec<String>,
}

impl Podman {
    fn new(network: &str, conflist: &Value) -> Podman {
        let fs = Rootfs::new();
        std::fs::create_dir_all(fs.path("net.d")).expect("net.d");
        // The plugin in a directory of this test's own: podman looks there first.
        std::fs::create_dir_all(fs.path("cni-bin")).expect("cni-bin");
        std::fs::copy(PLUGIN, fs.path("cni-bin/vswitch-cni")).expect("install vswitch-cni");
        std::fs::write(
            fs.path("net.d").join(format!("{network}.conflist")),
            conflist.to_string(),
        )
        .expect("conflist");
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n",
            fs.path("cni-bin").display(),
            fs.path("net.d").display()
        );
        std::fs::write(fs.path("containers.conf"), conf).expect("containers.conf");
        Podman {
            fs,
            containers: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", self.fs.path("containers.conf"))
            .arg("--root")
            .arg(self.fs.path("storage"))
            .arg("--runroot")
            .arg(self.fs.path("run"))
            .arg("--runtime")
            .arg("runc")
            .args(args)
            .output()
            .expect("cannot run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "podman {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d --name NAME --network NETWORK [extra...] --rootfs ROOT command...`.
    fn run(&mut self, name: &str, network: &str, extra: &[&str], command: &[&str]) {
        let root = self.fs.root();
        self.containers.push(name.to_string());
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", root.to_str().expect("utf-8 path")]);
        args.extend_from_slice(command);
        self.ok(&args);
    }

    /// The container's IPv4 address on eth0 (without prefix).
    fn ip(&self, name: &str) -> String {
        let out = self.ok(&["exec", name, "/bin/ip", "-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on eth0 of {name}: {out}"))
            .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = self.command(&["rm", "-f", "-t", "0", name]);
        }
    }
}

#[test]
#[ignore = "needs root: runs vswitchd and podman containers"]
fn cni_podman_containers_ping_and_rm_releases() {
    require(&["podman", "runc", "ping"]);
    let daemon = Daemon::start(1);
    let network = unique("pod");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "vswitch-cni",
            "socket": daemon.socket,
            "subnet": "default",
            "capabilities": {"portMappings": true},
        }],
    });
    let mut podman = Podman::new(&network, &conflist);
    let a = unique("a");
    let b = unique("b");
    podman.run(&a, &network, &[], &["/bin/sleep", "600"]);
    podman.run(&b, &network, &[], &["/bin/sleep", "600"]);
    let ip_a = podman.ip(&a);
    let ip_b = podman.ip(&b);
    assert_ne!(ip_a, ip_b);
    let labelled = |name: &str| {
        interfaces(&daemon)
            .into_iter()
            .find(|i| i["metadata"]["labels"]["vswitch.dev/pod-name"] == name)
    };
    let nic_a = labelled(&a).unwrap_or_else(|| panic!("no NetworkInterface for {a}"));
    assert_eq!(nic_a["status"]["ips"][0], format!("{ip_a}/16"), "{nic_a}");
    let ping = |from: &str, to: &str| {
        wait_until(
            &format!("{from} to ping {to}"),
            Duration::from_secs(15),
            || {
                podman
                    .command(&["exec", from, "/bin/ping", "-c", "1", "-W", "1", to])
                    .status
                    .success()
                    .then_some(())
            },
        );
    };
    ping(&a, "172.30.0.1");
    ping(&a, &ip_b);
    ping(&b, &ip_a);
    podman.ok(&["rm", "-f", "-t", "0", &a]);
    assert!(
        labelled(&a).is_none(),
        "podman rm released the interface of {a}"
    );
    assert!(labelled(&b).is_some());
    podman.ok(&["rm", "-f", "-t", "0", &b]);
    assert!(
        labelled(&b).is_none(),
        "podman rm released the interface of {b}"
    );
}

/// What the podman tests need of the outside world (203.0.113.1/24, the Uplink's gateway).
trait OutsideExt {
    /// Applies an Uplink on the host end (203.0.113.10) and a NATGateway for `default`.
    fn apply_uplink(&self, daemon: &Daemon);
    /// An HTTP GET of `url` from the outside; the body, or None when it fails.
    fn fetch(&self, url: &str) -> Option<String>;
}

impl OutsideExt for Outside {
    /// Applies an Uplink on the host end (203.0.113.10) and a NATGateway for `default`.
    fn apply_uplink(&self, daemon: &Daemon) {
        let yaml = format!(
            "apiVersion: vswitch/v1alpha1\nkind: Uplink\nmetadata:\n  name: up\nspec:\n  interface: {}\n  addresses: [203.0.113.10/24]\n  gateway: 203.0.113.1\n---\napiVersion: vswitch/v1alpha1\nkind: NATGateway\nmetadata:\n  name: default\nspec:\n  network: default\n  ips: [203.0.113.10]\n",
            self.host_end
        );
        let file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(file.path(), yaml).expect("write");
        daemon.ctl_ok(&["apply", "-f", file.path().to_str().expect("utf8")]);
    }

    /// An HTTP GET of `url` from the outside; the body, or None when it fails. (Python, not
    /// busybox wget, which segfaulted here on `ip netns exec`; not investigated.)
    fn fetch(&self, url: &str) -> Option<String> {
        let script = "import sys,urllib.request\nprint(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode())";
        let out = self.ns.exec(&["python3", "-c", script, url]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[test]
#[ignore = "needs root: runs vswitchd and podman containers, a veth uplink"]
fn cni_podman_published_port_nat_and_daemon_restart() {
    require(&["podman", "runc", "busybox", "python3"]);
    let outside = Outside::new(&["203.0.113.1/24"]);
    let mut daemon = Daemon::start(1);
    outside.apply_uplink(&daemon);
    let network = unique("pub");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "vswitch-cni",
            "socket": daemon.socket,
            "capabilities": {"portMappings": true},
        }],
    });
    let mut podman = Podman::new(&network, &conflist);
    let web = unique("web");
    podman.run(
        &web,
        &network,
        &["-p", "8080:80"],
        &["/bin/httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let forwards = daemon.ctl_json(&["get", "portforwards"]);
    let forward = forwards
        .as_array()
        .and_then(|f| f.first())
        .cloned()
        .unwrap_or_else(|| panic!("no PortForward for -p 8080:80: {forwards}"));
    assert_eq!(forward["spec"]["ip"], "203.0.113.10", "{forward}");
    assert_eq!(forward["spec"]["port"], 8080, "{forward}");
    assert_eq!(forward["spec"]["target"]["port"], 80, "{forward}");
    let body = wait_until(
        "the published port to answer",
        Duration::from_secs(15),
        || outside.fetch("http://203.0.113.10:8080/"),
    );
    assert!(body.contains("hello from vswitch-cni"), "{body}");
    // The container reaches the outside through the NATGateway.
    let ping_out = |podman: &Podman| {
        wait_until(
            "the container to ping the outside",
            Duration::from_secs(15),
            || {
                podman
                    .command(&[
                        "exec",
                        &web,
                        "/bin/ping",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        "203.0.113.1",
                    ])
                    .status
                    .success()
                    .then_some(())
            },
        );
    };
    ping_out(&podman);

    // A second container asking for the same port: the PortForward is refused, ADD fails,
    // and the interface it had made is removed again.
    let clash = unique("clash");
    podman.containers.push(clash.clone());
    let root = podman.fs.root();
    let out = podman.command(&[
        "run",
        "-d",
        "--name",
        &clash,
        "--network",
        &network,
        "-p",
        "8080:80",
        "--rootfs",
        root.to_str().expect("utf-8"),
        "/bin/sleep",
        "600",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second -p 8080:80 must fail");
    assert!(
        stderr.contains("vswitchd refused"),
        "the plugin's error reaches podman: {stderr}"
    );
    assert_eq!(
        interfaces(&daemon).len(),
        1,
        "no interface left by the failed ADD"
    );
    assert_eq!(
        daemon
            .ctl_json(&["get", "portforwards"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // kill -9 and restart vswitchd: the running container keeps its traffic.
    daemon.kill9();
    daemon.spawn(&[]);
    let body = wait_until(
        "the published port after a restart",
        Duration::from_secs(20),
        || outside.fetch("http://203.0.113.10:8080/"),
    );
    assert!(body.contains("hello from vswitch-cni"), "{body}");
    ping_out(&podman);

    // podman rm: the PortForward and the interface are gone.
    podman.ok(&["rm", "-f", "-t", "0", &web]);
    assert_eq!(daemon.ctl_json(&["get", "portforwards"]), json!([]));
    assert!(interfaces(&daemon).is_empty(), "{:?}", interfaces(&daemon));
}

/// A containerd of this test's own (its root, state and socket in a temporary directory),
/// with ctr's fixed CNI paths provided; containers are removed, then the daemon stopped, on
/// drop.
struct Containerd {
    fs: Rootfs,
    daemon: std::process::Child,
    containers: Vec<String>,
    _host_files: HostFiles,
}

impl Containerd {
    fn start(conflist: &Value) -> Containerd {
        let fs = Rootfs::new();
        std::fs::write(fs.path("config.toml"), "").expect("config");
        let log = std::fs::File::create(fs.path("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(fs.path("config.toml"))
            .arg("--root")
            .arg(fs.path("root"))
            .arg("--state")
            .arg(fs.path("state"))
            .arg("--address")
            .arg(fs.path("ctd.sock"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start containerd");
        let mut host_files = HostFiles {
            paths: Vec::new(),
            dirs: Vec::new(),
        };
        let bin = Path::new("/opt/cni/bin");
        host_files.create_dir(bin);
        host_files.create_dir(Path::new("/etc/cni/net.d"));
        host_files.write(
            &bin.join("vswitch-cni"),
            &std::fs::read(PLUGIN).expect("read the plugin"),
        );
        std::fs::set_permissions(
            bin.join("vswitch-cni"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        host_files.link_if_missing("/usr/lib/cni/loopback", &bin.join("loopback"));
        // ctr loads the first conflist by name: 00- sorts before the packages' (87-podman...).
        let name = conflist["name"].as_str().expect("name");
        host_files.write(
            &Path::new("/etc/cni/net.d").join(format!("00-{name}.conflist")),
            conflist.to_string().as_bytes(),
        );
        let containerd = Containerd {
            fs,
            daemon,
            containers: Vec::new(),
            _host_files: host_files,
        };
        wait_until("containerd to answer", Duration::from_secs(20), || {
            containerd.ctr(&["version"]).status.success().then_some(())
        });
        containerd
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.fs.path("ctd.sock"))
            .args(args)
            .output()
            .expect("cannot run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run -d --cni --rootfs ROOT ID /bin/sleep 600`.
    fn run_detached(&mut self, id: &str) {
        let root = self.fs.root();
        self.containers.push(id.to_string());
        self.ctr_ok(&[
            "run",
            "-d",
            "--cni",
            "--rootfs",
            root.to_str().expect("utf-8"),
            id,
            "/bin/sleep",
            "600",
        ]);
    }

    fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
        let _ = wait_until_quiet(|| self.ctr(&["task", "rm", id]).status.success());
        let _ = self.ctr(&["container", "rm", id]);
    }
}

/// Retries `probe` for up to 5 s; whether it succeeded.
fn wait_until_quiet(mut probe: impl FnMut() -> bool) -> bool {
    for _ in 0..50 {
        if probe() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            self.remove(id);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.daemon.id()).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !wait_until_quiet(|| matches!(self.daemon.try_wait(), Ok(Some(_)))) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- containerd log (tail) ----\n{}",
                common::tail(
                    &std::fs::read_to_string(self.fs.path("containerd.log")).unwrap_or_default(),
                    30
                )
            );
        }
    }
}

#[test]
#[ignore = "needs root: runs vswitchd, containerd and ctr containers"]
fn cni_containerd_ctr_run() {
    require(&["containerd", "ctr", "runc", "busybox"]);
    let daemon = Daemon::start(1);
    let network = unique("ctd");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{"type": "vswitch-cni", "socket": daemon.socket}],
    });
    let mut ctd = Containerd::start(&conflist);
    let (c1, c2) = (unique("c"), unique("c"));
    ctd.run_detached(&c1);
    ctd.run_detached(&c2);
    let ip_of = |id: &str| {
        let out = ctd.exec(
            id,
            &unique("e"),
            &["/bin/ip", "-4", "-o", "addr", "show", "eth0"],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no address on eth0 of {id}: {text}"))
            .to_string()
    };
    let ip2 = ip_of(&c2);
    for (from, to) in [(&c1, ip2.as_str()), (&c1, "172.30.0.1")] {
        wait_until(
            &format!("{from} to ping {to}"),
            Duration::from_secs(15),
            || {
                ctd.exec(from, &unique("p"), &["/bin/ping", "-c", "1", "-W", "1", to])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
    // ctr names the attachment <namespace>-<id>; two interfaces, labelled with it.
    let ids: Vec<String> = interfaces(&daemon)
        .iter()
        .filter_map(|i| {
            i["metadata"]["labels"]["vswitch.dev/cni-container"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(ids.contains(&format!("default-{c1}")), "{ids:?}");
    assert!(ids.contains(&format!("default-{c2}")), "{ids:?}");

    // A foreground `ctr run --rm --cni` runs DEL when the task exits.
    let root = ctd.fs.root();
    let c3 = unique("c");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--cni",
        "--rootfs",
        root.to_str().expect("utf-8"),
        &c3,
        "/bin/sh",
        "-c",
        "ip -4 -o addr show eth0",
    ]);
    assert!(out.contains("172.30."), "c3 had an address: {out}");
    assert_eq!(interfaces(&daemon).len(), 2, "c3's interface is released");

    // `ctr task rm` of a detached container does not run DEL (ctr 1.6): GC with the
    // containers containerd still has removes the leftover.
    ctd.remove(&c1);
    ctd.containers.retain(|c| *c != c1);
    let gc = invoke(
        "GC",
        &[],
        &json!({
            "cniVersion": "1.1.0", "name": network, "type": "vswitch-cni", "socket": daemon.socket,
            "cni.dev/valid-attachments": [{"containerID": format!("default-{c2}"), "ifname": "eth0"}],
        }),
    );
    expect_ok("GC", &gc, &daemon);
    let left: Vec<Value> = interfaces(&daemon);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0]["metadata"]["labels"]["vswitch.dev/cni-container"],
        format!("default-{c2}").as_str()
    );
}
