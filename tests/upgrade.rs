//! The binary upgrade against the real binary, under load: `ringlb upgrade` and
//! SIGUSR2 hand every listening socket to a new process without a refused SYN,
//! a reset or a wrong byte; failed upgrades leave the old process serving; a
//! reload during an upgrade is queued, a second upgrade refused; node states
//! carry over; stop signals end both processes cleanly.
//!
//! The control, `load_without_an_upgrade_loses_nothing`, runs the same load
//! against a plain `ringlb run`: the lab's zero-loss checks hold without an
//! upgrade, so a failure of the others is the upgrade's.
//!
//! Processes: the test spawns the first ringlb (killed when dropped); every
//! successor is started by its predecessor, found through the pid file and
//! killed by a [`Reap`] guard when the test ends early.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::upgrade_lab::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use serde_json::Value;

const RINGLB: &str = env!("CARGO_BIN_EXE_ringlb");

/// How long an upgrade (or a failed one) may take, times the patience.
const UPGRADE_WAIT: Duration = Duration::from_secs(40);

/// A fleet, a config file, the first ringlb process and what the test knows
/// about its successors.
struct Lab {
    dir: tempfile::TempDir,
    path: PathBuf,
    pid_file: PathBuf,
    fleet: Fleet,
    /// The first process (the test's own child) and the log of every process
    /// (successors inherit its stderr).
    lb: Ringlb,
    addr: SocketAddr,
    admin: SocketAddr,
    reap: Reap,
}

impl Lab {
    /// `nodes` fleet nodes, health checks off; `top`: extra top-level lines.
    async fn start(nodes: usize, top: &str) -> Lab {
        Lab::start_with(nodes, top, |_| None).await
    }

    /// [`Lab::start`] with `pool(fleet)` as the lines after `[pools.p]` (e.g.
    /// a health table; `None`: `kind = "none"`).
    async fn start_with(nodes: usize, top: &str, pool: impl Fn(&Fleet) -> Option<String>) -> Lab {
        let fleet = Fleet::start(nodes).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringlb.toml");
        let pid_file = dir.path().join("ringlb.pid");
        let text = Self::text_for(&fleet, &pid_file, top, pool(&fleet).as_deref());
        std::fs::write(&path, &text).unwrap();
        let mut lb = Ringlb::start(&path);
        let addr = lb.listening("lb");
        let admin = lb.admin();
        let pid = lb.pid();
        eventually(Duration::from_secs(10), "the pid file names ringlb", || {
            let p = read_pid(&pid_file);
            async move { p == Some(pid) }
        })
        .await;
        let reap = Reap::new(&path);
        Lab {
            dir,
            path,
            pid_file,
            fleet,
            lb,
            addr,
            admin,
            reap,
        }
    }

    fn text_for(fleet: &Fleet, pid_file: &Path, top: &str, pool: Option<&str>) -> String {
        let top = format!(
            "pid_file = \"{}\"\nshutdown_grace = \"60s\"\n{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            pid_file.display()
        );
        let pool = pool.unwrap_or("[pools.p.health]\nkind = \"none\"\n");
        config_text(&fleet.nodes(), "", pool, &top)
    }

    /// The config text with other extra lines (same fleet, same pid file).
    fn text(&self, top: &str, pool: Option<&str>) -> String {
        Self::text_for(&self.fleet, &self.pid_file, top, pool)
    }

    fn pid0(&self) -> u32 {
        self.lb.pid()
    }

    /// `ringlb upgrade --pid-file P` and `args`, to its end.
    async fn upgrade(&self, args: &[String]) -> Output {
        let mut cmd = Command::new(RINGLB);
        cmd.arg("upgrade")
            .arg("--pid-file")
            .arg(&self.pid_file)
            .args(args);
        tokio::task::spawn_blocking(move || run_bounded(cmd, UPGRADE_WAIT))
            .await
            .unwrap()
    }

