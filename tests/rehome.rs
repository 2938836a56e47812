//! Sticky load after a failover, with the sticky lab (tests/common/sticky_lab.rs):
//! 150 reconnecting clients from distinct 127.x.y.z addresses hold connections
//! to 3 greeting nodes through the real `ringlb` binary (JSON log, admin
//! endpoint); node-1's deep health check (HTTP, every 100 ms) turns 503 with
//! `on_node_down = "close"`, then 200 again.
//!
//! - `close_rate = 20`: node-1's clients are closed spread over about n/20 s,
//!   never more than the rate plus the bucket in any second; they reconnect to
//!   their next node; nobody else is closed (issue 15, item 3).
//! - `close_rate = 5` and the node back after a few closes: the queued closes
//!   are dropped, its other clients stay on it.
//! - `rehome = { after = "1s", rate = 20 }`: once node-1 is back, no rehome
//!   close before `after`; its clients are home within `after` + n/rate +
//!   slack, at no more than the rate; every client ends on its ring home
//!   (item 4).
//! - Without `rehome` (the default): the misplaced clients stay where they are,
//!   while their new connections go home.
//! - Capacity overflow: one node with `max_connections = 5`, 400 clients: 5 on
//!   it, the rest of its clients on their next nodes, none refused (item 1).
//!
//! The ring home of each client comes from the library (a `Pool` built from the
//! same config text); close instants are checked on both sides: ringlb's log
//! (`reason=...`, its timestamps) and the clients' view.

mod common;
#[path = "common/sticky_lab.rs"]
mod sticky_lab;

use std::time::{Duration, SystemTime};

use common::*;
use sticky_lab::*;

/// Clients of the failover scenario.
const CLIENTS: usize = 150;
/// The node that fails and recovers.
const VICTIM: &str = "node-1";

