//! Request rate limits: a token bucket per API token, so one customer's
//! script cannot starve the API for the others, and one per client address
//! for requests with a token that is not valid, so guessing costs the
//! database nothing beyond a trickle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stratus_core::config::Limits;

/// Buckets kept before full (idle) ones are forgotten: a full bucket holds
/// no information, so forgetting it changes no answer. Keys are the ids of
/// valid tokens or client addresses, and never more than [`MAX_KEYS`].
const PRUNE_ABOVE: usize = 4096;
/// Pruning scans every bucket: at most once per this.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_key: HashMap<String, Bucket>,
    pruned: Option<Instant>,
}

/// Keys tracked at most: beyond, keys not tracked yet share one bucket
/// (addresses are chosen by clients, so their number is not ours to bound).
const MAX_KEYS: usize = 65_536;
const OVERFLOW_KEY: &str = "(more keys than tracked)";

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self::with_rate(
            f64::from(limits.requests_per_second),
            f64::from(limits.burst),
        )
    }

    /// `per_minute` a key, in a burst of as many.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::with_rate(f64::from(per_minute) / 60.0, f64::from(per_minute))
    }

    fn with_rate(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                pruned: None,
            }),
        }
    }

    /// Whether `key`'s bucket holds a request at `now`, without taking it;
    /// when empty, how long until it does.
    pub fn peek(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if buckets.by_key.contains_key(key) || buckets.by_key.len() < MAX_KEYS {
            key
        } else {
            OVERFLOW_KEY
        };
        match buckets.by_key.get(key) {
            Some(bucket) => {
                let tokens = self.refilled(bucket, now);
                if tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
                }
            }
            None => Ok(()),
        }
    }

    /// Takes one request from `key`'s bucket at `now`; when it is empty,
    /// answers how long until it holds one.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = buckets
            .pruned
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
        if buckets.by_key.len() > PRUNE_ABOVE && due {
            buckets
                .by_key
                .retain(|_, bucket| self.refilled(bucket, now) < self.burst);
            buckets.pruned = Some(now);
        }
        let key = if buckets.by_key.contains_key(key) || buckets.by_key.len() < MAX_KEYS {
            key
        } else {
            OVERFLOW_KEY
        };
        // Looked up by reference first: only a token's first request
        // allocates its key.
        if !buckets.by_key.contains_key(key) {
            buckets.by_key.insert(
                key.to_owned(),
                Bucket {
                    tokens: self.burst,
                    updated: now,
                },
            );
        }
        let Some(bucket) = buckets.by_key.get_mut(key) else {
            // Inserted just above, under the same lock.
            return Ok(());
        };
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .map(|b| b.by_key.len())
            .unwrap_or_default()
    }
}

/// Digests of tokens that authenticated lately (bounded; the oldest half
/// is dropped when full): their requests are looked up even from an
/// address over its invalid-token limit.
#[derive(Debug, Default)]
pub struct RecentlyValid {
    seen: Mutex<HashMap<String, Instant>>,
}

/// Tokens remembered at most, and for how long.
const RECENT_TOKENS: usize = 65_536;
const RECENT_FOR: Duration = Duration::from_secs(3600);

impl RecentlyValid {
    pub fn insert(&self, digest: String) {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= RECENT_TOKENS && !seen.contains_key(&digest) {
            seen.retain(|_, at| now.saturating_duration_since(*at) < RECENT_FOR / 2);
            if seen.len() >= RECENT_TOKENS {
                seen.clear();
            }
        }
        seen.insert(digest, now);
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(digest)
            .is_some_and(|at| at.elapsed() < RECENT_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(Limits {
            requests_per_second: per_second,
            burst,
            ..Limits::default()
        })
    }

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let limiter = limiter(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.take("a", start), Ok(()));
        }
        let wait = limiter.take("a", start).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another token is not affected.
        assert_eq!(limiter.take("b", start), Ok(()));
        // After 100 ms one more request fits, not two.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.take("a", later), Ok(()));
        assert!(limiter.take("a", later).is_err());
        // Idle for long, the bucket is full again, never fuller.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..5 {
            assert_eq!(limiter.take("a", much_later), Ok(()));
        }
        assert!(limiter.take("a", much_later).is_err());
    }

    #[test]
    fn idle_buckets_are_forgotten_so_memory_stays_bounded() {
        let limiter = limiter(1, 1);
        let start = Instant::now();
        for i in 0..10_000 {
            let _ = limiter.take(&format!("token-{i}"), start);
        }
        let later = start + Duration::from_secs(2);
        let _ = limiter.take("fresh", later);
        assert!(limiter.tracked() < 10, "{}", limiter.tracked());
    }
}
