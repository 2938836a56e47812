//! ringlb-bench: benchmark backends (`serve`) and a load generator (`load`) for
//! ringlb, on loopback only. See `ringlb-bench --help`.
#![forbid(unsafe_code)]

mod cli;
mod http;
mod load;
mod net;
mod pushmsg;
mod report;
mod serve;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Raise the open-file soft limit to the hard one (the library's function); the
/// warning to print when that fails.
fn raise_nofile_limit() -> Result<(), String> {
    let Err(e) = ringlb::sys::rlimit::raise_nofile_limit() else {
        return Ok(());
    };
    Err(match ringlb::sys::rlimit::nofile_limits() {
        Ok((soft, hard)) => format!(
            "open-file soft limit stays at {soft}: \
             raising it to the hard limit {hard} failed: {e}"
        ),
        Err(_) => format!("cannot read the open-file limit: {e}"),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(note) = raise_nofile_limit() {
        eprintln!("ringlb-bench: warning: {note}");
    }
    let workers = match worker_threads(cli.workers) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ringlb-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringlb-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Load(a) => load::run(a).await,
        }
    });
    // Connection tasks still running (a stuck peer) must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringlb-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--workers`, else `RINGLB_WORKERS`, else the number of cores.
fn worker_threads(flag: Option<u16>) -> Result<usize, String> {
    if let Some(n) = flag {
        return Ok(usize::from(n));
    }
    match std::env::var("RINGLB_WORKERS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "RINGLB_WORKERS={v:?} is not a number of threads from 1 to 1024"
            )),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}
