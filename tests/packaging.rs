//! What an operator installs and types: `ringlb --version`, the config search
//! order, completions and the man page, the systemd unit (checked by
//! `systemd-analyze verify`, and against the example config) and the Debian
//! package's metadata. The package itself is built and installed by .ci/run.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringlb");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ringlb ARGS` in `dir`, with `$RINGLB_CONFIG` set to `env` (or removed).
fn ringlb_in(dir: &Path, env: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env_remove("RINGLB_CONFIG");
    if let Some(v) = env {
        cmd.env("RINGLB_CONFIG", v);
    }
    cmd.output().expect("run ringlb")
}

fn valid_config() -> String {
    let node: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    config_text(&[("n1".to_string(), node)], "", "", "")
}

#[test]
fn version_names_the_package_version_and_the_commit_it_was_built_from() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    let (stdout, _) = text(&out);
    let line = stdout.trim_end();
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("RINGLB_GIT_COMMIT") {
        Some(commit) => assert_eq!(line, format!("ringlb {version} (git {commit})")),
        None => assert_eq!(line, format!("ringlb {version}")),
    }
    // Independently of build.rs: in a git checkout of this package, the commit
    // is HEAD's (12 hex digits, `-dirty` or not depending on the tree then).
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    let in_checkout = top.is_some_and(|t| t.canonicalize().ok() == root().canonicalize().ok());
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) if in_checkout && std::env::var_os("RINGLB_GIT_COMMIT").is_none() => {
            let prefix = format!("ringlb {version} (git {head}");
            assert!(
                line.starts_with(&prefix),
                "{line:?} does not start with {prefix:?}"
            );
            let rest = &line[prefix.len()..];
            assert!(rest == ")" || rest == "-dirty)", "{line:?}");
        }
        _ => eprintln!("skipped the comparison with git: not a git checkout of this package"),
    }
}

