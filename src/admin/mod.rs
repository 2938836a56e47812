//! The admin endpoint: a small HTTP/1.1 server (GET and HEAD, one request per
//! connection) with `/ready` (200 or 503 with the reason; no token needed),
//! `/metrics` (Prometheus text), `/status` (JSON) and `/` (a
//! self-refreshing HTML page with the same data), and
//! `POST /pools/{pool}/nodes/{node}/drain|enable|disable`. Loopback by default; on any
//! other address the config must set a bearer token, and with a token set every
//! request must carry it (`401` otherwise, counted).
//!
//! It sees the balancer only through [`Handle`] (never names the server):
//! - `serve`: accept loop, request heads (`httparse`), auth, routing, responses;
//! - [`status`](mod@status): the typed `/status` document, built from a handle;
//! - [`history`]: the samples the page's charts draw (every 2 s, the last 5
//!   minutes per node), taken by a task that lives with the endpoint;
//! - `page`: the HTML page rendered from that document, with `chart`, the
//!   inline SVG chart of one node's history;
//! - [`client`]: the other side, used by `ringlb node` (blocking std I/O).

mod agent_status;
mod chart;
pub mod client;
pub mod history;
mod page;
mod serve;
pub mod status;

use std::net::SocketAddr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AdminState;
use crate::error::Error;
use crate::handle::Handle;
use history::History;

pub use client::{node_command, reach, request, NodeChange, NodeCommandError};
pub use page::page;
pub use status::{status, Status};

/// The last segment of the node-action path that asks for `state`.
fn action_verb(state: AdminState) -> &'static str {
    match state {
        AdminState::Drain => "drain",
        AdminState::Enabled => "enable",
        AdminState::Disabled => "disable",
    }
}

/// The state a node-action path's last segment asks for.
fn action_state(verb: &str) -> Option<AdminState> {
    [AdminState::Drain, AdminState::Enabled, AdminState::Disabled]
        .into_iter()
        .find(|s| action_verb(*s) == verb)
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    pub local_addr: SocketAddr,
    /// The listening socket, for a binary upgrade to hand over (a second
    /// descriptor of the socket the server task accepts on).
    socket: Option<OwnedFd>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    sampler: JoinHandle<()>,
}

impl AdminServer {
    /// The listening socket (to hand over in an upgrade).
    pub fn socket(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(|s| s.as_fd())
    }

    /// Stop accepting and sampling, and wait for in-flight requests.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = self.sampler.await;
    }
}

/// Bind the admin socket. Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let err = |source| Error::Bind {
        listener: "admin".into(),
        addr,
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(err)?;
    adopt(addr, std)
}

/// Serve on an admin socket bound elsewhere (handed over by the previous process
/// in an upgrade; `listen` is the configured address). Must run inside a tokio
/// runtime.
pub fn adopt(listen: SocketAddr, socket: std::net::TcpListener) -> Result<TcpListener, Error> {
    let err = |source| Error::Bind {
        listener: "admin".into(),
        addr: listen,
        source,
    };
    socket.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(socket).map_err(err)
}

/// Serve on a bound admin socket until stopped.
pub fn spawn(listener: TcpListener, handle: Handle) -> AdminServer {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let token = handle
        .config()
        .admin
        .as_ref()
        .is_some_and(|a| a.token.is_some());
    if local_addr.ip().is_loopback() || token {
        info!(addr = %local_addr, bearer_token = token, "admin endpoint listening (/ready, /metrics, /status, /)");
    } else {
        // Config validation requires a token off loopback; this is a last guard.
        warn!(addr = %local_addr,
            "ADMIN ENDPOINT IS NOT ON LOOPBACK AND HAS NO TOKEN: anyone who can reach this address can read /metrics and /status");
    }
    let socket = match listener.as_fd().try_clone_to_owned() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot keep a descriptor of the admin socket: an upgrade will bind it anew");
            None
        }
    };
    let stop = CancellationToken::new();
    let history = Arc::new(Mutex::new(History::default()));
    let sampler = history::spawn_sampler(handle.clone(), history.clone(), stop.clone());
    let task = tokio::spawn(serve::serve(listener, handle, history, stop.clone()));
    AdminServer {
        local_addr,
        socket,
        stop,
        task,
        sampler,
    }
}
