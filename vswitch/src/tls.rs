//! TLS for the overlay hub's registration API: certificate fingerprints, PEM files, the
//! hub's server configuration (from files, or a self-signed certificate generated once and
//! kept in the state directory) and a runner's client configuration (trusting a CA file, or
//! pinning the hub certificate's SHA-256 fingerprint).
//!
//! Invariants:
//! - TLS 1.3 only, on rustls with the ring provider: both ends are vswitchd (or a client the
//!   operator builds, which any current TLS stack serves), so there is no older peer to
//!   accommodate.
//! - A fingerprint is the SHA-256 of the end-entity certificate's DER, written as 32
//!   upper-case hex pairs joined by `:`, as `openssl x509 -fingerprint -sha256` prints it.
//! - A pinned fingerprint replaces name and CA checks, never the handshake signature check:
//!   the server must prove it holds the certificate's key.
//! - Nothing here depends on the control plane; validation and the agent both call it.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// File name of a generated hub certificate inside its directory.
pub const GENERATED_CERTIFICATE: &str = "certificate.pem";
/// File name of a generated hub key inside its directory (mode 0600).
pub const GENERATED_KEY: &str = "key.pem";

/// The crypto provider of every TLS configuration here: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 fingerprint of a certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(certificate: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// Parses 64 hex digits, in pairs separated by `:` or not at all, in either case; an
    /// optional `sha256:` (or `SHA256 Fingerprint=`, as openssl prints it) prefix is allowed.
    ///
    /// # Errors
    /// A message saying what a fingerprint looks like.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let body = ["sha256 fingerprint=", "sha256:"]
            .iter()
            .find_map(|prefix| lower.strip_prefix(prefix))
            .unwrap_or(&lower);
        let bad = || {
            format!(
                "{text:?} is not a SHA-256 fingerprint: write 32 hex pairs, e.g. AB:CD:...:EF \
                 (as `openssl x509 -noout -fingerprint -sha256` or the hub's `vswitchctl \
                 overlay` prints it)"
            )
        };
        let digits: String = if body.contains(':') {
            let pairs: Vec<&str> = body.split(':').collect();
            if pairs.len() != 32 || pairs.iter().any(|pair| pair.len() != 2) {
                return Err(bad());
            }
            pairs.concat()
        } else {
            body.to_owned()
        };
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            let pair = digits.get(index * 2..index * 2 + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, byte) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The certificates of a PEM file, in order (the end-entity certificate first).
///
/// # Errors
/// A message naming the file: unreadable, not PEM, or without a certificate.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text =
        fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{} is not valid PEM: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A message naming the file: unreadable, or without a private key.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text =
        fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| {
        format!(
            "{} holds no usable private key (expected -----BEGIN PRIVATE KEY-----): {error}",
            path.display()
        )
    })
}

/// The TLS client configuration of a hub towards etcd: etcd's certificate must chain to
/// the CAs of `ca` (and carry the endpoint's host name or address), and with `identity`
/// (certificate chain, key) the hub presents a client certificate.
///
/// # Errors
/// The field (`caFile`, `certificateFile`, `keyFile`) whose file cannot be used, and why.
pub fn etcd_client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(ca).map_err(|error| ("caFile", error))? {
        roots.add(certificate).map_err(|error| {
            (
                "caFile",
                format!("{} holds an unusable certificate: {error}", ca.display()),
            )
        })?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| ("caFile", error.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((certificate, key)) => {
            let chain =
                read_certificates(certificate).map_err(|error| ("certificateFile", error))?;
            let key = read_private_key(key).map_err(|error| ("keyFile", error))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| ("keyFile", format!("does not fit the certificate: {error}")))?
        }
    };
    Ok(Arc::new(config))
}

/// A hub's TLS server configuration from a certificate chain and its key.
///
/// # Errors
/// A message when the key does not fit the certificate or is of an unsupported type.
pub fn server_config(
    certificates: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, String> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| format!("the key does not fit the certificate: {error}"))
}

/// The TLS identity a hub serves, and how it got it.
#[derive(Debug, Clone)]
pub struct HubIdentity {
    /// The server configuration.
    pub config: Arc<ServerConfig>,
    /// The end-entity certificate's fingerprint, for runners to pin.
    pub fingerprint: Fingerprint,
    /// The certificate file it came from.
    pub certificate_file: PathBuf,
    /// Whether the hub generated it (self-signed).
    pub generated: bool,
}

/// Loads the hub identity from configured PEM files.
///
/// # Errors
/// A message naming the file and the problem.
pub fn hub_identity_from_files(certificate: &Path, key: &Path) -> Result<HubIdentity, String> {
    let certificates = read_certificates(certificate)?;
    let fingerprint = Fingerprint::of(&certificates[0]);
    let key = read_private_key(key)?;
    let config = server_config(certificates, key)?;
    Ok(HubIdentity {
        config: Arc::new(config),
        fingerprint,
        certificate_file: certificate.to_path_buf(),
        generated: false,
    })
}

