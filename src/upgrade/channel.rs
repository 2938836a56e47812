//! The handover channel between the old and the new process of an upgrade: a
//! unix `SOCK_SEQPACKET` socket pair (message boundaries kept, so one message is
//! one JSON document), with listening sockets attached to messages as
//! `SCM_RIGHTS`. The new process gets its end as its standard input. Blocking I/O
//! in short slices, so a wait can notice that the peer died, the deadline passed
//! or the wait was called off. Knows nothing of servers or pools.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};

use super::UpgradeError;
use crate::pool::NodeRecord;

/// Largest message (JSON bytes). Node states travel in chunks well below it.
const MAX_MESSAGE: usize = 256 * 1024;
/// Node records per [`Message::Nodes`].
pub const NODES_PER_MESSAGE: usize = 200;
/// How long one blocking receive waits before the caller's checks run again.
const SLICE: Duration = Duration::from_millis(50);

/// Everything said over the channel, in the order of the protocol:
/// new `Hello`; old `Socket`… `Admin`? `Nodes`… `Handover`; new `Prepared` (or
/// `Failed`); old `Nodes`… `Commit`; new `Started` (or `Failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The new process is up and speaks the protocol.
    Hello { pid: u32, version: String },
    /// One listening socket (attached) of listener `name`, configured `listen`.
    Socket { name: String, listen: String },
    /// The admin socket (attached), configured `listen`.
    Admin { listen: String },
    /// Node states, in chunks.
    Nodes { records: Vec<NodeRecord> },
    /// Everything has been sent.
    Handover { from_pid: u32 },
    /// The new process loaded its config, holds every socket and waits to start.
    Prepared,
    /// Start accepting, with the node states that came just before.
    Commit,
    /// The new process accepts connections.
    Started { pid: u32, takeover_ms: u64 },
    /// The new process cannot take over, and why.
    Failed { reason: String },
}

impl Message {
    fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Socket { .. } => "socket",
            Message::Admin { .. } => "admin",
            Message::Nodes { .. } => "nodes",
            Message::Handover { .. } => "handover",
            Message::Prepared => "prepared",
            Message::Commit => "commit",
            Message::Started { .. } => "started",
            Message::Failed { .. } => "failed",
        }
    }
}

/// One end of the handover channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair: ours, and the end for the new process (both close on
    /// exec; the new process gets its end as standard input, which `exec` keeps).
    pub fn pair() -> Result<(Channel, OwnedFd), UpgradeError> {
        let (ours, theirs) = net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| UpgradeError::io("creating the handover socket pair", e.into()))?;
        Ok((Channel { fd: ours }, theirs))
    }

    /// Our end, received from the old process (standard input of the new one).
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, UpgradeError> {
        match net::sockopt::socket_type(&fd) {
            Ok(SocketType::SEQPACKET) => Ok(Channel { fd }),
            _ => Err(UpgradeError::Protocol(format!(
                "{} is set, but standard input is not the upgrade channel (a unix seqpacket socket)",
                super::ENV_FROM
            ))),
        }
    }

    /// Send one message, with `fds` attached.
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
        let body = serde_json::to_vec(msg).map_err(|e| {
            UpgradeError::Protocol(format!("encoding a {} message: {e}", msg.kind()))
        })?;
        if body.len() > MAX_MESSAGE {
            return Err(UpgradeError::Protocol(format!(
                "a {} message of {} bytes is over the {MAX_MESSAGE}-byte limit",
                msg.kind(),
                body.len()
            )));
        }
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(UpgradeError::Protocol(
                "too many descriptors for one message".into(),
            ));
        }
        let sent = net::sendmsg(
            &self.fd,
            &[IoSlice::new(&body)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| UpgradeError::io(format!("sending the {} message", msg.kind()), e.into()))?;
        if sent != body.len() {
            return Err(UpgradeError::Protocol(format!(
                "the {} message was cut short",
                msg.kind()
            )));
        }
        Ok(())
    }

    /// Receive one message and the descriptors attached to it, waiting at most
    /// until `deadline`. `check` runs between slices of the wait; an error from it
    /// ends the wait (the peer exited, the upgrade was called off). The peer
    /// closing its end is [`UpgradeError::Closed`].
    pub fn recv(
        &self,
        deadline: Instant,
        mut check: impl FnMut() -> Result<(), UpgradeError>,
    ) -> Result<(Message, Vec<OwnedFd>), UpgradeError> {
        net::sockopt::set_socket_timeout(&self.fd, net::sockopt::Timeout::Recv, Some(SLICE))
            .map_err(|e| UpgradeError::io("setting the handover socket's timeout", e.into()))?;
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
        loop {
            check()?;
            if Instant::now() >= deadline {
                return Err(UpgradeError::Timeout);
            }
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = net::recvmsg(
                &self.fd,
                &mut [IoSliceMut::new(&mut body)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            );
            let got = match got {
                Ok(g) => g,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(UpgradeError::io(
                        "receiving on the handover socket",
                        e.into(),
                    ))
                }
            };
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(received) = m {
                    fds.extend(received);
                }
            }
            if got.flags.contains(ReturnFlags::CTRUNC) || got.flags.contains(ReturnFlags::TRUNC) {
                return Err(UpgradeError::Protocol(
                    "a handover message was truncated".into(),
                ));
            }
            if got.bytes == 0 {
                return Err(UpgradeError::Closed);
            }
            let msg = serde_json::from_slice(&body[..got.bytes]).map_err(|e| {
                UpgradeError::Protocol(format!("a handover message that does not parse: {e}"))
            })?;
            return Ok((msg, fds));
        }
    }

    /// Our end, to check its peer.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn messages_keep_their_boundaries_and_carry_sockets() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        a.send(
            &Message::Socket {
                name: "web".into(),
                listen: "127.0.0.1:0".into(),
            },
            &[listener.as_fd()],
        )
        .unwrap();
        a.send(&Message::Commit, &[]).unwrap();
        drop(listener);

        let (m, fds) = b.recv(soon(), || Ok(())).unwrap();
        assert_eq!(
            m,
            Message::Socket {
                name: "web".into(),
                listen: "127.0.0.1:0".into()
            }
        );
        assert_eq!(fds.len(), 1);
        // The same listening socket, alive in the receiver only now.
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let (mut s, _) = got.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(b.recv(soon(), || Ok(())).unwrap().0, Message::Commit);
    }

    #[test]
    fn a_closed_peer_a_deadline_and_a_check_end_the_wait() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b).unwrap();
        assert!(matches!(
            b.recv(Instant::now() + Duration::from_millis(120), || Ok(())),
            Err(UpgradeError::Timeout)
        ));
        assert!(matches!(
            b.recv(soon(), || Err(UpgradeError::Aborted)),
            Err(UpgradeError::Aborted)
        ));
        drop(a);
        assert!(matches!(
            b.recv(soon(), || Ok(())),
            Err(UpgradeError::Closed)
        ));
    }

    #[test]
    fn garbage_and_wrong_descriptors_are_errors_not_panics() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b).unwrap();
        net::send(&a.fd, b"{not json", SendFlags::empty()).unwrap();
        assert!(matches!(
            b.recv(soon(), || Ok(())),
            Err(UpgradeError::Protocol(_))
        ));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(Channel::from_fd(OwnedFd::from(tcp)).is_err());
    }
}
