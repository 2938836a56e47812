//! Command line of `ringlb-bench` (clap derive). Scripts depend on these names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::net::Cidr;

/// Longest `--duration` / `--hold` / `--warmup` accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Debug, Parser)]
#[command(
    name = "ringlb-bench",
    version,
    about = "Benchmark backends and load generator for ringlb (loopback only)",
    long_about = "Benchmark backends and load generator for ringlb.\n\n\
        Every address it binds or connects to must be on loopback (127.0.0.0/8), \
        and every load run ends within its duration plus a bounded teardown."
)]
pub struct Cli {
    /// Tokio worker threads [default: RINGLB_WORKERS, else the number of cores]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run benchmark backends until SIGINT/SIGTERM; prints `listening NAME ADDR` per server
    Serve(ServeArgs),
    /// Generate load against a target (a ringlb listener or a backend)
    Load(LoadArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeKind {
    /// Echo every byte back; on client EOF finish echoing, then shut down writing
    Echo,
    /// Read and discard until EOF, then write the byte count as "N\n" and close
    Sink,
    /// Write a repeating pattern as fast as possible until the client goes away
    Source,
    /// Minimal keep-alive HTTP/1.1 responder (X-Backend: NAME, body "NAME\n")
    Http,
    /// One --size message on accept and one every --interval ("NAME: #SEQ t=NS up Ns"),
    /// like a WebSocket push app; --control kills and revives servers
    Push,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// What the backend does with each connection
    #[arg(value_enum)]
    pub kind: ServeKind,

    /// Address to listen on (loopback, port 0 picks one); repeat for several servers
    #[arg(long = "listen", value_name = "ADDR", required = true, value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,

    /// Server name; with several --listen the servers are NAME-0, NAME-1, ...
    #[arg(long, default_value = "backend", value_parser = parse_name)]
    pub name: String,

    /// Send one line "NAME\n" first on every new connection (echo, sink, source)
    #[arg(long)]
    pub greet: bool,

    /// push: bytes per message, newline included [default: 64]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<usize>,

    /// push: time between two messages on a connection (10ms to 1h) [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// push: also echo back whatever the client sends (between messages)
    #[arg(long)]
    pub echo: bool,

    /// push: control socket (loopback): lines `kill NAME|PORT`, `revive NAME|PORT`, `stats`, `exit`
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub control: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(Debug, Subcommand)]
pub enum Workload {
    /// Bulk transfer: streams write to a `sink` (up) or read from a `source` (down)
    Throughput(ThroughputArgs),
    /// New connections per second: connect, 64 bytes to an `echo` and back, close
    Connrate(ConnrateArgs),
    /// Request/response latency on persistent connections (`echo`, or `http` with --protocol http)
    Rr(RrArgs),
    /// Memory per idle connection: RSS of --pid before and after opening N connections
    Idle(IdleArgs),
    /// Distribution of N source IPs over the nodes (backends started with --greet)
    Spread(SpreadArgs),
    /// N held connections reading `serve push` messages: delivery rate and latency,
    /// and the proxy's CPU per 1,000 messages and RSS per connection (--pid)
    Fanout(FanoutArgs),
    /// Kill one `serve push` node (--control) under N clients and time their reconnects
    Storm(StormArgs),
}

/// Options shared by every workload.
#[derive(Debug, Args, Clone)]
pub struct Common {
    /// Address to connect to: a ringlb listener or a backend (must be in 127.0.0.0/8)
    #[arg(long, value_name = "ADDR", value_parser = parse_target)]
    pub target: SocketAddr,

    /// Client sockets bind source IPs from this range, round-robin (hosts .0 and .255 skipped)
    #[arg(long, value_name = "CIDR", default_value = "127.1.0.0/16")]
    pub source_ips: Cidr,

    /// Time allowed for a connect, a greeting or one request and its reply
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Print one JSON object with all figures instead of the table
    #[arg(long)]
    pub json: bool,

    /// No progress lines on stderr
    #[arg(long, short)]
    pub quiet: bool,
}

/// Measured duration and unmeasured warmup.
#[derive(Debug, Args, Clone, Copy)]
pub struct Timing {
    /// Measured time (humantime: 10s, 1m30s; at most 10m)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load before measuring starts (not counted)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_warmup)]
    pub warmup: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Client writes to a `sink` backend
    Up,
    /// Client reads from a `source` backend
    Down,
}

#[derive(Debug, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,

    /// Parallel streams (connections)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub streams: u32,

    /// up: write to a sink backend; down: read from a source backend
    #[arg(long, value_enum, default_value_t = Direction::Up)]
    pub direction: Direction,
}

#[derive(Debug, Args)]
pub struct ConnrateArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,

    /// Workers, each running connect / 64 bytes out and back / close in a loop
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Read one greeting line per connection first (backend started with --greet)
    #[arg(long)]
    pub expect_greeting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// S bytes out, S bytes back (echo backend)
    Tcp,
    /// `GET / HTTP/1.1` and one full response (http backend)
    Http,
}

