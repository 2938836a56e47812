//! The `ringlb-bench` binary for integration tests. It is its own workspace
//! package (`benches/ringlb-bench`), so cargo sets no `CARGO_BIN_EXE_ringlb-bench`
//! for ringlb's tests: the first call builds it with the cargo running the tests
//! (a no-op when it is fresh), in ringlb's target directory and profile, and
//! returns its path. `RINGLB_BENCH_BIN` overrides the path (and skips the build).
//! Test-only: panics with cargo's output when the build fails.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Path to an up-to-date `ringlb-bench` (built on first use).
/// A `&str`, like `env!("CARGO_BIN_EXE_ringlb")`.
pub fn ringlb_bench() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(build)
}

fn build() -> String {
    if let Ok(path) = std::env::var("RINGLB_BENCH_BIN") {
        return path;
    }
    // `<target dir>/<profile dir>/ringlb`; the bench goes beside it.
    let ringlb = Path::new(env!("CARGO_BIN_EXE_ringlb"));
    let profile_dir = ringlb.parent().expect("ringlb's directory");
    let target_dir = profile_dir.parent().expect("ringlb's target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--package",
            "ringlb-bench",
            "--bin",
            "ringlb-bench",
        ])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .expect("run cargo to build ringlb-bench");
    assert!(
        out.status.success(),
        "cargo build -p ringlb-bench failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = profile_dir.join("ringlb-bench");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin.to_str().expect("ringlb's path is UTF-8").to_owned()
}
