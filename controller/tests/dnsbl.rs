//! The blacklist checker against a real DNS server on 127.0.0.1 (R20).

use std::net::{IpAddr, Ipv4Addr};

use stratus_controller::dnsbl::BlacklistChecker;
use stratus_controller::dnsbl::zone_server::{TestZone, ZoneEntry};
use stratus_core::config::{Dnsbl, DnsblZone, ZoneMode};
use stratus_core::dnsbl::{Verdict, ZoneAnswer};

fn checker(zones: &[(&TestZone, ZoneMode)], timeout_ms: u64) -> BlacklistChecker {
    // One resolver serves every zone: the tests serve them on one server.
    let resolver = zones[0].0.address();
    BlacklistChecker::new(&Dnsbl {
        zones: zones
            .iter()
            .map(|(z, mode)| DnsblZone {
                name: z.zone().into(),
                mode: *mode,
            })
            .collect(),
        resolver: Some(resolver.to_string()),
        timeout_ms,
        concurrency: 8,
    })
    .unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn r20_answers_of_a_real_zone_are_interpreted() {
    let zone = TestZone::start("bl.test").await.unwrap();
    zone.list(
        ip("192.0.2.10"),
        "listed for spam, see https://bl.test/192.0.2.10",
    );
    let code = |c: [u8; 4]| ZoneEntry::Answer {
        code: Ipv4Addr::from(c),
        reason: "error".into(),
    };
    zone.set(ip("192.0.2.11"), code([127, 255, 255, 254]));
    zone.set(ip("192.0.2.12"), code([127, 255, 255, 255]));
    zone.set(ip("192.0.2.13"), ZoneEntry::ServerFailure);
    zone.set(ip("192.0.2.14"), ZoneEntry::Silent);
    zone.list(ip("2001:db8:0:7::1"), "IPv6 listing");
    let checker = checker(&[(&zone, ZoneMode::Blocking)], 300);

    let answer = |results: Vec<stratus_core::dnsbl::ZoneResult>| {
        assert_eq!(results.len(), 1);
        results[0].answer.clone()
    };
    match answer(checker.ask(ip("192.0.2.10")).await) {
        ZoneAnswer::Listed { code, reason } => {
            assert_eq!(code, Ipv4Addr::new(127, 0, 0, 2));
            assert_eq!(
                reason.as_deref(),
                Some("listed for spam, see https://bl.test/192.0.2.10")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answer(checker.ask(ip("192.0.2.20")).await),
        ZoneAnswer::Clean
    );
    for inconclusive in ["192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"] {
        let results = checker.ask(ip(inconclusive)).await;
        assert!(
            matches!(results[0].answer, ZoneAnswer::Error(_)),
            "{inconclusive}: {results:?}"
        );
        assert_eq!(
            Verdict::of(&results, None),
            Verdict::Inconclusive,
            "{inconclusive}"
        );
    }
    assert!(matches!(
        answer(checker.ask(ip("2001:db8:0:7::1")).await),
        ZoneAnswer::Listed { .. }
    ));
    assert_eq!(
        answer(checker.ask(ip("2001:db8:0:8::1")).await),
        ZoneAnswer::Clean
    );
}

#[tokio::test]
async fn r20_answers_are_cached_for_their_ttl() {
    let zone = TestZone::start("bl.test").await.unwrap();
    zone.list(ip("192.0.2.10"), "spam");
    let checker = checker(&[(&zone, ZoneMode::Blocking)], 1_000);
    checker.ask(ip("192.0.2.10")).await;
    checker.ask(ip("192.0.2.20")).await;
    let asked = zone.queries();
    // A and TXT of the listing, A of the clean address.
    assert_eq!(asked, 3);
    checker.ask(ip("192.0.2.10")).await;
    checker.ask(ip("192.0.2.20")).await;
    assert_eq!(zone.queries(), asked, "answered from the cache");
}

#[tokio::test]
async fn r20_informational_zones_never_block() {
    // One server answers for `test` and every zone below it: `test`
    // (informational) lists the address, `other.test` (blocking) does not.
    let both = TestZone::start("test").await.unwrap();
    both.set(
        ip("192.0.2.10"),
        ZoneEntry::Answer {
            code: Ipv4Addr::new(127, 0, 0, 2),
            reason: "policy listing".into(),
        },
    );
    let checker = BlacklistChecker::new(&Dnsbl {
        zones: vec![
            DnsblZone {
                name: "test".into(),
                mode: ZoneMode::Informational,
            },
            DnsblZone {
                name: "other.test".into(),
                mode: ZoneMode::Blocking,
            },
        ],
        resolver: Some(both.address().to_string()),
        timeout_ms: 1_000,
        concurrency: 2,
    })
    .unwrap();
    let results = checker.ask(ip("192.0.2.10")).await;
    assert!(matches!(results[0].answer, ZoneAnswer::Listed { .. }));
    assert_eq!(results[1].answer, ZoneAnswer::Clean);
    assert_eq!(Verdict::of(&results, None), Verdict::Clean);
}
