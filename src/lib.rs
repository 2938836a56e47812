//! ringlb: a Layer-4 consistent-hashing TCP load balancer keyed on the client IP.
//!
//! See `DESIGN.md` (shared) for the module map and invariants; the README for
//! operation.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod backend;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod health;
pub mod keepalive;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod privilege;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod ring;
pub mod rlimit;
pub mod server;
pub mod splice;
pub mod which;
pub mod workers;

pub use config::Config;
pub use error::{ConfigError, Error};
pub use server::{Handle, Server, ShutdownReport};