/// ringlb's config: listener `lb`, pool `p` with `pool_extra` and a fast deep
/// health check on the fleet, an admin endpoint.
fn config(fleet: &Fleet, pool_extra: &str) -> String {
    config_text(
        &fleet.nodes(),
        "",
        &format!(
            "on_node_down = \"close\"\n{pool_extra}\n{}",
            fleet.http_health("100ms", "80ms", 2, 2)
        ),
        "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    )
}

/// The failover scenario, up to the point where every client of the victim
/// was closed and placed again.
struct Failover {
    fleet: Fleet,
    s: Placed,
    /// The instant of the "node DOWN" line.
    down: SystemTime,
}

/// Start the fleet, ringlb (pool keys `pool_extra`) and the clients, all home;
/// take the victim down and wait until its clients are closed and placed
/// again (`rate`: the close rate expected, for the wait).
async fn failover(pool_extra: &str, first: u32, rate: u32) -> Failover {
    let fleet = Fleet::start(3).await;
    let mut s = Placed::start(&config(&fleet, pool_extra), CLIENTS, first, VICTIM).await;
    fleet.health[1].set_healthy(false);
    let down =
        s.lb.wait_logged(Duration::from_secs(10), "node DOWN", &[("node", VICTIM)])
            .await
            .at;
    s.victims_moved(0, rate).await;
    Failover { fleet, s, down }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_with_close_rate_20_closes_its_clients_paced_and_nobody_else() {
    let _serial = one_at_a_time().await;
    let mut f = failover("close_rate = 20\n", 0, 20).await;
    let n = f.s.victims.len();
    f.s.check_closes_and_places(1, |k| f.s.failed_over(k));
    // ringlb's side: one node_down close per client of the victim, none before
    // the DOWN (give or take the order in which the lines are written), paced
    // at 20/s.
    let down = f.down - Duration::from_millis(50);
    let closed =
        f.s.check_logged_closes("node_down", |_| VICTIM.to_string(), down);
    check_paced("ringlb's node_down closes", &times(&closed), 20, 0);
    // The clients' side: the same, seen a little later (scheduling can bunch
    // a few).
    let v = f.s.lab.view();
    check_paced(
        "closes the clients saw",
        &v.close_times(|_| true),
        20,
        burst(20),
    );
    let other: Vec<_> = logged(&f.s.lb.log(), "connection closed", &[])
        .into_iter()
        .filter(|l| l.str("reason") != "node_down")
        .map(|l| l.fields)
        .collect();
    assert!(other.is_empty(), "other closes: {other:?}");

    let st = f.s.lb.status().await;
    let pool = &st["pools"][0];
    assert_eq!(pool["close_rate"], 20, "{pool}");
    assert!(pool["rehome"].is_null(), "{pool}");
    assert_eq!(pool["closes_pending"], 0, "{pool}");
    let m = f.s.lb.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "ringlb_paced_closes_total",
            &["pool=\"p\"", "reason=\"node_down\""]
        ),
        n as f64,
        "{m}"
    );
    f.s.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rehome_the_recovered_nodes_clients_go_home_after_the_delay_at_the_rate() {
    let _serial = one_at_a_time().await;
    let mut f = failover(
        "close_rate = 20\nrehome = { after = \"1s\", rate = 20 }\n",
        1000,
        20,
    )
    .await;
    let n = f.s.victims.len();
    let after = Duration::from_secs(1);
    // While the victim is down its clients are on their ring home of the
    // moment (the next node): nothing is misplaced, nothing moves.
    let st = f.s.lb.status().await;
    assert_eq!(
        st["pools"][0]["rehome"],
        serde_json::json!({"after": "1s", "rate": 20}),
        "{st}"
    );

    f.fleet.health[1].set_healthy(true);
    let up =
        f.s.lb
            .wait_logged(Duration::from_secs(10), "node UP", &[("node", VICTIM)])
            .await
            .at;
    let vs = f.s.victims.clone();
    f.s.lab
        .wait(
            after + Duration::from_secs_f64(n as f64 / 20.0) + Duration::from_secs(5),
            "every client of the victim back home",
            move |v| {
                vs.iter()
                    .all(|&k| v.closes_of(k).len() == 2 && v.on[k].as_deref() == Some(VICTIM))
            },
        )
        .await;
    let home_at = SystemTime::now();
    let homes = f.s.homes();
    let v = f.s.check_closes_and_places(2, |k| homes[k].clone());

    // Timestamps are taken when a line is written; the UP line is written after
    // the node is in service, so allow its time to trail by a little.
    let earliest = up + after - Duration::from_millis(50);
    let left: Vec<String> = (0..CLIENTS).map(|k| f.s.failed_over(k)).collect();
    let rehomed =
        f.s.check_logged_closes("rehome", |k| left[k].clone(), earliest);
    for &k in &f.s.victims {
        let second = v.closes_of(k)[1];
        assert!(second.at >= earliest, "{second:?}");
    }
    check_paced("ringlb's rehome closes", &times(&rehomed), 20, 0);
    let trip = home_at.duration_since(up).unwrap_or_default();
    let bound = patient(after + Duration::from_secs_f64(n as f64 / 20.0 + 2.0));
    assert!(trip <= bound, "home {trip:?} after the UP, over {bound:?}");
    eprintln!("{n} clients home {trip:?} after the UP");

    // The counters: nothing misplaced now, every rehome counted on the node it
    // left (the fallbacks), none on the home.
    check_counters(&f.s.lb, 0, n).await;
    let m = f.s.lb.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "ringlb_paced_closes_total",
            &["pool=\"p\"", "reason=\"rehome\""]
        ),
        n as f64,
        "{m}"
    );
    f.s.lab.stop().await;
}

