//! The command line: its types (clap derive, no I/O in this file) and the
//! commands that answer from a config file without a running balancer:
//! [`check`] (validate and summarise) and [`which`] (where client IPs go, and
//! how N addresses spread over the nodes);
//! [`config_path`], the config search order when `--config` is not given; and
//! [`docs`], the completions and man pages made from these definitions; and
//! [`running`], what `check` says about a running instance.

pub mod check;
pub mod config_path;
pub mod docs;
pub mod running;
pub mod which;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Path `ringlb demo` uses when `--config` is not given.
pub const DEMO_CONFIG_PATH: &str = "config/demo.toml";

/// The version `ringlb --version` prints: the package version, then the git
/// commit it was built from when build.rs knew it (`0.1.0 (git
/// 0123456789ab)`, `-dirty` when the tree had uncommitted changes).
pub const VERSION: &str = env!("RINGLB_VERSION");
/// The commit alone (12 hex digits, maybe `-dirty`), when known.
pub const GIT_COMMIT: Option<&str> = option_env!("RINGLB_GIT_COMMIT");

/// `--help` of every `--config` that follows the search order.
const CONFIG_HELP: &str = "Config file [default: $RINGLB_CONFIG, else config/ringlb.toml \
     if it exists in the working directory, else /etc/ringlb/ringlb.toml]";

#[derive(Debug, Parser)]
#[command(
    name = "ringlb",
    version = VERSION,
    about = "Consistent-hashing TCP load balancer: each client IP sticks to one backend node",
    after_help = concat!(
        "Config file of run, check, which, node, reload: --config PATH if given, ",
        "else $RINGLB_CONFIG, else config/ringlb.toml if it exists in the working ",
        "directory, else /etc/ringlb/ringlb.toml."
    )
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
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
    },
    /// Parse and validate a config; print a summary, or every error (exit 1).
    Check {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Also resolve every pool's [discover] name once and print its nodes.
        #[arg(long)]
        probe: bool,
    },
    /// Print the node each client IP maps to, then its fallback order; with
    /// --spread, how N pseudo-random addresses spread over each pool's nodes.
    Which {
        #[arg(long, short, help = CONFIG_HELP)]
        config: Option<PathBuf>,
        /// Only this pool (default: every pool).
        #[arg(long, conflicts_with = "listener")]
        pool: Option<String>,
        /// Only the pool of this listener.
        #[arg(long)]
        listener: Option<String>,
        /// Probe every node once now and leave the ones that fail off the ring.
        #[arg(long)]
        probe: bool,
        /// Map N pseudo-random IPv4 addresses (1 to 10,000,000) and print per
        /// pool how they spread over the nodes against each node's weight-fair
        /// share, and max/mean.
        #[arg(long, value_name = "N",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(which::MAX_SPREAD)))]
        spread: Option<u32>,
        /// Seed of the --spread addresses (the same seed gives the same addresses).
        #[arg(long, value_name = "S", requires = "spread", default_value_t = which::DEFAULT_SEED)]
        seed: u64,
        /// Client IPs (IPv4 or IPv6). `-` reads whitespace-separated IPs from stdin.
        #[arg(required_unless_present = "spread", value_name = "IP")]
        ips: Vec<String>,
    },
    /// Ask a running ringlb to reload its config (sends SIGHUP to the pid in the
    /// pid file). The config is checked first and nothing is sent if it is
    /// invalid; with --pid-file alone no config is read.
    Reload {
        /// Pid file of the running instance (default: `pid_file` of the config).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Config file to check before signalling and to find `pid_file` in
        /// [default without --pid-file: $RINGLB_CONFIG, else config/ringlb.toml
        /// if it exists in the working directory, else /etc/ringlb/ringlb.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Upgrade a running ringlb to a new binary without dropping a connection: it
    /// starts the new binary, hands it every listening socket and node state, and
    /// drains once the new one accepts. Exits non-zero, with the reason, if the new
    /// process fails (the running one keeps serving). SIGUSR2 does the same.
    Upgrade {
        /// Pid file of the running instance (default: `pid_file` of the config).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Config file to check first (nothing is asked if it is invalid) and to
        /// find `pid_file` in; the new process reads the file the running one was
        /// started with [default without --pid-file: $RINGLB_CONFIG, else
        /// config/ringlb.toml if it exists in the working directory, else
        /// /etc/ringlb/ringlb.toml]
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
        /// Config file of the running instance (for the admin address and token)
        /// [default: $RINGLB_CONFIG, else config/ringlb.toml if it exists in the
        /// working directory, else /etc/ringlb/ringlb.toml]
        #[arg(long, short)]
        config: Option<PathBuf>,
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
    /// Print the shell completion script for bash, zsh, fish, elvish or
    /// powershell on stdout.
    ///
    /// For example `ringlb completions bash > ~/.local/share/bash-completion/completions/ringlb`.
    /// The Debian package installs the bash, zsh and fish ones.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page ringlb(1) (roff) on stdout, or with --out write
    /// ringlb.1 and one ringlb-SUBCOMMAND.1 per subcommand into a directory.
    #[command(hide = true)]
    Manpage {
        /// Directory to write the pages into instead of printing ringlb.1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}
