//! The end of the shutdown grace, paced (issue 15, item 3): with n connections
//! open when the drain starts, ringlb keeps the open count at or below
//! min(n, max(close_rate × R, n × R / grace)), R the time left of the grace,
//! so its closes start n/close_rate before the end at close_rate (or, when the
//! rate is too low to close them all in the grace, spread evenly over the
//! whole of it); whatever is left at the end is closed at once. Every such
//! close is logged with `reason = "shutdown"`.
//!
//! The sticky lab (tests/common/sticky_lab.rs) holds the connections (clients
//! that do not reconnect: the listener is closed), the real `ringlb` binary
//! runs with its JSON log, and SIGTERM starts the drain. Descriptors: 2,000
//! proxied connections cost ringlb 4,000 and this process 4,000 (the client
//! ends and the greeting backends' ends), well under the 20,000 limit.

mod common;
#[path = "common/sticky_lab.rs"]
mod sticky_lab;

use std::time::{Duration, SystemTime};

use common::*;
use sticky_lab::*;

/// What a drain looked like: when it started (ringlb's "draining" line), and
/// the instants of the closes on ringlb's side and on the clients'.
struct Drain {
    start: SystemTime,
    grace: Duration,
    logged: Vec<SystemTime>,
    seen: Vec<SystemTime>,
}

impl Drain {
    fn end(&self) -> SystemTime {
        self.start + self.grace
    }
}

/// `n` clients hold connections to ringlb (`close_rate = rate`, `shutdown_grace
/// = grace`); SIGTERM; wait until every connection was closed and ringlb
/// exited; check that each close was logged as `shutdown`.
async fn drain(n: usize, rate: u32, grace: Duration, first: u32) -> Drain {
    let b = backends(3).await;
    let text = config_text(
        &nodes_of(&b),
        "",
        &format!("close_rate = {rate}\n[pools.p.health]\nkind = \"none\"\n"),
        &format!("shutdown_grace = \"{}s\"\n", grace.as_secs()),
    );
    let mut lb = Proc::start(&text);
    let mut opts = Options::new(n, first);
    opts.reconnect = false;
    let lab = Lab::start(lb.addr, opts);
    lab.all_placed(Duration::from_secs(60)).await;

    lb.signal(nix::sys::signal::Signal::SIGTERM);
    let draining = lb
        .wait_logged(
            Duration::from_secs(10),
            "stopped accepting; draining open connections",
            &[],
        )
        .await;
    assert_eq!(
        draining.u64("open"),
        Some(n as u64),
        "{:?}",
        draining.fields
    );
    lab.wait(
        grace + Duration::from_secs(10),
        &format!("all {n} connections closed"),
        |v| v.closes.len() == n,
    )
    .await;
    let exit = tokio::task::block_in_place(|| lb.ringlb.wait_exit(Duration::from_secs(10)));
    assert!(exit.success(), "{exit}");
    let log = lb.log();
    let closed = logged(&log, "connection closed", &[]);
    let shutdown = closed_lines(&log, "shutdown");
    assert_eq!(
        (closed.len(), shutdown.len()),
        (n, n),
        "every close logged as shutdown"
    );
    let v = lab.view();
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    Drain {
        start: draining.at,
        grace,
        logged: times(&shutdown),
        seen: v.close_times(|_| true),
    }
}

/// The histogram of `times` per second of the drain, for the record.
fn show(d: &Drain, what: &str, times: &[SystemTime]) {
    eprintln!(
        "{what}: per second of the grace {:?}, most in 1 s {}",
        per_second(times, d.start),
        max_in_window(times, Duration::from_secs(1))
    );
}

