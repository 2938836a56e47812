//! Reloading the config of a running balancer (SIGHUP, `ringlb reload`, the
//! admin's request): [`diff`](mod@diff) is pure (old config, new config → typed changes and
//! the summary line), [`apply`](fn@apply) carries a diff out on the running server, and
//! [`signal`] is the `ringlb reload` client that asks a running process for one.
//! A refused reload changes nothing.
//!
//! Listeners are matched by their socket: a new listener with the same `listen`
//! address (and `ipv6_only`) as a running one keeps that socket, even if its name,
//! pool or limits changed, so there is never a moment without an accepting socket.

pub mod apply;
pub mod diff;
pub mod signal;

pub use apply::{apply, apply_read};
pub use diff::{diff, summary, ConfigDiff, PoolDiff};
