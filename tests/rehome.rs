//! Sticky load after a failover, with the sticky lab (tests/common/sticky_lab.rs):
//! 150 reconnecting clients from distinct 127.x.y.z addresses hold connections
//! to 3 greeting nodes through the real `ringlb` binary (JSON log, admin
//! endpoint); node-1's deep health check (HTTP, every 100 ms) turns 503 with
//! `on_node_down = "close"`, then 200 again.
//!
//! - `close_rate = 20`: node-1's clients are closed spread over about n/20 s,
//!   never more than the rate plus the bucket in any second; they reconnect to
//!   their next node; nobody else is closed (issue 15, item 3).
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
    lb: Proc,
    lab: Lab,
    orders: Vec<Vec<String>>,
    /// The clients whose home is [`VICTIM`].
    victims: Vec<usize>,
    /// The instant of the "node DOWN" line.
    down: SystemTime,
}

impl Failover {
    fn homes(&self) -> Vec<String> {
        self.orders.iter().map(|o| o[0].clone()).collect()
    }

    /// Where a victim's client goes while the victim is down.
    fn fallback(&self, k: usize) -> String {
        next_home(&self.orders[k], &[VICTIM]).to_string()
    }

    /// Where client `k` is while the victim is down.
    fn failed_over(&self, k: usize) -> String {
        if self.is_victim(k) {
            self.fallback(k)
        } else {
            self.orders[k][0].clone()
        }
    }

    fn is_victim(&self, k: usize) -> bool {
        self.victims.contains(&k)
    }
}

/// Start the fleet, ringlb (pool keys `pool_extra`) and the clients; check that
/// everybody is home; take the victim down and wait until its clients are
/// closed and placed again (`rate`: the close rate expected, for the wait).
async fn failover(pool_extra: &str, first: u32, rate: u32) -> Failover {
    let fleet = Fleet::start(3).await;
    let text = config(&fleet, pool_extra);
    let mut lb = Proc::start(&text);
    let lab = Lab::start(lb.addr, Options::new(CLIENTS, first));
    lab.all_placed(Duration::from_secs(20)).await;
    let orders = ring_orders(&text, "p", &lab.ips);
    let v = lab.view();
    for (k, order) in orders.iter().enumerate() {
        assert_eq!(
            v.on[k].as_deref(),
            Some(order[0].as_str()),
            "client {} is not on its ring home",
            lab.ips[k]
        );
    }
    assert!(v.closes.is_empty(), "{:?}", v.closes);
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    let victims: Vec<usize> = (0..CLIENTS).filter(|&k| orders[k][0] == VICTIM).collect();
    assert!(
        victims.len() >= 25,
        "{VICTIM} must own many clients for the pacing to show: {}",
        victims.len()
    );

    fleet.health[1].set_healthy(false);
    let down = lb
        .wait_logged(Duration::from_secs(10), "node DOWN", &[("node", VICTIM)])
        .await
        .at;
    let n = victims.len();
    let paced = Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
    let vs = victims.clone();
    lab.wait(
        paced + Duration::from_secs(10),
        "every client of the victim closed and placed again",
        move |v| {
            vs.iter()
                .all(|&k| !v.closes_of(k).is_empty() && v.on[k].is_some())
        },
    )
    .await;
    Failover {
        fleet,
        lb,
        lab,
        orders,
        victims,
        down,
    }
}

/// Closes only of the victim's clients, `per_victim` each, and every client on
/// the node `want` names.
fn check_closes_and_places(
    f: &Failover,
    per_victim: usize,
    want: impl Fn(usize) -> String,
) -> sticky_lab::View {
    let v = f.lab.view();
    for c in &v.closes {
        assert!(
            f.is_victim(c.client),
            "client {} of {} was closed ({c:?})",
            f.lab.ips[c.client],
            f.orders[c.client][0]
        );
    }
    for &k in &f.victims {
        assert_eq!(
            v.closes_of(k).len(),
            per_victim,
            "{}: {:?}",
            f.lab.ips[k],
            v.closes_of(k)
        );
    }
    for k in 0..CLIENTS {
        assert_eq!(
            v.on[k].as_deref(),
            Some(want(k).as_str()),
            "client {} (order {:?})",
            f.lab.ips[k],
            f.orders[k]
        );
    }
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    v
}