/// What /status (per node, summed) and /metrics count as misplaced and
/// rehomed; the victim, home of every client it ever had, has neither.
async fn check_counters(lb: &Proc, misplaced: usize, rehomed: usize) {
    let st = lb.status().await;
    let m = lb.metrics().await;
    for (key, metric, want) in [
        ("misplaced", "ringlb_node_misplaced_connections", misplaced),
        ("rehomed", "ringlb_node_rehomed_total", rehomed),
    ] {
        let per_node: Vec<u64> = ["node-0", "node-1", "node-2"]
            .iter()
            .map(|n| {
                let s = status_node(&st, "p", n);
                s[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{n}: no {key} count: {s}"))
            })
            .collect();
        assert_eq!(per_node.iter().sum::<u64>(), want as u64, "{key}: {st}");
        assert_eq!(status_node(&st, "p", VICTIM)[key], 0, "{key}: {st}");
        assert_eq!(
            metric_sum(&m, metric, &["pool=\"p\""]),
            want as f64,
            "{metric}:\n{m}"
        );
    }
}

/// Without `rehome`: the victim recovers, and for as long as rehome would have
/// taken (plus slack) none of its clients is closed again; they stay on their
/// fallback nodes while their new connections go home. With `counters`, also
/// what /status and /metrics say about them (misplaced, never rehomed).
async fn without_rehome_the_misplaced_clients_stay(first: u32, counters: bool) {
    let mut f = failover("", first, 100).await;
    let n = f.s.victims.len();
    f.s.check_closes_and_places(1, |k| f.s.failed_over(k));
    f.fleet.health[1].set_healthy(true);
    f.s.lb
        .wait_logged(Duration::from_secs(10), "node UP", &[("node", VICTIM)])
        .await;

    // New connections from the victims' addresses go home at once.
    let ips: Vec<_> = f.s.victims.iter().map(|&k| f.s.lab.ips[k]).collect();
    let fresh = nodes_for(&ips, f.s.lb.addr).await;
    assert!(fresh.iter().all(|n| n == VICTIM), "{fresh:?}");

    // As long as `rehome = { after = "1s", rate = 20 }` would need, and more:
    // nobody is closed.
    let window = Duration::from_secs_f64(1.0 + n as f64 / 20.0 + 1.0);
    let closes = f.s.lab.view().closes.len();
    let moved = poll(window, Duration::from_millis(50), || {
        let now = f.s.lab.view().closes.len();
        async move { (now != closes).then_some(now) }
    })
    .await;
    assert_eq!(moved, None, "a close after the recovery without rehome");
    f.s.check_closes_and_places(1, |k| f.s.failed_over(k));
    if counters {
        let st = f.s.lb.status().await;
        assert!(st["pools"][0]["rehome"].is_null(), "{st}");
        check_counters(&f.s.lb, n, 0).await;
    }
    f.s.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rehome_the_clients_that_failed_over_stay_where_they_are() {
    let _serial = one_at_a_time().await;
    without_rehome_the_misplaced_clients_stay(2000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rehome_the_clients_that_failed_over_are_counted_misplaced() {
    let _serial = one_at_a_time().await;
    without_rehome_the_misplaced_clients_stay(3000, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_reconnecting_clients_one_node_capped_at_five_none_refused() {
    let _serial = one_at_a_time().await;
    let b = backends(3).await;
    let mut text = config_text(
        &nodes_of(&b),
        "",
        "[pools.p.health]\nkind = \"none\"\n",
        "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let node0 = format!("name = \"node-0\"\naddr = \"{}\"\n", b[0].addr);
    assert!(text.contains(&node0));
    text = text.replace(&node0, &format!("{node0}max_connections = 5\n"));
    let lb = Proc::start(&text);
    let lab = Lab::start(lb.addr, Options::new(400, 4000));
    lab.all_placed(Duration::from_secs(30)).await;
    let orders = ring_orders(&text, "p", &lab.ips);
    let v = lab.view();
    assert!(v.failures.is_empty(), "refused: {:?}", v.failures);
    assert!(v.closes.is_empty(), "closed: {:?}", v.closes);
    assert_eq!(v.conns.len(), 400, "one connection each");
    let homed_on_0 = orders.iter().filter(|o| o[0] == "node-0").count();
    assert!(
        homed_on_0 > 50,
        "node-0 must own many clients for the cap to matter: {homed_on_0}"
    );
    let mut on_0 = 0;
    for (k, order) in orders.iter().enumerate() {
        let got = v.on[k].as_deref().unwrap_or("nowhere");
        if order[0] != "node-0" {
            assert_eq!(got, order[0], "client {} (order {order:?})", lab.ips[k]);
        } else if got == "node-0" {
            on_0 += 1;
        } else {
            // Full: the next node along this client's ring order.
            assert_eq!(got, order[1], "client {} (order {order:?})", lab.ips[k]);
        }
    }
    assert_eq!(on_0, 5, "on the capped node");
    let st = lb.status().await;
    let n0 = status_node(&st, "p", "node-0");
    assert_eq!(
        (
            n0["max_connections"].clone(),
            n0["active_connections"].clone()
        ),
        (5.into(), 5.into()),
        "{n0}"
    );
    let m = lb.metrics().await;
    assert_eq!(
        metric_sum(&m, "ringlb_connections_rejected_total", &[]),
        0.0,
        "{m}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_in_service_before_its_queued_closes_keeps_the_clients_not_closed_yet() {
    let _serial = one_at_a_time().await;
    // At 5 closes per second the victim's ~50 clients would take 10 s; it is
    // back after a few.
    let fleet = Fleet::start(3).await;
    let mut s = Placed::start(&config(&fleet, "close_rate = 5\n"), CLIENTS, 6000, VICTIM).await;
    let n = s.victims.len();
    fleet.health[1].set_healthy(false);
    s.lb.wait_logged(Duration::from_secs(10), "node DOWN", &[("node", VICTIM)])
        .await;
    s.lab
        .wait(
            Duration::from_secs(10),
            "3 clients of the victim closed",
            |v| v.closes.len() >= 3,
        )
        .await;
    fleet.health[1].set_healthy(true);
    let up =
        s.lb.wait_logged(Duration::from_secs(10), "node UP", &[("node", VICTIM)])
            .await
            .at;
    // The queued closes are dropped: none comes after the UP (but one that was
    // already under way as the line was written).
    let late = |log: &[String]| {
        closed_lines(log, "node_down")
            .into_iter()
            .filter(|l| l.at > up + Duration::from_millis(100))
            .count()
    };
    let window = Duration::from_secs(2);
    let more = poll(window, Duration::from_millis(50), || {
        let l = late(&s.lb.log());
        async move { (l > 0).then_some(l) }
    })
    .await;
    assert_eq!(more, None, "node_down closes after the node was back");
    let closed = closed_lines(&s.lb.log(), "node_down").len();
    assert!(
        (3..n / 2).contains(&closed),
        "{closed} of {n} clients of the victim closed"
    );
    // Those not closed are still on it; nobody else was closed.
    let v = s.lab.view();
    for c in &v.closes {
        assert!(s.is_victim(c.client), "{c:?}");
    }
    let untouched = s
        .victims
        .iter()
        .filter(|&&k| v.closes_of(k).is_empty())
        .count();
    assert_eq!(
        untouched,
        n - v.closes.len(),
        "one close per client at most"
    );
    for &k in &s.victims {
        if v.closes_of(k).is_empty() {
            assert_eq!(v.on[k].as_deref(), Some(VICTIM), "{}", s.lab.ips[k]);
        }
    }
    assert_eq!(s.lb.status().await["pools"][0]["closes_pending"], 0);
    s.lab.stop().await;
}

/// The lab's own arithmetic: a harness that miscounts turns failures green.
#[test]
fn the_labs_window_counts_histograms_and_log_lines_are_right() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    // 0, 100, ..., 900 ms, then 1000 and 1999: any 1 s window holds at most 10.
    let mut ts: Vec<SystemTime> = (0..10).map(|i| at(i * 100)).collect();
    ts.extend([at(1000), at(1999)]);
    ts.reverse(); // order does not matter
    assert_eq!(max_in_window(&ts, Duration::from_secs(1)), 10);
    assert_eq!(max_in_window(&ts, Duration::from_millis(1001)), 11);
    assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    assert_eq!(per_second(&ts, t0), vec![10, 2]);
    assert_eq!(
        per_second(&ts, at(500)),
        vec![11, 1],
        "before `from`: the first second"
    );
    assert_eq!(span(&ts), Duration::from_millis(1999));
    assert_eq!(span(&ts[..1]), Duration::ZERO);
    assert_eq!(before(&ts, at(1000)), 10);
    assert_eq!(
        [
            burst(0),
            burst(1),
            burst(10),
            burst(11),
            burst(20),
            burst(100)
        ],
        [2, 2, 2, 2, 2, 10]
    );
    // A JSON line as ringlb writes it (`--log-format json`).
    let line = r#"{"timestamp":"2026-12-02T03:15:11.123456Z","level":"INFO","message":"connection closed","client":"127.1.0.5:40000","node":"node-1","reason":"rehome","duration_ms":2500}"#;
    let l = Logged::parse(line).expect("parsed");
    assert_eq!(
        l.at,
        humantime::parse_rfc3339("2026-12-02T03:15:11.123456Z").unwrap()
    );
    assert_eq!(
        (l.str("node"), l.u64("duration_ms")),
        ("node-1", Some(2500))
    );
    let log = vec![line.to_string(), "not json".to_string()];
    assert_eq!(closed_lines(&log, "rehome").len(), 1);
    assert!(closed_lines(&log, "node_down").is_empty());
    assert_eq!(
        logged(&log, "connection", &[("client", "127.1.0.5:40000")]).len(),
        1
    );
    let m = "ringlb_x{pool=\"p\",node=\"a\"} 2\nringlb_x{pool=\"p\",node=\"b\"} 3\nringlb_x{pool=\"q\",node=\"a\"} 5\n";
    assert_eq!(metric_sum(m, "ringlb_x", &["pool=\"p\""]), 5.0);
    assert_eq!(metric_sum(m, "ringlb_x", &[]), 10.0);
    assert_eq!(metric_sum(m, "ringlb_y", &[]), 0.0);
}
