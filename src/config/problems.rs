//! The collector of validation problems, with the checks every table uses:
//! a value in an inclusive range, a duration within limits. Each problem names its key path; they are kept in the order
//! found. Pure: no I/O.

use std::time::Duration;

use super::fmt_duration;
use crate::error::Problem;

/// Collects problems while validating.
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }

    pub(super) fn has_prefix(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key.starts_with(key))
    }

    pub(super) fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub(super) fn range<T>(
        &mut self,
        key: impl Into<String>,
        v: Option<T>,
        default: T,
        r: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        let v = v.unwrap_or(default);
        if !r.contains(&v) {
            self.push(
                key,
                format!("{v} is out of range {}..={}", r.start(), r.end()),
            );
        }
        v
    }

    pub(super) fn duration(
        &mut self,
        key: impl Into<String>,
        v: Option<Duration>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let v = v.unwrap_or(default);
        let key = key.into();
        // Whole milliseconds by construction: the syntax has no smaller unit.
        if v.is_zero() && !min.is_zero() {
            self.push(key, "must be greater than zero");
        } else if v < min {
            self.push(
                key,
                format!(
                    "{} is too short (minimum {})",
                    fmt_duration(v),
                    fmt_duration(min)
                ),
            );
        } else if v > max {
            self.push(
                key,
                format!(
                    "{} is too long (maximum {})",
                    fmt_duration(v),
                    fmt_duration(max)
                ),
            );
        }
        v
    }

    /// `timeout` (at `key`) must be shorter than `interval`, so that checks of
    /// one node never overlap (`what`: whose checks).
    pub(super) fn timeout_below_interval(
        &mut self,
        key: String,
        timeout: Duration,
        interval: Duration,
        what: &str,
    ) {
        if !timeout.is_zero() && timeout >= interval {
            self.push(
                key,
                format!(
                    "{} must be shorter than interval ({}) so {what} of one node never overlap",
                    fmt_duration(timeout),
                    fmt_duration(interval)
                ),
            );
        }
    }
}
