//! Active health checks, in three layers that depend on each other in one
//! direction only:
//!
//! * [`state`]: the rise/fall hysteresis of one node ([`NodeHealth`]) and what a
//!   probe reports ([`ProbeOutcome`]). Pure, std only. The pool owns this state and
//!   depends on nothing else here.
//! * `probe`: one probe against one address, bounded by `health.timeout`: a TCP
//!   connect, or an HTTP/1.1 GET whose status and optionally body are checked (the
//!   response is parsed with `httparse`; chunked and `Content-Length` bodies are
//!   decoded, everything read is bounded by [`MAX_RESPONSE`]). No pool, no state.
//! * `prober`: the [`Prober`], one probe loop per node with ±10% jitter, reporting
//!   every outcome to the [`Pool`](crate::pool::Pool), which applies the hysteresis
//!   and owns the ring. Nothing here picks nodes or changes a node's state itself.

pub mod state;

mod probe;
mod prober;

pub use probe::{probe, probe_addr, MAX_RESPONSE};
pub use prober::Prober;
pub use state::{NodeHealth, ProbeOutcome, ProbeRecord};
