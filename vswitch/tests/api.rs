//! The control API end to end: `api::serve` on a temporary socket, with a real `Controller`
//! and `Engine`, driven over HTTP and through the real `vswitchctl` binary.
//!
//! Each test starts its own server in its own temporary directory, with resource names that
//! no other test uses, so the tests run in parallel. The server is stopped in `Drop`. Tests
//! that touch namespaces need root: they are `#[ignore = "needs root: ..."]` (a plain
//! `cargo test` skips them, `sudo ./scripts/test.sh` runs them) and fail, never pass, when run
//! without it.

// Integration tests are test modules already.
#![allow(clippy::tests_outside_test_module)]

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use vswitch::api::{self, ApiListener, ApiServeError};
use vswitch::cli::client::{Body, Client, HttpResponse};
use vswitch::control::Controller;
use vswitch::runtime::{Engine, EngineConfig};

/// A running API server on a temporary socket, stopped on drop.
struct Server {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ApiServeError>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("vsapi")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("run/vs.sock");
        let engine = Engine::start(EngineConfig::new(1)).expect("engine starts");
        let controller =
            Arc::new(Controller::open(&dir.path().join("state"), engine).expect("controller"));
        // Bound here, so the socket answers as soon as `start` returns.
        let listener = ApiListener::bind(&socket).expect("bind the control socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let result = runtime.block_on(listener.serve(Arc::clone(&controller), async {
                let _ = stopped.await;
            }));
            controller.shutdown();
            result
        });
        Server {
            socket,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.socket, Duration::from_secs(30)).expect("client")
    }

    fn request(&self, method: Method, path: &str, body: Option<&str>) -> HttpResponse {
        let body = body.map(|text| Body {
            content_type: "application/yaml",
            bytes: text.as_bytes(),
        });
        self.client()
            .request(method.clone(), path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request whose answer must have `status`; returns the JSON body (null if empty).
    fn expect(&self, method: Method, path: &str, body: Option<&str>, status: u16) -> Value {
        let response = self.request(method.clone(), path, body);
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert_eq!(
            response.status, status,
            "{method} {path}: expected {status}, got {} with body:\n{text}",
            response.status
        );
        if text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}):\n{text}"))
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_with_stdin(args, "")
    }

    fn ctl_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("VSWITCH_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vswitchctl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("vswitchctl output")
    }

    /// Runs vswitchctl; it must exit with `code`. Returns (stdout, stderr).
    fn ctl_code(&self, args: &[&str], code: i32) -> (String, String) {
        check_code(args, self.ctl(args), code)
    }
}

fn check_code(args: &[&str], output: Output, code: i32) -> (String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "vswitchctl {}: expected exit {code}, got {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" "),
        output.status
    );
    (stdout, stderr)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) if !std::thread::panicking() => {
                    panic!("the server stopped with an error: {error}")
                }
                Ok(Err(_)) => {}
                Err(_) if !std::thread::panicking() => panic!("the server thread panicked"),
                Err(_) => {}
            }
        }
    }
}

/// A unique resource-name prefix for this test process and call.
fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "apit{}{}{tag}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A Network and a Subnet (10.77.N.0/24) as YAML.
fn network_and_subnet(network: &str, subnet: &str, cidr: &str, gateway: &str) -> String {
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata:\n  name: {network}\nspec: {{}}\n\
             ---\n\
             apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata:\n  name: {subnet}\n  labels:\n    team: api\n\
             spec:\n  network: {network}\n  cidr: {cidr}\n  gateway: {gateway}\n  mtu: 1400\n"
    )
}

/// Sends raw bytes and returns the raw answer: everything until the server closes the
/// connection, or what arrived within 5 s.
fn raw_http(socket: &Path, request: impl AsRef<[u8]>) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request.as_ref()).expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn error_of(value: &Value) -> (&str, &Value) {
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {value}"));
    assert!(
        value["error"].get("field").is_some(),
        "the error shape always has `field`: {value}"
    );
    (message, &value["error"]["field"])
}

#[test]
fn socket_is_private_and_removed_on_shutdown() {
    let server = Server::start();
    let meta = std::fs::symlink_metadata(&server.socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the control socket must be mode 0600"
    );
    let version = server.expect(Method::GET, "/v1/version", None, 200);
    assert_eq!(version["apiVersion"], "vswitch/v1alpha1");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));

    // A second daemon on the same path is refused and the first keeps its socket.
    let error = ApiListener::bind(&server.socket).expect_err("second bind");
    assert!(
        error.to_string().contains(&format!(
            "another vswitchd is listening on {:?}",
            server.socket
        )),
        "{error}"
    );
    server.expect(Method::GET, "/v1/version", None, 200);

    let socket = server.socket.clone();
    drop(server);
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn serve_creates_the_directory_and_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("a/b/vs.sock");
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let engine = Engine::start(EngineConfig::new(1)).expect("engine");
    let controller =
        Arc::new(Controller::open(&dir.path().join("state"), engine).expect("controller"));
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(api::serve(&path, controller, async {
            let _ = stopped.await;
        }))
    });
    // The stale file is replaced by a live socket.
    let client = Client::new(&socket, Duration::from_secs(5)).expect("client");
    let mut answered = false;
    for _ in 0..100 {
        if let Ok(response) = client.request(Method::GET, "/v1/version", None) {
            assert_eq!(response.status, 200);
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered, "serve() never answered on {socket:?}");
    let _ = stop.send(());
    thread
        .join()
        .expect("server thread")
        .expect("serve returns Ok");
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}

