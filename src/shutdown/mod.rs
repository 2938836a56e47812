//! How a ringlb process stops: the process signals ([`signals`]: SIGTERM/SIGINT
//! stop, a second one closes what is left, SIGHUP asks for a reload) and the drain
//! of a server ([`drain`](fn@drain): stop accepting, let connections finish within
//! `shutdown_grace`, close and count the rest).

pub mod drain;
pub mod signals;

pub use drain::{drain, ShutdownReport};
pub use signals::{handle_signals, Signals};
