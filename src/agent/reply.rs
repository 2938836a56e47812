//! One agent reply line, parsed as HAProxy's `agent-check` parses it
//! (`tcpcheck_agent_expect_reply` in its `src/tcpcheck.c`, with
//! `server_parse_weight_change_request` and `server_parse_maxconn_change_request`
//! of `src/server.c`), so an agent written for HAProxy works unchanged:
//!
//! * the line ends at the first `\r` or `\n`; a reply without one (the agent
//!   closed first), or with a NUL byte before it, is an incomplete line and
//!   ignored whole, as in HAProxy;
//! * words are separated by spaces, tabs or commas, and compared without regard
//!   to ASCII case; a `#` at the start of a word begins a description, which
//!   runs to the end of the line;
//! * `up`; `down`, `fail` and `stopped` (the word is kept: status shows which);
//!   `ready`, `drain`, `maint`; a word that starts with a digit and contains a
//!   `%` is a weight (`75%`), as is `weight:` followed by `N%` (relative) or `N`
//!   (absolute, 0 to 256); `maxconn:N`;
//! * when a kind of word appears twice the last one wins; a bad weight or
//!   maxconn, and any other word, is ignored and reported as a warning, and the
//!   rest of the line still applies.
//!
//! Pure and bounded: no I/O, and at most [`MAX_LINE`] bytes are looked at.

use crate::pool::{AgentAdmin, AgentOper, AgentReport, AgentWeight};

/// Longest reply ringlb reads from an agent, line end included.
pub const MAX_LINE: usize = 1024;

/// Why a reply gave no line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// No `\r` or `\n` in the reply (or a NUL byte before it).
    #[error("incomplete line from the agent (no line end before it closed)")]
    Incomplete,
    /// [`MAX_LINE`] bytes without a line end.
    #[error("the agent's line is longer than {MAX_LINE} bytes")]
    TooLong,
}

/// The reply's line, without its line end: `Ok(None)` while more may come
/// (no line end yet, under [`MAX_LINE`]); `closed` says the agent is done
/// sending.
pub fn line(buf: &[u8], closed: bool) -> Result<Option<&[u8]>, ReplyError> {
    match buf.iter().position(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        Some(end) if buf[end] != 0 => Ok(Some(&buf[..end])),
        // A NUL before any line end: HAProxy sees the string end there.
        Some(_) => Err(ReplyError::Incomplete),
        None if buf.len() >= MAX_LINE => Err(ReplyError::TooLong),
        None if closed => Err(ReplyError::Incomplete),
        None => Ok(None),
    }
}

/// Parse one line (without its line end).
pub fn parse(line: &[u8]) -> AgentReport {
    let line = &line[..line.len().min(MAX_LINE)];
    let mut r = AgentReport::default();
    let mut weight: Option<&[u8]> = None;
    let mut maxconn: Option<&[u8]> = None;
    let mut rest = line;
    loop {
        let start = rest
            .iter()
            .position(|&b| !is_separator(b))
            .unwrap_or(rest.len());
        rest = &rest[start..];
        let Some(&first) = rest.first() else {
            break;
        };
        if first == b'#' {
            let text = &rest[1..];
            let skip = text
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(text.len());
            r.description = String::from_utf8_lossy(&text[skip..]).into_owned();
            break;
        }
        let end = rest
            .iter()
            .position(|&b| is_separator(b))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        let is = |w: &str| word.eq_ignore_ascii_case(w.as_bytes());
        if is("up") {
            r.oper = Some((AgentOper::Up, text(word)));
        } else if is("down") || is("stopped") || is("fail") {
            r.oper = Some((AgentOper::Down, text(word)));
        } else if is("ready") {
            r.admin = Some(AgentAdmin::Ready);
        } else if is("drain") {
            r.admin = Some(AgentAdmin::Drain);
        } else if is("maint") {
            r.admin = Some(AgentAdmin::Maint);
        } else if word[0].is_ascii_digit() && word.contains(&b'%') {
            weight = Some(word);
        } else if let Some(v) = strip_prefix_ignore_case(word, b"maxconn:") {
            maxconn = Some(v);
        } else if let Some(v) = strip_prefix_ignore_case(word, b"weight:") {
            weight = Some(v);
        } else if r.warnings.is_empty() {
            // HAProxy keeps the first unknown word to report.
            r.warnings.push(format!("unknown word {:?}", text(word)));
        }
    }
    if let Some(w) = weight {
        match parse_weight(w) {
            Ok(w) => r.weight = Some(w),
            Err(why) => r.warnings.push(format!("weight {:?}: {why}", text(w))),
        }
    }
    if let Some(m) = maxconn {
        match parse_maxconn(m) {
            Ok(m) => r.maxconn = Some(m),
            Err(why) => r.warnings.push(format!("maxconn {:?}: {why}", text(m))),
        }
    }
    r
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b',')
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn strip_prefix_ignore_case<'a>(word: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (word.len() >= prefix.len() && word[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &word[prefix.len()..])
}

