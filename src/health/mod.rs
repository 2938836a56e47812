//! Active health checks, in two layers that depend on each other in one
//! direction only:
//!
//! * [`state`]: the rise/fall hysteresis of one node ([`NodeHealth`]) and what a
//!   probe reports ([`ProbeOutcome`]). Pure, std only. The pool owns this state and
//!   depends on nothing else here.
//! * `probe`: one probe against one address, bounded by `health.timeout`: a TCP
//!   connect, or an HTTP/1.1 GET whose status and optionally body are checked (the
//!   response is parsed with `httparse`; chunked and `Content-Length` bodies are
//!   decoded, everything read is bounded by [`MAX_RESPONSE`]). No pool, no state.
//!
//! The loops that run the probes and report into the pool are
//! [`prober`](crate::prober), one level up: nothing here names the pool.

pub mod state;

mod probe;

pub use probe::{probe, probe_addr, MAX_RESPONSE};
pub use state::{NodeHealth, ProbeOutcome, ProbeRecord};
