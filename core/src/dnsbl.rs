//! DNS blacklist semantics (R20, R21): how an address is asked about and
//! what a zone's answer means. Pure; the checker in the controller asks.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::config::ZoneMode;

/// The name a blacklist zone is asked about for `address`: the IPv4
/// octets reversed (`7.113.0.203.zone.`), or the 32 nibbles of an IPv6
/// address reversed (RFC 5782). Fully qualified: no search domain applies.
pub fn query_name(address: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    let mut name = String::with_capacity(80);
    match address {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                let _ = write!(name, "{octet}.");
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                let _ = write!(name, "{:x}.{:x}.", byte & 0x0f, byte >> 4);
            }
        }
    }
    name.push_str(zone);
    name.push('.');
    name
}

/// What one zone's A answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    /// Listed: the return code (127.0.0.2-127.0.0.255 outside
    /// 127.255.255.0/24) and the zone's TXT reason when it gave one.
    Listed {
        code: Ipv4Addr,
        reason: Option<String>,
    },
    /// NXDOMAIN (or no A record): not listed.
    Clean,
    /// Inconclusive, never a listing and never clean: an error code in
    /// 127.255.255.0/24 (Spamhaus: 252 typo, 254 public resolver, 255
    /// rate limited), an answer outside 127.0.0.0/8, a timeout, SERVFAIL.
    Error(String),
}

impl ZoneAnswer {
    /// The meaning of a zone's A records; `None` when the answer has no
    /// A record (a name without addresses is not listed).
    pub fn from_codes(codes: &[Ipv4Addr]) -> Self {
        if codes.is_empty() {
            return Self::Clean;
        }
        if let Some(error) = codes.iter().find(|c| is_error_code(**c)) {
            return Self::Error(format!("the zone answered the error code {error}"));
        }
        match codes.iter().find(|c| is_listing_code(**c)) {
            Some(code) => Self::Listed {
                code: *code,
                reason: None,
            },
            None => Self::Error(format!(
                "the zone answered {}, which is no blacklist return code",
                codes[0]
            )),
        }
    }
}

/// 127.255.255.0/24: the query was refused, not answered.
fn is_error_code(code: Ipv4Addr) -> bool {
    let [a, b, c, _] = code.octets();
    (a, b, c) == (127, 255, 255)
}

/// 127.0.0.2-127.0.0.255 and the rest of 127/8 outside the error range
/// (zones such as zen return 127.0.0.2-127.0.0.11).
fn is_listing_code(code: Ipv4Addr) -> bool {
    code.octets()[0] == 127
        && !is_error_code(code)
        && u32::from(code) >= u32::from(Ipv4Addr::new(127, 0, 0, 2))
}

/// The answer of one zone about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneResult {
    pub zone: String,
    pub mode: ZoneMode,
    pub answer: ZoneAnswer,
}

/// What all the zones (and an operator) say about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No blocking zone lists it, and every blocking zone answered.
    Clean,
    /// A blocking zone lists it (or an operator said so).
    Listed,
    /// Some blocking zone could not answer: neither clean nor listed;
    /// ask again later.
    Inconclusive,
}

impl Verdict {
    /// Combines the zones' answers; an operator's override (`Some(true)`:
    /// listed, `Some(false)`: clean) replaces them. Informational zones
    /// are recorded and shown only.
    pub fn of(results: &[ZoneResult], overridden: Option<bool>) -> Self {
        match overridden {
            Some(true) => return Self::Listed,
            Some(false) => return Self::Clean,
            None => {}
        }
        let blocking = || results.iter().filter(|r| r.mode == ZoneMode::Blocking);
        if blocking().any(|r| matches!(r.answer, ZoneAnswer::Listed { .. })) {
            Self::Listed
        } else if blocking().any(|r| matches!(r.answer, ZoneAnswer::Error(_))) {
            Self::Inconclusive
        } else {
            Self::Clean
        }
    }

    pub fn api_name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Listed => "listed",
            Self::Inconclusive => "inconclusive",
        }
    }
}

/// The first retry of an inconclusive sweep check.
const FIRST_RETRY: Duration = Duration::from_secs(60);

/// When the sweep asks again about an address after `in_a_row`
/// inconclusive answers: a minute, doubling each time, never later than
/// the next regular sweep.
pub fn retry_after(in_a_row: u32, sweep_interval: Duration) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    FIRST_RETRY
        .saturating_mul(1 << doublings)
        .min(sweep_interval)
}

