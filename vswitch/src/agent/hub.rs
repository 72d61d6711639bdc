//! The hub's agent: listens for runners on `localAddress:apiPort` ([`serve_hub`]) and marks
//! silent runners offline once a second ([`Controller::hub_sweep`]).
//!
//! The address may not be configured yet when the Overlay is applied (the underlay comes up
//! later): binding is retried with backoff, and the failure logged once per distinct error.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::{controller_call, stopped};
use crate::api::hub::serve_hub;
use crate::control::Controller;

/// How often silent runners are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Pending connections the listener queues.
const LISTEN_BACKLOG: u32 = 128;

/// Binds the hub API's listener, with `SO_REUSEADDR` so a restarted agent can bind again
/// while old connections linger in TIME_WAIT.
///
/// # Errors
/// The socket, bind or listen error (e.g. the address is not on this node).
pub fn bind(address: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(address))?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs the hub agent until `stop` says so.
pub(super) async fn run(
    controller: Arc<Controller>,
    address: SocketAddrV4,
    token: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
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
            token.clone(),
            async move { stopped(&mut server_stop).await },
        );
        let result = tokio::select! {
            result = server => result,
            never = sweep(&controller) => match never {},
        };
        if *stop.borrow() {
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

/// Calls [`Controller::hub_sweep`] every [`SWEEP_INTERVAL`], forever.
async fn sweep(controller: &Arc<Controller>) -> std::convert::Infallible {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        controller_call(controller, Controller::hub_sweep).await;
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
            .block_on(async { bind(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 77), 0)) })
            .expect_err("address not on this node");
        assert_eq!(error.kind(), io::ErrorKind::AddrNotAvailable, "{error}");
        let listener = runtime
            .block_on(async { bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)) })
            .expect("loopback binds");
        assert!(listener.local_addr().expect("address").port() > 0);
    }
}