/// The hub's self-signed identity in `directory`: loaded when it exists, else generated once
/// (an ECDSA P-256 key, the certificate naming `address` and `vswitch-hub`) and written
/// there, the key with mode 0600, so a restarted hub keeps its fingerprint.
///
/// # Errors
/// A message when the directory or files cannot be written or read.
pub fn hub_identity_generated(directory: &Path, address: IpAddr) -> Result<HubIdentity, String> {
    let certificate = directory.join(GENERATED_CERTIFICATE);
    let key = directory.join(GENERATED_KEY);
    if !certificate.exists() || !key.exists() {
        let generated =
            rcgen::generate_simple_self_signed(vec![address.to_string(), "vswitch-hub".into()])
                .map_err(|error| format!("cannot generate a certificate: {error}"))?;
        fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        // The key first: a certificate without its key would be taken as complete.
        write_file(&key, generated.key_pair.serialize_pem().as_bytes(), 0o600)?;
        write_file(&certificate, generated.cert.pem().as_bytes(), 0o644)?;
        tracing::info!(
            certificate = %certificate.display(),
            "generated a self-signed certificate for the hub's registration API"
        );
    }
    let mut identity = hub_identity_from_files(&certificate, &key)?;
    identity.generated = true;
    Ok(identity)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let written = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    written.map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// How a runner trusts its hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTrust {
    /// The hub's certificate must chain to a certificate of this PEM file and name
    /// `server_name` (the hub's address when `None`).
    Ca {
        /// The CA file.
        file: PathBuf,
        /// The name the certificate must carry.
        server_name: Option<String>,
    },
    /// The hub's certificate must have this fingerprint.
    Pinned(Fingerprint),
}

/// A runner's TLS client configuration and the name it asks the hub for.
///
/// # Errors
/// A message when the CA file cannot be used or the server name is invalid.
pub fn client_config(
    trust: &HubTrust,
    hub: IpAddr,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| error.to_string())?;
    match trust {
        HubTrust::Ca { file, server_name } => {
            let mut roots = RootCertStore::empty();
            for certificate in read_certificates(file)? {
                roots.add(certificate).map_err(|error| {
                    format!("{} holds an unusable certificate: {error}", file.display())
                })?;
            }
            let name = match server_name {
                Some(name) => ServerName::try_from(name.clone())
                    .map_err(|error| format!("{name:?} is not a server name: {error}"))?,
                None => ServerName::IpAddress(hub.into()),
            };
            let config = builder.with_root_certificates(roots).with_no_client_auth();
            Ok((Arc::new(config), name))
        }
        HubTrust::Pinned(fingerprint) => {
            let verifier = PinnedVerifier {
                fingerprint: *fingerprint,
                algorithms: provider().signature_verification_algorithms,
            };
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok((Arc::new(config), ServerName::IpAddress(hub.into())))
        }
    }
}

/// Why a pinned hub certificate was refused (inside a rustls certificate error).
#[derive(Debug)]
struct FingerprintMismatch {
    presented: Fingerprint,
    pinned: Fingerprint,
}

impl fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its certificate's SHA-256 fingerprint is {}, but spec.hub.tls.fingerprint is {}",
            self.presented, self.pinned
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// Accepts exactly the certificate with the pinned fingerprint (whatever its names, issuer
/// or dates: the operator vouched for that certificate itself), and checks the handshake
/// signatures against it like any verifier.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        if presented == self.fingerprint {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch {
                presented,
                pinned: self.fingerprint,
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_usual_forms() {
        let fingerprint = Fingerprint::of(b"certificate");
        let text = fingerprint.to_string();
        assert_eq!(text.len(), 95, "{text}");
        assert_eq!(Fingerprint::parse(&text), Ok(fingerprint));
        assert_eq!(
            Fingerprint::parse(&text.to_ascii_lowercase()),
            Ok(fingerprint)
        );
        assert_eq!(Fingerprint::parse(&text.replace(':', "")), Ok(fingerprint));
        assert_eq!(
            Fingerprint::parse(&format!("sha256:{}", text.replace(':', ""))),
            Ok(fingerprint)
        );
        assert_eq!(
            Fingerprint::parse(&format!("SHA256 Fingerprint={text}")),
            Ok(fingerprint)
        );
        for bad in ["", "AB:CD", &text[3..], &text.replace('A', "G"), "é"] {
            let error = Fingerprint::parse(bad).expect_err(bad);
            assert!(error.contains("32 hex pairs"), "{error}");
        }
    }

    #[test]
    fn a_generated_identity_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let address = IpAddr::from([192, 0, 2, 1]);
        let first = hub_identity_generated(dir.path(), address).expect("generated");
        assert!(first.generated);
        let again = hub_identity_generated(dir.path(), address).expect("loaded");
        assert_eq!(first.fingerprint, again.fingerprint);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(GENERATED_KEY))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        assert!(
            read_certificates(&missing)
                .expect_err("missing")
                .contains("cannot read")
        );
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not pem\n").expect("write");
        assert!(
            read_certificates(&empty)
                .expect_err("empty")
                .contains("no certificate")
        );
        assert!(
            read_private_key(&empty)
                .expect_err("no key")
                .contains("no usable private key")
        );
        // A key that is not the certificate's.
        let one = hub_identity_generated(&dir.path().join("one"), IpAddr::from([192, 0, 2, 1]))
            .expect("one");
        let two = hub_identity_generated(&dir.path().join("two"), IpAddr::from([192, 0, 2, 1]))
            .expect("two");
        assert_ne!(one.fingerprint, two.fingerprint);
        let error = hub_identity_from_files(
            &dir.path().join("one").join(GENERATED_CERTIFICATE),
            &dir.path().join("two").join(GENERATED_KEY),
        )
        .expect_err("mismatched key");
        assert!(error.contains("does not fit"), "{error}");
    }
}