/// `strtol(s, &end, 10)`: leading white space, a sign, digits (saturating).
/// `None` when there are no digits; else the value and what follows.
fn strtol(s: &[u8]) -> Option<(i64, &[u8])> {
    let s = &s[s
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'))
        .unwrap_or(s.len())..];
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let v = digits[..n].iter().fold(0i64, |v, &d| {
        v.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    Some((if negative { -v } else { v }, &digits[n..]))
}

/// HAProxy's weight request: `N%` relative to the configured weight (0 to
/// 25600%: HAProxy's own bound; the node's weight is then capped at 256), or
/// an absolute `N` from 0 to 256.
fn parse_weight(s: &[u8]) -> Result<AgentWeight, &'static str> {
    if s.is_empty() {
        return Err("a weight (N or N%) is required");
    }
    let (w, end) = strtol(s).ok_or("empty or preceded by garbage")?;
    if end == b"%" {
        if w < 0 {
            return Err("a relative weight must be positive");
        }
        return Ok(AgentWeight::Percent(w.min(25_600) as u32));
    }
    if !(0..=256).contains(&w) {
        return Err("an absolute weight is between 0 and 256");
    }
    if !end.is_empty() {
        return Err("trailing garbage");
    }
    Ok(AgentWeight::Absolute(w as u32))
}

/// HAProxy's maxconn request: `N`, 0 meaning no cap. ringlb refuses a negative
/// one (HAProxy would store it as a huge unsigned cap).
fn parse_maxconn(s: &[u8]) -> Result<u64, &'static str> {
    if s.is_empty() {
        return Err("a number is required");
    }
    let (v, end) = strtol(s).ok_or("empty or preceded by garbage")?;
    if !end.is_empty() {
        return Err("trailing garbage");
    }
    u64::try_from(v).map_err(|_| "must be 0 (no cap) or more")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> AgentReport {
        parse(s.as_bytes())
    }

    #[test]
    fn haproxy_words() {
        let r = p("up");
        assert_eq!(r.oper, Some((AgentOper::Up, "up".into())));
        assert!(r.warnings.is_empty() && r.admin.is_none() && r.weight.is_none());
        for w in ["down", "DOWN", "fail", "Stopped"] {
            assert_eq!(p(w).oper, Some((AgentOper::Down, w.to_string())), "{w}");
        }
        assert_eq!(p("ready").admin, Some(AgentAdmin::Ready));
        assert_eq!(p("Drain").admin, Some(AgentAdmin::Drain));
        assert_eq!(p("maint").admin, Some(AgentAdmin::Maint));
        assert_eq!(p("75%").weight, Some(AgentWeight::Percent(75)));
        assert_eq!(p("weight:75%").weight, Some(AgentWeight::Percent(75)));
        assert_eq!(p("WEIGHT:3").weight, Some(AgentWeight::Absolute(3)));
        assert_eq!(p("maxconn:30").maxconn, Some(30));
        assert_eq!(p("MaxConn:0").maxconn, Some(0));
        // "failed" is not a HAProxy word: ignored, as HAProxy does.
        let r = p("failed");
        assert!(r.is_empty());
        assert_eq!(r.warnings, vec!["unknown word \"failed\"".to_string()]);
    }

    #[test]
    fn separators_order_last_wins_and_description() {
        let r = p("  up,\t50% ,drain maxconn:10 down # disk full, back at 5");
        assert_eq!(r.oper, Some((AgentOper::Down, "down".into())));
        assert_eq!(r.admin, Some(AgentAdmin::Drain));
        assert_eq!(r.weight, Some(AgentWeight::Percent(50)));
        assert_eq!(r.maxconn, Some(10));
        assert_eq!(r.description, "disk full, back at 5");
        let r = p("drain ready 10% 20%");
        assert_eq!(r.admin, Some(AgentAdmin::Ready));
        assert_eq!(r.weight, Some(AgentWeight::Percent(20)));
        // '#' begins a description only at the start of a word.
        let r = p("down#x");
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(p("#only a description").description, "only a description");
        assert!(p("").is_empty() && p(" ,\t").warnings.is_empty());
    }

    #[test]
    fn weights_and_maxconns_as_haproxy_reads_them() {
        assert_eq!(p("0%").weight, Some(AgentWeight::Percent(0)));
        assert_eq!(
            p("99999999999999999999%").weight,
            Some(AgentWeight::Percent(25_600))
        );
        assert_eq!(p("weight:256").weight, Some(AgentWeight::Absolute(256)));
        for (word, why) in [
            ("50%%", "trailing garbage"),
            ("300%x", "between 0 and 256"),
            ("weight:257", "between 0 and 256"),
            ("weight:-5%", "must be positive"),
            ("weight:x", "preceded by garbage"),
            ("weight:", "required"),
            ("maxconn:5x", "trailing garbage"),
            ("maxconn:", "required"),
            ("maxconn:-1", "0 (no cap) or more"),
        ] {
            let r = p(&format!("up {word}"));
            assert!(r.weight.is_none() && r.maxconn.is_none(), "{word}");
            assert_eq!(
                r.oper.as_ref().unwrap().0,
                AgentOper::Up,
                "the rest applies"
            );
            assert!(
                r.warnings.iter().any(|w| w.contains(why)),
                "{word}: {:?}",
                r.warnings
            );
        }
        // A word starting with a digit without '%' is unknown.
        assert!(p("50").is_empty());
        // The last weight word is the one parsed, even if bad.
        assert!(p("50% 60%x").weight.is_none());
    }

    #[test]
    fn lines_end_at_cr_or_lf_and_incomplete_ones_are_refused() {
        assert_eq!(line(b"up\r\nx", false), Ok(Some(&b"up"[..])));
        assert_eq!(line(b"50%\n", true), Ok(Some(&b"50%"[..])));
        assert_eq!(line(b"up", false), Ok(None));
        assert_eq!(line(b"up", true), Err(ReplyError::Incomplete));
        assert_eq!(line(b"", true), Err(ReplyError::Incomplete));
        assert_eq!(line(b"up\0down\n", true), Err(ReplyError::Incomplete));
        assert_eq!(line(&[b'x'; MAX_LINE], false), Err(ReplyError::TooLong));
        assert_eq!(line(b"\n", true), Ok(Some(&b""[..])));
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: no dependency, reproducible.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let alphabet =
            b"updownfailstoppedreadydrainmaint%#:, \t\r\n0123456789-+weightmaxconnUPX\0\xff\xc3";
        for round in 0..20_000 {
            let len = (round % 64) + if round % 97 == 0 { MAX_LINE } else { 0 };
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x % 5 == 0 {
                        (x >> 8) as u8
                    } else {
                        alphabet[(x >> 16) as usize % alphabet.len()]
                    }
                })
                .collect();
            let _ = line(&bytes, round % 2 == 0);
            let r = parse(&bytes);
            assert!(r.warnings.len() <= 3);
            if let Some(AgentWeight::Percent(w)) = r.weight {
                assert!(w <= 25_600);
            }
        }
    }
}
