//! `GET /ready` and `withdraw_delay` against the real binary: a stop signal first
//! turns `/ready` to 503 while new connections still succeed for the delay, then
//! the listener is closed and the process drains; a second stop signal cuts the
//! withdrawal short; a pool with every node down makes `/ready` 503 with the
//! reason, and `/ready` needs no token when the rest of the endpoint does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `ringlb run` on `text`, with its listener `lb` and admin addresses, once its
/// signal handlers are installed.
fn start(dir: &Path, text: &str) -> (Ringlb, SocketAddr, SocketAddr) {
    let path = dir.join("ringlb.toml");
    write_file(&path, text);
    let mut lb = Ringlb::start(&path);
    let addr = lb.listening("lb");
    let admin = lb.admin();
    let pid = lb.pid();
    poll_blocking(Duration::from_secs(10), Duration::from_millis(5), || {
        common::upgrade_lab::catches(pid, &[Signal::SIGINT, Signal::SIGTERM]).then_some(())
    })
    .expect("signal handlers never installed");
    (lb, addr, admin)
}

fn config(withdraw: &str, node: &(String, SocketAddr)) -> String {
    format!(
        "withdraw_delay = \"{withdraw}\"\nshutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\n[pools.p.health]\nkind = \"none\"\n\
         [[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\n",
        node.0, node.1
    )
}

fn signal(lb: &Ringlb, s: Signal) {
    kill(Pid::from_raw(lb.pid() as i32), s).unwrap_or_else(|e| panic!("kill {s}: {e}"));
}

/// `GET /ready`: the status code and the body.
async fn ready(admin: SocketAddr) -> std::io::Result<(u16, String)> {
    let (code, _, body) = try_http_request(admin, "GET", "/ready", "").await?;
    Ok((code, body))
}

/// The body of the first `503` from `/ready`, within 5 s (times the patience).
async fn not_ready(admin: SocketAddr) -> String {
    eventually_some(
        patient(Duration::from_secs(5)),
        "/ready answers 503",
        || async {
            match ready(admin).await {
                Ok((503, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await
}

fn position(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_withdraws_for_the_delay_while_still_accepting_then_drains() {
    let b = backends(1).await;
    let node = &nodes_of(&b)[0];
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the checks below fit in it on a slow machine.
    let delay = patient(Duration::from_secs(4));
    let (mut lb, addr, admin) = start(
        dir.path(),
        &config(&format!("{}ms", delay.as_millis()), node),
    );
    assert_eq!(ready(admin).await.unwrap(), (200, "ready\n".into()));
    let status = http_get(admin, "/status").await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["process"]["ready"], true);
    assert_eq!(
        status["process"]["not_ready_reason"],
        serde_json::Value::Null
    );

    let t0 = Instant::now();
    signal(&lb, Signal::SIGTERM);
    let body = not_ready(admin).await;
    assert!(body.starts_with("withdrawing: stopping in "), "{body:?}");
    let metrics = http_get(admin, "/metrics").await.unwrap();
    assert!(metrics.contains("\nringlb_ready 0\n"), "{metrics}");

    // New connections succeed through the first half of the delay (the
    // process's own deadline is later than t0 + delay).
    let mut ok = 0;
    let mut client = 1;
    while t0.elapsed() < delay / 2 {
        let got = node_for(client_ip(client), addr).await;
        assert_eq!(
            got.as_deref().ok(),
            Some(node.0.as_str()),
            "connection {client} during the withdrawal: {got:?}"
        );
        ok += 1;
        client += 1;
    }
    assert!(ok > 0, "no connection tried during the withdrawal");

    // Then it stops accepting: connects are refused.
    eventually(
        delay + patient(Duration::from_secs(5)),
        "connects refused after the withdrawal",
        || async { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        t0.elapsed() >= delay,
        "refused after {:?}, before the delay {delay:?}",
        t0.elapsed()
    );
    let st = lb.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "exit status {st:?}");
    let log = lb.drain();
    let withdrawing = position(log, "withdrawing: /ready answers 503");
    let over = position(log, "withdrawal over: stopping accepting");
    let done = position(log, "shutdown complete");
    assert!(withdrawing < over && over < done, "{}", log.join("\n"));
    println!("{ok} new connections succeeded during the withdrawal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_withdrawal_stops_at_once() {
    let b = backends(1).await;
    let node = &nodes_of(&b)[0];
    let dir = tempfile::tempdir().unwrap();
    let (mut lb, addr, admin) = start(dir.path(), &config("10m", node));
    signal(&lb, Signal::SIGTERM);
    let body = not_ready(admin).await;
    assert!(body.starts_with("withdrawing: stopping in "), "{body:?}");
    assert_eq!(node_for(client_ip(7), addr).await.unwrap(), node.0);
    let t1 = Instant::now();
    signal(&lb, Signal::SIGINT);
    let st = lb.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "exit status {st:?}");
    assert!(t1.elapsed() < patient(Duration::from_secs(15)));
    let log = lb.drain();
    let cut = position(log, "withdrawal cut short by a second stop signal");
    assert!(cut < position(log, "shutdown complete"));
    assert!(
        !log.iter()
            .any(|l| l.contains("closing open connections now")),
        "the second signal ended the withdrawal, not the drain:\n{}",
        log.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_every_node_down_is_not_ready_and_ready_needs_no_token() {
    let b = backends(1).await;
    let node = &nodes_of(&b)[0];
    // An address nobody listens on (bound, then closed).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef0123\"\n\
         [[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\
         [pools.p]\n[pools.p.health]\nkind = \"none\"\n\
         [[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\n\
         [pools.web]\n[pools.web.health]\ninterval = \"50ms\"\ntimeout = \"30ms\"\nfall = 1\nrise = 1\n\
         [[pools.web.nodes]]\nname = \"gone\"\naddr = \"{dead}\"\n",
        node.0, node.1
    );
    let (mut lb, _, admin) = start(dir.path(), &text);
    let body = not_ready(admin).await;
    assert_eq!(body, "pool web: no node in service\n");
    // The rest of the endpoint still wants the token.
    let (code, _, _) = http_request(admin, "GET", "/status", "").await;
    assert_eq!(code, 401);
    let (code, _, status) = http_request(
        admin,
        "GET",
        "/status",
        "Authorization: Bearer 0123456789abcdef0123\r\n",
    )
    .await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["process"]["ready"], false);
    assert_eq!(
        status["process"]["not_ready_reason"],
        "pool web: no node in service"
    );
    let (code, head, body) = http_request(admin, "HEAD", "/ready", "").await;
    assert_eq!((code, body.as_str()), (503, ""), "{head}");
    let (code, _, _) = http_request(admin, "POST", "/ready", "").await;
    assert_eq!(code, 405);

    // Taking the dead node out by hand does not make the pool ready either;
    // the healthy pool's node going out of service adds its reason.
    let (code, _, _) = http_request(
        admin,
        "POST",
        &format!("/pools/p/nodes/{}/disable", node.0),
        "Authorization: Bearer 0123456789abcdef0123\r\n",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        ready(admin).await.unwrap(),
        (
            503,
            "pool p: no node in service; pool web: no node in service\n".into()
        )
    );
    signal(&lb, Signal::SIGTERM);
    assert!(lb.wait_exit(Duration::from_secs(15)).success());
}