#[test]
fn apply_list_get_over_http() {
    let server = Server::start();
    let network = unique("n");
    let subnet = unique("s");
    let yaml = network_and_subnet(&network, &subnet, "10.77.1.0/24", "10.77.1.1");

    let applied = server.expect(Method::POST, "/v1/apply", Some(&yaml), 200);
    assert_eq!(
        applied,
        json!([
            {"kind": "Network", "name": network, "action": "created"},
            {"kind": "Subnet", "name": subnet, "action": "created"},
        ])
    );
    let again = server.expect(Method::POST, "/v1/apply", Some(&yaml), 200);
    assert_eq!(again[1]["action"], "unchanged", "{again}");

    let subnets = server.expect(Method::GET, "/v1/subnets", None, 200);
    let listed = subnets
        .as_array()
        .expect("a list")
        .iter()
        .find(|s| s["metadata"]["name"] == subnet.as_str())
        .unwrap_or_else(|| panic!("{subnet} not listed in {subnets}"));
    assert_eq!(listed["spec"]["cidr"], "10.77.1.0/24");

    // Kind in any case, singular or plural.
    for kind in ["subnet", "Subnet", "SUBNETS"] {
        let one = server.expect(Method::GET, &format!("/v1/{kind}/{subnet}"), None, 200);
        assert_eq!(one["apiVersion"], "vswitch/v1alpha1");
        assert_eq!(one["kind"], "Subnet");
        assert_eq!(one["metadata"]["name"], subnet.as_str());
        assert_eq!(one["metadata"]["labels"]["team"], "api");
        assert_eq!(one["spec"]["network"], network.as_str());
        assert_eq!(one["spec"]["gateway"], "10.77.1.1");
        assert_eq!(one["spec"]["mtu"], 1400);
    }
    let missing = server.expect(Method::GET, "/v1/subnets/nope", None, 404);
    let (message, field) = error_of(&missing);
    assert!(message.contains("nope"), "{message}");
    assert_eq!(field, &Value::Null);
}

#[test]
fn an_invalid_document_is_400_with_the_field_and_changes_nothing() {
    let server = Server::start();
    let network = unique("n");
    let subnet = unique("s");
    let yaml = network_and_subnet(&network, &subnet, "10.77.2.0/33", "10.77.2.1");
    let refused = server.expect(Method::POST, "/v1/apply", Some(&yaml), 400);
    let (message, field) = error_of(&refused);
    assert!(message.contains("10.77.2.0/33"), "{message}");
    assert_eq!(field, "documents[1].spec.cidr", "{refused}");
    // The valid Network in the same request was not applied.
    server.expect(Method::GET, &format!("/v1/networks/{network}"), None, 404);

    let refused = server.expect(Method::POST, "/v1/apply", Some("kind: [Subnet\n"), 400);
    error_of(&refused);
    let refused = server.expect(Method::POST, "/v1/apply", Some("  \n"), 400);
    let (message, _) = error_of(&refused);
    assert!(message.contains("empty"), "{message}");
    let refused = server.expect(Method::GET, "/v1/routers", None, 400);
    let (message, _) = error_of(&refused);
    assert!(message.contains("routers"), "{message}");
}

#[test]
fn create_conflict_and_delete() {
    let server = Server::start();
    let name = unique("c");
    let body = json!({
        "apiVersion": "vswitch/v1alpha1",
        "kind": "Network",
        "metadata": {"name": name},
        "spec": {},
    })
    .to_string();
    let created = server.expect(Method::POST, "/v1/networks", Some(&body), 201);
    assert_eq!(created["metadata"]["name"], name.as_str());
    assert_eq!(created["kind"], "Network");
    let conflict = server.expect(Method::POST, "/v1/networks", Some(&body), 409);
    let (message, _) = error_of(&conflict);
    assert!(message.contains(&name), "{message}");

    let not_json = server.expect(Method::POST, "/v1/networks", Some("{\"kind\": "), 400);
    let (message, field) = error_of(&not_json);
    assert!(message.contains("not valid JSON"), "{message}");
    assert_eq!(field, &Value::Null);

    // Location names the new resource.
    let other = unique("c");
    let body = json!({"apiVersion": "vswitch/v1alpha1", "kind": "Network",
                          "metadata": {"name": other}, "spec": {}})
    .to_string();
    let answer = raw_http(
        &server.socket,
        format!(
            "POST /v1/networks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("\r\nlocation: /v1/networks/{other}\r\n")),
        "{answer}"
    );

    server.expect(Method::DELETE, &format!("/v1/networks/{name}"), None, 204);
    server.expect(Method::GET, &format!("/v1/networks/{name}"), None, 404);
    let gone = server.expect(Method::DELETE, &format!("/v1/networks/{name}"), None, 404);
    error_of(&gone);
}

#[test]
fn http_errors_have_the_error_shape() {
    let server = Server::start();
    for path in ["/v2/subnets", "/v1/a/b/c", "/", "/v1/subnets/x/"] {
        let answer = server.expect(Method::GET, path, None, 404);
        let (message, field) = error_of(&answer);
        assert!(message.contains("no endpoint"), "{path}: {message}");
        assert_eq!(field, &Value::Null);
    }
    let answer = raw_http(
        &server.socket,
        "PUT /v1/version HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: get"),
        "405 lists the allowed methods: {answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).expect("body");
    let value: Value = serde_json::from_str(body).expect("JSON body");
    let (message, _) = error_of(&value);
    assert!(message.contains("PUT"), "{message}");
    server.expect(Method::DELETE, "/v1/apply", None, 405);

    // One byte over the limit.
    let mut request = format!(
            "POST /v1/apply HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            api::MAX_BODY_BYTES + 1
        )
        .into_bytes();
    request.resize(request.len() + api::MAX_BODY_BYTES + 1, b'#');
    let answer = raw_http(&server.socket, request);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).expect("body");
    error_of(&serde_json::from_str(body).expect("JSON body"));
    let answer = raw_http(
            &server.socket,
            b"POST /v1/apply HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\xff\xfe",
        );
    assert!(
        answer.starts_with("HTTP/1.1 400 "),
        "non-UTF-8 body: {answer}"
    );
}

#[test]
fn fdb_and_stats_answer_json() {
    let server = Server::start();
    let fdb = server.expect(Method::GET, "/v1/fdb", None, 200);
    assert!(fdb.is_array(), "fdb is a list: {fdb}");
    let stats = server.expect(Method::GET, "/v1/stats", None, 200);
    assert!(stats["ports"].is_array(), "stats has ports: {stats}");
    assert!(stats["drops"].is_object(), "stats has drops: {stats}");
}

