//! Which config file a command uses when `--config` is not given, and why.
//!
//! The order, first match wins:
//! 1. `--config PATH`;
//! 2. `$RINGLB_CONFIG` (set and not empty);
//! 3. `config/ringlb.toml`, if it exists in the working directory (a checkout);
//! 4. `/etc/ringlb/ringlb.toml` (the installed package's file).
//!
//! [`resolve`] is pure: the environment value and the existence test come from
//! the caller ([`from_environment`] supplies the real ones), so the order is
//! unit-tested without touching the process's environment or working directory.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable consulted when `--config` is not given.
pub const CONFIG_ENV: &str = "RINGLB_CONFIG";
/// The working directory's config, used when it exists (a source checkout).
pub const LOCAL_CONFIG_PATH: &str = crate::config::DEFAULT_CONFIG_PATH;
/// The system config, where the Debian package installs it.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/ringlb/ringlb.toml";

/// The search order in one line, for `--help`.
pub const SEARCH_ORDER_HELP: &str = "--config PATH if given, else $RINGLB_CONFIG, else \
     config/ringlb.toml if it exists in the working directory, else /etc/ringlb/ringlb.toml";

/// Where the chosen path came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `--config` on the command line.
    Flag,
    /// `$RINGLB_CONFIG`.
    Env,
    /// `config/ringlb.toml` existed in the working directory.
    WorkingDir,
    /// Nothing else applied: `/etc/ringlb/ringlb.toml`.
    System,
}

/// The config file a command reads, and the rule that chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChoice {
    pub path: PathBuf,
    pub origin: Origin,
}

impl ConfigChoice {
    /// Why this path, in the words of the search order, e.g. `no --config
    /// given, $RINGLB_CONFIG unset, config/ringlb.toml absent: using
    /// /etc/ringlb/ringlb.toml`.
    pub fn reason(&self) -> String {
        let path = self.path.display();
        match self.origin {
            Origin::Flag => format!("using --config {path}"),
            Origin::Env => format!("no --config given: using ${CONFIG_ENV}={path}"),
            Origin::WorkingDir => format!(
                "no --config given, ${CONFIG_ENV} unset: using {path} in the working directory"
            ),
            Origin::System => format!(
                "no --config given, ${CONFIG_ENV} unset, {LOCAL_CONFIG_PATH} absent: using {path}"
            ),
        }
    }
}

impl fmt::Display for ConfigChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// The search order, pure. `flag` is `--config`; `env` the value of
/// `$RINGLB_CONFIG` (an empty value counts as unset, as a shell's `VAR=` is
/// meant to clear it); `local_exists` tells whether a relative path exists in
/// the working directory. Only the working-directory step tests existence: a
/// `--config` or `$RINGLB_CONFIG` that names a missing file is an error the
/// caller reports, never a silent fall-through to another file.
pub fn resolve(
    flag: Option<&Path>,
    env: Option<OsString>,
    local_exists: impl FnOnce(&Path) -> bool,
) -> ConfigChoice {
    if let Some(path) = flag {
        return ConfigChoice {
            path: path.to_path_buf(),
            origin: Origin::Flag,
        };
    }
    if let Some(value) = env.filter(|v| !v.is_empty()) {
        return ConfigChoice {
            path: PathBuf::from(value),
            origin: Origin::Env,
        };
    }
    let local = Path::new(LOCAL_CONFIG_PATH);
    if local_exists(local) {
        return ConfigChoice {
            path: local.to_path_buf(),
            origin: Origin::WorkingDir,
        };
    }
    ConfigChoice {
        path: PathBuf::from(SYSTEM_CONFIG_PATH),
        origin: Origin::System,
    }
}

/// [`resolve`] with this process's `$RINGLB_CONFIG` and working directory.
pub fn from_environment(flag: Option<&Path>) -> ConfigChoice {
    resolve(flag, std::env::var_os(CONFIG_ENV), |p| p.exists())
}

