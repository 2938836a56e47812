//! The service-manager notify protocol (sd_notify) against the real binary,
//! with a test-owned `NOTIFY_SOCKET`: a unix datagram socket bound in a temp
//! dir whose datagrams the test reads. READY=1 (and STATUS=) once listening,
//! RELOADING=1 then READY=1 around a SIGHUP reload, MAINPID=<new pid> at an
//! upgrade's handover plus the new process's READY=1, STOPPING=1 at a stop; a
//! socket that does not exist is no reason to fail.
//!
//! Without `NOTIFY_SOCKET` nothing is sent: that is every other test.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::upgrade_lab::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const RINGLB: &str = env!("CARGO_BIN_EXE_ringlb");

/// How long a notification may take to come, times the patience.
const NOTIFY_WAIT: Duration = Duration::from_secs(20);

/// The test's notify socket and every datagram received so far (each a list
/// of `KEY=value` lines).
struct Notify {
    rx: Receiver<Vec<String>>,
    seen: Vec<Vec<String>>,
    cursor: usize,
}

impl Notify {
    /// Read datagrams of `sock` on a thread (so waits have deadlines).
    fn new(sock: UnixDatagram) -> Notify {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sock.recv(&mut buf) {
                let lines = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                if tx.send(lines).is_err() {
                    break;
                }
            }
        });
        Notify {
            rx,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    /// A socket bound at `dir/notify.sock`; the value for `NOTIFY_SOCKET`.
    fn bind(dir: &Path) -> (Notify, String) {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        (Notify::new(sock), path.display().to_string())
    }

    /// The next datagram (after the one the previous wait returned) with the
    /// line `line` (`KEY=value`, or `KEY=` for any value); waits for it.
    fn wait_for(&mut self, line: &str) -> Vec<String> {
        let hit = |d: &[String]| {
            d.iter().any(|l| {
                if line.ends_with('=') {
                    l.starts_with(line)
                } else {
                    l == line
                }
            })
        };
        if let Some(i) = self.seen[self.cursor..].iter().position(|d| hit(d)) {
            self.cursor += i + 1;
            return self.seen[self.cursor - 1].clone();
        }
        let deadline = std::time::Instant::now() + patient(NOTIFY_WAIT);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(d) = tokio::task::block_in_place(|| self.rx.recv_timeout(left)) else {
                panic!("no datagram with {line:?}; got: {:?}", self.seen);
            };
            let h = hit(&d);
            self.seen.push(d);
            if h {
                self.cursor = self.seen.len();
                return self.seen[self.cursor - 1].clone();
            }
        }
    }

    /// Every datagram received so far (without waiting).
    fn drain(&mut self) -> &[Vec<String>] {
        while let Ok(d) = self.rx.try_recv() {
            self.seen.push(d);
        }
        &self.seen
    }

    /// How many datagrams so far (without waiting) have the line `line`.
    fn count(&mut self, line: &str) -> usize {
        self.drain()
            .iter()
            .filter(|d| d.iter().any(|l| l == line))
            .count()
    }
}

/// `ringlb --log-format json run --config PATH` with `NOTIFY_SOCKET=notify`.
fn start(config: &Path, notify: &str) -> Ringlb {
    Ringlb::from_child(spawn_ringlb_json_with(config, &[("NOTIFY_SOCKET", notify)]))
}

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).unwrap_or_else(|e| panic!("kill -{s} {pid}: {e}"));
}

/// The value of `KEY=` in a datagram.
fn value<'a>(d: &'a [String], key: &str) -> Option<&'a str> {
    d.iter().find_map(|l| l.strip_prefix(key))
}

/// A config with one listener, one node and a pid file in `dir`.
async fn setup(dir: &Path) -> (Vec<ringlb::demo::backend::Backend>, std::path::PathBuf) {
    let b = backends(1).await;
    let path = dir.join("ringlb.toml");
    let top = format!(
        "pid_file = \"{}\"\nshutdown_grace = \"5s\"\n",
        dir.join("ringlb.pid").display()
    );
    std::fs::write(&path, config_text(&nodes_of(&b), "", "", &top)).unwrap();
    (b, path)
}

async fn exit_code(lb: &mut Ringlb) -> Option<i32> {
    let st = poll(Duration::from_secs(15), Duration::from_millis(10), || {
        let st = lb.child.try_wait().expect("try_wait on ringlb");
        async move { st }
    })
    .await
    .unwrap_or_else(|| panic!("ringlb did not exit; log:\n{}", lb.drain().join("\n")));
    st.code()
}