#[test]
fn vswitchctl_apply_get_describe_delete() {
    let server = Server::start();
    let network = unique("n");
    let subnet = unique("s");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("net.yaml");
    std::fs::write(
        &file,
        network_and_subnet(&network, &subnet, "10.77.3.0/24", "10.77.3.1"),
    )
    .expect("write");
    let file = file.to_str().expect("utf-8 path");

    let (out, _) = server.ctl_code(&["apply", "-f", file], 0);
    assert_eq!(
        out,
        format!("network/{network} created\nsubnet/{subnet} created\n")
    );
    let (out, _) = server.ctl_code(&["apply", "-f", file], 0);
    assert!(out.contains(&format!("subnet/{subnet} unchanged")), "{out}");

    let (out, _) = server.ctl_code(&["get", "subnets"], 0);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "NETWORK", "CIDR", "GATEWAY", "MTU"]);
    let row = lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|row| row[0] == subnet)
        .unwrap_or_else(|| panic!("{subnet} not in:\n{out}"));
    assert_eq!(
        row,
        [
            subnet.as_str(),
            network.as_str(),
            "10.77.3.0/24",
            "10.77.3.1",
            "1400"
        ]
    );

    let (out, _) = server.ctl_code(&["get", "networks"], 0);
    let row = out
        .lines()
        .find(|line| line.starts_with(&format!("{network} ")))
        .unwrap_or_else(|| panic!("{network} not in:\n{out}"));
    assert!(row.contains(&subnet), "SUBNETS column: {row}");

    let (out, _) = server.ctl_code(&["get", "Subnet", &subnet, "-o", "json"], 0);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(value["spec"]["cidr"], "10.77.3.0/24");
    let (out, _) = server.ctl_code(&["get", "subnets", "-o", "json"], 0);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    assert!(value.is_array(), "{value}");

    // YAML output of a list is re-appliable as it is.
    let (out, _) = server.ctl_code(&["get", "subnet", &subnet, "-o", "yaml"], 0);
    assert!(out.contains("cidr: 10.77.3.0/24"), "{out}");
    let (out, _) = server.ctl_code(&["get", "networks", "-o", "yaml"], 0);
    let (applied, _) = check_code(
        &["apply", "-f", "-"],
        server.ctl_with_stdin(&["apply", "-f", "-"], &out),
        0,
    );
    assert!(
        applied.contains(&format!("network/{network} unchanged")),
        "{applied}"
    );

    let (out, _) = server.ctl_code(&["describe", "subnet", &subnet], 0);
    for expected in [
        "Name:".to_owned(),
        format!("{subnet}\n"),
        "Kind:         Subnet\n".to_owned(),
        "Labels:       team=api\n".to_owned(),
        "Spec:\n".to_owned(),
        "10.77.3.0/24\n".to_owned(),
    ] {
        assert!(
            out.contains(&expected),
            "describe lacks {expected:?}:\n{out}"
        );
    }

    let (out, _) = server.ctl_code(&["delete", "subnet", &subnet], 0);
    assert_eq!(out, format!("subnet/{subnet} deleted\n"));
    let (out, _) = server.ctl_code(&["delete", "networks", &network], 0);
    assert_eq!(out, format!("network/{network} deleted\n"));
    let (_, err) = server.ctl_code(&["get", "subnet", &subnet], 1);
    assert!(err.starts_with("vswitchctl: "), "{err}");
    assert!(err.contains(&subnet), "{err}");
    assert!(err.contains("try: vswitchctl get subnet"), "{err}");
}

#[test]
fn vswitchctl_errors_and_exit_codes() {
    let server = Server::start();
    let network = unique("n");
    let subnet = unique("s");

    // Refused by the API: exit 1, the message, the field.
    let bad = network_and_subnet(&network, &subnet, "10.77.4.0/33", "10.77.4.1");
    let (out, err) = check_code(
        &["apply", "-f", "-"],
        server.ctl_with_stdin(&["apply", "-f", "-"], &bad),
        1,
    );
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("vswitchctl: "), "{err}");
    assert!(err.contains("10.77.4.0/33"), "{err}");
    assert!(err.contains("  (field: documents[1].spec.cidr)"), "{err}");
    let (_, err) = server.ctl_code(&["get", "routers"], 1);
    assert!(err.contains("routers"), "{err}");
    let (_, err) = server.ctl_code(&["detach", "nope"], 1);
    assert!(err.contains("nope"), "{err}");

    // Input file missing: exit 1.
    let (_, err) = server.ctl_code(&["apply", "-f", "/nonexistent/x.yaml"], 1);
    assert!(err.contains("/nonexistent/x.yaml"), "{err}");

    // Usage errors: exit 2, before any request.
    for args in [
        &["attach", "c1", "--ip", "10.0.0.5/40"][..],
        &["attach", "c1", "--ip", "ten"][..],
        &["attach", "c1", "--label", "novalue"][..],
        &["attach", "pid:x"][..],
        &["attach", "c1", "--label", "a=1", "--label", "a=2"][..],
        &["get"][..],
        &["frobnicate"][..],
    ] {
        let (_, err) = server.ctl_code(args, 2);
        assert!(!err.is_empty(), "{args:?} prints why");
    }

    // Unreachable daemon: exit 3 with a hint.
    let output = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .args(["--socket", "/nonexistent/vs.sock", "get", "subnets"])
        .output()
        .expect("vswitchctl");
    let (_, err) = check_code(&["get", "subnets"], output, 3);
    assert!(
        err.starts_with("vswitchctl: cannot connect to vswitchd"),
        "{err}"
    );
    assert!(err.contains("is vswitchd running?"), "{err}");

    // VSWITCH_SOCKET names the socket.
    let output = Command::new(env!("CARGO_BIN_EXE_vswitchctl"))
        .args(["version"])
        .env("VSWITCH_SOCKET", &server.socket)
        .output()
        .expect("vswitchctl");
    let (out, _) = check_code(&["version"], output, 0);
    assert!(out.contains("(API vswitch/v1alpha1)"), "{out}");

    // --help documents the exit codes.
    let (out, _) = server.ctl_code(&["--help"], 0);
    assert!(
        out.contains("Exit codes:") && out.contains("3  cannot reach vswitchd"),
        "{out}"
    );
}

