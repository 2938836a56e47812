//! A client of `serve push` (for `load fanout` and `load storm`): connect from a
//! source IP, read `size`-byte messages into one `size`-byte buffer (per
//! connection state stays tiny: no 64 KiB buffers for 10,000 clients).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::net::{connect_from, within, StepResult};
use crate::pushmsg::{self, MessageError};

/// One connection and its message buffer.
pub struct PushConn {
    pub stream: TcpStream,
    pub buf: Box<[u8]>,
}

/// What one message said, owned where needed.
#[derive(Debug, Clone, Copy)]
pub struct Got {
    pub seq: u32,
    pub t_ns: u64,
    /// CLOCK_MONOTONIC when it had arrived.
    pub recv_ns: u64,
}

impl Got {
    /// Delivery latency: arrival minus the server's timestamp.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.recv_ns.saturating_sub(self.t_ns))
    }
}

pub enum ReadError {
    Io(io::Error),
    Message(MessageError),
}

impl PushConn {
    /// Connect and read the first message within `timeout`: the connection, the
    /// server's name, and that message.
    pub async fn open(
        src: Ipv4Addr,
        target: SocketAddr,
        timeout: Duration,
        size: usize,
    ) -> StepResult<(PushConn, String, Got)> {
        within(timeout, "open", async {
            let stream = connect_from(src, target, timeout)
                .await
                .map_err(|e| ("connect", e))?;
            let mut conn = PushConn {
                stream,
                buf: vec![0u8; size].into_boxed_slice(),
            };
            match conn.next_named().await {
                Ok((name, got)) => Ok((conn, name, got)),
                Err(ReadError::Io(e)) => Err(("first message", e)),
                Err(ReadError::Message(e)) => Err((
                    "first message",
                    io::Error::new(io::ErrorKind::InvalidData, e),
                )),
            }
        })
        .await
    }

    async fn fill(&mut self) -> Result<u64, ReadError> {
        self.stream
            .read_exact(&mut self.buf)
            .await
            .map_err(ReadError::Io)?;
        Ok(pushmsg::monotonic_ns())
    }

    /// The next message and its server's name.
    pub async fn next_named(&mut self) -> Result<(String, Got), ReadError> {
        let recv_ns = self.fill().await?;
        let m = pushmsg::parse(&self.buf, self.buf.len()).map_err(ReadError::Message)?;
        Ok((
            m.name.to_string(),
            Got {
                seq: m.seq,
                t_ns: m.t_ns,
                recv_ns,
            },
        ))
    }

    /// The next message, which must come from server `name`.
    pub async fn next_from(&mut self, name: &str) -> Result<Got, ReadError> {
        let recv_ns = self.fill().await?;
        let m = pushmsg::parse(&self.buf, self.buf.len()).map_err(ReadError::Message)?;
        if m.name != name {
            return Err(ReadError::Message(MessageError::Malformed(
                "a message from another server on the same connection",
            )));
        }
        Ok(Got {
            seq: m.seq,
            t_ns: m.t_ns,
            recv_ns,
        })
    }
}
