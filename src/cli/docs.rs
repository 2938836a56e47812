//! Documents made from the clap definitions, so they never drift from the real
//! command line: shell completions (`clap_complete`) and man pages
//! (`clap_mangen`), with the sections clap does not know about (files,
//! environment, signals) appended in roff.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// A man page or completion file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot write: {error}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub error: io::Error,
}

/// The completion script for `shell`, as `ringlb completions SHELL` prints it.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ringlb", out);
    out.flush()
}

/// `ringlb(1)`: the whole command line (options, subcommands), then FILES
/// (the config search order), ENVIRONMENT, SIGNALS, EXIT STATUS, VERSION and
/// SEE ALSO.
pub fn manpage(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = page(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.write_all(EXTRA_SECTIONS.as_bytes())?;
    man.render_version_section(out)?;
    out.flush()
}

/// A page titled the Unix way (`RINGLB`, `RINGLB-RUN`), for section 1.
fn page(cmd: clap::Command) -> clap_mangen::Man {
    let title = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_uppercase();
    clap_mangen::Man::new(cmd)
        .title(title)
        .manual("ringlb manual")
        .source(format!("ringlb {}", super::VERSION))
}

/// Writes `ringlb.1` (as [`manpage`]) and one `ringlb-SUBCOMMAND.1` per
/// visible subcommand into `dir`; returns the files written, in order.
pub fn manpages_to(dir: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |error| WriteError { path, error }
    };
    let main_page = dir.join("ringlb.1");
    let mut file = std::fs::File::create(&main_page).map_err(at(&main_page))?;
    manpage(&mut file).map_err(at(&main_page))?;
    let mut written = vec![main_page];
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = page(sub.clone());
        let path = dir.join(page.get_filename());
        page.generate_to(dir).map_err(at(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// Sections clap cannot derive. roff: `.SH` heading, `.TP` tagged paragraph,
/// `\-` a real minus, `\fB`/`\fI`/`\fR` bold, italic, roman.
const EXTRA_SECTIONS: &str = r#".SH FILES
.TP
\fI/etc/ringlb/ringlb.toml\fR
The system config (the Debian package's conffile). Used when no \fB\-\-config\fR is given,
\fB$RINGLB_CONFIG\fR is unset and \fIconfig/ringlb.toml\fR is absent from the working directory.
.TP
\fIconfig/ringlb.toml\fR
The config of a source checkout, used when it exists in the working directory
(after \fB\-\-config\fR and \fB$RINGLB_CONFIG\fR, before the system config).
.TP
\fI/run/ringlb/ringlb.pid\fR
The pid file of the packaged config (\fBpid_file\fR), read by \fBringlb reload\fR and
\fBringlb upgrade\fR.
.TP
\fI/usr/lib/systemd/system/ringlb.service\fR
The systemd unit of the Debian package.
.SH ENVIRONMENT
.TP
\fBRINGLB_CONFIG\fR
Config file for commands run without \fB\-\-config\fR (an empty value counts as unset).
.TP
\fBRINGLB_WORKERS\fR
Number of worker threads; overrides the config's \fBworkers\fR.
.TP
\fBRUST_LOG\fR
Log filter when \fB\-\-log\-level\fR is not given (default \fBinfo\fR for \fBrun\fR).
.TP
\fBNOTIFY_SOCKET\fR
Set by systemd for \fBType=notify\fR: \fBringlb run\fR reports READY, RELOADING, STOPPING,
STATUS and, at an upgrade, the new MAINPID.
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the config; an invalid file is logged and ignored, the old config keeps serving.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, let open connections finish within \fBshutdown_grace\fR, close the rest.
A second signal closes them at once.
.TP
\fBSIGUSR2\fR
Binary upgrade: start the binary at the path this process was started from, hand it the
listening sockets and node states, then drain.
.SH EXIT STATUS
0 on success (a graceful shutdown included); 1 for a bad config, a port that cannot be
bound or a failed command; 2 for bad command\-line usage.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBsystemd.service\fR(5), \fBsystemd.exec\fR(5)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("write to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn bash_completions_name_every_visible_subcommand_and_not_the_hidden_one() {
        let script = text(|out| completions(Shell::Bash, out));
        let cmd = Cli::command();
        let mut names = 0;
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            if sub.is_hide_set() {
                continue;
            }
            names += 1;
            assert!(script.contains(name), "bash completions lack {name}");
        }
        assert!(names >= 7, "only {names} subcommands");
        assert!(script.contains("--config"));
    }

    #[test]
    fn every_shell_gets_a_script() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = text(|out| completions(shell, out));
            assert!(script.contains("ringlb"), "{shell}: {script}");
            assert!(script.contains("completions"), "{shell}");
        }
    }

    #[test]
    fn the_man_page_has_a_title_the_commands_and_the_extra_sections() {
        let page = text(manpage);
        assert!(page.contains(".TH RINGLB 1"), "{page}");
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH SUBCOMMANDS",
            ".SH FILES",
            ".SH ENVIRONMENT",
            ".SH SIGNALS",
            ".SH VERSION",
        ] {
            assert!(page.contains(section), "no {section}");
        }
        assert!(page.contains("ringlb\\-run(1)"), "{page}");
        assert!(page.contains("ringlb\\-completions(1)"), "{page}");
        assert!(!page.contains("manpage"), "the hidden subcommand is listed");
        assert!(page.contains("/etc/ringlb/ringlb.toml"));
    }

    #[test]
    fn pages_per_subcommand_are_written_to_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = manpages_to(dir.path()).expect("written");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        assert_eq!(names.first().map(String::as_str), Some("ringlb.1"));
        assert!(names.iter().any(|n| n == "ringlb-run.1"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("manpage")), "{names:?}");
        for path in &written {
            let page = std::fs::read_to_string(path).expect("read back");
            assert!(page.contains(".TH RINGLB"), "{}", path.display());
        }
    }

    #[test]
    fn a_directory_that_cannot_be_written_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("absent");
        let e = manpages_to(&missing).expect_err("no such directory");
        assert_eq!(e.path, missing.join("ringlb.1"));
        assert!(e.to_string().contains("cannot write"), "{e}");
    }
}
