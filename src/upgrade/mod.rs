//! Binary upgrades that keep every connection (HAProxy's `-x`, nginx's `USR2`,
//! pingora's `--upgrade`): the running process starts the new binary, hands it
//! every listening socket (the admin socket too) and every node's state, and stops
//! accepting only once the new one accepts; then it drains, like a stop.
//!
//! - [`channel`]: the handover channel, a unix seqpacket socket pair (the new
//!   process's standard input) carrying JSON messages and, with `SCM_RIGHTS`, the
//!   listening sockets themselves: never closed, never rebound, so no SYN in
//!   their queues is lost or refused.
//! - [`handover`]: the old process's side, on a thread of its own: start the new
//!   binary (environment `RINGLB_UPGRADE_FROM=<old pid>`), send, wait for
//!   `Prepared`, commit, wait for `Started`, or stop the new process and report
//!   why it failed.
//! - [`takeover`]: the new process's side, from `ringlb run` when
//!   `RINGLB_UPGRADE_FROM` is set: receive, prepare, start.
//! - [`control`]: the control socket `ringlb upgrade` talks to (an abstract unix
//!   socket named after the pid, peer uid checked), and that client.
//!
//! The control loop ([`control`](crate::control), one level up) decides when an
//! upgrade runs (one at a time; reloads asked meanwhile are queued) and drains
//! afterwards; this module never touches a running server's parts.

pub mod channel;
pub mod control;
pub mod handover;
pub mod takeover;

pub use handover::{begin, Pending, Plan, Takeover};
pub use takeover::Incoming;

/// Set (to the old process's pid) in the new process's environment; its
/// standard input is then the handover channel.
pub const ENV_FROM: &str = "RINGLB_UPGRADE_FROM";

/// Why an upgrade did not happen. The old process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The cause is the error's source (shown by an error chain).
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The other side said something out of order or unreadable.
    #[error("upgrade protocol: {0}")]
    Protocol(String),
    /// The other process closed the channel (it exited, or gave up).
    #[error("the other process closed the upgrade channel")]
    Closed,
    #[error("timed out")]
    Timeout,
    /// This process is stopping: the upgrade was called off.
    #[error("called off: this process is stopping")]
    Aborted,
    /// The new process failed, with the reason (its config errors, its exit).
    #[error("{0}")]
    NewProcess(String),
    /// The running process refused the request, with the reason.
    #[error("{0}")]
    Refused(String),
}

impl UpgradeError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> UpgradeError {
        UpgradeError::Io {
            what: what.into(),
            source,
        }
    }
}
