//! The client side of the admin endpoint, for `ringlb node` and tools: where to
//! reach an endpoint, one blocking request (response head parsed by `httparse`),
//! the node-action path with its names percent-encoded, and the whole
//! `ringlb node drain|enable|disable POOL NODE` command. Blocking std I/O with
//! timeouts; no tokio, no printing (the binary prints what this returns).

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::action_verb;
use crate::config::{AdminState, AdminToken, Config};
use crate::error::ConfigError;

/// Bytes of a path segment sent as they are: the unreserved characters of
/// RFC 3986 (alphanumerics and `-._~`) and `:` (node names are often
/// `host:port`). Everything else, every non-ASCII byte included, is `%XX`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// Most response bytes read.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;
/// Most header lines in a response head.
const MAX_HEADERS: usize = 32;
/// Time `ringlb node` gives the endpoint to connect and to answer.
const NODE_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The address to reach an admin endpoint bound to `listen` from this host (a
/// wildcard address is reached through loopback).
pub fn reach(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listen.port()))
        }
        IpAddr::V6(a) if a.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

/// One blocking request to an admin endpoint (for `ringlb node` and tools):
/// returns the status code and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.secret()))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut buf)?;
    parse_response(&buf)
}

/// The status code and the body (everything after the head: the endpoint closes
/// the connection after it) of a whole response.
fn parse_response(buf: &[u8]) -> io::Result<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let code = resp.code.unwrap_or_default();
            Ok((code, String::from_utf8_lossy(&buf[n..]).into_owned()))
        }
        _ => {
            let text = String::from_utf8_lossy(buf);
            let head = text.split_once("\r\n\r\n").map_or(&*text, |(h, _)| h);
            let start: String = head.chars().take(80).collect();
            Err(io::Error::other(format!("not an HTTP response: {start:?}")))
        }
    }
}

/// Percent-encode one path segment: alphanumerics and `-._~:` stay as they are,
/// every other byte becomes `%XX`; the endpoint decodes it back to the same text.
pub fn escape_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `/pools/{pool}/nodes/{node}/{drain|enable|disable}` for `state`.
pub fn node_path(pool: &str, node: &str, state: AdminState) -> String {
    format!(
        "/pools/{}/nodes/{}/{}",
        escape_segment(pool),
        escape_segment(node),
        action_verb(state)
    )
}

/// A node state change the endpoint accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    /// The pool and node as asked for.
    pub pool: String,
    pub node: String,
    /// The state now and before, as the endpoint reported them (`?` if it did
    /// not say).
    pub admin_state: String,
    pub previous: String,
}

impl fmt::Display for NodeChange {
    /// `web/node-1: drain (was enabled)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {} (was {})",
            self.pool, self.node, self.admin_state, self.previous
        )
    }
}

/// Why `ringlb node` did not change the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeCommandError {
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No `--admin` and no `[admin]` table to find the endpoint in.
    #[error("{} has no [admin] table: ringlb node talks to the admin endpoint (or pass --admin ADDR)", .config.display())]
    NoAdmin { config: PathBuf },
    /// The endpoint could not be reached or did not answer HTTP.
    #[error("calling the admin endpoint at {addr}: {error}")]
    Unreachable { addr: SocketAddr, error: io::Error },
    /// The endpoint answered with an error (unknown pool or node, bad token...).
    #[error("admin endpoint at {addr} answered {status}: {body}")]
    Refused {
        addr: SocketAddr,
        status: u16,
        /// The answer's body, trimmed.
        body: String,
    },
}

/// `ringlb node drain|enable|disable POOL NODE`: one POST to the admin endpoint
/// of the instance that runs `config` (or at `admin`), with the config's token.
pub fn node_command(
    state: AdminState,
    pool: &str,
    node: &str,
    config: &Path,
    admin: Option<SocketAddr>,
) -> Result<NodeChange, NodeCommandError> {
    let cfg = Config::from_file(config)?;
    let admin_cfg = cfg.admin.as_ref();
    let addr = match (admin, admin_cfg) {
        (Some(a), _) => a,
        (None, Some(a)) => reach(a.listen),
        (None, None) => {
            return Err(NodeCommandError::NoAdmin {
                config: config.to_path_buf(),
            })
        }
    };
    let token = admin_cfg.and_then(|a| a.token.as_ref());
    let path = node_path(pool, node, state);
    let (status, body) = request(addr, "POST", &path, token, NODE_COMMAND_TIMEOUT)
        .map_err(|error| NodeCommandError::Unreachable { addr, error })?;
    if status != 200 {
        return Err(NodeCommandError::Refused {
            addr,
            status,
            body: body.trim().to_string(),
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let field = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    Ok(NodeChange {
        pool: pool.to_string(),
        node: node.to_string(),
        admin_state: field("admin_state"),
        previous: field("previous"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::serve::node_action;
    use super::*;

    #[test]
    fn segments_keep_unreserved_characters_and_escape_the_rest() {
        assert_eq!(escape_segment("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(escape_segment("node-1_a.b~c"), "node-1_a.b~c");
        assert_eq!(escape_segment("a b/c%d"), "a%20b%2Fc%25d");
        assert_eq!(escape_segment("[::1]:80"), "%5B::1%5D:80");
        assert_eq!(escape_segment("ü?#&"), "%C3%BC%3F%23%26");
        assert_eq!(escape_segment(""), "");
    }

    #[test]
    fn node_paths_round_trip_through_the_endpoint_parser() {
        let names = [
            "10.0.0.1:8080",
            "a b/c%d",
            "%41%zz%",
            "ünïcødé/名前 ☃",
            "[2001:db8::1]:443",
            "../..",
            "?x=1#y",
            "node-0",
        ];
        for pool in names {
            for node in names {
                for state in [AdminState::Drain, AdminState::Enabled, AdminState::Disabled] {
                    let path = node_path(pool, node, state);
                    assert_eq!(
                        node_action(&path),
                        Some((pool.to_string(), node.to_string(), state)),
                        "{path}"
                    );
                }
            }
        }
        assert_eq!(
            node_path("web", "10.0.0.1:80", AdminState::Drain),
            "/pools/web/nodes/10.0.0.1:80/drain"
        );
        assert_eq!(
            node_path("p", "n", AdminState::Enabled),
            "/pools/p/nodes/n/enable"
        );
        assert_eq!(
            node_path("p", "n", AdminState::Disabled),
            "/pools/p/nodes/n/disable"
        );
    }

    #[test]
    fn responses_are_parsed_and_garbage_is_an_error() {
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n").unwrap(),
            (404, "no\n".to_string())
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(),
            (200, String::new())
        );
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            "é".repeat(100).as_bytes(),
        ] {
            let e = parse_response(bad).unwrap_err().to_string();
            assert!(e.starts_with("not an HTTP response: "), "{e}");
        }
    }

    #[test]
    fn wildcard_addresses_are_reached_through_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(reach(a("0.0.0.0:9")), a("127.0.0.1:9"));
        assert_eq!(reach(a("[::]:9")), a("[::1]:9"));
        assert_eq!(reach(a("10.1.2.3:9")), a("10.1.2.3:9"));
    }
}