/// READY=1 with a STATUS= once listening (a client gets through at that
/// moment), RELOADING=1 with MONOTONIC_USEC= then READY=1 around a SIGHUP
/// reload, STOPPING=1 at SIGTERM; exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reloading_ready_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, path) = setup(dir.path()).await;
    let (mut notify, socket) = Notify::bind(dir.path());
    let mut lb = start(&path, &socket);
    let ready = notify.wait_for("READY=1");
    let addr = lb.listening("lb");
    assert_eq!(node_for(client_ip(1), addr).await.unwrap(), "node-0");
    let status: Vec<String> = notify.seen[..notify.cursor]
        .iter()
        .flatten()
        .filter(|l| l.starts_with("STATUS="))
        .cloned()
        .collect();
    assert!(
        status.iter().any(|s| s.starts_with("STATUS=serving")),
        "no STATUS=serving... up to READY=1 {ready:?}: {:?}",
        notify.seen
    );
    assert_eq!(notify.count("STOPPING=1"), 0);

    // The handlers are installed by the time READY=1 is sent.
    signal(lb.pid(), Signal::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1");
    let usec = value(&reloading, "MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC=: {reloading:?}"));
    assert!(
        usec.parse::<u64>().is_ok_and(|u| u > 0),
        "MONOTONIC_USEC={usec}"
    );
    let again = notify.wait_for("READY=1");
    println!("reload: {reloading:?} then {again:?}");
    lb.wait_for("reload applied");

    signal(lb.pid(), Signal::SIGTERM);
    notify.wait_for("STOPPING=1");
    assert_eq!(exit_code(&mut lb).await, Some(0));
    println!("datagrams: {:?}", notify.drain());
}

/// An upgrade: the new process says READY=1, the old one MAINPID=<new pid>
/// (the pid the pid file names); the old one drains and exits without a
/// STOPPING=1 (which would tell the service manager the service is stopping);
/// SIGTERM to the new one: STOPPING=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_sends_mainpid_and_the_new_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, path) = setup(dir.path()).await;
    let pid_file = dir.path().join("ringlb.pid");
    let (mut notify, socket) = Notify::bind(dir.path());
    let mut lb = start(&path, &socket);
    let mut reap = Reap::new(&path);
    notify.wait_for("READY=1");
    let addr = lb.listening("lb");
    let p0 = lb.pid();

    let mut cmd = Command::new(RINGLB);
    cmd.arg("upgrade").arg("--pid-file").arg(&pid_file);
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(40)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ringlb upgrade: {out:?}\nlog:\n{}",
        lb.drain().join("\n")
    );
    let new = read_pid(&pid_file).expect("the new pid");
    assert_ne!(new, p0);
    reap.add(new);
    let main = notify.wait_for("MAINPID=");
    assert_eq!(
        value(&main, "MAINPID="),
        Some(new.to_string().as_str()),
        "{main:?}"
    );
    // READY=1 from the first process, then from the new one.
    let two = poll(NOTIFY_WAIT, Duration::from_millis(20), || {
        let n = notify.count("READY=1");
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert!(
        two.is_some(),
        "no READY=1 from the new process: {:?}",
        notify.seen
    );
    assert_eq!(node_for(client_ip(1), addr).await.unwrap(), "node-0");

    // The old process had no connection: it exits now, quietly.
    assert_eq!(exit_code(&mut lb).await, Some(0));
    assert_eq!(
        notify.count("STOPPING=1"),
        0,
        "the old process said STOPPING=1 after handing over: {:?}",
        notify.seen
    );
    signal(new, Signal::SIGTERM);
    notify.wait_for("STOPPING=1");
    wait_gone(new, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("datagrams: {:?}", notify.drain());
}

/// `NOTIFY_SOCKET` naming a socket that does not exist: ringlb runs, serves,
/// reloads and stops as without it, logging a warning at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_notify_socket_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let (_b, path) = setup(dir.path()).await;
    let missing = dir.path().join("no-such-dir").join("notify.sock");
    let mut lb = start(&path, &missing.display().to_string());
    let addr = lb.listening("lb");
    assert_eq!(node_for(client_ip(1), addr).await.unwrap(), "node-0");
    let pid = lb.pid();
    eventually(Duration::from_secs(10), "SIGHUP is caught", || async move {
        catches(pid, &[Signal::SIGHUP, Signal::SIGTERM])
    })
    .await;
    signal(pid, Signal::SIGHUP);
    lb.wait_for("reload applied");
    assert_eq!(node_for(client_ip(2), addr).await.unwrap(), "node-0");
    signal(pid, Signal::SIGTERM);
    assert_eq!(exit_code(&mut lb).await, Some(0));
    let log = lb.drain().join("\n");
    assert!(
        !log.contains("\"level\":\"ERROR\""),
        "an error logged:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// An abstract-namespace socket (`NOTIFY_SOCKET=@name`, as the protocol allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_notify_socket_gets_ready() {
    use std::os::linux::net::SocketAddrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (_b, path) = setup(dir.path()).await;
    let name = format!(
        "ringlb-test-notify-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).expect("bind an abstract socket");
    let mut notify = Notify::new(sock);
    let mut lb = start(&path, &format!("@{name}"));
    notify.wait_for("READY=1");
    signal(lb.pid(), Signal::SIGTERM);
    notify.wait_for("STOPPING=1");
    assert_eq!(exit_code(&mut lb).await, Some(0));
}