    /// A successful `ringlb upgrade` from `prev`: exit 0, the documented line,
    /// the pid file and `/status` name the new process, which names `prev` as
    /// its predecessor. Returns the new pid.
    async fn upgrade_ok(&mut self, prev: u32, args: &[String]) -> u32 {
        let t0 = Instant::now();
        let out = self.upgrade(args).await;
        let took = t0.elapsed();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "ringlb upgrade from pid {prev}: {}\nstdout: {stdout}\nstderr: {stderr}\nlog:\n{}",
            out.status,
            self.lb.drain().join("\n")
        );
        let new = self.upgraded(prev).await;
        let want = format!("upgraded: pid {prev} -> pid {new} in ");
        assert!(
            stdout.starts_with(&want),
            "stdout {stdout:?}, wanted {want:?}..."
        );
        assert!(
            stdout.contains(&format!("; pid {prev} drains ")),
            "stdout {stdout:?}"
        );
        println!(
            "upgrade {prev} -> {new}: command took {took:.2?}: {}",
            stdout.trim()
        );
        new
    }

    /// After an upgrade from `prev`: the pid file names a new, running process
    /// whose `/status` says it is that pid and took over from `prev`.
    async fn upgraded(&mut self, prev: u32) -> u32 {
        let new = read_pid(&self.pid_file).expect("a pid in the pid file");
        assert_ne!(new, prev, "the pid file still names the old process");
        self.reap.add(new);
        assert!(!gone(new), "the new process {new} is not running");
        let st = status(self.admin).await;
        assert_eq!(
            st["process"]["pid"], new,
            "/status process: {}",
            st["process"]
        );
        assert_eq!(
            st["process"]["upgraded_from"]["pid"], prev,
            "/status process: {}",
            st["process"]
        );
        assert!(
            st["process"]["upgraded_from"]["takeover_ms"].is_u64(),
            "/status process: {}",
            st["process"]
        );
        let metrics = http_get(self.admin, "/metrics").await.unwrap();
        let gauge = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /metrics"))
        };
        assert_eq!(gauge("ringlb_upgrade_predecessor_pid"), f64::from(prev));
        let at = gauge("ringlb_upgrade_takeover_timestamp_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (now - 600.0..=now + 1.0).contains(&at),
            "takeover at {at}, now {now}"
        );
        new
    }

    /// The first process's descriptors once it has settled (after start, before
    /// any load): the same count read three times in a row, 30 ms apart.
    async fn baseline(&self) -> Fds {
        let pid = self.pid0();
        status(self.admin).await; // the admin endpoint answered: fully up
        let mut last = (
            Fds {
                total: 0,
                pipe_pool: 0,
            },
            0,
        );
        eventually_some(Duration::from_secs(10), "a stable descriptor count", || {
            let n = fds(pid).expect("descriptors of ringlb");
            last = if n == last.0 { (n, last.1 + 1) } else { (n, 1) };
            let r = (last.1 >= 3).then_some(n);
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                r
            }
        })
        .await
    }

    fn assert_no_panic(&mut self) {
        let log = self.lb.drain().join("\n");
        assert!(
            !log.contains("panicked"),
            "a ringlb process panicked:\n{log}"
        );
    }
}

/// `/status` of the admin endpoint, parsed.
async fn status(admin: SocketAddr) -> Value {
    let body = http_get(admin, "/status")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
}

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap_or_else(|e| panic!("kill -{s} {pid}: {e}"));
}

/// Wait for `pid` to exit, panicking with the log if it does not.
async fn assert_exits(lab: &mut Lab, pid: u32, within: Duration) -> Option<WaitStatus> {
    match wait_gone(pid, within).await {
        Ok(st) => st,
        Err(e) => panic!("{e}; log:\n{}", lab.lb.drain().join("\n")),
    }
}

/// Wait for the first process (the test's child) to exit; its status.
async fn p0_exit(lab: &mut Lab, within: Duration) -> std::process::ExitStatus {
    let pid = lab.pid0();
    let st = poll(within, Duration::from_millis(10), || {
        let st = lab.lb.child.try_wait().expect("try_wait on ringlb");
        async move { st }
    })
    .await;
    st.unwrap_or_else(|| {
        panic!(
            "pid {pid} did not exit within {:?}; log:\n{}",
            patient(within),
            lab.lb.drain().join("\n")
        )
    })
}

