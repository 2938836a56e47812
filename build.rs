//! Build script: the git commit `ringlb --version` names.
//!
//! Sets `RINGLB_VERSION` (always: `0.1.0`, or `0.1.0 (git 0123456789ab)`, with
//! `-dirty` when the work tree had uncommitted changes) and `RINGLB_GIT_COMMIT`
//! (only when known). The commit comes from `$RINGLB_GIT_COMMIT` if the builder
//! set it (a distribution building from a tarball), else from `git`, but only
//! when this package's directory is the top of a git work tree: a tarball
//! unpacked inside some other repository must not take that repository's
//! commit. Without git or .git (`cargo install` from crates.io), no commit.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RINGLB_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("RINGLB_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => Some(c.trim().to_string()),
        _ => from_git(&manifest_dir),
    };
    match commit {
        Some(commit) => {
            println!("cargo:rustc-env=RINGLB_GIT_COMMIT={commit}");
            println!("cargo:rustc-env=RINGLB_VERSION={version} (git {commit})");
        }
        None => println!("cargo:rustc-env=RINGLB_VERSION={version}"),
    }
}

/// Output of `git ARGS` run in `dir`, trimmed; `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn from_git(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points
    // to (a commit) and packed-refs (a ref packed by gc). `--git-path` finds
    // them in a linked worktree too. Only existing files: cargo treats a
    // missing one as always changed. The sources are watched as well, so the
    // -dirty mark follows edits there (the library recompiles on them anyway).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head_ref);
    }
    for name in watched {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    for source in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={source}");
    }
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}