#[test]
fn vswitchctl_fdb_and_stats() {
    let server = Server::start();
    let (out, err) = server.ctl_code(&["fdb"], 0);
    assert!(
        out.starts_with("SUBNET") || err.contains("no learned MAC addresses"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    let listed = out.lines().skip(1).count();
    let (out, _) = server.ctl_code(&["fdb", "--count", "-o", "json"], 0);
    let counts: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(counts["count"].as_u64(), Some(listed as u64), "{counts}");
    assert_eq!(counts["remote"], 0, "{counts}");
    let (out, _) = server.ctl_code(&["fdb", "--count"], 0);
    assert_eq!(out.trim(), listed.to_string());
    let (out, _) = server.ctl_code(&["stats"], 0);
    assert!(out.contains("drops by reason:"), "{out}");
    let (out, _) = server.ctl_code(&["stats", "-o", "json"], 0);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    assert!(value["ports"].is_array(), "{value}");
}

/// Two Networks that peer with each other (each with one Subnet), and a Route in the
/// first, as YAML. Names are `{tag}a`/`{tag}b` (Networks), `{tag}sa`/`{tag}sb` (Subnets)
/// and `{tag}r` (the Route).
fn peered_networks(tag: &str, b_peers_back: bool) -> String {
    let back = if b_peers_back {
        format!("[{{name: back, network: {tag}a}}]")
    } else {
        "[]".to_string()
    };
    format!(
        "apiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {tag}a}}\n\
             spec: {{peerings: [{{name: to-b, network: {tag}b}}]}}\n\
             ---\napiVersion: vswitch/v1alpha1\nkind: Network\nmetadata: {{name: {tag}b}}\n\
             spec: {{peerings: {back}}}\n\
             ---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {tag}sa}}\n\
             spec: {{network: {tag}a, cidr: 10.78.1.0/24, gateway: 10.78.1.1}}\n\
             ---\napiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {tag}sb}}\n\
             spec: {{network: {tag}b, cidr: 10.78.2.0/24, gateway: 10.78.2.1, gatewayMac: '02:00:00:00:78:02'}}\n\
             ---\napiVersion: vswitch/v1alpha1\nkind: Route\nmetadata: {{name: {tag}r}}\n\
             spec: {{network: {tag}a, destination: 192.168.78.0/24, nextHop: 10.78.1.254}}\n"
    )
}

#[test]
fn routes_peerings_routing_table_and_neighbors_over_http() {
    let server = Server::start();
    let t = unique("p");
    let (a, b, sa, sb, r) = (
        format!("{t}a"),
        format!("{t}b"),
        format!("{t}sa"),
        format!("{t}sb"),
        format!("{t}r"),
    );
    // One side only: Pending, no peering routes.
    let applied = server.expect(
        Method::POST,
        "/v1/apply",
        Some(&peered_networks(&t, false)),
        200,
    );
    assert_eq!(
        applied[4],
        json!({"kind": "Route", "name": r, "action": "created"})
    );
    let network = server.expect(Method::GET, &format!("/v1/networks/{a}"), None, 200);
    assert_eq!(
        network["spec"]["peerings"],
        json!([{"name": "to-b", "network": b}])
    );
    assert_eq!(
        network["status"]["peerings"][0]["state"], "Pending",
        "{network}"
    );
    let table = server.expect(
        Method::GET,
        &format!("/v1/routing-table?network={a}"),
        None,
        200,
    );
    assert_eq!(
        table,
        json!([
            {"network": a, "destination": "10.78.1.0/24", "nextHop": null, "subnet": sa, "origin": "connected"},
            {"network": a, "destination": "192.168.78.0/24", "nextHop": "10.78.1.254", "subnet": sa, "origin": format!("static:{r}")},
        ])
    );

    // Both sides: Ready, and each table routes to the other's Subnet.
    server.expect(
        Method::POST,
        "/v1/apply",
        Some(&peered_networks(&t, true)),
        200,
    );
    let network = server.expect(Method::GET, &format!("/v1/network/{b}"), None, 200);
    assert_eq!(
        network["status"]["peerings"],
        json!([{"name": "back", "network": a, "state": "Ready"}])
    );
    let table = server.expect(Method::GET, "/v1/routing-table", None, 200);
    let rows: Vec<(String, String, String)> = table
        .as_array()
        .expect("a list")
        .iter()
        .map(|row| {
            (
                row["network"].as_str().unwrap_or("?").to_string(),
                row["destination"].as_str().unwrap_or("?").to_string(),
                row["origin"].as_str().unwrap_or("?").to_string(),
            )
        })
        .filter(|row| row.0 == a || row.0 == b)
        .collect();
    let row = |n: &str, d: &str, o: &str| (n.to_string(), d.to_string(), o.to_string());
    assert_eq!(
        rows,
        [
            row(&a, "10.78.1.0/24", "connected"),
            row(&a, "10.78.2.0/24", &format!("peering:{b}")),
            row(&a, "192.168.78.0/24", &format!("static:{r}")),
            row(&b, "10.78.1.0/24", &format!("peering:{a}")),
            row(&b, "10.78.2.0/24", "connected"),
        ]
    );

    // `routes` is the Route resource kind; its status names the egress Subnet.
    let routes = server.expect(Method::GET, "/v1/routes", None, 200);
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    assert_eq!(routes[0]["kind"], "Route");
    assert_eq!(routes[0]["status"], json!({"subnet": sa, "state": "Ready"}));
    let subnet = server.expect(Method::GET, &format!("/v1/subnets/{sb}"), None, 200);
    assert_eq!(subnet["status"]["gatewayMac"], "02:00:00:00:78:02");
    let subnet = server.expect(Method::GET, &format!("/v1/subnets/{sa}"), None, 200);
    let mac = subnet["status"]["gatewayMac"]
        .as_str()
        .expect("a derived MAC");
    assert_eq!(mac.len(), 17, "{mac}");

    // Refusals: nothing changes.
    let overlapping = format!(
        "apiVersion: vswitch/v1alpha1\nkind: Subnet\nmetadata: {{name: {t}sc}}\n\
             spec: {{network: {t}b, cidr: 10.78.1.128/25, gateway: 10.78.1.129}}\n"
    );
    let refused = server.expect(Method::POST, "/v1/apply", Some(&overlapping), 400);
    let (message, field) = error_of(&refused);
    for word in ["10.78.1.128/25", "10.78.1.0/24", a.as_str(), b.as_str()] {
        assert!(message.contains(word), "{word:?} not in {message}");
    }
    assert_eq!(field, "documents[0].spec.cidr");
    server.expect(Method::GET, &format!("/v1/subnets/{t}sc"), None, 404);
    let bad_route = format!(
        "apiVersion: vswitch/v1alpha1\nkind: Route\nmetadata: {{name: {t}bad}}\n\
             spec: {{network: {a}, destination: 10.0.0.0/8, nextHop: 10.78.1.1}}\n"
    );
    let refused = server.expect(Method::POST, "/v1/apply", Some(&bad_route), 400);
    let (message, field) = error_of(&refused);
    assert!(message.contains("is the gateway"), "{message}");
    assert!(message.contains(&format!("{sa} 10.78.1.0/24")), "{message}");
    assert_eq!(field, "documents[0].spec.nextHop");

    // The computed table is not a kind; the query is checked.
    let missing = server.expect(Method::GET, "/v1/routing-table?network=nope", None, 404);
    let (message, _) = error_of(&missing);
    assert_eq!(message, "Network \"nope\" not found");
    let bad = server.expect(Method::GET, "/v1/routing-table?net=x", None, 400);
    let (message, _) = error_of(&bad);
    assert!(message.contains("network=NAME"), "{message}");
    server.expect(Method::POST, "/v1/routing-table", Some("{}"), 405);

    let neighbors = server.expect(Method::GET, "/v1/neighbors", None, 200);
    assert!(neighbors.is_array(), "{neighbors}");

    // Removing one side: Pending again, the peering routes are gone.
    server.expect(
        Method::POST,
        "/v1/apply",
        Some(&peered_networks(&t, false)),
        200,
    );
    let table = server.expect(
        Method::GET,
        &format!("/v1/routing-table?network={b}"),
        None,
        200,
    );
    assert_eq!(table.as_array().map(Vec::len), Some(1), "{table}");
    // Routes are deleted like any resource.
    server.expect(Method::DELETE, &format!("/v1/routes/{r}"), None, 204);
    server.expect(Method::GET, &format!("/v1/routes/{r}"), None, 404);
}

#[test]
fn vswitchctl_routes_neighbors_and_tables() {
    let server = Server::start();
    let t = unique("q");
    let (a, b, sa, r) = (
        format!("{t}a"),
        format!("{t}b"),
        format!("{t}sa"),
        format!("{t}r"),
    );
    server.expect(
        Method::POST,
        "/v1/apply",
        Some(&peered_networks(&t, true)),
        200,
    );

    let (out, _) = server.ctl_code(&["get", "routes"], 0);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "NETWORK", "DESTINATION", "NEXTHOP", "STATE"]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        row,
        [
            r.as_str(),
            a.as_str(),
            "192.168.78.0/24",
            "10.78.1.254",
            "Ready"
        ]
    );

    let (out, _) = server.ctl_code(&["get", "networks"], 0);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SUBNETS", "PEERINGS", "UPLINK"]);
    let row: Vec<&str> = out
        .lines()
        .find(|line| line.starts_with(&format!("{a} ")))
        .unwrap_or_else(|| panic!("{a} not in:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, [a.as_str(), sa.as_str(), &format!("{b}:Ready"), "NAT"]);

    let (out, _) = server.ctl_code(&["routes", "--network", &a], 0);
    let table: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table,
        [
            vec!["NETWORK", "DESTINATION", "NEXTHOP", "SUBNET", "ORIGIN"],
            vec![
                a.as_str(),
                "10.78.1.0/24",
                "direct",
                sa.as_str(),
                "connected"
            ],
            vec![
                a.as_str(),
                "10.78.2.0/24",
                "direct",
                &format!("{t}sb"),
                &format!("peering:{b}")
            ],
            vec![
                a.as_str(),
                "192.168.78.0/24",
                "10.78.1.254",
                sa.as_str(),
                &format!("static:{r}")
            ],
        ]
    );
    let (out, _) = server.ctl_code(&["routes"], 0);
    assert!(
        out.lines().any(|l| l.starts_with(&format!("{b} "))),
        "{out}"
    );
    let (out, _) = server.ctl_code(&["routes", "-n", &b, "-o", "json"], 0);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(value.as_array().map(Vec::len), Some(2), "{value}");
    let (out, _) = server.ctl_code(&["routes", "-n", &b, "-o", "yaml"], 0);
    assert!(out.contains(&format!("origin: peering:{a}")), "{out}");
    // Counted, not listed: by origin in JSON, the total alone in a table.
    let (out, _) = server.ctl_code(&["routes", "-n", &a, "--count", "-o", "json"], 0);
    let counts: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(counts["static"], 1, "{counts}");
    assert_eq!(counts["peering"], 1, "{counts}");
    assert_eq!(
        counts["count"].as_u64(),
        Some(counts["connected"].as_u64().unwrap_or(0) + 2),
        "{counts}"
    );
    let (out, _) = server.ctl_code(&["routes", "-n", &b, "--count"], 0);
    assert_eq!(out.trim(), "2");
    let (_, err) = server.ctl_code(&["routes", "--network", "nope", "--count"], 1);
    assert!(err.contains("Network \"nope\" not found"), "{err}");
    let (_, err) = server.ctl_code(&["routes", "--network", "nope"], 1);
    assert!(
        err.starts_with("vswitchctl: Network \"nope\" not found"),
        "{err}"
    );
    assert!(err.contains("try: vswitchctl get networks"), "{err}");

    let (out, err) = server.ctl_code(&["neighbors"], 0);
    assert!(
        out.starts_with("SUBNET   IP") || (out.is_empty() && err == "no neighbors\n"),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    let (out, _) = server.ctl_code(&["neighbors", "-o", "json"], 0);
    let value: Value = serde_json::from_str(&out).expect("JSON");
    assert!(value.is_array(), "{value}");

    let (out, _) = server.ctl_code(&["describe", "network", &a], 0);
    assert!(
        out.contains(&format!(
            "Peerings:\n  NAME   NETWORK{}STATE",
            " ".repeat(b.len() - 4)
        )),
        "{out}"
    );
    assert!(out.contains(&format!("  to-b   {b}   Ready")), "{out}");
    assert!(
        out.contains("Routes:\n  DESTINATION       NEXTHOP"),
        "{out}"
    );
    assert!(out.contains(&format!("static:{r}")), "{out}");

    // YAML of routes is re-appliable.
    let (out, _) = server.ctl_code(&["get", "routes", "-o", "yaml"], 0);
    let (applied, _) = check_code(
        &["apply", "-f", "-"],
        server.ctl_with_stdin(&["apply", "-f", "-"], &out),
        0,
    );
    assert_eq!(applied, format!("route/{r} unchanged\n"));
    let (out, _) = server.ctl_code(&["delete", "route", &r], 0);
    assert_eq!(out, format!("route/{r} deleted\n"));
}

/// A namespace with a unique name, deleted on drop.
struct TestNetns(String);

impl TestNetns {
    fn new() -> TestNetns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to create network namespaces"
        );
        let name = unique("ns");
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("`ip` is needed (iproute2)");
        assert!(status.success(), "ip netns add {name} failed");
        TestNetns(name)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[ignore = "needs root: creates a network namespace and a TAP port"]
fn vswitchctl_attach_and_detach() {
    let server = Server::start();
    let netns = TestNetns::new();
    let subnet = unique("s");
    let yaml = network_and_subnet(&unique("n"), &subnet, "10.77.5.0/24", "10.77.5.1");
    server.expect(Method::POST, "/v1/apply", Some(&yaml), 200);

    let (out, _) = server.ctl_code(
        &[
            "attach",
            &netns.0,
            "--subnet",
            &subnet,
            "--ip",
            "10.77.5.9/24",
            "--label",
            "app=web",
        ],
        0,
    );
    assert!(
        out.starts_with(&format!("networkinterface/{} attached: mac ", netns.0))
            && out.contains(", ips 10.77.5.9/24"),
        "{out}"
    );
    let (out, _) = server.ctl_code(&["get", "networkinterfaces"], 0);
    let header: Vec<&str> = out
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "NETNS", "KIND", "IFNAME", "MAC", "IPS", "STATE"]
    );
    let row: Vec<&str> = out
        .lines()
        .find(|line| line.starts_with(&format!("{} ", netns.0)))
        .unwrap_or_else(|| panic!("{} not in:\n{out}", netns.0))
        .split_whitespace()
        .collect();
    assert_eq!(row[1..4], [netns.0.as_str(), "tap", "eth0"], "{out}");
    assert_eq!(row[5], "10.77.5.9/24", "{out}");

    let (_, err) = server.ctl_code(&["attach", &netns.0, "--subnet", &subnet], 1);
    assert!(err.contains(&netns.0), "{err}");
    assert!(err.contains("(field: metadata.name)"), "{err}");
    assert!(
        err.contains(&format!(
            "try: --name NAME to choose another name, or vswitchctl detach {} first",
            netns.0
        )),
        "{err}"
    );

    let (out, _) = server.ctl_code(&["detach", &netns.0], 0);
    assert_eq!(out, format!("networkinterface/{} detached\n", netns.0));
    server.ctl_code(&["get", "networkinterface", &netns.0], 1);
}

