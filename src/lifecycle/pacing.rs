//! The one pacing mechanism for the closes ringlb decides on: a token bucket
//! refilled at `rate` per second that holds `burst(rate)` tokens, so that in any
//! second at most `rate + burst` closes happen. The loop that spends the tokens
//! adds a random delay of up to one token interval before each wait, so closes
//! are not lined up on a grid. Pure: the clock is passed in.

use std::time::{Duration, Instant};

/// A token bucket; `rate` 0 is unpaced (every take succeeds).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u32,
    tokens: f64,
    last: Instant,
}

/// Tokens the bucket holds at most: a tenth of a second of closes, at least
/// two (so the token that comes during a jitter delay is not lost, and the
/// long-run rate stays `rate` however low it is).
pub fn burst(rate: u32) -> f64 {
    f64::from(rate.div_ceil(10).max(2))
}

impl Pacer {
    /// A full bucket.
    pub fn new(rate: u32, now: Instant) -> Pacer {
        Pacer {
            rate,
            tokens: burst(rate),
            last: now,
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// A new rate (a reload, the shutdown spread); the tokens held stay, capped
    /// by the new burst.
    pub fn set_rate(&mut self, rate: u32, now: Instant) {
        if rate != self.rate {
            self.refill(now);
            self.rate = rate;
            self.tokens = self.tokens.min(burst(rate));
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * f64::from(self.rate)).min(burst(self.rate));
    }

    /// A token is there now (nothing is taken).
    pub fn ready(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        if !self.ready(now) {
            return false;
        }
        if self.rate != 0 {
            self.tokens -= 1.0;
        }
        true
    }

    /// When the next token is there (`now` if it is; never when unpaced).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        if self.ready(now) {
            return now;
        }
        let missing = 1.0 - self.tokens;
        now + Duration::from_secs_f64(missing / f64::from(self.rate))
    }

    /// One token interval (1 / rate), the span of the jitter.
    pub fn interval(&self) -> Duration {
        if self.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(1.0 / f64::from(self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closes granted in every 1 s window of a steady demand over `secs`.
    fn granted(rate: u32, secs: u64) -> Vec<Instant> {
        let t0 = Instant::now();
        let mut p = Pacer::new(rate, t0);
        let mut at = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(secs) {
            while p.take(now) {
                at.push(now);
            }
            now = p.next_token(now) + Duration::from_micros(100);
        }
        at
    }

    #[test]
    fn no_second_has_more_than_rate_plus_burst() {
        for rate in [1, 5, 20, 100, 1000] {
            let at = granted(rate, 5);
            let limit = rate as usize + burst(rate) as usize;
            for (i, &t) in at.iter().enumerate() {
                let in_window = at[i..]
                    .iter()
                    .take_while(|&&u| u < t + Duration::from_secs(1))
                    .count();
                assert!(in_window <= limit, "rate {rate}: {in_window} > {limit}");
            }
            // And the long-run rate is the rate.
            let per_sec = at.len() as f64 / 5.0;
            assert!(
                (per_sec - f64::from(rate)).abs() <= f64::from(rate) * 0.05 + 1.0,
                "rate {rate}: {per_sec}/s"
            );
        }
    }

    #[test]
    fn burst_is_a_tenth_of_a_second_and_at_least_two() {
        assert_eq!(burst(1), 2.0);
        assert_eq!(burst(20), 2.0);
        assert_eq!(burst(100), 10.0);
        assert_eq!(burst(101), 11.0);
        let now = Instant::now();
        let mut p = Pacer::new(20, now);
        assert!(p.take(now) && p.take(now));
        assert!(!p.take(now), "two tokens, then wait");
        assert_eq!(p.next_token(now), now + Duration::from_millis(50));
        assert!(p.take(now + Duration::from_millis(50)));
    }

    #[test]
    fn the_jitter_the_loop_adds_keeps_the_long_run_rate() {
        // As the lifecycle loop waits: until the next token, plus a random
        // share of one token interval.
        let mut rng = fastrand::Rng::with_seed(7);
        for rate in [1u32, 2, 5, 20, 100] {
            let t0 = Instant::now();
            let mut p = Pacer::new(rate, t0);
            let (mut now, mut n) = (t0, 0u32);
            let secs = 20;
            while now < t0 + Duration::from_secs(secs) {
                while p.take(now) {
                    n += 1;
                }
                now = p.next_token(now) + p.interval().mul_f64(rng.f64());
            }
            let per_sec = f64::from(n) / secs as f64;
            assert!(
                (per_sec - f64::from(rate)).abs() <= f64::from(rate) * 0.05 + 0.15,
                "rate {rate}: {per_sec}/s"
            );
        }
    }

    #[test]
    fn unpaced_always_grants_and_a_new_rate_caps_the_tokens() {
        let now = Instant::now();
        let mut p = Pacer::new(0, now);
        for _ in 0..10_000 {
            assert!(p.take(now));
        }
        assert_eq!(p.next_token(now), now);
        assert_eq!(p.interval(), Duration::ZERO);
        let mut p = Pacer::new(1000, now);
        p.set_rate(10, now);
        assert!(p.take(now) && p.take(now));
        assert!(!p.take(now), "burst(10) = 2");
        assert_eq!(p.rate(), 10);
        assert_eq!(p.interval(), Duration::from_millis(100));
    }
}