/// Wait until `pid`'s descriptors are back to `baseline` (the splice pipe
/// pool apart, which must stay within its bound); panic with both listings.
async fn assert_fds_back(pid: u32, baseline: Fds, base_list: &[String]) {
    let mut seen = baseline;
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        seen = fds(pid).unwrap_or(Fds {
            total: 0,
            pipe_pool: 0,
        });
        let back = seen.rest() == baseline.rest()
            && seen.pipe_pool <= 2 * ringlb::proxy::splice::MAX_PIPES;
        async move { back.then_some(()) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "pid {pid} has {seen}, {baseline} at the baseline;\nnow:\n{}\nbaseline:\n{}",
            fd_listing(pid).join("\n"),
            base_list.join("\n")
        )
    });
    println!("pid {pid}: {seen}, {baseline} at the baseline");
}

/// The control: the lab's load against a plain `ringlb run`, no upgrade: no
/// failed connect, no reset, every stream byte-exact to its end, and the
/// descriptors back to the baseline once the load ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_without_an_upgrade_loses_nothing() {
    let mut lab = Lab::start(3, "").await;
    let baseline = lab.baseline().await;
    let pid = lab.pid0();
    let base_list = fd_listing(pid);
    let streams = Streams::start(lab.addr, StreamSpec::new(100, 100, 1));
    let short = ShortLoop::start(lab.addr, ShortSpec::new(300));
    streams.wait_opened(200).await;
    // Load for a while: 1000 short connections and 300 more streams.
    short.wait_progress(0, 1000).await;
    streams.wait_opened(500).await;
    let during = fds(pid).unwrap();
    let short = short.stop().await;
    let report = streams.finish().await;
    println!("control: {report}; {short}; descriptors {baseline} before, {during} during");
    short.assert_clean(1000);
    report.assert_clean();
    assert!(
        during.total > baseline.total + 200,
        "the load was open in ringlb: {during}"
    );
    assert_fds_back(pid, baseline, &base_list).await;
    signal(pid, Signal::SIGTERM);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    lab.assert_no_panic();
}

/// 200 streams (100 for the whole test, 100 slots of short-lived ones) and
/// 300 short connections a second; five upgrades in a row. Nothing lost; the
/// four middle processes, which only had short-lived streams, exit while the
/// load still runs; the first exits (0) once its long streams end; the pid file
/// names the last process, whose descriptors return to the first's baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_load_lose_nothing() {
    let mut lab = Lab::start(3, "").await;
    let baseline = lab.baseline().await;
    let base_list = fd_listing(lab.pid0());
    let streams = Streams::start(lab.addr, StreamSpec::new(100, 100, 5));
    let short = ShortLoop::start(lab.addr, ShortSpec::new(300));
    streams.wait_opened(200).await;
    short.wait_progress(0, 200).await;

    let mut pids = vec![lab.pid0()];
    for _ in 0..5 {
        let prev = *pids.last().unwrap();
        let new = lab.upgrade_ok(prev, &[]).await;
        pids.push(new);
        // The new process serves: short connections and new streams go on.
        let (ok, opened) = (short.ok(), streams.opened());
        short.wait_progress(ok, 150).await;
        streams.wait_opened(opened + 30).await;
        assert_eq!(
            streams.failed(),
            0,
            "a stream failed around the upgrade to {new}"
        );
    }
    // Processes 1..=4 had only short-lived streams: they finish their drain
    // and exit while the load still runs on the last one.
    for &p in &pids[1..5] {
        assert_exits(&mut lab, p, Duration::from_secs(15)).await;
    }
    assert!(
        !gone(pids[0]),
        "the first process exited with its long streams still open"
    );
    let (ok, opened) = (short.ok(), streams.opened());
    short.wait_progress(ok, 150).await;
    streams.wait_opened(opened + 30).await;
    // The first process logs what it still drains (every 5 s): its 100 long
    // streams are the only 100 connections any process has open so long.
    let line = lab
        .lb
        .wait_for_line("the first process's drain progress", |l| {
            l.contains("draining: connections still open")
                && l.split("\"open\":")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n >= 100)
        });
    println!("draining: {line}");

    let short = short.stop().await;
    let report = streams.finish().await;
    println!("5 upgrades {pids:?}: {report}; {short}");
    short.assert_clean(1000);
    report.assert_clean();

    let st = p0_exit(&mut lab, Duration::from_secs(15)).await;
    assert!(st.success(), "the first process: {st}");
    let last = pids[5];
    assert_eq!(
        read_pid(&lab.pid_file),
        Some(last),
        "an old process touched the pid file"
    );
    assert!(!gone(last));
    assert_fds_back(last, baseline, &base_list).await;
    let st = status(lab.admin).await;
    assert_eq!(st["process"]["pid"], last);
    signal(last, Signal::SIGTERM);
    assert_exits(&mut lab, last, Duration::from_secs(15)).await;
    lab.assert_no_panic();
}

