//! What ringlb asks of the operating system for the process as a whole:
//! dropping root after binding ([`privilege`]) and the open-file limit
//! ([`rlimit`]), and the service manager's notify protocol ([`notify`]). Thin, typed
//! layers over `nix` and `sd-notify`; they know nothing of the config,
//! pools, listeners or the server. (Socket options live with the sockets:
//! [`keepalive`](crate::keepalive), `listener`, `proxy`.)

pub mod notify;
pub mod privilege;
pub mod rlimit;
