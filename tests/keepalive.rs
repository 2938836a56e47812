//! `tcp_keepalive` on listeners (client sockets) and pools (node sockets): the
//! kernel's keepalive timer is read back with `ss -tno` on the sockets of a real
//! proxied connection, and a reload changes it for new connections only.
//! (Detection of a dead peer is in `tests/netns.rs`, which can black-hole one.)

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{
    backends, client_ip, connect_from, http_request, needs, read_line, reload, write_file,
};
use ringlb::demo::backend::Backend;
use ringlb::{Config, Server};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The keepalive timer `ss` shows for the established socket from `local` to
/// `peer`: `Some(time left)` when keepalive is on, `None` when the socket has
/// no timer or another one; panics if there is no such socket.
fn keepalive_timer(local: SocketAddr, peer: SocketAddr) -> Option<Duration> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 4 && f[2] == local.to_string() && f[3] == peer.to_string()
        })
        .unwrap_or_else(|| panic!("no socket {local} -> {peer} in:\n{text}"));
    let timer = line.split("timer:(keepalive,").nth(1)?;
    let left = timer.split(',').next().unwrap();
    Some(parse_ss_time(left).unwrap_or_else(|| panic!("cannot read {left:?} in {line:?}")))
}

/// `1min8sec`, `11sec`, `9.5sec`, `300ms` (iproute2's formats).
fn parse_ss_time(s: &str) -> Option<Duration> {
    let (min, rest) = match s.split_once("min") {
        Some((m, r)) => (m.parse::<u64>().ok()?, r),
        None => (0, s),
    };
    let extra = if let Some(sec) = rest.strip_suffix("sec") {
        Duration::from_secs_f64(sec.parse::<f64>().ok()?)
    } else if let Some(ms) = rest.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else if rest.is_empty() {
        Duration::ZERO
    } else {
        return None;
    };
    Some(Duration::from_secs(min * 60) + extra)
}

#[test]
fn ss_times_parse() {
    assert_eq!(parse_ss_time("1min8sec"), Some(Duration::from_secs(68)));
    assert_eq!(parse_ss_time("11sec"), Some(Duration::from_secs(11)));
    assert_eq!(parse_ss_time("9.5sec"), Some(Duration::from_millis(9500)));
    assert_eq!(parse_ss_time("300ms"), Some(Duration::from_millis(300)));
    assert_eq!(parse_ss_time("2min"), Some(Duration::from_secs(120)));
    assert_eq!(parse_ss_time("soon"), None);
}

/// Assert a keepalive timer with at most `idle` left and more than `idle - 4 s`
/// (the connection was made moments ago and has been idle since).
fn assert_idle(what: &str, timer: Option<Duration>, idle: u64) {
    let left = timer.unwrap_or_else(|| panic!("{what}: no keepalive timer"));
    assert!(
        left <= Duration::from_secs(idle) && left > Duration::from_secs(idle.saturating_sub(4)),
        "{what}: keepalive timer {left:?}, expected just under {idle}s"
    );
}

fn config(node: &Backend, listen: SocketAddr, listener_ka: &str, pool_ka: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"lb\"\nlisten = \"{listen}\"\npool = \"p\"\n{listener_ka}\n\
         [pools.p]\n{pool_ka}\n[pools.p.health]\nkind = \"none\"\n\
         [[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
        node.name, node.addr
    )
}

/// One proxied connection from client `i`: the client's stream and the balancer's
/// socket towards the node (found as the node's only new peer).
struct Proxied {
    client: TcpStream,
    node_side: SocketAddr,
}

async fn proxied(i: u32, lb: SocketAddr, node: &Backend, before: &[SocketAddr]) -> Proxied {
    let mut client = connect_from(client_ip(i), lb).await.unwrap();
    assert_eq!(read_line(&mut client).await.unwrap(), node.name);
    let node_side = node_peers(node.addr)
        .into_iter()
        .find(|p| !before.contains(p))
        .expect("the balancer's socket to the node");
    Proxied { client, node_side }
}

/// Peers of established sockets whose local end is `addr` (the node's side).
fn node_peers(addr: SocketAddr) -> Vec<SocketAddr> {
    let out = Command::new("ss")
        .args(["-tnH", "state", "established"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == addr.to_string()).then(|| f[3].parse().ok())?
        })
        .collect()
}

