//! The `ringlb` binary: parse the command line, set up logging, call the library,
//! turn results into exit codes.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ringlb::cli::config_path::{self, ConfigChoice, Origin};
use ringlb::cli::{docs, which};
use ringlb::cli::{Cli, Command, LogFormat, DEMO_CONFIG_PATH};
use ringlb::Config;

/// jemalloc instead of glibc's malloc: a proxied connection's task and its two
/// socket registrations are allocated 128-byte aligned, which glibc serves with
/// padding that jemalloc's size classes do not need. Measured on 9,000 held
/// connections: 1,480-1,510 bytes of RSS per connection against 1,890-1,900
/// with glibc, 2.2 MB more at start, and the same CPU per request.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tools print their answer on stdout; the server logs. Default levels differ.
    let default_level = match cli.command {
        Command::Run { .. } | Command::Demo { .. } => "info",
        Command::Check { .. }
        | Command::Which { .. }
        | Command::Reload { .. }
        | Command::Upgrade { .. }
        | Command::Node { .. }
        | Command::Completions { .. }
        | Command::Manpage { .. } => "error",
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
        // The filter's error already carries its cause in its text: one line,
        // not `{e:#}`'s chain, which would repeat it.
        Some(l) => EnvFilter::try_new(l).map_err(|e| anyhow::anyhow!("--log-level {l:?}: {e}"))?,
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
        Command::Check { config, probe } => Ok(check(
            &config_path::from_environment(config.as_deref()),
            probe,
        )),
        Command::Which {
            config,
            pool,
            listener,
            probe,
            spread,
            seed,
            ips,
        } => {
            let cfg = match load(&config_path::from_environment(config.as_deref())) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let out = which::command(
                &cfg,
                pool.as_deref(),
                listener.as_deref(),
                probe,
                spread.map(|ips| which::SpreadOpts { ips, seed }),
                &ips,
                std::io::stdin(),
            )?;
            print_out(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            // Started by an upgrade: the handover comes first, so that a config
            // error reaches the old process (and `ringlb upgrade`) too.
            let incoming = ringlb::upgrade::takeover::from_env()
                .context("taking over from the old process")?;
            let choice = config_path::from_environment(config.as_deref());
            if choice.origin != Origin::Flag {
                tracing::info!("{}", choice.reason());
            }
            let cfg = match Config::from_file(&choice.path) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(i) = &incoming {
                        i.fail(&format!(
                            "the new process refused the config: {}",
                            e.messages().join("; ")
                        ));
                    }
                    return Ok(print_config_error_of(&e, &choice));
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
        } => {
            let choice = config_path::from_environment(config.as_deref());
            Ok(node_command(action, &pool, &node, &choice, admin))
        }
        Command::Demo { config } => {
            let cfg = match ringlb::demo::load(config.as_deref(), Path::new(DEMO_CONFIG_PATH)) {
                Ok(c) => c,
                Err(e) => return Ok(print_config_error(&e)),
            };
            ringlb::demo::run_process(cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout().lock()).context("stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { out: None } => {
            docs::manpage(&mut std::io::stdout().lock()).context("stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpage { out: Some(dir) } => {
            for page in docs::manpages_to(&dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ringlb node drain|enable|disable POOL NODE`: one POST to the admin endpoint.
fn node_command(
    action: ringlb::cli::NodeAction,
    pool: &str,
    node: &str,
    config: &ConfigChoice,
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
    match ringlb::admin::node_command(state, pool, node, &config.path, admin) {
        Ok(change) => {
            println!("{change}");
            ExitCode::SUCCESS
        }
        Err(NodeCommandError::Config(e)) => print_config_error_of(&e, config),
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
/// `pid_file` of the config (`--config`, or the search order's choice when
/// neither flag is given), which must be valid: `Err` carries the exit code.
fn pid_file_of(
    pid_file: Option<PathBuf>,
    config: Option<PathBuf>,
    doing: &str,
) -> anyhow::Result<Result<PathBuf, ExitCode>> {
    let choice = config_path::for_signal(pid_file.as_deref(), config.as_deref());
    let mut pid_file = pid_file;
    if let Some(choice) = &choice {
        match Config::from_file(&choice.path) {
            Ok(cfg) => {
                if pid_file.is_none() {
                    pid_file = cfg.pid_file.clone();
                }
            }
            Err(e) => {
                eprintln!("not {doing}: the config has errors");
                return Ok(Err(print_config_error_of(&e, choice)));
            }
        }
    }
    match pid_file {
        Some(p) => Ok(Ok(p)),
        None => {
            let why = choice
                .map(|c| format!(" ({})", c.reason()))
                .unwrap_or_default();
            anyhow::bail!("no pid file: pass --pid-file, or a config with a pid_file key{why}")
        }
    }
}

fn reload(pid_file: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let pid_file = match pid_file_of(pid_file, config, "reloading")? {
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
    let pid_file = match pid_file_of(pid_file, config, "upgrading")? {
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

/// Write a command's answer to stdout. A reader that stopped reading (`ringlb
/// which ... | head`) is not an error: the rest is simply not wanted. (`print!`
/// panics there: Rust ignores SIGPIPE, so the write fails with EPIPE.)
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

fn check(choice: &ConfigChoice, probe: bool) -> ExitCode {
    match load(choice) {
        Ok(mut cfg) => {
            print!("{}", ringlb::cli::check::summary(&cfg));
            if probe {
                for line in ringlb::cli::check::resolve_discovered(&mut cfg) {
                    println!("{line}");
                }
            }
            if let Some(line) = ringlb::cli::running::running_instance(&cfg) {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The chosen config, or its errors printed (and the exit code to return).
fn load(choice: &ConfigChoice) -> Result<Config, ExitCode> {
    Config::from_file(&choice.path).map_err(|e| print_config_error_of(&e, choice))
}

/// [`print_config_error`], and for a file that cannot be read and was not
/// named by --config, which rule of the search order chose it.
fn print_config_error_of(e: &ringlb::ConfigError, choice: &ConfigChoice) -> ExitCode {
    let code = print_config_error(e);
    if matches!(e, ringlb::ConfigError::Io { .. }) && choice.origin != Origin::Flag {
        eprintln!("note: {}", choice.reason());
    }
    code
}

fn print_config_error(e: &ringlb::ConfigError) -> ExitCode {
    for m in e.messages() {
        eprintln!("error: {m}");
    }
    ExitCode::FAILURE
}