/// SIGUSR2 instead of the command: the same upgrade (default binary), found
/// through the pid file, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_under_load() {
    let mut lab = Lab::start(2, "").await;
    let streams = Streams::start(lab.addr, StreamSpec::new(30, 30, 2));
    let short = ShortLoop::start(lab.addr, ShortSpec::new(200));
    streams.wait_opened(60).await;
    short.wait_progress(0, 100).await;
    let p0 = lab.pid0();
    // Before its handler is installed, SIGUSR2 would kill the process.
    eventually(
        Duration::from_secs(10),
        "SIGUSR2 is caught",
        || async move { catches(p0, &[Signal::SIGUSR2]) },
    )
    .await;
    signal(p0, Signal::SIGUSR2);
    let pid_file = lab.pid_file.clone();
    eventually(UPGRADE_WAIT, "the pid file names a new process", || {
        let p = read_pid(&pid_file);
        async move { p.is_some_and(|p| p != p0) }
    })
    .await;
    let new = lab.upgraded(p0).await;
    let (ok, opened) = (short.ok(), streams.opened());
    short.wait_progress(ok, 100).await;
    streams.wait_opened(opened + 20).await;
    let short = short.stop().await;
    let report = streams.finish().await;
    println!("SIGUSR2 {p0} -> {new}: {report}; {short}");
    short.assert_clean(200);
    report.assert_clean();
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    signal(new, Signal::SIGTERM);
    assert_exits(&mut lab, new, Duration::from_secs(15)).await;
    lab.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Failed upgrades
// ---------------------------------------------------------------------------

/// An executable shell script `name` in the lab's directory.
fn script(lab: &Lab, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = lab.dir.path().join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Whether `text` contains one of the `|`-separated alternatives of `want`.
fn says(text: &str, want: &str) -> bool {
    want.split('|').any(|w| text.contains(w))
}

/// How the reason names a new process's exit status `n`: the spec's words, or
/// the standard library's `ExitStatus` display.
fn exited_with(n: i32) -> String {
    format!(
        "exited with status {n} before it was ready|exited (exit status: {n}) before it was ready"
    )
}

/// A failed upgrade under the short-connection loop: `ringlb upgrade` (with
/// `args`) exits 1 with `ringlb: upgrade failed:` and every `want` (see
/// [`says`]) on stderr;
/// not one connection fails; the same process is in the pid file, serving,
/// answering /status as itself, with no child left. Returns how long the
/// command took.
async fn assert_failed_upgrade(lab: &mut Lab, args: &[String], want: &[&str]) -> Duration {
    let p0 = lab.pid0();
    let short = ShortLoop::start(lab.addr, ShortSpec::new(200));
    short.wait_progress(0, 50).await;
    let t0 = Instant::now();
    let out = lab.upgrade(args).await;
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("failed upgrade ({args:?}) in {took:.2?}: {}", stderr.trim());
    assert_eq!(
        out.status.code(),
        Some(1),
        "ringlb upgrade {args:?}: stdout {:?} stderr {stderr:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("ringlb: upgrade failed: "),
        "stderr {stderr:?}"
    );
    for w in want {
        assert!(says(&stderr, w), "stderr {stderr:?} does not say {w:?}");
    }
    // The old process keeps serving, as itself.
    let ok = short.ok();
    short.wait_progress(ok, 100).await;
    let short = short.stop().await;
    short.assert_clean(150);
    assert_eq!(read_pid(&lab.pid_file), Some(p0), "the pid file changed");
    assert!(lab.lb.alive(), "the old process exited");
    let st = status(lab.admin).await;
    assert_eq!(st["process"]["pid"], p0, "{}", st["process"]);
    assert!(
        st["process"]["upgraded_from"].is_null(),
        "{}",
        st["process"]
    );
    // No child left behind: the would-be successor is stopped and reaped.
    let mut left = Vec::new();
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        left = children(p0);
        let none = left.is_empty();
        async move { none.then_some(()) }
    })
    .await
    .unwrap_or_else(|| {
        let what: Vec<String> = left
            .iter()
            .map(|&c| format!("{c} {:?} {}", stat(c), cmdline(c)))
            .collect();
        panic!("children left after a failed upgrade: {what:?}")
    });
    let metrics = http_get(lab.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("ringlb_upgrades_total{result=\"failed\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("upgrade"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    took
}

/// An invalid config file: the new process refuses it; the reason has the
/// config error in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_invalid_config_keeps_the_old_process() {
    let mut lab = Lab::start(2, "").await;
    let bad = lab
        .text("", None)
        .replace("pool = \"p\"", "pool = \"nope\"");
    write_file(&lab.path, &bad);
    assert_failed_upgrade(&mut lab, &[], &["no pool named \"nope\""]).await;
    signal(lab.pid0(), Signal::SIGTERM);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    lab.assert_no_panic();
}

