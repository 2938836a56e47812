//! `ringlb demo`: three demo backends on loopback and the real balancer in front of
//! them, from `config/demo.toml` (or the built-in copy of it).

pub mod backend;

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{ConfigError, Error};
use crate::server::Server;
use crate::shutdown::{handle_signals, ShutdownReport, Signals};
use backend::{Backend, Mode};

/// The built-in copy of `config/demo.toml`, used when that file is not found.
pub const BUILTIN_DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// Load the demo config: the given path, else `config/demo.toml` if it exists, else
/// the built-in copy.
pub fn load(path: Option<&Path>, default_path: &Path) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::from_file(p),
        None if default_path.exists() => Config::from_file(default_path),
        None => Config::parse(BUILTIN_DEMO_TOML, "<built-in demo.toml>"),
    }
}

/// `ringlb demo` as a whole: a runtime with the config's worker count, the
/// signal handlers (a stop signal ends the demo, a second one closes what is
/// left at once; it has nothing to reload), then [`run`].
pub fn run_process(cfg: Config) -> Result<ShutdownReport, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.effective_workers())
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the tokio runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let close_now = CancellationToken::new();
        let signals = Signals::install()?;
        tokio::spawn(handle_signals(
            signals,
            shutdown.clone(),
            close_now.clone(),
            None,
        ));
        run(cfg, shutdown, close_now).await
    })
}

/// Start a demo backend on every node address of every pool, then the balancer.
/// Prints where to connect and what to try; returns when `shutdown` is
/// cancelled and the drain is over. Cancelling `close_now` (before or during
/// the drain) closes the connections still open when the drain starts, as a
/// second stop signal does for `ringlb run`.
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    close_now: CancellationToken,
) -> Result<ShutdownReport, Error> {
    let mut backends = Vec::new();
    for pool in cfg.pools.values() {
        for node in &pool.nodes {
            let b = Backend::start(&node.name, node.addr, Mode::Demo)
                .await
                .map_err(|source| Error::Io {
                    what: format!(
                        "demo backend {} cannot listen on {} (is another demo running? edit {} to use other ports)",
                        node.name,
                        node.addr,
                        cfg.source.display()
                    ),
                    source,
                })?;
            backends.push(b);
        }
    }
    let server = Server::bind(cfg)?;
    // The server's own close-now token exists only from here: pass the
    // request on (it used to go to a token nobody watched, so a second Ctrl-C
    // said "closing open connections now" and did nothing).
    let server_close_now = server.hard_stop();
    let link = tokio::spawn(async move {
        close_now.cancelled().await;
        server_close_now.cancel();
    });
    println!("{}", instructions(&server, &backends));
    let toggles = toggle_on_stdin(&backends);
    let report = server.run(shutdown).await;
    link.abort();
    toggles.abort();
    for b in backends {
        b.stop().await;
    }
    Ok(report)
}

/// Typing a backend's name (and Enter) flips its `/healthcheck` between 200 and 503.
/// stdin is read on a plain thread so a blocked read never holds up shutdown.
fn toggle_on_stdin(backends: &[Backend]) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let switches: Vec<(String, backend::HealthSwitch)> = backends
        .iter()
        .map(|b| (b.name.clone(), b.health_switch()))
        .collect();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let name = line.trim();
            if name.is_empty() {
                continue;
            }
            match switches.iter().find(|(n, _)| n == name) {
                Some((n, sw)) => {
                    let healthy = !sw.get();
                    sw.set(healthy);
                    println!(
                        "{n}: /healthcheck now answers {}; watch the log for the node going {} after 2 probes",
                        if healthy { 200 } else { 503 },
                        if healthy { "UP" } else { "DOWN" }
                    );
                }
                None => println!(
                    "no demo backend named {name:?}; type one of: {}",
                    switches
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    })
}

fn instructions(server: &Server, backends: &[Backend]) -> String {
    use std::fmt::Write;
    let cfg = server.config();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nringlb demo is running (config: {})",
        cfg.source.display()
    );
    for b in backends {
        let _ = writeln!(s, "  demo backend {:<8} on {}", b.name, b.addr);
    }
    let Some((name, addr)) = server.local_addrs().into_iter().next() else {
        return s;
    };
    let (ip, port) = (addr.ip(), addr.port());
    let _ = writeln!(s, "  balancer listener {name} on {addr}\n");
    let exe = std::env::args().next().unwrap_or_else(|| "ringlb".into());
    let tries = [
        (
            format!("nc -N {ip} {port}"),
            "greeted by the node your IP maps to; type a line, it echoes (nc -N is OpenBSD netcat: \
             package netcat-openbsd on Debian/Ubuntu)",
        ),
        (
            format!("curl -s http://{addr}/"),
            "HTTP through the balancer: 'hello from <node>'",
        ),
        (
            format!("for i in $(seq 1 8); do curl -s --interface 127.0.0.$i http://{addr}/; done"),
            "8 client IPs, each sticks to its node",
        ),
        (
            format!(
                "for i in $(seq 10 39); do (while :; do nc -d -s 127.0.0.$i {ip} {port} > /dev/null; sleep 1; done) & done"
            ),
            "30 clients that hold a connection open and reconnect when it is closed: watch them \
             move on the status page's charts when a backend goes down and up (kill $(jobs -p) stops them)",
        ),
    ];
    let mut tries = tries.to_vec();
    if cfg.source.exists() {
        tries.push((
            format!(
                "{exe} which --config {} --probe 127.0.0.1 127.0.0.2 127.0.0.3",
                cfg.source.display()
            ),
            "what the ring says, with node states and the fallback order",
        ));
    }
    if let Some(b) = backends.get(1) {
        tries.push((
            format!("curl -s http://{}/health/down", b.addr),
            "make a backend 'overloaded' (/healthcheck answers 503): its clients move; /health/up brings them back",
        ));
    }
    let _ = writeln!(s, "Try, in another terminal:");
    for (cmd, what) in &tries {
        let _ = writeln!(s, "  # {what}\n  {cmd}");
    }
    if let Some(admin) = server.admin_addr() {
        let _ = writeln!(
            s,
            "\nStatus page: http://{admin}/  (a live chart per node; also /status as JSON and /metrics for Prometheus)"
        );
    }
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let _ = writeln!(
        s,
        "\nOr type a backend's name ({}) and Enter here to flip its health.",
        names.join(", ")
    );
    let _ = writeln!(
        s,
        "\nCtrl-C stops (open connections get {} to finish; a second Ctrl-C closes them).",
        crate::config::fmt_duration(cfg.shutdown_grace)
    );
    s
}
