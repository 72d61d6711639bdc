//! `vswitch::etcd` against a real etcd (Debian's `etcd-server`, 3.4) on loopback: ranges,
//! compare-and-swap transactions, leases, watches (with a compaction), endpoint failover,
//! and TLS with client certificates.
//!
//! Run by `scripts/test.sh` (which installs etcd); they fail, saying so, without it.

#![allow(missing_docs)]
#![allow(clippy::tests_outside_test_module)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vswitch::etcd::{Compare, EtcdClient, EtcdError, Event, Op, WatchMessage};

/// One etcd member on loopback with a temporary data directory; killed when dropped.
struct LocalEtcd {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

impl LocalEtcd {
    /// Starts etcd; `tls` is (server certificate, key, client CA) for https with client
    /// certificates.
    fn start(dir: tempfile::TempDir, tls: Option<(&Path, &Path, &Path)>) -> LocalEtcd {
        let (client_port, peer_port) = (free_port(), free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let mut command = Command::new("etcd");
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--log-level", "warn", "--logger", "zap"]);
        if let Some((certificate, key, ca)) = tls {
            command
                .arg("--cert-file")
                .arg(certificate)
                .arg("--key-file")
                .arg(key)
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd: {e} (scripts/test.sh installs it: apt-get install etcd-server)")
            });
        let etcd = LocalEtcd {
            child,
            endpoint: client,
            dir,
        };
        // Up when the client port accepts connections.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen within 30 s:\n{}",
                etcd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Calls `call` until it succeeds (etcd answers a moment after it listens).
async fn eventually<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EtcdError>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("{what}: {error}"),
        }
    }
}

#[test]
#[ignore = "needs etcd (scripts/test.sh installs etcd-server)"]
fn keys_transactions_leases_and_watches() {
    let etcd = LocalEtcd::start(tempfile::tempdir().expect("tempdir"), None);
    // A dead endpoint first: calls go on to the live one.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let client = EtcdClient::new(&[dead, etcd.endpoint.clone()], None).expect("client");
    runtime().block_on(async {
        let first = eventually("the first put", || client.put(b"/t/a", b"1", 0)).await;
        assert!(first > 0);
        let found = client.get(b"/t/a").await.expect("get");
        assert_eq!(found.map(|kv| kv.value), Some(b"1".to_vec()));
        assert_eq!(client.get(b"/t/none").await.expect("get"), None);

        // Create-only: once.
        let create = |value: &'static [u8]| {
            let client = client.clone();
            async move {
                client
                    .txn(
                        &[Compare::Absent(b"/t/id/1".to_vec())],
                        &[Op::Put {
                            key: b"/t/id/1".to_vec(),
                            value: value.to_vec(),
                            lease: 0,
                        }],
                        &[Op::Get(b"/t/id/1".to_vec())],
                    )
                    .await
                    .expect("txn")
            }
        };
        let won = create(b"hub-a").await;
        assert!(won.succeeded);
        let lost = create(b"hub-b").await;
        assert!(!lost.succeeded, "a second create fails");
        assert_eq!(
            lost.found[0].as_ref().map(|kv| kv.value.clone()),
            Some(b"hub-a".to_vec()),
            "and reads who holds it"
        );
        let swap = client
            .txn(
                &[Compare::ValueIs(b"/t/id/1".to_vec(), b"hub-a".to_vec())],
                &[Op::Delete(b"/t/id/1".to_vec())],
                &[],
            )
            .await
            .expect("txn");
        assert!(swap.succeeded, "value compare holds");
        let (revision, kvs) = client.range_prefix(b"/t/").await.expect("range");
        assert_eq!(kvs.len(), 1, "only /t/a left: {kvs:?}");
        assert!(revision >= swap.revision);

        // A watch from the next revision sees a put and a delete.
        let mut watch = client
            .watch_prefix(b"/t/", revision + 1)
            .await
            .expect("watch");
        client.put(b"/t/b", b"2", 0).await.expect("put");
        client.delete_prefix(b"/t/b").await.expect("delete");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match tokio::time::timeout(Duration::from_secs(5), watch.next())
                .await
                .expect("events within 5 s")
                .expect("watch")
            {
                WatchMessage::Events { events, .. } => seen.extend(events),
                WatchMessage::Compacted { .. } => panic!("not compacted"),
            }
        }
        assert!(matches!(&seen[0], Event::Put(kv) if kv.key == b"/t/b" && kv.value == b"2"));
        assert!(matches!(&seen[1], Event::Delete(kv) if kv.key == b"/t/b"));

        // Leases: keys go with them.
        let lease = client.grant(2).await.expect("grant");
        client.put(b"/t/live", b"x", lease).await.expect("put");
        assert_eq!(client.keep_alive(lease).await.expect("renew"), Some(2));
        client.revoke(lease).await.expect("revoke");
        assert_eq!(client.get(b"/t/live").await.expect("get"), None);
        assert_eq!(
            client.keep_alive(lease).await.expect("renew"),
            None,
            "a revoked lease is gone"
        );
        match client.put(b"/t/x", b"y", lease).await {
            Err(EtcdError::Refused { code, .. }) => {
                assert_eq!(code, vswitch::etcd::CODE_NOT_FOUND);
            }
            other => panic!("a put under a gone lease is refused: {other:?}"),
        }
        let short = client.grant(1).await.expect("grant");
        client.put(b"/t/short", b"x", short).await.expect("put");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(client.get(b"/t/short").await.expect("get"), None, "expired");

        // A watch from a compacted revision says so.
        let (now, _) = client.range_prefix(b"/t/").await.expect("range");
        let compact = serde_json::json!({ "revision": now.to_string() });
        let status = Command::new("curl")
            .args(["-sf", "-X", "POST"])
            .arg(format!("{}/v3/kv/compaction", etcd.endpoint))
            .args(["-d", &compact.to_string()])
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // Without curl: compact through etcdctl.
            let ok = Command::new("etcdctl")
                .args(["--endpoints", &etcd.endpoint, "compact", &now.to_string()])
                .env("ETCDCTL_API", "3")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot compact (needs curl or etcdctl)");
        }
        let mut old = client.watch_prefix(b"/t/", 1).await.expect("watch");
        match old.next().await.expect("message") {
            WatchMessage::Compacted { compact_revision } => assert_eq!(compact_revision, now),
            other => panic!("a compacted start revision is reported: {other:?}"),
        }
    });
    drop(etcd);
    // Nothing answers now: a clear error, not a hang.
    let error = runtime()
        .block_on(client.with_timeout(Duration::from_secs(2)).get(b"/t/a"))
        .expect_err("etcd is gone");
    assert!(
        matches!(&error, EtcdError::Unreachable(why) if why.contains("127.0.0.1")),
        "{error}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vswitch test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issue = |names: Vec<String>, usages: Vec<rcgen::ExtendedKeyUsagePurpose>, stem: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params.extended_key_usages = usages;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        let certificate = params.signed_by(&key, &ca, &ca_key).expect("sign");
        std::fs::write(dir.join(format!("{stem}.pem")), certificate.pem()).expect("write");
        std::fs::write(dir.join(format!("{stem}-key.pem")), key.serialize_pem()).expect("write");
    };
    // etcd 3.4's JSON gateway connects to etcd's own gRPC port with the server's
    // certificate as its client certificate: with --client-cert-auth that certificate
    // must allow client authentication too.
    issue(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ],
        "server",
    );
    issue(
        Vec::new(),
        vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        "client",
    );
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    (
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client-key.pem"),
    )
}