/// `--binary /bin/false`: the new process exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_binary_that_exits_keeps_the_old_process() {
    let mut lab = Lab::start(2, "").await;
    let args = ["--binary".to_string(), "/bin/false".to_string()];
    assert_failed_upgrade(&mut lab, &args, &[&exited_with(1)]).await;
    signal(lab.pid0(), Signal::SIGTERM);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    lab.assert_no_panic();
}

/// A "binary" that never becomes ready, with `upgrade_timeout = "2s"`: given
/// up on after 2 s, stopped and reaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upgrade_never_ready_keeps_the_old_process() {
    let mut lab = Lab::start(2, "upgrade_timeout = \"2s\"").await;
    let never = script(&lab, "never-ready", "exec sleep 600");
    let args = ["--binary".to_string(), never.display().to_string()];
    let took = assert_failed_upgrade(&mut lab, &args, &["not ready within 2s"]).await;
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    signal(lab.pid0(), Signal::SIGTERM);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    lab.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Requests during an upgrade
// ---------------------------------------------------------------------------

/// A "binary" that waits for the file `go` in the lab's directory (an upgrade
/// held open until the test says), then runs `then` (`exec ringlb "$@"`, or
/// `exit 3`).
fn held_binary(lab: &Lab, then: &str) -> (PathBuf, PathBuf) {
    let go = lab.dir.path().join("go");
    let body = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done\n{then}",
        go.display()
    );
    (script(lab, "held", &body), go)
}

/// Start `ringlb upgrade --binary <held>` in the background; wait until the old
/// process has started the held binary; its pid.
async fn start_held_upgrade(lab: &Lab, held: &Path) -> (u32, tokio::task::JoinHandle<Output>) {
    let mut cmd = Command::new(RINGLB);
    cmd.arg("upgrade")
        .arg("--pid-file")
        .arg(&lab.pid_file)
        .arg("--binary")
        .arg(held);
    let upgrade = tokio::task::spawn_blocking(move || run_bounded(cmd, UPGRADE_WAIT));
    let p0 = lab.pid0();
    let started = eventually_some(
        Duration::from_secs(10),
        "the old process starts the new",
        || {
            let r = match children(p0).first() {
                Some(&c) => Some(Some(c)),
                None => upgrade.is_finished().then_some(None),
            };
            async move { r }
        },
    )
    .await;
    match started {
        Some(child) => (child, upgrade),
        None => panic!(
            "ringlb upgrade ended before a new process started: {:?}",
            upgrade.await.unwrap()
        ),
    }
}

/// `ringlb reload --pid-file P` (sends SIGHUP to the pid in the pid file).
async fn reload_command(lab: &Lab) -> Output {
    let mut cmd = Command::new(RINGLB);
    cmd.arg("reload").arg("--pid-file").arg(&lab.pid_file);
    tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(10)))
        .await
        .unwrap()
}

