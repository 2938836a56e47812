//! benches/chart.py, the SVG chart compare.sh draws next to RESULTS.md: its own
//! self-test passes (sample table with failed and n/a cells and rows without a
//! direct figure, bar count, determinism, truncated input), the committed
//! benches/RESULTS.md renders to an SVG that parses as XML, and the committed
//! benches/RESULTS.svg is that rendering. Needs python3: skipped with a printed
//! reason when it is missing, unless REQUIRE_ROOT=1 (CI), which fails instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::needs;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_py() -> PathBuf {
    root().join("benches/chart.py")
}

/// Whether python3 runs here (after printing why not, or failing under
/// REQUIRE_ROOT=1).
fn have_python() -> bool {
    let missing = match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("python3 --version exited with {}", o.status)),
        Err(e) => Some(format!("python3 is not installed ({e})")),
    };
    needs("REQUIRE_ROOT", missing)
}

fn python(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("python3")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run python3")
}

fn show(what: &str, o: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Render `md` into `svg` with chart.py.
fn render(md: &Path, svg: &Path) {
    let o = python(&[chart_py().as_os_str(), md.as_os_str(), svg.as_os_str()]);
    assert!(o.status.success(), "{}", show("chart.py", &o));
}

#[test]
fn chart_self_test_passes() {
    if !have_python() {
        return;
    }
    let o = python(&[chart_py().as_os_str(), "--self-test".as_ref()]);
    assert!(o.status.success(), "{}", show("chart.py --self-test", &o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("self-test passed"),
        "{}",
        show("chart.py --self-test", &o)
    );
}

#[test]
fn committed_results_render_to_an_svg_that_parses() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("RESULTS.svg");
    render(&root().join("benches/RESULTS.md"), &svg);
    // An independent parse: the root is <svg>, it has bars, and nothing external.
    let check = "import sys, xml.etree.ElementTree as ET\n\
                 r = ET.parse(sys.argv[1]).getroot()\n\
                 assert r.tag == '{http://www.w3.org/2000/svg}svg', r.tag\n\
                 bars = [e for e in r.iter() if e.get('class') == 'bar']\n\
                 assert len(bars) > 0, 'no bars'\n\
                 assert not any('href' in k for e in r.iter() for k in e.attrib), 'external link'\n\
                 print(len(bars), 'bars')\n";
    let o = python(&["-c".as_ref(), check.as_ref(), svg.as_os_str()]);
    assert!(o.status.success(), "{}", show("xml.etree check", &o));
}

#[test]
fn committed_chart_is_the_rendering_of_committed_results() {
    if !have_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("RESULTS.svg");
    render(&root().join("benches/RESULTS.md"), &fresh);
    let committed = std::fs::read_to_string(root().join("benches/RESULTS.svg"))
        .expect("benches/RESULTS.svg is committed (python3 benches/chart.py benches/RESULTS.md benches/RESULTS.svg)");
    let fresh = std::fs::read_to_string(&fresh).unwrap();
    assert!(
        committed == fresh,
        "benches/RESULTS.svg is not the chart of benches/RESULTS.md (the README shows it); \
         regenerate it: python3 benches/chart.py benches/RESULTS.md benches/RESULTS.svg"
    );
}

#[test]
fn compare_sh_draws_the_chart_next_to_its_results() {
    let script = std::fs::read_to_string(root().join("benches/compare.sh")).unwrap();
    assert!(
        script.contains("CHART=${OUT%.md}.svg")
            && script.contains("benches/chart.py\" \"$OUT\" \"$CHART\""),
        "compare.sh must call benches/chart.py \"$OUT\" \"${{OUT%.md}}.svg\" after writing the report"
    );
}
