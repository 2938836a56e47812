//! The `ringlb` binary: parse the command line, set up logging, call the library,
//! turn results into exit codes.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ringlb::cli::which;
use ringlb::cli::{Cli, Command, LogFormat, DEMO_CONFIG_PATH};
use ringlb::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tools print their answer on stdout; the server logs. Default levels differ.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Demo { .. } => "info",
        Command::Check { .. }
        | Command::Which { .. }
        | Command::Reload { .. }
        | Command::Upgrade { .. }
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
            let out = which::command(
                &cfg,
                pool.as_deref(),
                listener.as_deref(),
                probe,
                &ips,
                std::io::stdin(),
            )?;
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            // Started by an upgrade: the handover comes first, so that a config
            // error reaches the old process (and `ringlb upgrade`) too.
            let incoming = ringlb::upgrade::takeover::from_env()
                .context("taking over from the old process")?;
            let cfg = match Config::from_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(i) = &incoming {
                        i.fail(&format!(
                            "the new process refused the config: {}",
                            e.messages().join("; ")
                        ));
                    }
                    return Ok(print_config_error(&e));
                }
            };
            ringlb::control::run_process(cfg, incoming)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { pid_file, config } => reload(pid_file, config),
        Command::Upgrade {
            pid_file,
            config,
            binary,
        } => upgrade(pid_file, config, binary),
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
            ringlb::demo::run_process(cfg)?;
            Ok(ExitCode::SUCCESS)
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

/// The pid file `ringlb reload` and `ringlb upgrade` use: `--pid-file`, else the
/// `pid_file` of `--config` (which must be valid: `Err` carries the exit code).
fn pid_file_of(
    pid_file: Option<PathBuf>,
    config: Option<&Path>,
    doing: &str,
) -> anyhow::Result<Result<PathBuf, ExitCode>> {
    let mut pid_file = pid_file;
    if let Some(path) = config {
        match Config::from_file(path) {
            Ok(cfg) => {
                if pid_file.is_none() {
                    pid_file = cfg.pid_file.clone();
                }
            }
            Err(e) => {
                eprintln!("not {doing}: the config has errors");
                return Ok(Err(print_config_error(&e)));
            }
        }
    }
    match pid_file {
        Some(p) => Ok(Ok(p)),
        None => anyhow::bail!("no pid file: pass --pid-file, or --config with a pid_file key"),
    }
}

fn reload(pid_file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let pid_file = match pid_file_of(pid_file, config.as_deref(), "reloading")? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let pid = ringlb::reload::signal::send_reload(&pid_file)?;
    println!("sent SIGHUP to ringlb (pid {pid}); the result is in its log, /status and ringlb_reloads_total");
    Ok(ExitCode::SUCCESS)
}

/// `ringlb upgrade`: ask the running process for an upgrade and wait for it.
fn upgrade(
    pid_file: Option<PathBuf>,
    config: Option<PathBuf>,
    binary: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let pid_file = match pid_file_of(pid_file, config.as_deref(), "upgrading")? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let pid = ringlb::reload::signal::read_pid(&pid_file)?;
    let binary = match binary {
        // The running process may have another working directory.
        Some(b) => {
            Some(std::path::absolute(&b).with_context(|| format!("--binary {}", b.display()))?)
        }
        None => None,
    };
    match ringlb::upgrade::control::request_upgrade(pid as u32, binary) {
        Ok(d) => {
            println!(
                "upgraded: pid {} -> pid {} in {} ms; pid {} drains {} open connection{}",
                d.old_pid,
                d.new_pid,
                d.took_ms,
                d.old_pid,
                d.open_connections,
                if d.open_connections == 1 { "" } else { "s" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "ringlb: upgrade failed: {}",
                ringlb::server::error_chain(&e)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(cfg) => {
            print!("{}", ringlb::cli::check::summary(&cfg));
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