/// During an upgrade: `ringlb reload` is queued (logged) and reaches the new
/// process once it took over; a second `ringlb upgrade` is refused at once
/// with a message; the first completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_an_upgrade_is_queued_and_a_second_upgrade_refused() {
    let mut lab = Lab::start(2, "").await;
    let (held, go) = held_binary(&lab, &format!("exec '{RINGLB}' \"$@\""));
    let short = ShortLoop::start(lab.addr, ShortSpec::new(200));
    short.wait_progress(0, 50).await;
    let p0 = lab.pid0();
    let (child, first) = start_held_upgrade(&lab, &held).await;
    lab.reap.add(child);

    let out = reload_command(&lab).await;
    assert!(out.status.success(), "ringlb reload: {out:?}");
    let queued = lab.lb.wait_for("queued");
    println!("old process: {queued}");

    let t0 = Instant::now();
    let second = lab.upgrade(&[]).await;
    let stderr = String::from_utf8_lossy(&second.stderr).into_owned();
    println!(
        "second upgrade, refused in {:.2?}: {}",
        t0.elapsed(),
        stderr.trim()
    );
    assert_eq!(second.status.code(), Some(1), "second upgrade: {second:?}");
    assert!(
        stderr.contains("ringlb: upgrade failed: ") && stderr.contains("already in progress"),
        "stderr {stderr:?}"
    );
    assert!(
        children(p0).contains(&child),
        "the pending upgrade was abandoned"
    );

    std::fs::write(&go, "").unwrap();
    let out = first.await.unwrap();
    assert!(
        out.status.success(),
        "the held upgrade: {out:?}\nlog:\n{}",
        lab.lb.drain().join("\n")
    );
    let new = lab.upgraded(p0).await;
    assert_eq!(
        new, child,
        "the new process is the held binary's pid (exec)"
    );
    // The queued reload reached the new process: its own count says so.
    let admin = lab.admin;
    eventually(
        Duration::from_secs(10),
        "the new process applied the queued reload",
        || async move {
            let st = status(admin).await;
            st["process"]["pid"] == new && st["reloads"]["ok"].as_u64() >= Some(1)
        },
    )
    .await;
    let ok = short.ok();
    short.wait_progress(ok, 50).await;
    short.stop().await.assert_clean(100);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    signal(new, Signal::SIGTERM);
    assert_exits(&mut lab, new, Duration::from_secs(15)).await;
    lab.assert_no_panic();
}

/// A reload queued during an upgrade that then fails is applied by the old
/// process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_a_failed_upgrade_is_applied_by_the_old_process() {
    let mut lab = Lab::start(2, "").await;
    let (held, go) = held_binary(&lab, "exit 3");
    let p0 = lab.pid0();
    let before = status(lab.admin).await["reloads"]["ok"].as_u64().unwrap();
    let (child, first) = start_held_upgrade(&lab, &held).await;
    lab.reap.add(child);
    assert!(reload_command(&lab).await.status.success());
    lab.lb.wait_for("queued");
    std::fs::write(&go, "").unwrap();
    let out = first.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(says(&stderr, &exited_with(3)), "stderr {stderr:?}");
    let admin = lab.admin;
    eventually(
        Duration::from_secs(10),
        "the old process applied the queued reload",
        || async move {
            let st = status(admin).await;
            st["process"]["pid"] == p0 && st["reloads"]["ok"].as_u64() > Some(before)
        },
    )
    .await;
    assert_eq!(read_pid(&lab.pid_file), Some(p0));
    signal(p0, Signal::SIGTERM);
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    lab.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Node states
// ---------------------------------------------------------------------------

/// The node named `node` in `/status`.
fn node_status<'a>(st: &'a Value, node: &str) -> &'a Value {
    st["pools"][0]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == node))
        .unwrap_or_else(|| panic!("no node {node} in {st}"))
}