#[derive(Debug, Args)]
pub struct RrArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,

    /// Persistent connections, each with one request in flight
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Request (and echoed reply) size in bytes, for --protocol tcp
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub size: u32,

    /// tcp: echo S bytes; http: GET / and read one response
    #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
    pub protocol: Protocol,

    /// Read one greeting line per connection first (backend started with --greet)
    #[arg(long)]
    pub expect_greeting: bool,

    /// Wait this long after each reply before the next request (paced load:
    /// each connection sends at most one request per pause); 0: none
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_pause)]
    pub pause: Duration,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,

    /// Connections to open and hold
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// How long to hold them once established (after the 1 s settle)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Process whose VmRSS is measured (usually ringlb); without it no RSS figures
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Read one greeting line per connection (proves it reached a backend)
    #[arg(long)]
    pub expect_greeting: bool,

    /// Connects in flight at once while opening
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

#[derive(Debug, Args)]
pub struct SpreadArgs {
    #[command(flatten)]
    pub common: Common,

    /// Distinct source IPs (the first N usable addresses of --source-ips)
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub ips: u32,

    /// Connections in flight at once
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Write the mapping as JSON {ip: node} to FILE
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    /// Compare with a mapping saved earlier; exit 1 if an IP moved that should not have
    #[arg(long, value_name = "FILE")]
    pub compare: Option<PathBuf>,

    /// A node's weight (1-256; repeatable): the fair share becomes
    /// weight-proportional, and a node given but not seen counts as 0 IPs.
    /// Nodes seen but not given have weight 1
    #[arg(long = "weight", value_name = "NAME=W", value_parser = parse_weight)]
    pub weights: Vec<(String, u32)>,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub timing: Timing,

    /// Connections to open (one source IP each) and hold
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Message size of the push servers (their --size)
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = parse_size)]
    pub size: usize,

    /// Process to measure (CPU and RSS, with its children); repeatable
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Connects in flight at once while opening
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,

    /// Reopen a lost connection at once (from the same source IP), retrying every
    /// 100 ms while connects fail; reconnects are counted apart from losses
    #[arg(long)]
    pub reconnect: bool,
}

#[derive(Debug, Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,

    /// The push servers' control address (`serve push --control`)
    #[arg(long, value_name = "ADDR", value_parser = parse_target)]
    pub control: SocketAddr,

    /// Clients (one source IP each)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub connections: u32,

    /// Message size of the push servers (their --size)
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = parse_size)]
    pub size: usize,

    /// Node to kill [default: the one with the most clients]
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub kill: Option<String>,

    /// Each affected client waits a uniform random delay in [0, D] before reconnecting
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_jitter)]
    pub jitter: Duration,

    /// Keep watching every connection this long after the last client is back
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_jitter)]
    pub settle: Duration,

    /// Time allowed from the kill until every affected client is back
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub recover_within: Duration,

    /// Do not revive the killed node after the report
    #[arg(long)]
    pub no_revive: bool,

    /// Connects in flight at once while opening
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

fn parse_humantime(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 3s, 1m30s)"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > MAX_DURATION {
        return Err("at most 10m".into());
    }
    Ok(d)
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d > MAX_DURATION {
        return Err("at most 10m".into());
    }
    Ok(d)
}

fn parse_pause(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d > Duration::from_secs(10) {
        return Err("at most 10s".into());
    }
    Ok(d)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    if d > Duration::from_secs(60) {
        return Err("at most 60s".into());
    }
    Ok(d)
}

fn parse_jitter(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d > Duration::from_secs(60) {
        return Err("at most 60s".into());
    }
    Ok(d)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_humantime(s)?;
    if d < Duration::from_millis(10) {
        return Err("must be at least 10ms".into());
    }
    if d > Duration::from_secs(3600) {
        return Err("at most 1h".into());
    }
    Ok(d)
}

fn parse_size(s: &str) -> Result<usize, String> {
    let max = crate::pushmsg::MAX_SIZE;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a whole number of bytes from 1 to {max}"
        )),
    }
}

fn parse_loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not IP:PORT (for example 127.0.0.1:7070)"))?;
    match addr {
        SocketAddr::V4(a) if a.ip().octets()[0] == 127 => Ok(addr),
        _ => Err(format!(
            "{addr} is not in 127.0.0.0/8; ringlb-bench only uses loopback addresses"
        )),
    }
}

