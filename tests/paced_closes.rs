//! Closes ringlb decides on go through the pool's pacing (issue 15, items 3, 5
//! and 6), seen with the sticky lab (tests/common/sticky_lab.rs): reconnecting
//! clients from distinct 127.x.y.z addresses on greeting nodes, the real
//! `ringlb` binary with its JSON log (the `reason` of every "connection
//! closed" line) and admin endpoint.
//!
//! - An operator disables a node: its clients are closed at `close_rate`, as
//!   `disabled`, and reconnect to their next node; nobody else is closed.
//! - `close_rate = 0`: unpaced, all at once.
//! - A reload removes a node (`on_node_down = "close"`): the same, as `removed`.
//! - `max_connection_duration = "2s"` with a jitter of 1 s: no connection is
//!   closed before 2 s, the closes spread over the jitter, as `lifetime`, and
//!   the clients reconnect (to the same node: nothing changed).
//! - `access_log_interval`: a held connection logs "connection open" once per
//!   interval with its bytes so far; a short one logs none.

mod common;
#[path = "common/sticky_lab.rs"]
mod sticky_lab;

use std::time::{Duration, SystemTime};

use common::*;
use sticky_lab::*;
use tokio::io::AsyncWriteExt;

const CLIENTS: usize = 120;
/// The node the operator takes away.
const VICTIM: &str = "node-1";