/// By `R` before the end of the grace (give or take `tolerance`, the time a
/// close takes to be logged or seen), at most `bound(R)` connections are open.
fn check_kept_below(
    what: &str,
    d: &Drain,
    times: &[SystemTime],
    bound: impl Fn(f64) -> f64,
    tolerance: Duration,
) {
    let n = times.len();
    for left_ms in (0..=d.grace.as_millis() as u64).step_by(250) {
        let left = Duration::from_millis(left_ms);
        let at = d.end() - left + tolerance;
        let open = n - before(times, at);
        let most = bound(left.as_secs_f64()).ceil() as usize;
        assert!(
            open <= most,
            "{what}: {open} open {left:?} before the end of the grace (+{tolerance:?}), at most {most}; per second {:?}",
            per_second(times, d.start)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_close_at_the_rate_over_the_end_of_the_grace() {
    let _serial = one_at_a_time().await;
    let (n, rate) = (2000usize, 1000u32);
    let d = drain(n, rate, Duration::from_secs(5), 0).await;
    show(&d, "logged", &d.logged);
    show(&d, "seen", &d.seen);
    // n / rate = 2 s: nothing closes until then (a lower bound: no patience,
    // and a little for the bucket's jitter).
    let starts = d.end() - Duration::from_secs(2) - Duration::from_millis(100);
    for (what, t) in [("logged", &d.logged), ("seen", &d.seen)] {
        assert_eq!(
            before(t, starts),
            0,
            "{what}: closed more than n/close_rate before the end; per second {:?}",
            per_second(t, d.start)
        );
    }
    // From then on the open count stays at or below close_rate × R.
    let bound = |left: f64| (n as f64).min(f64::from(rate) * left);
    let tolerance = patient(Duration::from_millis(250));
    check_kept_below("logged", &d, &d.logged, bound, tolerance);
    check_kept_below("seen", &d, &d.seen, bound, tolerance);
    // Paced: the closes before the end never exceed the rate and the bucket,
    // and what is left for the end is a small remainder.
    let last = d.end() - Duration::from_millis(50);
    let paced: Vec<SystemTime> = d.logged.iter().copied().filter(|t| *t < last).collect();
    let most = max_in_window(&paced, Duration::from_secs(1));
    // The log's timestamps are taken when each connection's task ends, a few
    // ms after the close was decided: under load a few more land in a window
    // than were decided in it (2% of the rate allowed for that).
    let slack = rate as usize / 50;
    assert!(
        most <= rate as usize + burst(rate) + slack,
        "{most} closes in one second at close_rate {rate} (+ burst {}, + {slack} for the log's lag)",
        burst(rate)
    );
    let remainder = n - paced.len();
    assert!(
        remainder as f64 <= f64::from(rate) * 0.25 * patience(),
        "{remainder} of {n} left for the end of the grace"
    );
    assert!(
        span(&d.logged) >= Duration::from_millis(1500),
        "spread over {:?} only",
        span(&d.logged)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_rate_too_low_for_the_grace_spreads_the_closes_evenly_over_all_of_it() {
    let _serial = one_at_a_time().await;
    // 600 at 50/s would take 12 s; the grace is 4 s: 150/s from its start.
    let (n, rate, grace) = (600usize, 50u32, Duration::from_secs(4));
    let d = drain(n, rate, grace, 5000).await;
    show(&d, "logged", &d.logged);
    show(&d, "seen", &d.seen);
    let even = n as f64 / grace.as_secs_f64();
    let bound = |left: f64| (n as f64).min(even * left);
    let tolerance = patient(Duration::from_millis(250));
    check_kept_below("logged", &d, &d.logged, bound, tolerance);
    check_kept_below("seen", &d, &d.seen, bound, tolerance);
    // Even, not bunched: no second has much more than its share.
    let most = max_in_window(&d.logged, Duration::from_secs(1));
    let share = (even * 1.5) as usize + burst(rate);
    assert!(
        most <= share,
        "{most} closes in one second, even is {even}/s; per second {:?}",
        per_second(&d.logged, d.start)
    );
    // And not ahead of it: half the grace in, about half are still open.
    let half = d.start + grace / 2 - Duration::from_millis(100);
    let early = before(&d.logged, half);
    assert!(
        early as f64 <= n as f64 / 2.0 + even * 0.25,
        "{early} of {n} closed in the first half of the grace"
    );
}