fn parse_target(s: &str) -> Result<SocketAddr, String> {
    let addr = parse_loopback_addr(s)?;
    if addr.port() == 0 {
        return Err("port 0 cannot be connected to".into());
    }
    Ok(addr)
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    parse_loopback_addr(s)
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 100 {
        return Err("must be 1 to 100 characters".into());
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(s.to_string())
}

/// `NAME=W`: a node name (as its greeting says it) and a weight of 1 to 256,
/// as in ringlb's config.
fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (name, w) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=WEIGHT (for example node-a=2)"))?;
    let name = parse_name(name).map_err(|e| format!("node name {e}"))?;
    match w.trim().parse::<u32>() {
        Ok(w @ 1..=256) => Ok((name, w)),
        _ => Err(format!("weight {w:?} is not a whole number from 1 to 256")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn targets_must_be_loopback() {
        assert!(parse_target("127.0.0.1:7070").is_ok());
        assert!(parse_target("127.9.8.7:1").is_ok());
        assert!(parse_target("10.0.0.1:80").is_err());
        assert!(parse_target("[::1]:80").is_err());
        assert!(parse_target("127.0.0.1:0").is_err());
        assert!(parse_target("localhost").is_err());
        assert!(parse_listen("127.0.0.1:0").is_ok());
        assert!(parse_listen("0.0.0.0:80").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("11m").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_warmup("0s"), Ok(Duration::ZERO));
        assert!(parse_timeout("0ms").is_err());
    }

    #[test]
    fn parses_workloads() {
        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "load",
            "rr",
            "--target",
            "127.0.0.1:7070",
            "--connections",
            "4",
            "--protocol",
            "http",
            "--workers",
            "1",
        ])
        .expect("parses");
        assert_eq!(cli.workers, Some(1));
        let Command::Load(LoadArgs {
            workload: Workload::Rr(rr),
        }) = cli.command
        else {
            panic!("not rr");
        };
        assert_eq!(rr.connections, 4);
        assert_eq!(rr.protocol, Protocol::Http);
        assert_eq!(rr.timing.duration, Duration::from_secs(10));
        assert_eq!(rr.pause, Duration::ZERO);
        assert_eq!(parse_pause("3ms"), Ok(Duration::from_millis(3)));
        assert!(parse_pause("11s").is_err());

        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "serve",
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--greet",
        ])
        .expect("parses");
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.len(), 2);
        assert!(s.greet);
        assert_eq!(s.name, "backend");
    }

    #[test]
    fn push_fanout_and_storm() {
        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "serve",
            "push",
            "--listen",
            "127.0.0.1:0",
            "--size",
            "128",
            "--interval",
            "250ms",
            "--echo",
            "--control",
            "127.0.0.1:0",
        ])
        .expect("parses");
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.kind, ServeKind::Push);
        assert_eq!(s.size, Some(128));
        assert_eq!(s.interval, Some(Duration::from_millis(250)));
        assert!(s.echo && s.control.is_some());
        for bad in [
            ["--size", "0"],
            ["--size", "65537"],
            ["--interval", "5ms"],
            ["--interval", "2h"],
            ["--control", "10.0.0.1:1"],
        ] {
            let mut argv = vec!["ringlb-bench", "serve", "push", "--listen", "127.0.0.1:0"];
            argv.extend(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "load",
            "fanout",
            "--target",
            "127.0.0.1:7070",
            "--pid",
            "1",
            "--pid",
            "2",
        ])
        .expect("parses");
        let Command::Load(LoadArgs {
            workload: Workload::Fanout(f),
        }) = cli.command
        else {
            panic!("not fanout");
        };
        assert_eq!((f.pids, f.size, f.connections), (vec![1, 2], 64, 1000));
        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "load",
            "storm",
            "--target",
            "127.0.0.1:7070",
            "--control",
            "127.0.0.1:7071",
            "--kill",
            "node-a",
            "--jitter",
            "1s",
            "--no-revive",
        ])
        .expect("parses");
        let Command::Load(LoadArgs {
            workload: Workload::Storm(st),
        }) = cli.command
        else {
            panic!("not storm");
        };
        assert_eq!(st.kill.as_deref(), Some("node-a"));
        assert_eq!(st.jitter, Duration::from_secs(1));
        assert!(st.no_revive);
        assert!(
            Cli::try_parse_from([
                "ringlb-bench",
                "load",
                "storm",
                "--target",
                "127.0.0.1:7070",
            ])
            .is_err(),
            "--control is required"
        );
    }

    #[test]
    fn spread_weights() {
        assert_eq!(parse_weight("node-a=2"), Ok(("node-a".into(), 2)));
        assert_eq!(parse_weight("a=b=256"), Ok(("a=b".into(), 256)));
        for bad in [
            "node-a",
            "node-a=0",
            "node-a=257",
            "node-a=x",
            "=2",
            "a b=2",
        ] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
        let cli = Cli::try_parse_from([
            "ringlb-bench",
            "load",
            "spread",
            "--target",
            "127.0.0.1:7070",
            "--weight",
            "a=1",
            "--weight",
            "b=3",
        ])
        .expect("parses");
        let Command::Load(LoadArgs {
            workload: Workload::Spread(sp),
        }) = cli.command
        else {
            panic!("not spread");
        };
        assert_eq!(sp.weights, [("a".to_string(), 1), ("b".to_string(), 3)]);
    }
}
