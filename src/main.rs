//! The `ringlb` binary: parse the command line, set up logging, call the library,
//! turn results into exit codes.
#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use ringlb::cli::{Cli, Command, LogFormat, DEMO_CONFIG_PATH};
use ringlb::workers::Workers;
use ringlb::{which, Config, Server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tools print their answer on stdout; the server logs. Default levels differ.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Demo { .. } => "info",
        Command::Check { .. }
        | Command::Which { .. }
        | Command::Reload { .. }
        | Command::Node { .. } => "error",
    };
    if let Err(e) = init_tracing(cli.log_format, cli.log_level.as_deref(), default_level) {
        eprintln!("ringlb: {e:#}");
        return ExitCode::from(2);
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, level: Option<&str>, default_level: &str) -> anyhow::Result<()> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(check(&config)),
        Command::Which {
            config,
            pool,
            listener,
            probe,
            ips,
        } => {
            let cfg = match Config::from_file(&config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_error(&e)),
            };
            let mut args = Vec::new();
            for a in ips {
                if a == "-" {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("reading IPs from stdin")?;
                    args.extend(s.split_whitespace().map(str::to_string));
                } else {
                    args.push(a);
                }
            }
            let ips = which::parse_ips(&args)?;
            let pools = which::pools_for(&cfg, pool.as_deref(), listener.as_deref())?;
            let probed = if probe {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the tokio runtime")?;
                Some(rt.block_on(which::probe_once(&cfg, &pools)))
            } else {
                None
            };
            let mappings = which::map(&cfg, &pools, &ips, probed.as_ref());
            print!("{}", which::render(&cfg, &mappings, probed.as_ref()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            let cfg = match Config::from_file(&config) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_error(&e)),
            };
            // Before any pool or listener exists, so every metric handle records.
            ringlb::metrics::install_prometheus();
            log_nofile_limit();
            let workers = cfg.effective_workers();
            info!(workers, "starting");
            // This thread runs the control work (signals, health probes, admin,
            // reloads); the worker threads accept and serve the connections.
            control_runtime()?.block_on(async move {
                // Handlers first: a signal that arrives while starting (e.g. an
                // early `ringlb reload`) must not kill the process.
                let signals = Signals::install()?;
                // Before binding: every worker has its own socket per listener,
                // and all are bound before privileges are dropped.
                let workers = Workers::start(workers)?;
                let mut server = Server::bind_on(cfg, workers.handles())?;
                server.write_pid_file();
                server.drop_privileges()?;
                let shutdown = CancellationToken::new();
                tokio::spawn(handle_signals(
                    signals,
                    shutdown.clone(),
                    server.hard_stop(),
                    Some(server.handle()),
                ));
                server.run(shutdown).await;
                // The drain is over: stop the worker threads.
                drop(workers);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Reload { pid_file, config } => reload(pid_file, config),
        Command::Node {
            action,
            pool,
            node,
            config,
            admin,
        } => Ok(node_command(action, &pool, &node, &config, admin)),
        Command::Demo { config } => {
            let cfg = match ringlb::demo::load(config.as_deref(), Path::new(DEMO_CONFIG_PATH)) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_error(&e)),
            };
            let workers = cfg.effective_workers();
            runtime(workers)?.block_on(async move {
                let shutdown = CancellationToken::new();
                // The demo has no hard-stop handle before it binds; a second signal
                // during the (short) demo grace just waits for it.
                tokio::spawn(handle_signals(
                    Signals::install()?,
                    shutdown.clone(),
                    CancellationToken::new(),
                    None,
                ));
                ringlb::demo::run(cfg, shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// `ringlb node drain|enable|disable POOL NODE`: one POST to the admin endpoint.
fn node_command(
    action: ringlb::cli::NodeAction,
    pool: &str,
    node: &str,
    config: &Path,
    admin: Option<std::net::SocketAddr>,
) -> ExitCode {
    use ringlb::admin::NodeCommandError;
    use ringlb::cli::NodeAction;
    use ringlb::config::AdminState;
    let state = match action {
        NodeAction::Drain => AdminState::Drain,
        NodeAction::Enable => AdminState::Enabled,
        NodeAction::Disable => AdminState::Disabled,
    };
    match ringlb::admin::node_command(state, pool, node, config, admin) {
        Ok(change) => {
            println!("{change}");
            ExitCode::SUCCESS
        }
        Err(NodeCommandError::Config(e)) => print_config_error(&e),
        Err(e @ NodeCommandError::Refused { .. }) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringlb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reload(pid_file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut pid_file = pid_file;
    if let Some(path) = &config {
        match Config::from_file(path) {
            Ok(cfg) => {
                if pid_file.is_none() {
                    pid_file = cfg.pid_file.clone();
                }
            }
            Err(e) => {
                eprintln!("not reloading: the config has errors");
                return Ok(print_config_error(&e));
            }
        }
    }
    let Some(pid_file) = pid_file else {
        anyhow::bail!("no pid file: pass --pid-file, or --config with a pid_file key");
    };
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading pid file {}", pid_file.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| {
        format!(
            "{}: {:?} is not a process id",
            pid_file.display(),
            text.trim()
        )
    })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .with_context(|| format!("sending SIGHUP to pid {pid} (from {})", pid_file.display()))?;
    println!("sent SIGHUP to ringlb (pid {pid}); the result is in its log, /status and ringlb_reloads_total");
    Ok(ExitCode::SUCCESS)
}

fn check(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(cfg) => {
            print!("{}", ringlb::config::summary(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => print_config_error(&e),
    }
}

fn print_config_error(e: &ringlb::ConfigError) -> ExitCode {
    for m in e.messages() {
        eprintln!("error: {m}");
    }
    ExitCode::FAILURE
}

fn log_nofile_limit() {
    match ringlb::server::raise_nofile_limit() {
        Ok((before, after)) => info!(
            soft_before = before,
            limit = after,
            max_proxied_connections = after.saturating_sub(64) / 2,
            "descriptor limit (RLIMIT_NOFILE): two per proxied connection"
        ),
        Err(e) => warn!(error = %e, "cannot read or raise the descriptor limit"),
    }
}

fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// SIGTERM/SIGINT: stop accepting and drain (first), close everything (second).
/// SIGHUP: reload the config (the demo has nothing to reload: logged and ignored).
/// SIGTERM, SIGINT and SIGHUP, caught from the moment this exists.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

async fn handle_signals(
    signals: Signals,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    server: Option<ringlb::Handle>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                match &server {
                    Some(_) if shutdown.is_cancelled() => {
                        info!("SIGHUP received while shutting down: ignored (no reload during the drain)");
                    }
                    Some(h) => {
                        info!("SIGHUP received: reloading the configuration");
                        h.reload();
                    }
                    None => warn!("SIGHUP received: the demo does not reload; ignored"),
                }
                continue;
            }
        };
        if shutdown.is_cancelled() {
            warn!(
                signal = name,
                "second stop signal: closing open connections now"
            );
            hard_stop.cancel();
        } else {
            info!(
                signal = name,
                "stop signal: no longer accepting; draining open connections"
            );
            shutdown.cancel();
        }
    }
}
