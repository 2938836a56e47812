//! The old process's side of an upgrade, on a thread of its own (the exchange is
//! blocking and short): start the new binary with the handover channel as its
//! standard input, send every listening socket, the admin socket and the node
//! states, wait until it has prepared, commit (with fresh node states), and wait
//! until it accepts. Any failure before that stops the new process (SIGTERM, then
//! SIGKILL) and is reported; the caller keeps accepting throughout.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::channel::{Channel, Message, NODES_PER_MESSAGE};
use super::{UpgradeError, ENV_FROM};
use crate::config::fmt_duration;
use crate::handle::Handle;
use crate::pool::NodeRecord;

/// How long a new process that failed gets to exit after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What the old process hands over, gathered on the control runtime.
#[derive(Debug)]
pub struct Plan {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// How long the new process gets until it accepts (`upgrade_timeout`).
    pub timeout: Duration,
    /// Every listening socket: listener name, configured `listen`, a descriptor.
    pub sockets: Vec<(String, SocketAddr, OwnedFd)>,
    /// The admin socket: configured `listen`, a descriptor.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// Where node states are read, at the handover and again at the commit.
    pub handle: Handle,
}

/// The new process accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    pub new_pid: u32,
    /// From starting the new binary until it accepted.
    pub took: Duration,
}

/// An upgrade under way.
#[derive(Debug)]
pub struct Pending {
    child_pid: Arc<AtomicU32>,
    abort: Arc<AtomicBool>,
    result: oneshot::Receiver<Result<Takeover, UpgradeError>>,
}

impl Pending {
    /// The new process's pid, once started.
    pub fn child_pid(&self) -> Option<u32> {
        Some(self.child_pid.load(Ordering::Acquire)).filter(|p| *p != 0)
    }

    /// Call the upgrade off (this process is stopping): a new process that is not
    /// accepting yet is stopped. One that already accepts keeps running.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Release);
    }

    /// The outcome (cancel-safe: poll it again after another branch of a select).
    pub async fn outcome(&mut self) -> Result<Takeover, UpgradeError> {
        (&mut self.result).await.unwrap_or_else(|_| {
            Err(UpgradeError::Protocol(
                "the upgrade thread ended without an outcome".into(),
            ))
        })
    }
}

