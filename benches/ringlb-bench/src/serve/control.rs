//! The control socket of `serve push` (`--control ADDR`, loopback): one command
//! per line, one reply line each.
//!
//! - `kill NAME|PORT`: close that server's listener (new connects are refused)
//!   and reset its open connections; `killed NAME PORT N`.
//! - `revive NAME|PORT`: listen again on the same address; `revived NAME PORT`.
//! - `stats`: one line of JSON, `{"servers":[{"name", "addr", "listening",
//!   "open", "sent", "skipped", "late", "reset"}, ...]}`.
//! - `exit`: reply `bye`, then the process exits 0.
//!
//! Anything else gets `error ...`; a line over [`MAX_LINE`] bytes gets an error
//! and the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::push::PushServer;
use crate::net::read_line;

/// Longest command line.
pub const MAX_LINE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Kill(String),
    Revive(String),
    Stats,
    Exit,
}

/// Parse one command line (without its newline).
pub fn parse(line: &str) -> Result<Command, String> {
    let mut words = line.split_whitespace();
    let (Some(verb), arg, None) = (words.next(), words.next(), words.next()) else {
        return Err(if line.trim().is_empty() {
            "empty command (try kill NAME|PORT, revive NAME|PORT, stats, exit)".into()
        } else {
            format!("too many words in {:?}", line.trim())
        });
    };
    match (verb, arg) {
        ("kill", Some(t)) => Ok(Command::Kill(t.to_string())),
        ("revive", Some(t)) => Ok(Command::Revive(t.to_string())),
        ("kill" | "revive", None) => Err(format!("{verb} needs a server NAME or PORT")),
        ("stats", None) => Ok(Command::Stats),
        ("exit", None) => Ok(Command::Exit),
        ("stats" | "exit", Some(_)) => Err(format!("{verb} takes no argument")),
        _ => Err(format!(
            "unknown command {verb:?} (try kill NAME|PORT, revive NAME|PORT, stats, exit)"
        )),
    }
}

/// The server named `target`, else the one listening on port `target`.
fn find<'a>(servers: &'a [Arc<PushServer>], target: &str) -> Option<&'a Arc<PushServer>> {
    servers.iter().find(|s| s.name == target).or_else(|| {
        let port: u16 = target.parse().ok()?;
        servers.iter().find(|s| s.addr.port() == port)
    })
}

/// The reply line (without newline) to one command line; whether to exit.
pub async fn execute(servers: &[Arc<PushServer>], line: &str) -> (String, bool) {
    let cmd = match parse(line) {
        Ok(c) => c,
        Err(e) => return (format!("error {e}"), false),
    };
    let server = |t: &str| {
        find(servers, t).ok_or_else(|| {
            let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            format!(
                "error no server named or on port {t:?} (servers: {})",
                names.join(", ")
            )
        })
    };
    let reply = match cmd {
        Command::Kill(t) => match server(&t) {
            Err(e) => e,
            Ok(s) => match s.kill().await {
                Ok(n) => format!("killed {} {} {n}", s.name, s.addr.port()),
                Err(e) => format!("error {e}"),
            },
        },
        Command::Revive(t) => match server(&t) {
            Err(e) => e,
            Ok(s) => match s.revive() {
                Ok(()) => format!("revived {} {}", s.name, s.addr.port()),
                Err(e) => format!("error {e}"),
            },
        },
        Command::Stats => {
            let list: Vec<_> = servers.iter().map(|s| s.stats()).collect();
            json!({ "servers": list }).to_string()
        }
        Command::Exit => return ("bye".into(), true),
    };
    (reply, false)
}

pub async fn serve(
    listener: TcpListener,
    servers: Arc<Vec<Arc<PushServer>>>,
    exit: CancellationToken,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (servers, exit) = (servers.clone(), exit.clone());
                tokio::spawn(async move {
                    let _ = session(stream, &servers, &exit).await;
                });
            }
            Err(e) => {
                eprintln!("ringlb-bench serve push: control accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn session(
    mut stream: TcpStream,
    servers: &[Arc<PushServer>],
    exit: &CancellationToken,
) -> std::io::Result<()> {
    loop {
        let line = match read_line(&mut stream, MAX_LINE).await {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => {
                let reply = format!("error {e}\n");
                stream.write_all(reply.as_bytes()).await?;
                return stream.shutdown().await;
            }
        };
        let (reply, stop) = execute(servers, &line).await;
        stream.write_all(format!("{reply}\n").as_bytes()).await?;
        if stop {
            stream.flush().await?;
            exit.cancel();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse("kill node-a"), Ok(Command::Kill("node-a".into())));
        assert_eq!(parse("  revive 7070 "), Ok(Command::Revive("7070".into())));
        assert_eq!(parse("stats"), Ok(Command::Stats));
        assert_eq!(parse("exit"), Ok(Command::Exit));
        for bad in [
            "",
            "   ",
            "kill",
            "revive",
            "kill a b",
            "stats now",
            "exit 0",
            "KILL a",
            "restart a",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("bogus").unwrap_err().contains("unknown command"));
    }

    #[tokio::test]
    async fn executes_by_name_and_port() {
        let a = super::super::push::tests::server("a", 64, 1000, false);
        let b = super::super::push::tests::server("b", 64, 1000, false);
        let servers = vec![a.clone(), b.clone()];
        let port = b.addr.port();
        let (r, stop) = execute(&servers, &format!("kill {port}")).await;
        assert_eq!(
            (r.as_str(), stop),
            (format!("killed b {port} 0").as_str(), false)
        );
        let (r, _) = execute(&servers, "kill b").await;
        assert!(r.starts_with("error b is not listening"), "{r}");
        let (r, _) = execute(&servers, "kill nobody").await;
        assert!(r.starts_with("error no server"), "{r}");
        let (r, _) = execute(&servers, "stats").await;
        let v: serde_json::Value = serde_json::from_str(&r).expect("json");
        assert_eq!(v["servers"][0]["listening"], true);
        assert_eq!(v["servers"][1]["listening"], false);
        let (r, _) = execute(&servers, "revive b").await;
        assert_eq!(r, format!("revived b {port}"));
        assert!(b.listening());
        let (r, stop) = execute(&servers, "exit").await;
        assert_eq!((r.as_str(), stop), ("bye", true));
        let (r, _) = execute(&servers, "dance").await;
        assert!(r.starts_with("error unknown command"), "{r}");
    }
}