#[tokio::test]
async fn keepalive_reaches_client_and_node_sockets_and_a_reload_changes_new_connections() {
    let node = backends(1).await.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringlb.toml");
    // The same `listen` text in every reload (port 0 included): the listener
    // keeps its socket.
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    write_file(
        &path,
        &config(
            &node,
            listen,
            "tcp_keepalive = { idle = \"37s\", interval = \"2s\", count = 3 }",
            "tcp_keepalive = { idle = \"23s\", interval = \"3s\", count = 2 }",
        ),
    );
    let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
    let handle = server.handle();
    let lb = server.local_addr("lb").unwrap();
    let admin = server.admin_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    let first = proxied(1, lb, &node, &[]).await;
    let client_addr = first.client.local_addr().unwrap();
    // The balancer's socket to the client inherited the listener's setting.
    assert_idle("client side", keepalive_timer(lb, client_addr), 37);
    // Its socket to the node has the pool's.
    assert_idle("node side", keepalive_timer(first.node_side, node.addr), 23);
    // Control: the client's own socket and the node's have none (nobody set it).
    assert_eq!(keepalive_timer(client_addr, lb), None);
    assert_eq!(keepalive_timer(node.addr, first.node_side), None);

    // /status shows both settings.
    let (code, _, body) = http_request(admin, "GET", "/status", "").await;
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        st["listeners"][0]["tcp_keepalive"],
        "idle 37s, interval 2s, count 3"
    );
    assert_eq!(
        st["pools"][0]["tcp_keepalive"],
        "idle 23s, interval 3s, count 2"
    );

    // Reload: the listener's idle time changes, the pool's keepalive goes off.
    let rec = reload(
        &handle,
        &path,
        &config(
            &node,
            listen,
            "tcp_keepalive = { idle = \"53s\" }",
            "tcp_keepalive = false",
        ),
    )
    .await;
    assert!(rec.ok, "{}", rec.message);
    assert!(
        rec.message.contains("tcp_keepalive idle 37s, interval 2s, count 3 -> idle 53s, interval (kernel), count (kernel)"),
        "{}",
        rec.message
    );
    assert!(
        rec.message
            .contains("tcp_keepalive idle 23s, interval 3s, count 2 -> off"),
        "{}",
        rec.message
    );

    let second = proxied(2, lb, &node, &[first.node_side]).await;
    let second_addr = second.client.local_addr().unwrap();
    assert_idle(
        "client side after reload",
        keepalive_timer(lb, second_addr),
        53,
    );
    assert_eq!(
        keepalive_timer(second.node_side, node.addr),
        None,
        "node side after the pool's keepalive went off"
    );
    // The first connection keeps what it was opened with.
    assert!(keepalive_timer(lb, client_addr).is_some());
    assert!(keepalive_timer(first.node_side, node.addr).is_some());

    // Off on the listener: new client sockets have no keepalive.
    let rec = reload(
        &handle,
        &path,
        &config(&node, listen, "", "tcp_keepalive = false"),
    )
    .await;
    assert!(rec.ok, "{}", rec.message);
    let third = proxied(3, lb, &node, &[first.node_side, second.node_side]).await;
    let third_addr = third.client.local_addr().unwrap();
    assert_eq!(keepalive_timer(lb, third_addr), None);

    drop((first, second, third));
    shutdown.cancel();
    task.await.unwrap();
}

/// An IPv6 listener (dual-stack, `ipv6_only = false`): accepted sockets inherit
/// the setting too, for IPv6 clients and for IPv4 ones (as mapped addresses).
#[tokio::test]
async fn an_ipv6_listener_passes_keepalive_to_ipv6_and_ipv4_clients() {
    let no_v6 = std::net::TcpListener::bind("[::1]:0")
        .err()
        .map(|e| format!("no IPv6 loopback here ({e})"));
    if !needs("REQUIRE_ROOT", no_v6) {
        return;
    }
    let node = backends(1).await.remove(0);
    let text = format!(
        "[[listener]]\nname = \"lb\"\nlisten = \"[::]:0\"\nipv6_only = false\npool = \"p\"\n\
         tcp_keepalive = {{ idle = \"41s\" }}\n\
         [pools.p]\n[pools.p.health]\nkind = \"none\"\n\
         [[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
        node.name, node.addr
    );
    let server = Server::bind(Config::parse(&text, "v6.toml").unwrap()).unwrap();
    let port = server.local_addr("lb").unwrap().port();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mut c6 = TcpStream::connect(v6).await.unwrap();
    assert_eq!(read_line(&mut c6).await.unwrap(), node.name);
    assert_idle(
        "IPv6 client",
        keepalive_timer(v6, c6.local_addr().unwrap()),
        41,
    );

    let mut c4 = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_line(&mut c4).await.unwrap(), node.name);
    // ss shows the balancer's side as IPv4-mapped: [::ffff:127.0.0.1]:port.
    let mapped = |a: SocketAddr| -> SocketAddr {
        match a {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        }
    };
    let local = mapped(SocketAddr::from(([127, 0, 0, 1], port)));
    assert_idle(
        "IPv4 client on the IPv6 listener",
        keepalive_timer(local, mapped(c4.local_addr().unwrap())),
        41,
    );

    drop((c6, c4));
    shutdown.cancel();
    task.await.unwrap();
}