/// node-1 fails its deep health check (HTTP 503; its traffic port still
/// accepts and greets) and is DOWN in the old process; node-2 is drained with
/// `ringlb node drain`. The new config probes once an hour (fall 3), so only
/// the carried-over states can keep clients off them: right after `ringlb
/// upgrade` returns, no client of node-1 or node-2 lands there, no other
/// client moves, and the new `/status` shows both states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_states_carry_over_to_the_new_process() {
    let mut lab = Lab::start_with(4, "", |f| Some(f.http_health("100ms", "50ms", 1, 1))).await;
    let admin = lab.admin;
    eventually(
        Duration::from_secs(10),
        "every node probed up",
        || async move {
            let st = status(admin).await;
            st["pools"][0]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["state"] == "up" && n["probes"].as_u64() >= Some(1))
        },
    )
    .await;
    let ips: Vec<_> = (0..400).map(|i| client_ip(5000 + i)).collect();
    let before = nodes_for(&ips, lab.addr).await;
    let of = |n: &str| before.iter().filter(|b| *b == n).count();
    assert!(of("node-1") > 30 && of("node-2") > 30, "{before:?}");

    lab.fleet.health[1].set_healthy(false);
    let out = Command::new(RINGLB)
        .args(["node", "drain", "p", "node-2", "--config"])
        .arg(&lab.path)
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "ringlb node drain: {out:?}");
    eventually(
        Duration::from_secs(10),
        "node-1 down, node-2 drained",
        || async move {
            let st = status(admin).await;
            node_status(&st, "node-1")["state"] == "down"
                && node_status(&st, "node-2")["admin_state"] == "drain"
        },
    )
    .await;

    // The new process probes once an hour and needs 3 failures for DOWN.
    let slow = lab.fleet.http_health("1h", "1s", 1, 3);
    write_file(&lab.path, &lab.text("", Some(&slow)));
    let p0 = lab.pid0();
    let new = lab.upgrade_ok(p0, &[]).await;
    let after = nodes_for(&ips, lab.addr).await;
    let mut moved = Vec::new();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a.starts_with("node-") && a != "node-1" && a != "node-2",
            "client {} landed on {a:?} right after the handover",
            ips[i]
        );
        if b != a {
            moved.push(b.clone());
        }
    }
    assert!(
        moved.iter().all(|b| b == "node-1" || b == "node-2"),
        "clients of other nodes moved: {moved:?}"
    );
    let st = status(admin).await;
    assert_eq!(st["process"]["pid"], new);
    let (n1, n2) = (node_status(&st, "node-1"), node_status(&st, "node-2"));
    assert_eq!(n1["state"], "down", "{n1}");
    assert_eq!(n1["in_service"], false, "{n1}");
    assert_eq!(n2["admin_state"], "drain", "{n2}");
    assert_eq!(n2["in_service"], false, "{n2}");
    assert_eq!(
        st["pools"][0]["health"]["interval"], "1h",
        "the new config applies"
    );
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    signal(new, Signal::SIGTERM);
    assert_exits(&mut lab, new, Duration::from_secs(15)).await;
    lab.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Stop signals
// ---------------------------------------------------------------------------

/// An echo stream held open (its greeting read).
async fn hold(lab: &Lab, i: u32) -> tokio::net::TcpStream {
    let mut s = connect_from(client_ip(i), lab.addr).await.unwrap();
    let g = read_line(&mut s).await.unwrap();
    assert!(g.starts_with("node-"), "{g}");
    s
}

async fn echo_ok(s: &mut tokio::net::TcpStream, n: usize, half_close: bool) {
    let data = pattern(n, n as u64);
    exchange(s, &data, half_close)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// After the handover, SIGTERM to both processes at once (systemd's default
/// KillMode): each keeps its open connection flowing through its drain and
/// exits 0 once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_both_during_the_drain_ends_both_cleanly() {
    become_subreaper(); // the new process becomes ours once the old exits
    let mut lab = Lab::start(1, "").await;
    let mut a = hold(&lab, 1).await;
    echo_ok(&mut a, 1000, false).await;
    let p0 = lab.pid0();
    let p1 = lab.upgrade_ok(p0, &[]).await;
    // A connection on the new process (the old one may still accept for a
    // moment after the command returns: retry until the new one counts it).
    let admin = lab.admin;
    let mut b = None;
    for i in 2..50 {
        let s = hold(&lab, i).await;
        let st = status(admin).await;
        if st["listeners"][0]["active_connections"].as_u64() == Some(1) {
            b = Some(s);
            break;
        }
    }
    let mut b = b.expect("no connection reached the new process");
    signal(p0, Signal::SIGTERM);
    signal(p1, Signal::SIGTERM);
    // Both drain: the open connections keep flowing.
    echo_ok(&mut a, 20_000, false).await;
    echo_ok(&mut b, 20_000, false).await;
    assert!(
        !gone(p0) && !gone(p1),
        "a process did not wait for its connection"
    );
    echo_ok(&mut a, 3000, true).await;
    expect_eof(&mut a).await.unwrap();
    let st = p0_exit(&mut lab, Duration::from_secs(15)).await;
    assert!(st.success(), "old process: {st}");
    assert!(!gone(p1), "the new process did not wait for its connection");
    echo_ok(&mut b, 3000, true).await;
    expect_eof(&mut b).await.unwrap();
    let st = assert_exits(&mut lab, p1, Duration::from_secs(15)).await;
    assert_eq!(
        st,
        Some(WaitStatus::Exited(Pid::from_raw(p1 as i32), 0)),
        "the new process's exit"
    );
    lab.assert_no_panic();
}

