//! The hub's agent: sets up the registration API's TLS (the configured certificate, or a
//! self-signed one generated once in the state directory; its fingerprint goes in the
//! Overlay's status), listens for runners on `localAddress:apiPort` ([`serve_hub`]) and
//! marks silent runners offline once a second ([`Controller::hub_sweep`]).
//!
//! The address may not be configured yet when the Overlay is applied (the underlay comes up
//! later): binding is retried with backoff, and the failure logged once per distinct error.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::store::EtcdStore;
use super::{controller_call, stopped};
use crate::api::hub::{HubServerConfig, serve_hub};
use crate::control::kinds::overlay::EtcdStoreSpec;
use crate::control::overlay_store::SharedStore;
use crate::control::{Controller, HubTlsConfig};

/// How often silent runners are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Pending connections the listener queues.
const LISTEN_BACKLOG: u32 = 128;

/// Binds the hub API's listener, with `SO_REUSEADDR` so a restarted agent can bind again
/// while old connections linger in TIME_WAIT.
///
/// # Errors
/// The socket, bind or listen error (e.g. the address is not on this node).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What serving plain HTTP means, for the status and the log.
pub const PLAINTEXT_WARNING: &str = "the registration API is plain HTTP (spec.tls.mode: \
    Disabled): runners' tokens and registrations cross the underlay in clear";

/// The TLS configuration the hub serves with (`None`: plain HTTP), loading or generating
/// its certificate, and reports it in the Overlay's status: the fingerprint, or why not.
///
/// # Errors
/// Why TLS cannot be set up (an unreadable file, say); also reported in the status.
async fn tls_config(
    controller: &Arc<Controller>,
    address: SocketAddr,
    tls: HubTlsConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let identity = tokio::task::spawn_blocking(move || match tls {
        HubTlsConfig::Disabled => Ok(None),
        HubTlsConfig::Files { certificate, key } => {
            crate::tls::hub_identity_from_files(&certificate, &key).map(Some)
        }
        HubTlsConfig::Generated { directory } => {
            crate::tls::hub_identity_generated(&directory, address.ip()).map(Some)
        }
    })
    .await
    .unwrap_or_else(|error| Err(format!("loading the certificate failed: {error}")));
    let (fingerprint, message, result) = match identity {
        Ok(None) => {
            tracing::warn!(%address, "{PLAINTEXT_WARNING}");
            (None, Some(PLAINTEXT_WARNING.to_owned()), Ok(None))
        }
        Ok(Some(identity)) => {
            tracing::info!(
                %address,
                fingerprint = %identity.fingerprint,
                certificate = %identity.certificate_file.display(),
                generated = identity.generated,
                "the hub's registration API serves TLS"
            );
            (
                Some(identity.fingerprint.to_string()),
                None,
                Ok(Some(identity.config)),
            )
        }
        Err(error) => {
            let message = format!("the registration API cannot serve TLS: {error}");
            (None, Some(message.clone()), Err(message))
        }
    };
    controller_call(controller, move |c| c.hub_api_status(fingerprint, message)).await;
    result
}

/// Runs the hub agent until `stop` says so.
pub(super) async fn run(
    controller: Arc<Controller>,
    address: SocketAddr,
    token: String,
    tls: HubTlsConfig,
    store: Option<EtcdStoreSpec>,
    mut stop: watch::Receiver<bool>,
) {
    // What an earlier agent knew of a store (another one, or none now) is forgotten.
    controller_call(&controller, Controller::hub_store_reset).await;
    // With a shared store, nothing is served until it is read: a registration answered
    // from a copy that is not the store's could give an ID another hub holds.
    let store = match &store {
        None => None,
        Some(spec) => {
            let me = address.ip().to_string();
            match super::store::open_until_ready(&controller, spec, me, address, &mut stop).await {
                Some(opened) => Some(opened),
                None => return,
            }
        }
    };
    let shared = store.as_ref().map(|(store, _)| Arc::clone(store));
    let follower = store.map(|(store, revision)| tokio::spawn(Arc::clone(&store).run(revision)));
    let _follower = AbortOnDrop(follower);
    let mut backoff = Backoff::new();
    // Without its TLS configuration the hub serves nothing (never plain HTTP instead); it
    // tries again with backoff, in case the files appear.
    let tls = loop {
        match tls_config(&controller, address, tls.clone()).await {
            Ok(tls) => break tls,
            Err(error) => {
                tracing::error!(%address, "{error}; retrying with backoff");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    backoff.reset();
    let mut last_error: Option<String> = None;
    loop {
        let listener = match bind(address) {
            Ok(listener) => listener,
            Err(error) => {
                let delay = backoff.next_delay();
                let text = error.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(
                        %address,
                        %error,
                        "the hub cannot listen for runners; retrying with backoff (is \
                         localAddress an address of this node?)"
                    );
                    last_error = Some(text);
                }
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if last_error.take().is_some() {
            tracing::info!(%address, "the hub listens for runners again");
        }
        backoff.reset();
        let mut server_stop = stop.clone();
        let server = serve_hub(
            Arc::clone(&controller),
            listener,
            HubServerConfig {
                token: token.clone(),
                tls: tls.clone(),
                store: shared.clone().map(|store| store as Arc<dyn SharedStore>),
            },
            async move { stopped(&mut server_stop).await },
        );
        let result = tokio::select! {
            result = server => result,
            never = sweep(&controller, shared.as_ref()) => match never {},
        };
        if *stop.borrow() {
            if let Some(store) = &shared {
                store.close().await;
            }
            return;
        }
        // The server ended without being asked to: log, wait, and listen again.
        let delay = backoff.next_delay();
        match result {
            Ok(()) => tracing::warn!(%address, "the hub API stopped; restarting it"),
            Err(error) => {
                tracing::error!(%address, %error, "the hub API failed; restarting it");
            }
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Calls [`Controller::hub_sweep`] every [`SWEEP_INTERVAL`], forever; with a shared store,
/// the runners gone silent here are said to be served by no hub.
async fn sweep(
    controller: &Arc<Controller>,
    store: Option<&Arc<EtcdStore>>,
) -> std::convert::Infallible {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One cleanup of the store at a time, off the sweep (etcd may be slow or away).
    let mut cleanup: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        ticker.tick().await;
        controller_call(controller, Controller::hub_sweep).await;
        let Some(store) = store else {
            continue;
        };
        if cleanup.as_ref().is_some_and(|task| !task.is_finished()) {
            continue;
        }
        // Runners silent here that the store still says this hub serves (just marked
        // offline, or an earlier delete failed): their `online` keys go.
        let stale = controller_call(controller, Controller::hub_offline_served_here)
            .await
            .unwrap_or_default();
        if !stale.is_empty() {
            let store = Arc::clone(store);
            cleanup = Some(tokio::spawn(async move { store.offline(&stale).await }));
        }
    }
}

/// Aborts the task when dropped (the store's follower, when the agent stops).
struct AbortOnDrop(Option<tokio::task::JoinHandle<std::convert::Infallible>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn binding_an_address_that_is_not_here_fails() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // TEST-NET-3 (RFC 5737): never configured on a test machine.
        let error = runtime
            .block_on(async { bind(SocketAddr::new(Ipv4Addr::new(203, 0, 113, 77).into(), 0)) })
            .expect_err("address not on this node");
        assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable, "{error}");
        let listener = runtime
            .block_on(async { bind(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)) })
            .expect("loopback binds");
        assert!(listener.local_addr().expect("address").port() > 0);
    }
}
