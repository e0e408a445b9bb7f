//! Time is injected so that "15 days later" is a test step, not a wait.
//!
//! This module is the only place that reads the wall clock: every timestamp
//! stratus writes (objects, secrets, events, audit, leases, deadlines) comes
//! from a [`Clock`] handed in, so a [`ManualClock`] moves all of them.

use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Time on a clock that never jumps (since an arbitrary start), for
    /// measuring intervals on this machine: unlike `now`, never set back or
    /// forward by NTP or an operator.
    fn monotonic(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.now().as_millisecond()).unwrap_or(0))
    }
}

/// A fixed instant tests start their [`ManualClock`]s at.
pub fn test_time() -> Timestamp {
    Timestamp::constant(1_763_719_200, 0) // 2025-11-21T10:00:00Z
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn monotonic(&self) -> std::time::Duration {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// A clock standing at [`test_time`].
    pub fn at_test_time() -> Self {
        Self::new(test_time())
    }

    pub fn set(&self, to: Timestamp) {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = to;
    }

    pub fn advance(&self, by: SignedDuration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now = now.saturating_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self
            .now
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start: Timestamp = "2026-03-03T14:02:00Z".parse().unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(SignedDuration::from_hours(24 * 15));
        assert_eq!(clock.now().to_string(), "2026-03-18T14:02:00Z");
    }
}