/// The old process, draining after the handover, refuses another upgrade: on
/// SIGUSR2 it starts nothing (and logs why), on SIGHUP it says which pid to
/// reload, `ringlb upgrade` aimed at it fails saying it handed over to the new
/// pid; its connection keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_old_process_refuses_another_upgrade() {
    let mut lab = Lab::start(1, "").await;
    let mut a = hold(&lab, 1).await;
    let p0 = lab.pid0();
    let p1 = lab.upgrade_ok(p0, &[]).await;
    lab.lb
        .wait_for(&format!("handed over to pid {p1}; draining"));
    signal(p0, Signal::SIGUSR2);
    let refused = lab.lb.wait_for_line("SIGUSR2 refused", |l| {
        l.contains("SIGUSR2") && (l.contains("no upgrade") || l.contains("handed over"))
    });
    println!("SIGUSR2 to the draining process: {refused}");
    // A reload asked of it is not lost silently: it says where to send it.
    signal(p0, Signal::SIGHUP);
    let hup = lab
        .lb
        .wait_for_line("SIGHUP ignored by the draining process", |l| {
            l.contains("SIGHUP") && l.contains(&format!("reload pid {p1}"))
        });
    println!("SIGHUP to the draining process: {hup}");
    let old_pid_file = lab.dir.path().join("old.pid");
    std::fs::write(&old_pid_file, format!("{p0}\n")).unwrap();
    let mut cmd = Command::new(RINGLB);
    cmd.arg("upgrade").arg("--pid-file").arg(&old_pid_file);
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, UPGRADE_WAIT))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("ringlb upgrade to the draining process: {}", stderr.trim());
    assert!(children(p0).iter().all(|&c| c == p1), "{:?}", children(p0));
    echo_ok(&mut a, 5000, false).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains(&format!("handed over to pid {p1}")),
        "the refusal does not say the process handed over to {p1}: {stderr:?}"
    );
    echo_ok(&mut a, 500, true).await;
    expect_eof(&mut a).await.unwrap();
    assert!(p0_exit(&mut lab, Duration::from_secs(15)).await.success());
    signal(p1, Signal::SIGTERM);
    assert_exits(&mut lab, p1, Duration::from_secs(15)).await;
    lab.assert_no_panic();
}

/// A stop signal while an upgrade is pending: the pending new process is
/// stopped, `ringlb upgrade` fails, the old process drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_pending_upgrade_stops_both() {
    let mut lab = Lab::start(1, "").await;
    let (held, _go) = held_binary(&lab, &format!("exec '{RINGLB}' \"$@\""));
    let p0 = lab.pid0();
    let (child, first) = start_held_upgrade(&lab, &held).await;
    lab.reap.add(child);
    signal(p0, Signal::SIGTERM);
    let st = p0_exit(&mut lab, Duration::from_secs(15)).await;
    assert!(st.success(), "old process: {st}");
    assert_exits(&mut lab, child, Duration::from_secs(5)).await;
    let out = first.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("upgrade during a stop: {out:?}");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("ringlb: upgrade failed: "), "{stderr:?}");
    lab.assert_no_panic();
}