/// Listener `lb` (with `listener_extra`), pool `p` (with `pool_extra`, no
/// health checks) on `nodes`, an admin endpoint.
fn config(
    nodes: &[(String, std::net::SocketAddr)],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    config_text(
        nodes,
        listener_extra,
        &format!("{pool_extra}\n[pools.p.health]\nkind = \"none\"\n"),
        "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
}

/// How the operator takes the victim away.
#[derive(Debug, Clone, Copy)]
enum TakeAway {
    /// `POST /pools/p/nodes/node-1/disable`.
    Disable,
    /// A reload with a config that no longer lists it.
    Remove,
}

/// Everybody home, then `how` takes the victim away with `close_rate = rate`:
/// exactly its clients are closed, with `reason`, paced (all at once for
/// `0`), and reconnect to their next node.
async fn taken_away(how: TakeAway, reason: &str, first: u32, rate: u32) {
    let b = backends(3).await;
    let nodes = nodes_of(&b);
    let pool = format!("on_node_down = \"close\"\nclose_rate = {rate}\n");
    let pool = pool.as_str();
    let mut s = Placed::start(&config(&nodes, "", pool), CLIENTS, first, VICTIM).await;
    let n = s.victims.len();
    let at = SystemTime::now();
    match how {
        TakeAway::Disable => {
            let admin = s.lb.admin.expect("admin endpoint");
            let (code, _, body) = http_request(
                admin,
                "POST",
                &format!("/pools/p/nodes/{VICTIM}/disable"),
                "",
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
        TakeAway::Remove => {
            let kept: Vec<_> = nodes.iter().filter(|(n, _)| n != VICTIM).cloned().collect();
            s.lb.reload(&config(&kept, "", pool)).await;
        }
    }
    s.victims_moved(0, rate).await;
    s.check_closes_and_places(1, |k| s.failed_over(k));
    let closed = s.check_logged_closes(reason, |_| VICTIM.to_string(), at);
    let v = s.lab.view();
    if rate > 0 {
        check_paced(
            &format!("ringlb's {reason} closes"),
            &times(&closed),
            rate,
            0,
        );
        check_paced(
            "closes the clients saw",
            &v.close_times(|_| true),
            rate,
            burst(rate),
        );
    } else {
        // Unpaced: all at once.
        let took = span(&times(&closed));
        assert!(
            took <= patient(Duration::from_millis(500)),
            "{n} unpaced closes took {took:?}"
        );
    }
    let log = s.lb.log();
    let all = logged(&log, "connection closed", &[]);
    assert_eq!(
        all.len(),
        n,
        "no other close: {:?}",
        all.iter().map(|l| &l.fields).collect::<Vec<_>>()
    );
    if rate > 0 {
        let m = s.lb.metrics().await;
        assert_eq!(
            metric_sum(
                &m,
                "ringlb_paced_closes_total",
                &["pool=\"p\"", &format!("reason=\"{reason}\"")]
            ),
            n as f64,
            "{m}"
        );
    }
    assert_eq!(s.lb.status().await["pools"][0]["closes_pending"], 0);
    s.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_node_has_its_clients_closed_at_the_close_rate_as_disabled() {
    let _serial = one_at_a_time().await;
    taken_away(TakeAway::Disable, "disabled", 0, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_by_a_reload_has_its_clients_closed_at_the_close_rate_as_removed() {
    let _serial = one_at_a_time().await;
    taken_away(TakeAway::Remove, "removed", 1000, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_rate_0_closes_a_disabled_nodes_clients_at_once() {
    let _serial = one_at_a_time().await;
    taken_away(TakeAway::Disable, "disabled", 4000, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_live_two_to_three_seconds_then_are_closed_as_lifetime_and_reconnect() {
    let _serial = one_at_a_time().await;
    const LIFE: Duration = Duration::from_secs(2);
    const JITTER: Duration = Duration::from_secs(1);
    let b = backends(3).await;
    let text = config(
        &nodes_of(&b),
        "max_connection_duration = \"2s\"\nmax_connection_duration_jitter = \"1s\"\n",
        "close_rate = 100\n",
    );
    let mut lb = Proc::start(&text);
    let clients = 100;
    let lab = Lab::start(lb.addr, Options::new(clients, 2000));
    // Every client closed once and connected again.
    lab.wait(
        Duration::from_secs(20),
        "every client's first connection closed and a second one open",
        |v| (0..clients).all(|k| v.conns_of(k).len() >= 2 && v.on[k].is_some()),
    )
    .await;
    let v = lab.view();
    let homes = ring_homes(&text, "p", &lab.ips);
    let mut ages = Vec::new();
    for (k, home) in homes.iter().enumerate() {
        let first = v.closes_of(k)[0].clone();
        let age = first
            .at
            .duration_since(first.connecting)
            .unwrap_or_default();
        // The connection started after the client began connecting, and ringlb
        // closes it no earlier than its start + the duration.
        assert!(age >= LIFE, "{}: closed after {age:?}", lab.ips[k]);
        let most = patient(LIFE + JITTER + Duration::from_secs(1));
        assert!(
            age <= most,
            "{}: closed after {age:?}, over {most:?}",
            lab.ips[k]
        );
        ages.push(age);
        // Sticky: the reconnect lands on the same node.
        for c in v.conns_of(k) {
            assert_eq!(&c.node, home, "{}", lab.ips[k]);
        }
    }
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    // The jitter spreads them: 100 draws over 1 s span most of it.
    let (lo, hi) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
    assert!(
        *hi - *lo >= Duration::from_millis(500),
        "lifetimes within {:?}..{:?}: the jitter does not spread them",
        lo,
        hi
    );
    let firsts: Vec<SystemTime> = (0..clients).map(|k| v.closes_of(k)[0].at).collect();
    eprintln!(
        "first closes per second from the first connect: {:?}",
        per_second(&firsts, lab.started)
    );

    // ringlb's side: every close so far is a lifetime close of at least 2 s
    // (its own clock), at most close_rate + burst in any second.
    let log = lb.log();
    let all = logged(&log, "connection closed", &[]);
    let lifetime = closed_lines(&log, "lifetime");
    assert_eq!(
        lifetime.len(),
        all.len(),
        "every close is a lifetime close: {:?}",
        all.iter().map(|l| &l.fields).collect::<Vec<_>>()
    );
    assert!(lifetime.len() >= clients, "{}", lifetime.len());
    for l in &lifetime {
        let ms = l.u64("duration_ms").expect("duration_ms");
        assert!(ms >= 2000, "closed after {ms} ms: {:?}", l.fields);
        assert!(lab.client_of(l.str("client")).is_some(), "{:?}", l.fields);
    }
    let most = max_in_window(&times(&lifetime), Duration::from_secs(1));
    assert!(
        most <= 100 + burst(100),
        "{most} lifetime closes in one second"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_connection_logs_connection_open_each_interval_with_growing_byte_counts() {
    let _serial = one_at_a_time().await;
    const EVERY: Duration = Duration::from_millis(500);
    let b = backends(2).await;
    let text = config(&nodes_of(&b), "access_log_interval = \"500ms\"\n", "");
    let mut lb = Proc::start(&text);

    // A short connection: greeted and closed well within one interval.
    let short_ip = client_ip(3001);
    let mut short = connect_from(short_ip, lb.addr).await.unwrap();
    read_line(&mut short).await.unwrap();
    let short_addr = short.local_addr().unwrap().to_string();
    drop(short);

    // A long one that sends a line every 100 ms and reads the echo.
    let mut s = connect_from(client_ip(3000), lb.addr).await.unwrap();
    let node = read_line(&mut s).await.unwrap();
    let me = s.local_addr().unwrap().to_string();
    let talk = tokio::spawn(async move {
        for i in 0u32.. {
            let msg = format!("tick {i}");
            if s.write_all(format!("{msg}\n").as_bytes()).await.is_err() {
                return;
            }
            assert_eq!(read_line(&mut s).await.unwrap(), msg);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let open = |lb: &mut Proc, who: &str| logged(&lb.log(), "connection open", &[("client", who)]);
    eventually(Duration::from_secs(10), "4 connection open lines", || {
        let n = open(&mut lb, me.as_str()).len();
        async move { n >= 4 }
    })
    .await;
    talk.abort();
    let _ = talk.await; // the connection is dropped with the task
    let closed = lb
        .wait_logged(
            Duration::from_secs(10),
            "connection closed",
            &[("client", me.as_str())],
        )
        .await;

    let lines = open(&mut lb, me.as_str());
    assert!(lines.len() >= 4, "{}", lines.len());
    let (mut ms, mut up, mut down) = (0, 0, 0);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.str("listener"), "lb", "{:?}", l.fields);
        assert_eq!(l.str("node"), node, "{:?}", l.fields);
        assert_eq!(l.fields["level"], "INFO", "{:?}", l.fields);
        let d = l.u64("duration_ms").expect("duration_ms");
        let to_node = l.u64("bytes_to_node").expect("bytes_to_node");
        let to_client = l.u64("bytes_to_client").expect("bytes_to_client");
        // One line per interval: about 500 ms apart, on ringlb's clock.
        let gap = Duration::from_millis(d - ms);
        assert!(
            gap >= EVERY - Duration::from_millis(50),
            "line {i}: {gap:?} after the last: {:?}",
            l.fields
        );
        assert!(
            gap <= patient(EVERY + Duration::from_millis(300)),
            "line {i}: {gap:?} after the last: {:?}",
            l.fields
        );
        // Bytes so far, growing: the client sent and got its echo in between.
        assert!(
            to_node > up && to_client > down,
            "line {i} does not grow: {:?}",
            l.fields
        );
        (ms, up, down) = (d, to_node, to_client);
    }
    assert!(
        down > node.len() as u64,
        "the greeting and echoes count: {down}"
    );
    // The close line has the totals, at least what the last open line said.
    assert!(
        closed.u64("bytes_to_node").unwrap_or(0) >= up,
        "{:?}",
        closed.fields
    );
    assert!(
        closed.u64("bytes_to_client").unwrap_or(0) >= down,
        "{:?}",
        closed.fields
    );
    // After the close, no more open lines for it; the short one never had one.
    let after = lines.len();
    let more = poll(EVERY * 3, Duration::from_millis(50), || {
        let n = open(&mut lb, me.as_str()).len();
        async move { (n != after).then_some(n) }
    })
    .await;
    assert_eq!(more, None, "connection open logged after the close");
    assert!(
        open(&mut lb, short_addr.as_str()).is_empty(),
        "a short connection logged as open"
    );
}
