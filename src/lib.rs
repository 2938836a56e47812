//! ringlb: a Layer-4 consistent-hashing TCP load balancer keyed on the client IP.
//!
//! See `DESIGN.md` (shared) for the module map and invariants; the README for
//! operation.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod handle;
pub mod health;
pub mod keepalive;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod privilege;
pub mod prober;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod server;
pub mod shutdown;
pub mod workers;

pub use config::Config;
pub use error::{ConfigError, Error};
pub use handle::Handle;
pub use server::Server;
pub use shutdown::ShutdownReport;
