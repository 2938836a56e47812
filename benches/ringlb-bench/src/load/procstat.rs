//! CPU time and RSS of measured processes (`--pid`, with their children) from
//! /proc: utime and stime of /proc/PID/stat (the sum over its threads), VmRSS of
//! /proc/PID/status.

use std::collections::BTreeSet;

use anyhow::Context as _;

use super::idle::read_rss;

/// CPU time of a process so far, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub user: u64,
    pub system: u64,
}

impl Cpu {
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The fields of /proc/PID/stat this tool needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    pub cpu: Cpu,
}

/// Parse /proc/PID/stat. The command (field 2) is in parentheses and may hold
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest: field 3 (state) onwards; ppid is field 4, utime 14, stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        cpu: Cpu {
            user: field(14)?,
            system: field(15)?,
        },
    })
}

pub fn read_stat(pid: u32) -> anyhow::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_stat(&text).with_context(|| format!("cannot parse {path}"))
}

/// Clock ticks per second (AT_CLKTCK from /proc/self/auxv; 100, Linux's
/// USER_HZ, if that cannot be read).
pub fn ticks_per_second() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|b| parse_auxv_clktck(&b))
        .unwrap_or(100)
}

/// AT_CLKTCK (17) from an auxiliary vector of native-endian u64 pairs.
fn parse_auxv_clktck(auxv: &[u8]) -> Option<u64> {
    const AT_CLKTCK: u64 = 17;
    for pair in auxv.chunks_exact(16) {
        let key = u64::from_ne_bytes(pair[..8].try_into().ok()?);
        let value = u64::from_ne_bytes(pair[8..].try_into().ok()?);
        if key == 0 {
            break;
        }
        if key == AT_CLKTCK && value > 0 {
            return Some(value);
        }
    }
    None
}

/// `roots` and every process whose parent is one of them (e.g. nginx's master
/// and its workers), from /proc/*/stat.
pub fn with_children(roots: &[u32]) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = roots.iter().copied().collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return set;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = read_stat(pid) {
            if roots.contains(&stat.ppid) {
                set.insert(pid);
            }
        }
    }
    set
}

/// One reading over a set of processes: CPU summed, RSS summed.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub pids: BTreeSet<u32>,
    pub cpu: Cpu,
    pub rss: u64,
}

/// Read `roots` and their children now. A root that is gone is an error; a
/// child that exited meanwhile is left out.
pub fn sample(roots: &[u32]) -> anyhow::Result<Sample> {
    let mut s = Sample::default();
    for pid in with_children(roots) {
        let stat = read_stat(pid);
        let rss = read_rss(pid);
        match (stat, rss) {
            (Ok(stat), Ok(rss)) => {
                s.cpu.user += stat.cpu.user;
                s.cpu.system += stat.cpu.system;
                s.rss += rss;
                s.pids.insert(pid);
            }
            (Err(e), _) | (_, Err(e)) if roots.contains(&pid) => return Err(e),
            _ => {}
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let text = "4242 (nginx: worker (x) ) S 4200 4200 4200 0 -1 4194624 1203 0 0 0 \
                    731 289 0 0 20 0 1 0 123456 10000000 500 18446744073709551615\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 4200,
                cpu: Cpu {
                    user: 731,
                    system: 289
                }
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parens at all"), None);
        assert_eq!(
            parse_stat("1 (a) S x 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0"),
            None
        );
        let a = Cpu {
            user: 10,
            system: 5,
        };
        let b = Cpu { user: 4, system: 7 };
        assert_eq!(a.since(b), Cpu { user: 6, system: 0 });
    }

    #[test]
    fn auxv_clock_ticks() {
        let mut v = Vec::new();
        for (k, val) in [(6u64, 4096u64), (17, 250), (0, 0)] {
            v.extend_from_slice(&k.to_ne_bytes());
            v.extend_from_slice(&val.to_ne_bytes());
        }
        assert_eq!(parse_auxv_clktck(&v), Some(250));
        assert_eq!(parse_auxv_clktck(&v[..16]), None);
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn own_process_and_children() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let set = with_children(&[me]);
        assert!(set.contains(&me) && set.contains(&child.id()), "{set:?}");
        let s = sample(&[me]).expect("sample");
        assert!(s.rss > 0 && s.pids.contains(&me));
        assert!(sample(&[u32::MAX]).is_err());
        let _ = child.kill();
        let _ = child.wait();
    }
}
