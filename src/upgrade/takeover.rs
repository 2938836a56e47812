//! The new process's side of an upgrade: `ringlb run` started with
//! `RINGLB_UPGRADE_FROM` set finds the handover channel on its standard input
//! ([`from_env`]), receives every socket and node state, and after building its
//! server from them says [`Incoming::prepared`]; once the old process commits it
//! starts accepting and says [`Incoming::started`]. A failure is reported to the
//! old process ([`Incoming::fail`]), which keeps serving.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant, SystemTime};

use tracing::info;

use super::channel::{Channel, Message};
use super::{UpgradeError, ENV_FROM};
use crate::handle::Predecessor;
use crate::listener::{Inherited, InheritedListener};
use crate::pool::NodeRecord;

/// How long the new process waits for the old one's handover.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);
/// How long it waits for the commit: the old process's `upgrade_timeout` (at most
/// ten minutes) is what really bounds it.
const COMMIT_WAIT: Duration = Duration::from_secs(11 * 60);

/// What the old process handed over, until this process has started.
#[derive(Debug)]
pub struct Incoming {
    channel: Channel,
    pub from_pid: u32,
    /// Sockets not yet claimed by the config ([`crate::Server::bind_inheriting`]).
    pub inherited: Inherited,
    /// Node states at the handover.
    pub nodes: Vec<NodeRecord>,
    t0: Instant,
}

/// The handover, if this process was started by an upgrade.
pub fn from_env() -> Result<Option<Incoming>, UpgradeError> {
    let Some(from) = std::env::var_os(ENV_FROM) else {
        return Ok(None);
    };
    let from_pid = from
        .to_str()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| UpgradeError::Protocol(format!("{ENV_FROM}={from:?} is not a pid")))?;
    let t0 = Instant::now();
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| UpgradeError::io("taking the upgrade channel from standard input", e))?;
    let channel = Channel::from_fd(fd)?;
    // Nothing reads standard input; the channel must not stay open through it.
    let null =
        std::fs::File::open("/dev/null").map_err(|e| UpgradeError::io("opening /dev/null", e))?;
    rustix::stdio::dup2_stdin(&null)
        .map_err(|e| UpgradeError::io("replacing standard input", e.into()))?;
    channel.send(
        &Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        &[],
    )?;
    let mut inherited = Inherited::default();
    let mut nodes = Vec::new();
    let deadline = Instant::now() + HANDOVER_WAIT;
    loop {
        let (msg, fds) = channel.recv(deadline, || Ok(()))?;
        let one_socket = || -> Result<std::net::TcpListener, UpgradeError> {
            match <[_; 1]>::try_from(fds) {
                Ok([fd]) => Ok(std::net::TcpListener::from(fd)),
                Err(v) => Err(UpgradeError::Protocol(format!(
                    "a socket message came with {} descriptors",
                    v.len()
                ))),
            }
        };
        match msg {
            Message::Socket { name, listen } => {
                let listen = addr(&listen)?;
                let socket = one_socket()?;
                match inherited
                    .listeners
                    .iter_mut()
                    .find(|l| l.name == name && l.listen == listen)
                {
                    Some(l) => l.sockets.push(socket),
                    None => inherited.listeners.push(InheritedListener {
                        name,
                        listen,
                        sockets: vec![socket],
                    }),
                }
            }
            Message::Admin { listen } => inherited.admin = Some((addr(&listen)?, one_socket()?)),
            Message::Nodes { records } => nodes.extend(records),
            Message::Handover { from_pid: pid } if pid == from_pid => break,
            other => {
                return Err(UpgradeError::Protocol(format!(
                    "unexpected during the handover: {other:?}"
                )))
            }
        }
    }
    info!(
        from_pid,
        listeners = inherited.listeners.len(),
        sockets = inherited
            .listeners
            .iter()
            .map(|l| l.sockets.len())
            .sum::<usize>(),
        admin = inherited.admin.is_some(),
        nodes = nodes.len(),
        "upgrade: received the handover from the old process"
    );
    Ok(Some(Incoming {
        channel,
        from_pid,
        inherited,
        nodes,
        t0,
    }))
}

fn addr(text: &str) -> Result<SocketAddr, UpgradeError> {
    text.parse()
        .map_err(|_| UpgradeError::Protocol(format!("{text:?} is not an address")))
}

impl Incoming {
    /// Tell the old process why this one cannot take over (best effort: it may
    /// be gone already). It keeps serving.
    pub fn fail(&self, reason: &str) {
        let _ = self.channel.send(
            &Message::Failed {
                reason: reason.to_string(),
            },
            &[],
        );
    }

    /// Everything is bound and built: say so and wait for the commit. Returns the
    /// node states sent with it (the freshest).
    pub fn prepared(&self) -> Result<Vec<NodeRecord>, UpgradeError> {
        self.channel.send(&Message::Prepared, &[])?;
        let deadline = Instant::now() + COMMIT_WAIT;
        let mut nodes = Vec::new();
        loop {
            match self.channel.recv(deadline, || Ok(()))?.0 {
                Message::Nodes { records } => nodes.extend(records),
                Message::Commit => return Ok(nodes),
                other => {
                    return Err(UpgradeError::Protocol(format!(
                        "expected the commit, got {other:?}"
                    )))
                }
            }
        }
    }

    /// This process accepts now: tell the old one (which stops accepting and
    /// drains). Returns what `/status` shows of the predecessor. If the old process
    /// is gone already, this one serves alone (logged).
    pub fn started(self) -> Predecessor {
        let takeover_ms = self.t0.elapsed().as_millis() as u64;
        let sent = self.channel.send(
            &Message::Started {
                pid: std::process::id(),
                takeover_ms,
            },
            &[],
        );
        if let Err(e) = sent {
            tracing::warn!(from_pid = self.from_pid, error = %crate::server::error_chain(&e),
                "cannot tell the old process that this one accepts; it stops on its own timeout");
        }
        Predecessor {
            pid: self.from_pid,
            at: SystemTime::now(),
            takeover_ms,
        }
    }
}
