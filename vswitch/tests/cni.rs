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

use common::{Daemon, Netns, require, unique, wait_until};
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
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{command}: stdout is not JSON ({e}): {raw}"))
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
        &conf("1.1.0", json!({"namespace": "blog", "labels": {"app": "web"}})),
    );
    expect_ok("ADD 1", &add1, &daemon);
    let result = &add1.json;
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
    assert_eq!(result["interfaces"][0]["sandbox"], path1.as_str(), "{result}");
    assert!(result["interfaces"][0]["mac"].as_str().is_some_and(|m| m.len() == 17), "{result}");
    assert_eq!(result["ips"][0]["interface"], 0, "{result}");
    assert_eq!(result["ips"][0]["gateway"], "172.30.0.1", "{result}");
    let ip1 = result["ips"][0]["address"].as_str().expect("address").to_string();
    assert!(ip1.starts_with("172.30.") && ip1.ends_with("/16"), "{result}");
    assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0", "gw": "172.30.0.1"}]));
    assert_eq!(result["dns"]["nameservers"], json!(["10.0.0.53"]));
    let name1 = format!("cni-{}", &id1[..12]);
    let nic = daemon.ctl_json(&["get", "nic", &name1, "-n", "blog"]);
    assert_eq!(nic["metadata"]["labels"]["app"], "web", "{nic}");
    assert_eq!(nic["metadata"]["labels"]["vswitch.dev/pod-name"], "web-1", "{nic}");
    assert_eq!(nic["metadata"]["labels"]["vswitch.dev/cni-network"], network.as_str());
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
    assert!(result2["interfaces"][0]["sandbox"].is_null(), "host end first: {result2}");
    assert_eq!(result2["interfaces"][1]["name"], "eth0", "{result2}");
    assert_eq!(result2["ips"][0]["interface"], 1, "{result2}");
    let ip2 = result2["ips"][0]["address"].as_str().expect("address");
    let ip2 = ip2.split('/').next().expect("ip").to_string();
    let name2 = format!("cni-{id2}");
    let nic2 = daemon.ctl_json(&["get", "nic", &name2, "-n", "shop"]);
    assert_eq!(nic2["metadata"]["namespace"], "shop", "{nic2}");

    // Traffic: each container reaches the gateway and the other.
    assert!(ns1.ping_until("172.30.0.1", Duration::from_secs(10)), "c1 -> gateway");
    ns2.ping_ok("172.30.0.1", 2);
    ns1.ping_ok(&ip2, 3);

    // ADD again for the same attachment answers the same interface.
    let again = invoke(
        "ADD",
        &container_env(&id1, &path1, "IgnoreUnknown=1;K8S_POD_NAME=web-1"),
        &conf("1.1.0", json!({"namespace": "blog", "labels": {"app": "web"}})),
    );
    expect_ok("ADD again", &again, &daemon);
    assert_eq!(again.json["ips"][0]["address"], ip1.as_str());

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
        ports.json["details"].as_str().unwrap_or("").contains("Uplink"),
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

    // DEL, and DEL again: both succeed; the address is released.
    let del = invoke("DEL", &container_env(&id1, &path1, ""), &conf("1.1.0", json!({})));
    expect_ok("DEL", &del, &daemon);
    assert!(del.json.is_null(), "DEL prints nothing: {}", del.raw);
    assert!(!has_interface(&daemon, &name1));
    let del = invoke("DEL", &container_env(&id1, &path1, ""), &conf("1.1.0", json!({})));
    expect_ok("DEL again", &del, &daemon);

    // DEL after the namespace is gone (and without CNI_NETNS).
    let add3 = invoke("ADD", &container_env(&id3, &path3, ""), &conf("1.0.0", json!({})));
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
    expect_code("STATUS, daemon down", &invoke("STATUS", &[], &conf("1.1.0", json!({}))), 50);
    expect_code(
        "ADD, daemon down",
        &invoke("ADD", &container_env(&id1, &path1, ""), &conf("1.1.0", json!({}))),
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
        for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
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

/// The plugin installed where runtimes look for it (`/usr/lib/cni` for podman, `/opt/cni/bin`
/// for ctr), removed on drop unless it was there before.
struct InstalledPlugin {
    paths: Vec<PathBuf>,
}

impl InstalledPlugin {
    fn install() -> InstalledPlugin {
        let mut paths = Vec::new();
        for dir in ["/usr/lib/cni", "/opt/cni/bin"] {
            std::fs::create_dir_all(dir).expect("plugin dir");
            let path = Path::new(dir).join("vswitch-cni");
            // Copied, not linked: the build directory may be unreadable to the runtime.
            std::fs::copy(PLUGIN, &path).expect("install vswitch-cni");
            paths.push(path);
        }
        InstalledPlugin { paths }
    }
}

impl Drop for InstalledPlugin {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
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
        std::fs::write(
            fs.path("net.d").join(format!("{network}.conflist")),
            conflist.to_string(),
        )
        .expect("conflist");
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n",
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

    fn run(&mut self, name: &str, network: &str) {
        let root = self.fs.root();
        self.containers.push(name.to_string());
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--rootfs",
            root.to_str().expect("utf-8 path"),
            "/bin/sleep",
            "600",
        ]);
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
    let _plugin = InstalledPlugin::install();
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
    podman.run(&a, &network);
    podman.run(&b, &network);
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
    assert!(labelled(&a).is_none(), "podman rm released the interface of {a}");
    assert!(labelled(&b).is_some());
    podman.ok(&["rm", "-f", "-t", "0", &b]);
    assert!(labelled(&b).is_none(), "podman rm released the interface of {b}");
}