#[test]
#[ignore = "needs etcd (scripts/test.sh installs etcd-server)"]
fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, client_certificate, client_key) = certificates(dir.path());
    let server = dir.path().join("server.pem");
    let server_key = dir.path().join("server-key.pem");
    let etcd = LocalEtcd::start(dir, Some((&server, &server_key, &ca)));
    let config = vswitch::tls::etcd_client_config(&ca, Some((&client_certificate, &client_key)))
        .expect("client config");
    let client =
        EtcdClient::new(std::slice::from_ref(&etcd.endpoint), Some(config)).expect("client");
    runtime().block_on(async {
        eventually("a put over TLS", || client.put(b"/tls/a", b"1", 0)).await;
        let found = client.get(b"/tls/a").await.expect("get");
        assert_eq!(found.map(|kv| kv.value), Some(b"1".to_vec()));
    });
    // Without a client certificate etcd refuses the handshake.
    let anonymous = vswitch::tls::etcd_client_config(&ca, None).expect("config");
    let client = EtcdClient::new(std::slice::from_ref(&etcd.endpoint), Some(anonymous))
        .expect("client")
        .with_timeout(Duration::from_secs(3));
    let error = runtime()
        .block_on(client.get(b"/tls/a"))
        .expect_err("no client certificate");
    assert!(matches!(error, EtcdError::Unreachable(_)), "{error}");
    // A CA etcd's certificate does not chain to: refused, saying why.
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = certificates(other.path());
    let untrusting =
        vswitch::tls::etcd_client_config(&other_ca, Some((&client_certificate, &client_key)))
            .expect("config");
    let client = EtcdClient::new(std::slice::from_ref(&etcd.endpoint), Some(untrusting))
        .expect("client")
        .with_timeout(Duration::from_secs(3));
    let error = runtime()
        .block_on(client.get(b"/tls/a"))
        .expect_err("untrusted server");
    assert!(
        error.to_string().contains("TLS handshake failed"),
        "{error}"
    );
    // An https endpoint without TLS is refused when the client is made.
    let made = EtcdClient::new(std::slice::from_ref(&etcd.endpoint), None);
    assert!(made.is_err());
}
