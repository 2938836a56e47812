//! The control socket `ringlb upgrade` talks to: an abstract unix stream socket
//! named `ringlb/<pid>/control` (no file to create, clean up or protect), open
//! while the process accepts. A peer must run as root or as this process's user
//! (checked with `SO_PEERCRED`). One request per connection, one JSON line each
//! way: `{"upgrade":{"binary":null}}` → `{"ok":{...}}` or `{"error":"why"}`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::linux::net::SocketAddrExt as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::UpgradeError;
use crate::handle::{Handle, UpgradeDone, UpgradeReply, UpgradeRequest};

/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// How long a client gets to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// The abstract socket name of process `pid`'s control socket.
pub fn socket_name(pid: u32) -> String {
    format!("ringlb/{pid}/control")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Upgrade { binary: Option<PathBuf> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ok(UpgradeDone),
    Error(String),
}

/// A running control socket.
#[derive(Debug)]
pub struct ControlSocket {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ControlSocket {
    /// Stop listening (requests being answered finish).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Listen on this process's control socket. Must run inside a tokio runtime.
pub fn listen(handle: Handle) -> Result<ControlSocket, UpgradeError> {
    let name = socket_name(std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| UpgradeError::io("naming the control socket", e))?;
    let std = std::os::unix::net::UnixListener::bind_addr(&addr)
        .map_err(|e| UpgradeError::io(format!("binding the control socket @{name}"), e))?;
    std.set_nonblocking(true)
        .map_err(|e| UpgradeError::io("configuring the control socket", e))?;
    let listener = UnixListener::from_std(std)
        .map_err(|e| UpgradeError::io("registering the control socket", e))?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, handle, stop.clone()));
    info!(socket = %format!("@{name}"), "control socket listening (ringlb upgrade)");
    Ok(ControlSocket { stop, task })
}

async fn serve(listener: UnixListener, handle: Handle, stop: CancellationToken) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tasks.spawn(answer(stream, handle.clone()));
    }
    tasks.close();
    tasks.wait().await;
}

/// Whether a peer with `uid` may ask: root, or the user this process runs as.
fn allowed(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

async fn answer(mut stream: UnixStream, handle: Handle) {
    let response = match read_request(&mut stream).await {
        Ok(Request::Upgrade { binary }) => {
            let (tx, rx) = oneshot::channel::<UpgradeReply>();
            handle.upgrade(UpgradeRequest {
                binary,
                by: "ringlb upgrade",
                reply: Some(tx),
            });
            match rx.await {
                Ok(Ok(done)) => Response::Ok(done),
                Ok(Err(why)) => Response::Error(why),
                Err(_) => Response::Error("the process stopped before the upgrade finished".into()),
            }
        }
        Err(why) => Response::Error(why),
    };
    let mut line = serde_json::to_string(&response)
        .unwrap_or_else(|_| r#"{"error":"cannot encode the answer"}"#.into());
    line.push('\n');
    let _ = stream.write_all(line.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot check who is asking: {e}"))?;
    if !allowed(cred.uid()) {
        warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: request from another user refused");
        return Err(format!(
            "permission denied: uid {} is neither root nor this process's user",
            cred.uid()
        ));
    }
    let (read, _) = stream.split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
    match tokio::time::timeout(REQUEST_WAIT, reader.read_line(&mut line)).await {
        Err(_) => return Err("no request within 5s".into()),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    serde_json::from_str(line.trim()).map_err(|e| format!("not a request: {e}"))
}

/// `ringlb upgrade`: ask process `pid` for an upgrade (with `binary`, or the one
/// it was started from) and wait for the outcome.
pub fn request_upgrade(pid: u32, binary: Option<PathBuf>) -> Result<UpgradeDone, UpgradeError> {
    let name = socket_name(pid);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| UpgradeError::io("naming the control socket", e))?;
    let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| {
        UpgradeError::io(
            format!(
                "connecting to the control socket of pid {pid} (@{name}; is ringlb running there, \
                 in this network namespace, and accepting?)"
            ),
            e,
        )
    })?;
    let mut line = serde_json::to_string(&Request::Upgrade { binary })
        .map_err(|e| UpgradeError::Protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| UpgradeError::io("sending the request", e))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .take(64 * 1024)
        .read_line(&mut answer)
        .map_err(|e| UpgradeError::io("reading the answer", e))?;
    if answer.is_empty() {
        return Err(UpgradeError::Closed);
    }
    match serde_json::from_str(answer.trim()) {
        Ok(Response::Ok(done)) => Ok(done),
        Ok(Response::Error(why)) => Err(UpgradeError::Refused(why)),
        Err(e) => Err(UpgradeError::Protocol(format!(
            "an answer that does not parse: {e}"
        ))),
    }
}
