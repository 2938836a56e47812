//! The command line: its types (clap derive, no I/O in this file) and the
//! commands that answer from a config file without a running balancer:
//! [`check`] (validate and summarise) and [`which`] (where client IPs go).

pub mod check;
pub mod which;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_CONFIG_PATH;

/// Path `ringlb demo` uses when `--config` is not given.
pub const DEMO_CONFIG_PATH: &str = "config/demo.toml";

#[derive(Debug, Parser)]
#[command(
    name = "ringlb",
    version,
    about = "Consistent-hashing TCP load balancer: each client IP sticks to one backend node"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info`, `warn`, `ringlb=debug` (default: $RUST_LOG, else info).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeAction {
    Drain,
    Enable,
    Disable,
}

impl NodeAction {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Drain => "drain",
            NodeAction::Enable => "enable",
            NodeAction::Disable => "disable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the balancer in the foreground.
    Run {
        /// Config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Parse and validate a config; print a summary, or every error (exit 1).
    Check {
        /// Config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print the node each client IP maps to, then its fallback order.
    Which {
        /// Config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this pool (default: every pool).
        #[arg(long, conflicts_with = "listener")]
        pool: Option<String>,
        /// Only the pool of this listener.
        #[arg(long)]
        listener: Option<String>,
        /// Probe every node once now and leave the ones that fail off the ring.
        #[arg(long)]
        probe: bool,
        /// Client IPs (IPv4 or IPv6). `-` reads whitespace-separated IPs from stdin.
        #[arg(required = true, value_name = "IP")]
        ips: Vec<String>,
    },
    /// Ask a running ringlb to reload its config (sends SIGHUP to the pid in the
    /// pid file). With --config, the file is checked first and nothing is sent if
    /// it is invalid.
    Reload {
        /// Pid file of the running instance (default: `pid_file` of --config).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Config file to check before signalling (and to find `pid_file` in).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Upgrade a running ringlb to a new binary without dropping a connection: it
    /// starts the new binary, hands it every listening socket and node state, and
    /// drains once the new one accepts. Exits non-zero, with the reason, if the new
    /// process fails (the running one keeps serving). SIGUSR2 does the same.
    Upgrade {
        /// Pid file of the running instance (default: `pid_file` of --config).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Config file to check first (nothing is asked if it is invalid) and to
        /// find `pid_file` in. The new process reads the file the running one was
        /// started with.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The binary to start (default: the path the running process was started
        /// from, as it is on disk now).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Drain, enable or disable a node of a running instance (through its admin
    /// endpoint, found with its token in --config).
    Node {
        /// `drain`: no new connections, open ones continue; `disable`: also close
        /// the open ones; `enable`: back in service (when healthy).
        #[arg(value_enum)]
        action: NodeAction,
        /// Pool name.
        pool: String,
        /// Node name (as in `ringlb which` and /status).
        node: String,
        /// Config file of the running instance (for the admin address and token).
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Admin address to use instead of the config's `[admin] listen`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Start three demo backends and the balancer in front of them (Ctrl-C stops).
    Demo {
        /// Demo config (default: config/demo.toml, or the built-in copy of it).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}