/// Held addresses to ask about in one round of `round` so that `held`
/// addresses are all asked within `sweep_interval`: twice the steady
/// share, so a backlog (after an outage, or when the sweep is new) drains
/// within about half an interval, and at least a few.
pub fn sweep_batch(held: u64, round: Duration, sweep_interval: Duration) -> u32 {
    let rounds = (sweep_interval.as_secs_f64() / round.as_secs_f64().max(0.001)).max(1.0);
    let share = (held as f64 / rounds).ceil() as u64;
    u32::try_from(share.saturating_mul(2).saturating_add(8).min(4096)).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r20_query_names_reverse_octets_and_nibbles() {
        assert_eq!(
            query_name("203.0.113.7".parse().unwrap(), "zen.spamhaus.org"),
            "7.113.0.203.zen.spamhaus.org."
        );
        // RFC 5782's example.
        assert_eq!(
            query_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com."
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
        );
    }

    #[test]
    fn r20_return_codes_are_interpreted_per_spamhaus() {
        let code = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(ZoneAnswer::from_codes(&[]), ZoneAnswer::Clean);
        for listed in [
            "127.0.0.2",
            "127.0.0.4",
            "127.0.0.11",
            "127.0.0.255",
            "127.0.1.2",
        ] {
            assert!(
                matches!(
                    ZoneAnswer::from_codes(&[code(listed)]),
                    ZoneAnswer::Listed { .. }
                ),
                "{listed}"
            );
        }
        for error in [
            "127.255.255.252",
            "127.255.255.254",
            "127.255.255.255",
            "127.0.0.1",
            "10.0.0.2",
        ] {
            assert!(
                matches!(ZoneAnswer::from_codes(&[code(error)]), ZoneAnswer::Error(_)),
                "{error}"
            );
        }
        // An error code beside a listing: the answer cannot be trusted.
        assert!(matches!(
            ZoneAnswer::from_codes(&[code("127.0.0.2"), code("127.255.255.254")]),
            ZoneAnswer::Error(_)
        ));
    }

    #[test]
    fn r20_only_blocking_zones_decide_and_an_override_wins() {
        let result = |mode, answer| ZoneResult {
            zone: "z".into(),
            mode,
            answer,
        };
        let listed = ZoneAnswer::Listed {
            code: Ipv4Addr::new(127, 0, 0, 2),
            reason: None,
        };
        let error = ZoneAnswer::Error("timeout".into());
        use ZoneMode::{Blocking, Informational};
        assert_eq!(Verdict::of(&[], None), Verdict::Clean);
        assert_eq!(
            Verdict::of(
                &[
                    result(Informational, listed.clone()),
                    result(Blocking, ZoneAnswer::Clean)
                ],
                None
            ),
            Verdict::Clean
        );
        assert_eq!(
            Verdict::of(
                &[
                    result(Blocking, error.clone()),
                    result(Blocking, ZoneAnswer::Clean)
                ],
                None
            ),
            Verdict::Inconclusive
        );
        assert_eq!(
            Verdict::of(
                &[result(Blocking, error), result(Blocking, listed.clone())],
                None
            ),
            Verdict::Listed
        );
        assert_eq!(
            Verdict::of(&[result(Blocking, listed.clone())], Some(false)),
            Verdict::Clean
        );
        assert_eq!(Verdict::of(&[], Some(true)), Verdict::Listed);
    }

    #[test]
    fn r20_inconclusive_checks_back_off_up_to_the_sweep_interval() {
        let day = Duration::from_secs(86_400);
        let retries: Vec<u64> = (1..=6).map(|n| retry_after(n, day).as_secs()).collect();
        assert_eq!(retries, [60, 120, 240, 480, 960, 1920]);
        assert_eq!(retry_after(40, day), day);
        assert_eq!(retry_after(3, Duration::from_secs(90)).as_secs(), 90);
    }

    #[test]
    fn r20_the_sweep_spreads_checks_over_the_interval() {
        let (minute, day) = (Duration::from_secs(60), Duration::from_secs(86_400));
        // 10 000 held, 1 440 rounds a day: 7 a round, doubled, plus 8.
        assert_eq!(sweep_batch(10_000, minute, day), 22);
        assert_eq!(sweep_batch(0, minute, day), 8);
        assert_eq!(sweep_batch(10_000_000, minute, day), 4096);
        // A round as long as the interval asks about everything at once.
        assert_eq!(sweep_batch(100, day, day), 208);
    }
}