/// A veth pair in vswitchd's (this process's) namespace with unique names, both ends up;
/// deleted on drop. The first end serves as an uplink.
struct TestVeth(String, String);

impl TestVeth {
    fn new() -> TestVeth {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to create a veth pair for the uplink"
        );
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "vsu{}{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        let run = |args: &[&str]| {
            let status = Command::new("ip")
                .args(args)
                .status()
                .expect("`ip` is needed (iproute2)");
            assert!(status.success(), "ip {} failed", args.join(" "));
        };
        run(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        let veth = TestVeth(a, b);
        run(&["link", "set", &veth.0, "up"]);
        run(&["link", "set", &veth.1, "up"]);
        veth
    }

    /// `ip -d link show` of the uplink end.
    fn details(&self) -> String {
        let out = Command::new("ip")
            .args(["-d", "link", "show", &self.0])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn resource(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: vswitch/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec: {spec}\n"
    )
}

/// The NAT control plane end to end: an Uplink on a real interface, NATGateway,
/// PortForward and VirtualIP over HTTP and through vswitchctl, the conntrack and NAT
/// views, refusals, and deletes that close the uplink.
#[test]
#[ignore = "needs root: creates a veth uplink, a namespace and AF_PACKET sockets"]
fn uplink_nat_and_conntrack_over_http_and_vswitchctl() {
    let server = Server::start();
    let veth = TestVeth::new();
    let netns = TestNetns::new();
    let (network, subnet, nic) = (unique("n"), unique("s"), unique("c"));
    let base = format!(
        "{}{}",
        network_and_subnet(&network, &subnet, "10.77.9.0/24", "10.77.9.1"),
        resource(
            "NetworkInterface",
            &nic,
            &format!("{{subnet: {subnet}, netns: {}, ips: [10.77.9.5]}}", netns.0)
        )
    );
    server.expect(Method::POST, "/v1/apply", Some(&base), 200);

    // An interface that does not exist is refused; nothing changes.
    let uplink = |ifname: &str| {
        resource(
            "Uplink",
            "wan",
            &format!(
                "{{interface: {ifname}, addresses: [192.0.2.10/24, 192.0.2.11, 192.0.2.12], gateway: 192.0.2.1}}"
            ),
        )
    };
    let missing = format!("{}x", veth.1);
    let body = server.expect(Method::POST, "/v1/apply", Some(&uplink(&missing)), 400);
    let (message, field) = error_of(&body);
    assert_eq!(field, "documents[0].spec.interface");
    assert!(
        message.contains(&format!(
            "interface {missing} does not exist in vswitchd's network namespace"
        )),
        "{message}"
    );
    assert_eq!(
        server.expect(Method::GET, "/v1/uplinks", None, 200),
        json!([])
    );
    // Neither may it overlap a Subnet.
    let overlapping = uplink(&veth.0).replace("192.0.2.10/24", "10.77.9.200/24");
    let body = server.expect(Method::POST, "/v1/apply", Some(&overlapping), 400);
    assert!(
        error_of(&body)
            .0
            .contains(&format!("overlaps Subnet \"{subnet}\"")),
        "{body}"
    );

    // The real one: opened, with a derived MAC and the interface's MTU.
    let applied = server.expect(Method::POST, "/v1/apply", Some(&uplink(&veth.0)), 200);
    assert_eq!(
        applied,
        json!([{"kind": "Uplink", "name": "wan", "action": "created"}])
    );
    let wan = server.expect(Method::GET, "/v1/uplink/wan", None, 200);
    assert_eq!(wan["status"]["state"], "Up", "{wan}");
    assert_eq!(wan["status"]["mtu"], 1500, "{wan}");
    let mac = wan["status"]["mac"].as_str().expect("a MAC").to_string();
    assert!(!veth.details().contains(&mac), "the host keeps its own MAC");
    assert_eq!(
        wan["spec"]["addresses"],
        json!(["192.0.2.10/24", "192.0.2.11", "192.0.2.12"])
    );

    let nat = format!(
        "{}{}{}{}",
        resource(
            "NATGateway",
            "gw",
            &format!("{{network: {network}, ips: [192.0.2.10]}}")
        ),
        resource(
            "PortForward",
            "web",
            &format!(
                "{{ip: 192.0.2.10, protocol: tcp, port: 8080, target: {{interface: {nic}, port: 80}}}}"
            )
        ),
        resource("VirtualIP", "pub", "{type: Public}"),
        resource(
            "NetworkInterface",
            &nic,
            &format!(
                "{{subnet: {subnet}, netns: {}, ips: [10.77.9.5], virtualIP: pub}}",
                netns.0
            )
        ),
    );
    let applied = server.expect(Method::POST, "/v1/apply", Some(&nat), 200);
    let actions: Vec<&str> = applied
        .as_array()
        .expect("a list")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(actions, ["created", "created", "created", "configured"]);
    let gw = server.expect(Method::GET, "/v1/natgw/gw", None, 200);
    assert_eq!(gw["spec"]["portsPerNetworkInterface"], 2048);
    assert_eq!(
        gw["status"],
        json!({"ips": ["192.0.2.10"], "portsInUse": []})
    );
    let web = server.expect(Method::GET, "/v1/portforwards/web", None, 200);
    assert_eq!(
        web["status"],
        json!({"state": "Ready", "destination": "10.77.9.5:80"})
    );
    let vip = server.expect(Method::GET, "/v1/VirtualIPs/pub", None, 200);
    assert_eq!(vip["status"], json!({"ip": "192.0.2.11", "interface": nic}));

    // Refusals name the document, field and what is valid.
    let body = server.expect(
        Method::POST,
        "/v1/apply",
        Some(&resource(
            "VirtualIP",
            "dup",
            "{type: Public, ip: 192.0.2.10}",
        )),
        409,
    );
    let (message, field) = error_of(&body);
    assert_eq!(field, "documents[0].spec.ip");
    assert!(
        message.contains("192.0.2.10 is already used by NATGateway \"gw\""),
        "{message}"
    );
    let body = server.expect(
            Method::POST,
            "/v1/apply",
            Some(&resource(
                "PortForward",
                "bad",
                &format!("{{ip: 203.0.113.1, protocol: udp, port: 53, target: {{interface: {nic}, port: 53}}}}"),
            )),
            400,
        );
    assert!(
        error_of(&body)
            .0
            .contains("203.0.113.1 is not an address of Uplink \"wan\""),
        "{body}"
    );

    // Conntrack: empty, counted, filtered, flushed.
    assert_eq!(
        server.expect(Method::GET, "/v1/conntrack", None, 200),
        json!([])
    );
    assert_eq!(
        server.expect(Method::GET, "/v1/conntrack?count=true", None, 200),
        json!({"count": 0})
    );
    assert_eq!(
        server.expect(
            Method::GET,
            &format!("/v1/conntrack?network={network}&count=true"),
            None,
            200
        ),
        json!({"count": 0})
    );
    assert_eq!(
        server.expect(Method::DELETE, "/v1/conntrack", None, 200),
        json!({"flushed": 0})
    );
    let body = server.expect(Method::GET, "/v1/conntrack?network=nope", None, 404);
    assert_eq!(error_of(&body).0, "Network \"nope\" not found");
    server.expect(Method::DELETE, "/v1/conntrack?network=nope", None, 404);
    let body = server.expect(Method::GET, "/v1/conntrack?zone=1", None, 400);
    assert!(error_of(&body).0.starts_with("invalid query: "), "{body}");
    server.expect(Method::DELETE, "/v1/conntrack?count=true", None, 400);
    server.expect(Method::POST, "/v1/conntrack", Some("x"), 405);

    // The NAT summary.
    let report = server.expect(Method::GET, "/v1/nat", None, 200);
    assert_eq!(report["uplink"]["name"], "wan");
    assert_eq!(report["uplink"]["interface"], veth.0.as_str());
    assert_eq!(report["uplink"]["mac"], mac.as_str());
    assert_eq!(
        report["addresses"],
        json!([
            {"ip": "192.0.2.10", "usedBy": ["NATGateway/gw", "PortForward/web"]},
            {"ip": "192.0.2.11", "usedBy": ["VirtualIP/pub"]},
            {"ip": "192.0.2.12", "usedBy": []},
        ])
    );
    assert_eq!(report["portsInUse"], json!([]));
    assert_eq!(report["conntrack"]["entries"], 0);
    assert_eq!(report["conntrack"]["maxEntries"], 1_000_000);
    let drops = report["drops"].as_object().expect("drops");
    assert!(
        drops.keys().all(|k| k.starts_with("nat.")
            || k.starts_with("conntrack.")
            || k.starts_with("uplink.")),
        "{report}"
    );

    // vswitchctl: tables, describe, conntrack and nat.
    let header = |out: &str| -> Vec<String> {
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (out, _) = server.ctl_code(&["get", "uplinks"], 0);
    assert_eq!(
        header(&out),
        [
            "NAME",
            "INTERFACE",
            "ADDRESSES",
            "GATEWAY",
            "MAC",
            "INBOUND",
            "STATE"
        ]
    );
    // Cells, not padding: the interface name's length (it holds the pid) sets the width.
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let mac_text = mac.to_string();
    assert_eq!(
        row,
        [
            "wan",
            veth.0.as_str(),
            "192.0.2.10/24,192.0.2.11,192.0.2.12",
            "192.0.2.1",
            mac_text.as_str(),
            "Accept",
            "Up"
        ],
        "{out}"
    );
    let (out, _) = server.ctl_code(&["get", "natgw"], 0);
    assert_eq!(
        out,
        format!(
            "NAME   NETWORK{pad}   IPS          PORTS/INTERFACE   PORTS-IN-USE\ngw     {network}   192.0.2.10   2048              0\n",
            pad = " ".repeat(network.len() - "NETWORK".len())
        )
    );
    let (out, _) = server.ctl_code(&["get", "pf"], 0);
    assert_eq!(
        header(&out),
        ["NAME", "IP", "PROTOCOL", "PORT", "TARGET", "STATE"]
    );
    assert!(
        out.lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .eq([
                "web",
                "192.0.2.10",
                "tcp",
                "8080",
                &format!("{nic}:80"),
                "Ready"
            ]),
        "{out}"
    );
    let (out, _) = server.ctl_code(&["get", "vips"], 0);
    assert!(
        out.lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .eq(["pub", "Public", "IPv4", "192.0.2.11", nic.as_str()]),
        "{out}"
    );
    let (out, _) = server.ctl_code(&["describe", "NATGateway", "gw"], 0);
    assert!(
        out.starts_with("Name:         gw\nKind:         NATGateway\n"),
        "{out}"
    );
    assert!(out.ends_with("Ports in use:  <none>\n"), "{out}");
    let (out, _) = server.ctl_code(&["get", "uplink", "wan", "-o", "yaml"], 0);
    // The YAML applies again, unchanged.
    let (applied, _) = check_code(
        &["apply", "-f", "-"],
        server.ctl_with_stdin(&["apply", "-f", "-"], &out),
        0,
    );
    assert_eq!(applied, "uplink/wan unchanged\n");

    let (out, err) = server.ctl_code(&["conntrack"], 0);
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("", "no tracked connections\n")
    );
    let (out, _) = server.ctl_code(&["conntrack", "--network", &network, "--count"], 0);
    assert_eq!(out, "0\n");
    let (out, _) = server.ctl_code(&["conntrack", "--count", "-o", "json"], 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).ok(),
        Some(json!({"count": 0}))
    );
    let (out, _) = server.ctl_code(&["conntrack", "-o", "json"], 0);
    assert_eq!(out, "[]\n");
    let (out, _) = server.ctl_code(&["conntrack", "--flush"], 0);
    assert_eq!(out, "flushed 0 connections\n");
    let (_, err) = server.ctl_code(&["conntrack", "--network", "nope"], 1);
    assert!(
        err.starts_with("vswitchctl: Network \"nope\" not found")
            && err.contains("try: vswitchctl get networks"),
        "{err}"
    );
    server.ctl_code(&["conntrack", "--count", "--flush"], 2);
    let (out, _) = server.ctl_code(&["nat"], 0);
    assert!(
            out.starts_with(&format!(
                "uplink: wan (interface {}, mac {mac}, gateway 192.0.2.1): Up\n\nADDRESS      USED-BY\n192.0.2.10   NATGateway/gw,PortForward/web\n192.0.2.11   VirtualIP/pub\n192.0.2.12   -\n\nports in use:\nno ports in use\n\nconntrack: 0 entries (limit 1000000), ",
                veth.0
            )),
            "{out}"
        );
    let (out, _) = server.ctl_code(&["nat", "-o", "json"], 0);
    let parsed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(parsed, server.expect(Method::GET, "/v1/nat", None, 200));

    // Deletes: dependants first; deleting the Uplink closes it and leaves the interface.
    let (_, err) = server.ctl_code(&["delete", "uplink", "wan"], 1);
    assert!(
        err.contains("Uplink \"wan\" still has NATGateways: gw; delete them first"),
        "{err}"
    );
    let (_, err) = server.ctl_code(&["delete", "vip", "pub"], 1);
    assert!(
        err.contains(&format!("NetworkInterfaces using it: {nic}")),
        "{err}"
    );
    server.ctl_code(&["delete", "pf", "web"], 0);
    server.ctl_code(&["delete", "natgw", "gw"], 0);
    server.ctl_code(&["delete", "networkinterface", &nic], 0);
    let (out, _) = server.ctl_code(&["delete", "virtualip", "pub"], 0);
    assert_eq!(out, "virtualip/pub deleted\n");
    let (out, _) = server.ctl_code(&["delete", "uplinks", "wan"], 0);
    assert_eq!(out, "uplink/wan deleted\n");
    assert_eq!(
        server.expect(Method::GET, "/v1/uplinks", None, 200),
        json!([])
    );
    assert!(veth.details().contains(&veth.0), "the host interface stays");
    // The sockets are closed: the interface leaves promiscuous mode if it entered it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !veth.details().contains("promiscuity 0 ") {
        assert!(
            std::time::Instant::now() < deadline,
            "the uplink's sockets were not closed:\n{}",
            veth.details()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = server.expect(Method::GET, "/v1/nat", None, 200);
    assert_eq!(report["uplink"], Value::Null);
    assert_eq!(report["addresses"], json!([]));
}