/// Start the upgrade described by `plan` on its own thread.
pub fn begin(plan: Plan) -> Pending {
    let child_pid = Arc::new(AtomicU32::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel();
    let (pid, stop) = (child_pid.clone(), abort.clone());
    let spawned = std::thread::Builder::new()
        .name("ringlb-upgrade".into())
        .spawn(move || {
            let _ = tx.send(run(plan, &pid, &stop));
        });
    if let Err(e) = spawned {
        // The closure (and its sender) is gone: `outcome` reports it.
        warn!(error = %e, "cannot start the upgrade thread");
    }
    Pending {
        child_pid,
        abort,
        result: rx,
    }
}

/// The new process while it is not yet in charge: dropping this stops it.
struct NewProcess {
    child: Option<Child>,
    channel: Option<Channel>,
}

impl NewProcess {
    fn channel(&self) -> &Channel {
        self.channel.as_ref().expect("the channel lives until drop")
    }

    /// Why the new process is gone, if it is.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Receive the next message, turning the new process's exit, the deadline
    /// and an abort into their errors.
    fn recv(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        abort: &AtomicBool,
    ) -> Result<Message, UpgradeError> {
        let Some(mut child) = self.child.take() else {
            return Err(UpgradeError::Closed);
        };
        let got = self.channel().recv(deadline, || {
            if abort.load(Ordering::Acquire) {
                return Err(UpgradeError::Aborted);
            }
            match child.try_wait() {
                Ok(Some(status)) => Err(exited(status)),
                _ => Ok(()),
            }
        });
        self.child = Some(child);
        match got {
            Ok((m, _)) => Ok(m),
            Err(UpgradeError::Closed) => {
                // It closed its end: it is exiting. Give it a moment for a status.
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until {
                    if let Some(status) = self.exited() {
                        return Err(exited(status));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(UpgradeError::NewProcess(
                    "the new process closed the upgrade channel before it was ready".into(),
                ))
            }
            Err(UpgradeError::Timeout) => Err(UpgradeError::NewProcess(format!(
                "the new process was not ready within {} (upgrade_timeout)",
                fmt_duration(timeout)
            ))),
            Err(e) => Err(e),
        }
    }

    /// The new process is in charge now: keep reaping it in the background.
    fn release(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::thread::Builder::new()
                .name("ringlb-reap".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

impl Drop for NewProcess {
    fn drop(&mut self) {
        // Closing the channel first ends a wait of the new process on it.
        self.channel = None;
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + STOP_WAIT;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!(
            pid = child.id(),
            "the new process did not stop on SIGTERM; killing it"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn exited(status: ExitStatus) -> UpgradeError {
    UpgradeError::NewProcess(format!(
        "the new process exited ({status}) before it was ready; its log says why"
    ))
}

fn unexpected(m: &Message, waiting_for: &str) -> UpgradeError {
    match m {
        Message::Failed { reason } => UpgradeError::NewProcess(reason.clone()),
        other => UpgradeError::Protocol(format!(
            "expected {waiting_for} from the new process, got {other:?}"
        )),
    }
}

fn send_nodes(channel: &Channel, handle: &Handle) -> Result<(), UpgradeError> {
    let records: Vec<NodeRecord> = handle
        .pools()
        .values()
        .flat_map(|p| p.node_records())
        .collect();
    for chunk in records.chunks(NODES_PER_MESSAGE) {
        channel.send(
            &Message::Nodes {
                records: chunk.to_vec(),
            },
            &[],
        )?;
    }
    Ok(())
}

fn run(plan: Plan, child_pid: &AtomicU32, abort: &AtomicBool) -> Result<Takeover, UpgradeError> {
    let t0 = Instant::now();
    let deadline = t0 + plan.timeout;
    let (channel, theirs) = Channel::pair()?;
    let child = Command::new(&plan.binary)
        .args(&plan.args)
        .env(ENV_FROM, std::process::id().to_string())
        .stdin(Stdio::from(theirs))
        .spawn()
        .map_err(|e| {
            UpgradeError::NewProcess(format!("cannot start {}: {e}", plan.binary.display()))
        })?;
    child_pid.store(child.id(), Ordering::Release);
    info!(binary = %plan.binary.display(), new_pid = child.id(), "upgrade: started the new binary");
    let mut new = NewProcess {
        child: Some(child),
        channel: Some(channel),
    };

    match new.recv(deadline, plan.timeout, abort)? {
        Message::Hello { pid, version } => {
            info!(new_pid = pid, version = %version, sockets = plan.sockets.len(),
                "upgrade: handing over the listening sockets and node states")
        }
        m => return Err(unexpected(&m, "hello")),
    }
    for (name, listen, fd) in &plan.sockets {
        new.channel().send(
            &Message::Socket {
                name: name.clone(),
                listen: listen.to_string(),
            },
            &[fd.as_fd()],
        )?;
    }
    if let Some((listen, fd)) = &plan.admin {
        new.channel().send(
            &Message::Admin {
                listen: listen.to_string(),
            },
            &[fd.as_fd()],
        )?;
    }
    send_nodes(new.channel(), &plan.handle)?;
    new.channel().send(
        &Message::Handover {
            from_pid: std::process::id(),
        },
        &[],
    )?;

    match new.recv(deadline, plan.timeout, abort)? {
        Message::Prepared => {}
        m => return Err(unexpected(&m, "prepared")),
    }
    // The freshest node states, just before it starts.
    send_nodes(new.channel(), &plan.handle)?;
    new.channel().send(&Message::Commit, &[])?;
    let new_pid = match new.recv(deadline, plan.timeout, abort)? {
        Message::Started { pid, .. } => pid,
        m => return Err(unexpected(&m, "started")),
    };
    new.release();
    Ok(Takeover {
        new_pid,
        took: t0.elapsed(),
    })
}
