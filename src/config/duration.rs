//! The duration syntax of the config file, and nothing more: one or more groups
//! of a whole number and a unit (`ms`, `s`, `m`, `h`, `d`), largest unit first,
//! each unit at most once: `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"`, `"1h30m"`,
//! `"0s"`. Anything else is refused with the reason (spaces, fractions, signs,
//! other unit names, a number without a unit), so a value means exactly what it
//! says. Limits per key are checked later, by validation. Pure: no I/O.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// What a duration looks like, for error messages.
pub const SYNTAX: &str = "whole numbers, each with a unit (ms, s, m, h or d), largest unit first, such as \"500ms\", \"2s\", \"5m\", \"1h\", \"1d\" or \"1h30m\"";

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty")]
    Empty,
    #[error("spaces are not allowed")]
    Space,
    #[error("signs are not allowed")]
    Sign,
    #[error("fractions are not allowed (use a smaller unit: \"1500ms\", not \"1.5s\")")]
    Fraction,
    #[error("the number {0} has no unit")]
    NoUnit(String),
    #[error("the unit {0:?} has no number before it")]
    NoNumber(String),
    #[error("unknown unit {0:?}")]
    UnknownUnit(String),
    #[error("units go largest first, each once (\"1h30m\", not \"30m1h\")")]
    Order,
    #[error("unexpected character {0:?}")]
    Character(char),
    #[error("it is far too long")]
    TooLong,
}

/// Parse a config duration (see the module docs).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.chars().any(char::is_whitespace) {
        return Err(DurationError::Space);
    }
    let mut rest = s;
    let mut total: u128 = 0;
    // Index in UNITS of the last unit used: the next must come after it.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (number, after) = rest.split_at(digits);
        let letters = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(letters);
        if let Some(c) = after.chars().next().filter(|_| unit.is_empty()) {
            return Err(match c {
                '+' | '-' => DurationError::Sign,
                '.' | ',' if !number.is_empty() => DurationError::Fraction,
                c => DurationError::Character(c),
            });
        }
        if number.is_empty() {
            return Err(DurationError::NoNumber(unit.to_string()));
        }
        if unit.is_empty() {
            return Err(DurationError::NoUnit(number.to_string()));
        }
        let Some(index) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit(unit.to_string()));
        };
        if last.is_some_and(|l| index <= l) {
            return Err(DurationError::Order);
        }
        last = Some(index);
        let n: u128 = number.parse().map_err(|_| DurationError::TooLong)?;
        total = n
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or(DurationError::TooLong)?;
        rest = after;
    }
    u64::try_from(total)
        .map(Duration::from_millis)
        .map_err(|_| DurationError::TooLong)
}

/// `#[serde(default, deserialize_with = "...")]` for an optional duration key.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor).map(Some)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a duration: {SYNTAX}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(|why| E::custom(format!("{v:?} is not a duration: {why}; write {SYNTAX}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_documented_forms_parse() {
        for (text, want) in [
            ("500ms", MS(500)),
            ("2s", S(2)),
            ("5m", S(300)),
            ("1h", S(3600)),
            ("1d", S(86_400)),
            ("1h30m", S(5400)),
            ("1m30s", S(90)),
            ("1d12h", S(129_600)),
            ("1s500ms", MS(1500)),
            ("1d1h1m1s1ms", MS(90_061_001)),
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("007s", S(7)),
            ("30d", S(30 * 86_400)),
            ("18446744073709551615ms", MS(u64::MAX)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        use DurationError::*;
        for (text, why) in [
            ("", Empty),
            ("1 sec", Space),
            ("5 m", Space),
            (" 1s", Space),
            ("1s ", Space),
            ("1.5s", Fraction),
            ("1,5s", Fraction),
            ("9.5sec", Fraction),
            ("-1s", Sign),
            ("+1s", Sign),
            ("1h-1m", Sign),
            ("1", NoUnit("1".into())),
            ("0", NoUnit("0".into())),
            ("1h30", NoUnit("30".into())),
            ("s", NoNumber("s".into())),
            ("ms", NoNumber("ms".into())),
            ("nan", NoNumber("nan".into())),
            ("1sec", UnknownUnit("sec".into())),
            ("1day", UnknownUnit("day".into())),
            ("2days", UnknownUnit("days".into())),
            ("2min", UnknownUnit("min".into())),
            ("1us", UnknownUnit("us".into())),
            ("1ns", UnknownUnit("ns".into())),
            ("1w", UnknownUnit("w".into())),
            ("1y", UnknownUnit("y".into())),
            ("1M", UnknownUnit("M".into())),
            ("2S", UnknownUnit("S".into())),
            ("1e3ms", UnknownUnit("e".into())),
            ("1s1s", Order),
            ("30m1h", Order),
            ("1ms1s", Order),
            ("１s", Character('１')),
            ("∞", Character('∞')),
            ("1s!", Character('!')),
            ("18446744073709551616ms", TooLong),
            ("18446744073709551615s", TooLong),
            ("99999999999999999999999999999999999999999ms", TooLong),
        ] {
            assert_eq!(parse(text), Err(why), "{text}");
        }
    }

    #[test]
    fn errors_name_the_value_the_reason_and_the_syntax() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "option")]
            d: Option<Duration>,
        }
        let e = toml::from_str::<T>("d = \"1 sec\"").unwrap_err();
        let m = e.message();
        assert!(
            m.starts_with(
                "\"1 sec\" is not a duration: spaces are not allowed; write whole numbers"
            ),
            "{m}"
        );
        assert!(m.ends_with("\"1d\" or \"1h30m\""), "{m}");
        let e = toml::from_str::<T>("d = 5").unwrap_err();
        assert!(
            e.message().contains("expected a duration: whole numbers"),
            "{}",
            e.message()
        );
        assert_eq!(toml::from_str::<T>("").unwrap().d, None);
        assert_eq!(
            toml::from_str::<T>("d = \"1h30m\"").unwrap().d,
            Some(S(5400))
        );
    }
}