/// `times` (n of them) were paced at `rate` per second with its bucket: never
/// more than rate + burst (+ `slack`) in any second, and spread over at least
/// the time the bucket needs for them (a lower bound: no patience), and at
/// most n/rate + 1 s (times the patience).
fn check_paced(what: &str, times: &[SystemTime], rate: u32, slack: usize) {
    let n = times.len();
    let bucket = burst(rate);
    let most = max_in_window(times, Duration::from_secs(1));
    let from = times
        .iter()
        .min()
        .copied()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let hist = per_second(times, from);
    eprintln!("{what}: {n} closes, per second {hist:?}, most in 1 s {most}");
    assert!(
        most <= rate as usize + bucket + slack,
        "{what}: {most} closes in one second, rate {rate} + bucket {bucket} (+{slack}); per second {hist:?}"
    );
    let least = n.saturating_sub(bucket + 1) as f64 / f64::from(rate);
    let took = span(times);
    assert!(
        took.as_secs_f64() >= least,
        "{what}: {n} closes within {took:?}, the bucket allows no less than {least:.2}s; per second {hist:?}"
    );
    let bound = patient(Duration::from_secs_f64(n as f64 / f64::from(rate) + 1.0));
    assert!(
        took <= bound,
        "{what}: {n} closes took {took:?}, more than {bound:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs #15 core"]
async fn a_node_down_with_close_rate_20_closes_its_clients_paced_and_nobody_else() {
    let _serial = one_at_a_time().await;
    let mut f = failover("close_rate = 20\n", 0, 20).await;
    let n = f.victims.len();
    check_closes_and_places(&f, 1, |k| f.failed_over(k));

    // ringlb's side: one node_down close per client of the victim, none before
    // the DOWN, paced at 20/s.
    let log = f.lb.log();
    let closed = closed_lines(&log, "node_down");
    assert_eq!(closed.len(), n, "node_down closes in the log");
    for l in &closed {
        assert_eq!(l.str("node"), VICTIM, "{:?}", l.fields);
        let k = f.lab.client_of(l.str("client"));
        assert!(k.is_some_and(|k| f.is_victim(k)), "{:?}", l.fields);
        assert!(l.at >= f.down, "closed before the DOWN: {:?}", l.fields);
    }
    check_paced("ringlb's node_down closes", &times(&closed), 20, 0);
    // The clients' side: the same, seen a little later (scheduling can bunch
    // a few).
    let v = f.lab.view();
    check_paced(
        "closes the clients saw",
        &v.close_times(|_| true),
        20,
        burst(20),
    );
    let other: Vec<_> = logged(&log, "connection closed", &[])
        .into_iter()
        .filter(|l| l.str("reason") != "node_down")
        .map(|l| l.fields)
        .collect();
    assert!(other.is_empty(), "other closes: {other:?}");

    let st = f.lb.status().await;
    let pool = &st["pools"][0];
    assert_eq!(pool["close_rate"], 20, "{pool}");
    assert!(pool["rehome"].is_null(), "{pool}");
    assert_eq!(pool["closes_pending"], 0, "{pool}");
    let m = f.lb.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "ringlb_paced_closes_total",
            &["pool=\"p\"", "reason=\"node_down\""]
        ),
        n as f64,
        "{m}"
    );
    f.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs #15 core"]
async fn with_rehome_the_recovered_nodes_clients_go_home_after_the_delay_at_the_rate() {
    let _serial = one_at_a_time().await;
    let mut f = failover(
        "close_rate = 20\nrehome = { after = \"1s\", rate = 20 }\n",
        1000,
        20,
    )
    .await;
    let n = f.victims.len();
    let after = Duration::from_secs(1);
    // While the victim is down its clients are on their ring home of the
    // moment (the next node): nothing is misplaced, nothing moves.
    let st = f.lb.status().await;
    assert_eq!(
        st["pools"][0]["rehome"],
        serde_json::json!({"after": "1s", "rate": 20}),
        "{st}"
    );

    f.fleet.health[1].set_healthy(true);
    let up =
        f.lb.wait_logged(Duration::from_secs(10), "node UP", &[("node", VICTIM)])
            .await
            .at;
    let vs = f.victims.clone();
    f.lab
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
    let homes = f.homes();
    let v = check_closes_and_places(&f, 2, |k| homes[k].clone());

    let log = f.lb.log();
    let rehomed = closed_lines(&log, "rehome");
    assert_eq!(rehomed.len(), n, "rehome closes in the log");
    // Timestamps are taken when a line is written; the UP line is written after
    // the node is in service, so allow its time to trail by a little.
    let earliest = up + after - Duration::from_millis(50);
    for l in &rehomed {
        assert_ne!(l.str("node"), VICTIM, "{:?}", l.fields);
        let k = f.lab.client_of(l.str("client"));
        assert!(k.is_some_and(|k| f.is_victim(k)), "{:?}", l.fields);
        assert!(
            l.at >= earliest,
            "a rehome close {:?} after the UP, before `after`: {:?}",
            l.at.duration_since(up).unwrap_or_default(),
            l.fields
        );
    }
    for &k in &f.victims {
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
    check_counters(&f.lb, 0, n).await;
    let m = f.lb.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "ringlb_paced_closes_total",
            &["pool=\"p\"", "reason=\"rehome\""]
        ),
        n as f64,
        "{m}"
    );
    f.lab.stop().await;
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
    let n = f.victims.len();
    check_closes_and_places(&f, 1, |k| f.failed_over(k));
    f.fleet.health[1].set_healthy(true);
    f.lb.wait_logged(Duration::from_secs(10), "node UP", &[("node", VICTIM)])
        .await;

    // New connections from the victims' addresses go home at once.
    let ips: Vec<_> = f.victims.iter().map(|&k| f.lab.ips[k]).collect();
    let fresh = nodes_for(&ips, f.lb.addr).await;
    assert!(fresh.iter().all(|n| n == VICTIM), "{fresh:?}");

    // As long as `rehome = { after = "1s", rate = 20 }` would need, and more:
    // nobody is closed.
    let window = Duration::from_secs_f64(1.0 + n as f64 / 20.0 + 1.0);
    let closes = f.lab.view().closes.len();
    let moved = poll(window, Duration::from_millis(50), || {
        let now = f.lab.view().closes.len();
        async move { (now != closes).then_some(now) }
    })
    .await;
    assert_eq!(moved, None, "a close after the recovery without rehome");
    check_closes_and_places(&f, 1, |k| f.failed_over(k));
    if counters {
        let st = f.lb.status().await;
        assert!(st["pools"][0]["rehome"].is_null(), "{st}");
        check_counters(&f.lb, n, 0).await;
    }
    f.lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rehome_the_clients_that_failed_over_stay_where_they_are() {
    let _serial = one_at_a_time().await;
    without_rehome_the_misplaced_clients_stay(2000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs #15 core"]
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