#[test]
fn config_search_order_flag_then_env_then_working_directory_then_etc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("config")).expect("mkdir");
    write_file(&checkout.join("config/ringlb.toml"), &valid_config());
    let other = dir.path().join("other.toml");
    write_file(&other, &valid_config());
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");

    // The working directory's config/ringlb.toml.
    let out = ringlb_in(&checkout, None, &["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("config/ringlb.toml: OK"), "{stdout}");

    // $RINGLB_CONFIG wins over it; an empty value counts as unset.
    let out = ringlb_in(&checkout, Some(&other), &["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("{}: OK", other.display())),
        "{stdout}"
    );
    let out = ringlb_in(&checkout, Some(Path::new("")), &["check"]);
    assert!(text(&out).0.starts_with("config/ringlb.toml: OK"));

    // --config wins over both.
    let out = ringlb_in(
        &checkout,
        Some(Path::new("/nonexistent.toml")),
        &["check", "--config", other.to_str().expect("utf-8 path")],
    );
    assert!(out.status.success(), "{}", text(&out).1);

    // A missing $RINGLB_CONFIG is an error that says where the path came from;
    // it never falls through to another file.
    let missing = dir.path().join("missing.toml");
    let out = ringlb_in(&checkout, Some(&missing), &["check"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!(
            "error: {}: cannot read config file",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "note: no --config given: using $RINGLB_CONFIG={}",
            missing.display()
        )),
        "{stderr}"
    );

    // Nothing else: /etc/ringlb/ringlb.toml (absent unless the package is installed).
    let out = ringlb_in(&empty, None, &["check"]);
    let (stdout, stderr) = text(&out);
    if Path::new("/etc/ringlb/ringlb.toml").exists() {
        assert!(
            stdout.starts_with("/etc/ringlb/ringlb.toml: OK"),
            "{stdout}{stderr}"
        );
    } else {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            stderr.contains("error: /etc/ringlb/ringlb.toml: cannot read config file"),
            "{stderr}"
        );
        assert!(
            stderr.contains(
                "note: no --config given, $RINGLB_CONFIG unset, config/ringlb.toml absent: \
                 using /etc/ringlb/ringlb.toml"
            ),
            "{stderr}"
        );
    }

    // `run` and `which` follow the same order (here: the env file, found, then
    // which answers; run with a missing file exits 1 naming the rule).
    let out = ringlb_in(&checkout, Some(&other), &["which", "127.0.0.1"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("127.0.0.1 -> n1"), "{stdout}");
    let out = ringlb_in(&empty, Some(&missing), &["run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("$RINGLB_CONFIG="), "{}", text(&out).1);

    // `reload` without flags checks the search order's file and wants its
    // pid_file; --pid-file alone reads no config at all.
    let out = ringlb_in(&checkout, None, &["reload"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("no pid file")
            && stderr.contains("config/ringlb.toml in the working directory"),
        "{stderr}"
    );
    let out = ringlb_in(
        &checkout,
        Some(&missing),
        &[
            "reload",
            "--pid-file",
            dir.path().join("none.pid").to_str().expect("utf-8 path"),
        ],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("none.pid"), "{stderr}");
    assert!(
        !stderr.contains("missing.toml"),
        "--pid-file alone read the config: {stderr}"
    );

    // --help shows the order.
    let out = ringlb_in(&empty, None, &["run", "--help"]);
    assert!(
        text(&out).0.contains(
            "$RINGLB_CONFIG, else config/ringlb.toml if it exists in the working directory, \
             else /etc/ringlb/ringlb.toml"
        ),
        "{}",
        text(&out).0
    );
}

#[test]
fn completions_for_bash_name_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ringlb_in(dir.path(), None, &["completions", "bash"]);
    assert!(out.status.success());
    let (script, _) = text(&out);
    assert!(script.contains("complete -F _ringlb"), "{script}");
    // The words offered after `ringlb `, and a case for each subcommand's own flags.
    let top = script
        .lines()
        .skip_while(|l| l.trim() != "ringlb)")
        .find_map(|l| l.trim().strip_prefix("opts=\""))
        .expect("the top-level opts line");
    let words: Vec<&str> = top.trim_end_matches('"').split_whitespace().collect();
    for sub in [
        "run",
        "check",
        "which",
        "reload",
        "node",
        "demo",
        "completions",
    ] {
        assert!(words.contains(&sub), "{sub} not offered: {words:?}");
        let case = format!("ringlb__subcmd__{sub})");
        assert!(script.contains(&case), "no case for {sub}");
    }
    assert!(script.contains("--config"));
    let out = ringlb_in(dir.path(), None, &["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_renders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = ringlb_in(dir.path(), None, &["manpage"]);
    assert!(out.status.success());
    let (page, _) = text(&out);
    assert!(page.contains(".TH RINGLB 1"), "{page}");
    let path = dir.path().join("ringlb.1");
    write_file(&path, &page);
    match Command::new("man")
        .arg("-l")
        .arg(&path)
        .env("MANWIDTH", "100")
        .output()
    {
        Ok(out) if out.status.success() => {
            let (shown, _) = text(&out);
            for heading in [
                "NAME",
                "SYNOPSIS",
                "SUBCOMMANDS",
                "FILES",
                "ENVIRONMENT",
                "SIGNALS",
            ] {
                assert!(
                    shown.lines().any(|l| l == heading),
                    "no {heading} in\n{shown}"
                );
            }
            assert!(shown.contains("/etc/ringlb/ringlb.toml"));
        }
        Ok(out) => panic!("man -l failed: {}", text(&out).1),
        Err(e) => eprintln!("skipped rendering with man -l: {e}"),
    }
}

/// `Key=value` lines of a unit file's `[section]`, with the comment lines
/// right above each group of directives.
fn directives(unit: &str, section: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut commented = false;
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            current = line.trim_matches(['[', ']']).to_string();
            commented = false;
        } else if line.starts_with('#') {
            commented = true;
        } else if line.is_empty() {
            commented = false;
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.to_string(), v.to_string(), commented));
            }
        }
    }
    out
}

fn unit_text() -> String {
    std::fs::read_to_string(root().join("config/ringlb.service")).expect("config/ringlb.service")
}

#[test]
fn the_unit_agrees_with_the_example_config_and_explains_every_setting() {
    let unit = unit_text();
    let service = directives(&unit, "Service");
    let get = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("NotifyAccess"), ["all"]);
    assert_eq!(
        get("ExecStart"),
        ["/usr/bin/ringlb run --config /etc/ringlb/ringlb.toml"]
    );
    assert_eq!(get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(get("KillMode"), ["control-group"]);
    assert_eq!(get("User"), ["ringlb"]);
    assert_eq!(get("RuntimeDirectory"), ["ringlb"]);
    assert_eq!(get("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(get("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    for (key, _, commented) in &service {
        assert!(commented, "{key}= has no comment saying why");
    }

    // The packaged config: its pid file lives in the unit's RuntimeDirectory,
    // and the stop timeout leaves room for its shutdown_grace.
    let cfg = ringlb::Config::from_file(root().join("config/ringlb.toml")).expect("example config");
    assert_eq!(
        cfg.pid_file.as_deref(),
        Some(Path::new("/run/ringlb/ringlb.pid"))
    );
    assert!(
        cfg.user.is_none(),
        "the unit starts ringlb as its user already"
    );
    let stop = get("TimeoutStopSec");
    let stop = humantime::parse_duration(stop[0]).expect("TimeoutStopSec");
    assert!(
        stop >= cfg.withdraw_delay + cfg.shutdown_grace + std::time::Duration::from_secs(10),
        "TimeoutStopSec {stop:?} leaves no margin over withdraw_delay {:?} + shutdown_grace {:?}",
        cfg.withdraw_delay,
        cfg.shutdown_grace
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    let missing = match &analyze {
        Ok(o) if o.status.success() => None,
        _ => Some("systemd-analyze is not installed (apt-get install systemd)".to_string()),
    };
    if !needs("REQUIRE_ROOT", missing) {
        return;
    }
    // The installed unit runs /usr/bin/ringlb, which verify requires to exist:
    // check a copy that runs the binary under test. --man=no: ringlb(1) is not
    // installed here (.ci/run verifies the installed unit, man page included).
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("ringlb.service");
    let unit = unit_text().replace("ExecStart=/usr/bin/ringlb ", &format!("ExecStart={BIN} "));
    assert!(unit.contains(&format!("ExecStart={BIN} run")));
    write_file(&copy, &unit);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );
    // Warnings about our unit (other units of the machine may have their own).
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("ringlb")).collect();
    assert!(ours.is_empty(), "warnings:\n{stderr}");
}

#[test]
fn the_package_metadata_names_files_that_exist() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml"))
            .expect("Cargo.toml parses");
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let mut dests = Vec::new();
    for asset in assets {
        let src = asset[0].as_str().expect("source");
        dests.push(asset[1].as_str().expect("destination").to_string());
        // target/ is built by .ci/package; everything else is in the repository.
        if !src.starts_with("target/") {
            assert!(root().join(src).exists(), "asset {src} does not exist");
        }
    }
    for dest in ["usr/bin/", "etc/ringlb/ringlb.toml", "usr/share/man/man1/"] {
        assert!(
            dests.iter().any(|d| d == dest),
            "nothing installed to {dest}"
        );
    }
    assert_eq!(
        deb["dbgsym"].as_bool(),
        Some(true),
        "symbols go to ringlb-dbgsym"
    );
    let units = &deb["systemd-units"];
    assert_eq!(
        units["enable"].as_bool(),
        Some(false),
        "not enabled on install"
    );
    assert_eq!(
        units["start"].as_bool(),
        Some(false),
        "not started on install"
    );
    let unit_dir = units["unit-scripts"].as_str().expect("unit-scripts");
    assert!(root().join(unit_dir).join("ringlb.service").exists());

    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    let postinst_path = root().join(scripts).join("postinst");
    let postinst = std::fs::read_to_string(&postinst_path).expect("postinst");
    // cargo-deb replaces every occurrence of the token, comments included.
    assert_eq!(
        postinst.matches("#DEBHELPER#").count(),
        1,
        "one #DEBHELPER# line"
    );
    assert!(
        postinst.contains("adduser --system"),
        "creates the ringlb user"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&postinst_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "postinst is executable");
    if let Ok(out) = Command::new("sh").arg("-n").arg(&postinst_path).output() {
        assert!(out.status.success(), "sh -n postinst: {}", text(&out).1);
    }
}
