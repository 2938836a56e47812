//! The test harness's own tests (tests/common): the skip-or-fail decision for
//! tests that need root, the patience multiplier, reserved and closed ports, and
//! line reading. A harness that lies turns failures green, so it is tested too.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_test_that_cannot_run_is_skipped_or_failed_as_the_environment_says() {
    assert_eq!(decide(None, "REQUIRE_ROOT", None), Need::Run);
    assert_eq!(decide(None, "REQUIRE_ROOT", Some("1")), Need::Run);
    let skip = decide(Some("not root (effective uid 1000)"), "REQUIRE_ROOT", None);
    assert!(
        matches!(&skip, Need::Skip(m) if m.starts_with("skipped: not root (effective uid 1000)")),
        "{skip:?}"
    );
    // Only "1" turns a skip into a failure; anything else (unset, 0, empty) skips.
    for v in ["0", "", "yes"] {
        assert!(
            matches!(decide(Some("x"), "REQUIRE_ROOT", Some(v)), Need::Skip(_)),
            "{v:?}"
        );
    }
    for v in ["1", " 1\n"] {
        let fail = decide(Some("no nginx"), "REQUIRE_NGINX", Some(v));
        assert!(
            matches!(&fail, Need::Fail(m) if m.contains("REQUIRE_NGINX=1") && m.contains("no nginx")),
            "{fail:?}"
        );
    }
}

#[test]
fn patience_is_a_number_of_at_least_one_and_defaults_to_one() {
    assert_eq!(parse_patience(None), Ok(1.0));
    assert_eq!(parse_patience(Some("")), Ok(1.0));
    assert_eq!(parse_patience(Some("3")), Ok(3.0));
    assert_eq!(parse_patience(Some(" 2.5 ")), Ok(2.5));
    assert_eq!(parse_patience(Some("1")), Ok(1.0));
    for bad in ["0.5", "0", "-2", "fast", "inf", "NaN", "2x"] {
        assert!(parse_patience(Some(bad)).is_err(), "{bad:?} accepted");
    }
    // This run's value scales durations, never shortens them.
    assert!(patience() >= 1.0);
    assert!(patient(Duration::from_secs(2)) >= Duration::from_secs(2));
}

#[test]
fn reserved_ports_are_outside_the_ephemeral_range_distinct_and_held() {
    let eph = ephemeral_ports();
    let mut held: Vec<PortReservation> = (0..20).map(|_| reserve_port()).collect();
    let mut ports: Vec<u16> = held.iter().map(PortReservation::port).collect();
    for p in &ports {
        assert!(!eph.contains(p), "{p} is in the ephemeral range {eph:?}");
        assert!(*p >= 20000, "{p}");
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 20, "a port reserved twice");
    // Held: nobody else can bind it until it is released.
    let p = held[0].port();
    assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_err());
    held[0].release();
    let l = std::net::TcpListener::bind(("127.0.0.1", p)).expect("free after release");
    drop(l);
}

#[tokio::test]
async fn a_closed_port_refuses_for_as_long_as_it_is_held() {
    let (addr, _held) = closed_port(LOCAL);
    for _ in 0..3 {
        let e = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
    assert!(std::net::TcpListener::bind(addr).is_err(), "{addr} taken");
}

#[tokio::test]
async fn read_line_returns_lines_and_reports_eof_and_runaway_lines() {
    let (mut a, mut b) = tokio::io::duplex(1 << 20);
    use tokio::io::AsyncWriteExt;
    a.write_all(b"one\ntwo\npartial").await.unwrap();
    drop(a);
    assert_eq!(read_line(&mut b).await.unwrap(), "one");
    assert_eq!(read_line(&mut b).await.unwrap(), "two");
    let e = read_line(&mut b).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("partial"), "{e}");

    let long = vec![b'x'; MAX_LINE + 10];
    assert!(read_line_blocking(&mut &long[..]).is_err());
    assert_eq!(
        read_line_blocking(&mut &b"blocking\nrest"[..]).unwrap(),
        "blocking"
    );

    let (_quiet, mut silent) = tokio::io::duplex(64);
    let e = read_line_within(&mut silent, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}

/// Needs root (it is only reached when running as root, and fails CI otherwise).
#[test]
fn needs_root_probe() {
    if !require_root("the probe of the harness's own skip test") {
        return;
    }
    assert!(nix::unistd::geteuid().is_root());
}

/// The failure path end to end: this test binary re-run as nobody, running only
/// `needs_root_probe`, passes with "skipped" by default and fails under
/// `REQUIRE_ROOT=1`. Needs root to switch to nobody (setpriv).
#[test]
fn a_root_only_test_run_as_nobody_skips_or_fails_under_require_root() {
    if !require_root("re-running this test binary as nobody (setpriv)") {
        return;
    }
    // A copy every user can execute (the target directory may not be).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("harness");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |require: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args([
                "--exact",
                "needs_root_probe",
                "--nocapture",
                "--test-threads=1",
            ])
            .current_dir(dir.path())
            .env_remove("REQUIRE_ROOT");
        if let Some(v) = require {
            cmd.env("REQUIRE_ROOT", v);
        }
        let out = cmd.output().expect("setpriv (util-linux)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    };
    let (st, text) = run(None);
    assert!(
        st.success(),
        "as nobody, without REQUIRE_ROOT: {st}\n{text}"
    );
    assert!(text.contains("skipped: not root"), "{text}");
    assert!(text.contains("1 passed"), "{text}");

    let (st, text) = run(Some("1"));
    assert!(!st.success(), "as nobody, REQUIRE_ROOT=1 must fail: {text}");
    assert!(
        text.contains("REQUIRE_ROOT=1, but this test cannot run here: not root"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}
