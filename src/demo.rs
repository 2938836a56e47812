//! `ringlb demo`: three demo backends on loopback and the real balancer in front of
//! them, from `config/demo.toml` (or the built-in copy of it).

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Mode};
use crate::config::Config;
use crate::error::{ConfigError, Error};
use crate::server::{Server, ShutdownReport};

/// The built-in copy of `config/demo.toml`, used when that file is not found.
pub const BUILTIN_DEMO_TOML: &str = include_str!("../config/demo.toml");

/// Load the demo config: the given path, else `config/demo.toml` if it exists, else
/// the built-in copy.
pub fn load(path: Option<&Path>, default_path: &Path) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::from_file(p),
        None if default_path.exists() => Config::from_file(default_path),
        None => Config::parse(BUILTIN_DEMO_TOML, "<built-in demo.toml>"),
    }
}

/// Start a demo backend on every node address of every pool, then the balancer.
/// Prints where to connect and what to try; returns when `shutdown` is cancelled.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<ShutdownReport, Error> {
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
    println!("{}", instructions(&server, &backends));
    let report = server.run(shutdown).await;
    for b in backends {
        b.stop().await;
    }
    Ok(report)
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
            format!("nc {ip} {port}"),
            "greeted by the node your IP maps to; type a line, it echoes",
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
                "{exe} which --config {} 127.0.0.1 127.0.0.2 127.0.0.3",
                cfg.source.display()
            ),
            "what the ring says, with the fallback order",
        ),
    ];
    let _ = writeln!(s, "Try, in another terminal:");
    for (cmd, what) in &tries {
        let _ = writeln!(s, "  # {what}\n  {cmd}");
    }
    let _ = writeln!(
        s,
        "\nCtrl-C stops (open connections get {} to finish; a second Ctrl-C closes them).",
        crate::config::fmt_duration(cfg.shutdown_grace)
    );
    s
}
