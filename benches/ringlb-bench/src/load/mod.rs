//! `ringlb-bench load`: the workloads, a shared clock and an overall time bound.

mod connrate;
mod fanout;
mod idle;
mod procstat;
mod pushconn;
mod rr;
pub mod spread;
mod storm;
mod throughput;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::cli::{Common, LoadArgs, Timing, Workload};
use crate::report::Report;

/// Slack on top of every computed bound, for task start-up and output.
const SLACK: Duration = Duration::from_secs(5);

pub struct Outcome {
    pub report: Report,
    pub exit: ExitCode,
}

impl Outcome {
    /// Exit 0 when the run measured something, 1 when nothing worked at all.
    pub fn measured(report: Report, anything: bool) -> Outcome {
        Outcome {
            report,
            exit: if anything {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            },
        }
    }
}

/// When a run starts, when measuring starts (after warmup), when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

impl Clock {
    pub fn starting_now(t: Timing) -> Clock {
        let start = Instant::now();
        let measure_start = start + t.warmup;
        Clock {
            start,
            measure_start,
            end: measure_start + t.duration,
        }
    }

    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }
}

fn common(w: &Workload) -> &Common {
    match w {
        Workload::Throughput(a) => &a.common,
        Workload::Connrate(a) => &a.common,
        Workload::Rr(a) => &a.common,
        Workload::Idle(a) => &a.common,
        Workload::Spread(a) => &a.common,
        Workload::Fanout(a) => &a.common,
        Workload::Storm(a) => &a.common,
    }
}

/// Longest a workload may take in all, past which it is abandoned.
fn budget(w: &Workload) -> Duration {
    let t = common(w).timeout;
    match w {
        Workload::Throughput(a) => t * 3 + a.timing.warmup + a.timing.duration + SLACK,
        Workload::Connrate(a) => t + a.timing.warmup + a.timing.duration + SLACK,
        Workload::Rr(a) => t * 3 + a.timing.warmup + a.timing.duration + SLACK,
        Workload::Idle(a) => idle::ESTABLISH_CAP + Duration::from_secs(1) + a.hold + t + SLACK,
        Workload::Spread(_) => spread::RUN_CAP + t * 2 + SLACK,
        Workload::Fanout(a) => {
            fanout::ESTABLISH_CAP + a.timing.warmup + a.timing.duration + t + SLACK
        }
        // Opening, the kill, recovery, settle, the revive and teardown.
        Workload::Storm(a) => storm::ESTABLISH_CAP + t * 3 + a.recover_within + a.settle + SLACK,
    }
}

/// Descriptors the workload holds at once.
fn descriptors(w: &Workload) -> u64 {
    u64::from(match w {
        Workload::Throughput(a) => a.streams,
        Workload::Connrate(a) => a.concurrency,
        Workload::Rr(a) => a.connections,
        Workload::Idle(a) => a.connections,
        Workload::Spread(a) => a.concurrency,
        Workload::Fanout(a) => a.connections,
        // Each client holds one connection (a reconnect replaces it), plus control.
        Workload::Storm(a) => a.connections + 1,
    })
}

pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let w = args.workload;
    let json = common(&w).json;
    let need = descriptors(&w) + 64;
    if let Ok((soft, _)) = ringlb::sys::rlimit::nofile_limits() {
        if need > soft {
            bail!(
                "this run holds about {need} descriptors but the open-file limit is {soft}; \
                 use fewer connections or raise the limit (ulimit -n)"
            );
        }
    }
    let bound = budget(&w);
    let fut = async move {
        match w {
            Workload::Throughput(a) => throughput::run(a).await,
            Workload::Connrate(a) => connrate::run(a).await,
            Workload::Rr(a) => rr::run(a).await,
            Workload::Idle(a) => idle::run(a).await,
            Workload::Spread(a) => spread::run(a).await,
            Workload::Fanout(a) => fanout::run(a).await,
            Workload::Storm(a) => storm::run(a).await,
        }
    };
    let outcome = match tokio::time::timeout(bound, fut).await {
        Ok(r) => r?,
        Err(_) => bail!(
            "the run did not finish within {} and was abandoned (a peer stopped answering?)",
            humantime::format_duration(bound)
        ),
    };
    outcome.report.print(json);
    Ok(outcome.exit)
}