/// The config a command that signals a running process (`reload`, `upgrade`)
/// reads: with `--pid-file` alone, none (the operator named the process; the
/// running process validates the file itself); otherwise the search order's
/// file, checked first and the source of `pid_file`. So a bare `ringlb reload`
/// on an installed system checks /etc/ringlb/ringlb.toml and signals the pid
/// its `pid_file` names, while `--pid-file` never reads a config by surprise.
pub fn for_signal(pid_file: Option<&Path>, config: Option<&Path>) -> Option<ConfigChoice> {
    for_signal_in(pid_file, config, from_environment)
}

fn for_signal_in(
    pid_file: Option<&Path>,
    config: Option<&Path>,
    choose: impl FnOnce(Option<&Path>) -> ConfigChoice,
) -> Option<ConfigChoice> {
    match (pid_file, config) {
        (Some(_), None) => None,
        (_, config) => Some(choose(config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &Path) -> bool {
        false
    }

    #[test]
    fn flag_wins_over_everything() {
        let c = resolve(Some(Path::new("x.toml")), Some("env.toml".into()), |_| true);
        assert_eq!(c.path, PathBuf::from("x.toml"));
        assert_eq!(c.origin, Origin::Flag);
        assert_eq!(c.reason(), "using --config x.toml");
    }

    #[test]
    fn env_wins_over_the_working_directory_and_is_not_tested_for_existence() {
        let mut asked = false;
        let c = resolve(None, Some("/srv/lb.toml".into()), |_| {
            asked = true;
            true
        });
        assert_eq!(c.path, PathBuf::from("/srv/lb.toml"));
        assert_eq!(c.origin, Origin::Env);
        assert!(!asked, "the working directory is not looked at");
        assert_eq!(
            c.reason(),
            "no --config given: using $RINGLB_CONFIG=/srv/lb.toml"
        );
    }

    #[test]
    fn an_empty_env_value_counts_as_unset() {
        let c = resolve(None, Some(OsString::new()), never);
        assert_eq!(c.origin, Origin::System);
    }

    #[test]
    fn the_working_directory_file_when_it_exists() {
        let mut seen = None;
        let c = resolve(None, None, |p| {
            seen = Some(p.to_path_buf());
            true
        });
        assert_eq!(seen.as_deref(), Some(Path::new("config/ringlb.toml")));
        assert_eq!(c.path, PathBuf::from("config/ringlb.toml"));
        assert_eq!(c.origin, Origin::WorkingDir);
        assert_eq!(
            c.reason(),
            "no --config given, $RINGLB_CONFIG unset: using config/ringlb.toml in the working directory"
        );
    }

    #[test]
    fn the_system_file_last() {
        let c = resolve(None, None, never);
        assert_eq!(c.path, PathBuf::from("/etc/ringlb/ringlb.toml"));
        assert_eq!(c.origin, Origin::System);
        assert_eq!(
            c.reason(),
            "no --config given, $RINGLB_CONFIG unset, config/ringlb.toml absent: using /etc/ringlb/ringlb.toml"
        );
        assert_eq!(c.to_string(), c.reason());
    }
    fn choose(flag: Option<&Path>) -> ConfigChoice {
        resolve(flag, None, never)
    }

    #[test]
    fn a_pid_file_alone_reads_no_config() {
        assert_eq!(
            for_signal_in(Some(Path::new("/run/x.pid")), None, choose),
            None
        );
    }

    #[test]
    fn signalling_with_a_config_or_with_nothing_uses_the_search_order() {
        let both = for_signal_in(
            Some(Path::new("/run/x.pid")),
            Some(Path::new("a.toml")),
            choose,
        );
        assert_eq!(both.map(|c| c.origin), Some(Origin::Flag));
        let none = for_signal_in(None, None, choose);
        assert_eq!(
            none.map(|c| c.path),
            Some(PathBuf::from("/etc/ringlb/ringlb.toml"))
        );
    }
}
