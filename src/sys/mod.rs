//! What ringlb asks of the operating system for the process as a whole:
//! dropping root after binding ([`privilege`]) and the open-file limit
//! ([`rlimit`]). Thin, typed layers over `nix`; they know nothing of the config,
//! pools, listeners or the server. (Socket options live with the sockets:
//! [`keepalive`](crate::keepalive), `listener`, `proxy`.)

pub mod privilege;
pub mod rlimit;
