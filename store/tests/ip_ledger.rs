//! The IP ledger (R19-R22), on SQLite and PostgreSQL.

use stratus_core::ip::Family;
use stratus_store::ledger::{Charge, Check, CheckResult, Ledger, Listing, NewHolding, Override};
use stratus_store::testing;

fn v4<'a>(address: &'a str, slot: u64, holder: &'a str, at: i64) -> NewHolding<'a> {
    NewHolding {
        pool: "doc",
        family: Family::V4,
        slot,
        address,
        prefix_len: 32,
        holder,
        account: "acc-1",
        subject: "acc-1/web",
        at,
        next_check_at: at + 1_000,
    }
}

#[tokio::test]
async fn r22_an_address_has_one_holder_at_a_time_and_every_holding_is_kept() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ips = Ledger::new(scratch.db.clone());
        let ips = ips.ips();
        assert!(
            ips.try_hold(&v4("192.0.2.7", 7, "uid-1", 100))
                .await
                .unwrap()
        );
        // Held: nobody else gets it, and the holder gets no second IPv4.
        assert!(
            !ips.try_hold(&v4("192.0.2.7", 7, "uid-2", 101))
                .await
                .unwrap(),
            "{label}"
        );
        assert!(
            !ips.try_hold(&v4("192.0.2.8", 8, "uid-1", 101))
                .await
                .unwrap(),
            "{label}"
        );
        let prefix = NewHolding {
            family: Family::V6,
            slot: 7,
            address: "2001:db8:0:7::/64",
            prefix_len: 64,
            ..v4("", 0, "uid-1", 100)
        };
        assert!(
            ips.try_hold(&prefix).await.unwrap(),
            "{label}: one of each family"
        );
        let held = ips.held_by("uid-1").await.unwrap();
        assert_eq!(held.len(), 2, "{label}");
        assert_eq!(held[0].address, "192.0.2.7");
        assert_eq!(held[1].family, Family::V6);
        assert!(
            ips.unavailable_slots("doc", Family::V4)
                .await
                .unwrap()
                .contains(&7)
        );

        // Released: in quarantine, still out of circulation.
        ips.release("uid-1", 200, 1_000).await.unwrap();
        ips.release("uid-1", 300, 2_000).await.unwrap();
        assert!(ips.held_by("uid-1").await.unwrap().is_empty());
        assert!(
            !ips.try_hold(&v4("192.0.2.7", 7, "uid-2", 201))
                .await
                .unwrap(),
            "{label}"
        );
        let usage = ips.usage("doc", Family::V4).await.unwrap();
        assert_eq!((usage.allocated, usage.quarantined), (0, 1), "{label}");
        assert!(ips.pool_in_use("doc").await.unwrap());
        assert!(
            ips.quarantine_over("doc", 999, 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        let over = ips.quarantine_over("doc", 1_000, 10).await.unwrap();
        assert_eq!(over.len(), 2, "{label}");
        for holding in &over {
            ips.return_to_pool(holding.id, 1_000).await.unwrap();
        }
        assert!(!ips.pool_in_use("doc").await.unwrap(), "{label}");
        assert!(
            ips.unavailable_slots("doc", Family::V4)
                .await
                .unwrap()
                .is_empty()
        );

        // Reused by another holder; the first holding stays in the history.
        assert!(
            ips.try_hold(&v4("192.0.2.7", 7, "uid-2", 1_500))
                .await
                .unwrap(),
            "{label}"
        );
        let history = ips.history("192.0.2.7").await.unwrap();
        let holders: Vec<(&str, i64, Option<i64>)> = history
            .iter()
            .map(|h| (h.holder.as_str(), h.allocated_at, h.released_at))
            .collect();
        assert_eq!(
            holders,
            [("uid-1", 100, Some(200)), ("uid-2", 1_500, None)],
            "{label}"
        );
        assert_eq!(ips.ipv6_prefix_lengths().await.unwrap(), [64], "{label}");
    }
}

#[tokio::test]
async fn r20_listings_keep_free_addresses_out_of_circulation_and_checks_are_kept() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let ips = ledger.ips();
        let listing = Listing {
            address: "192.0.2.9".into(),
            pool: "doc".into(),
            family: Family::V4,
            slot: 9,
            checked: "192.0.2.9".into(),
            zone: "bl.test".into(),
            reason: "spam source".into(),
            since: 10,
        };
        ips.mark_listed(&listing).await.unwrap();
        ips.mark_listed(&Listing {
            since: 20,
            ..listing.clone()
        })
        .await
        .unwrap();
        assert_eq!(
            ips.listing("192.0.2.9").await.unwrap(),
            Some(listing.clone()),
            "{label}"
        );
        assert!(
            ips.unavailable_slots("doc", Family::V4)
                .await
                .unwrap()
                .contains(&9)
        );
        assert_eq!(ips.usage("doc", Family::V4).await.unwrap().blacklisted, 1);
        assert_eq!(
            ips.listings(None, 10).await.unwrap(),
            std::slice::from_ref(&listing),
            "{label}"
        );
        assert!(
            ips.listings(Some("192.0.2.9"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(ips.clear_listing("192.0.2.9").await.unwrap());
        assert!(!ips.clear_listing("192.0.2.9").await.unwrap());
        assert!(
            ips.unavailable_slots("doc", Family::V4)
                .await
                .unwrap()
                .is_empty()
        );

        for (at, result) in [
            (1, CheckResult::Clean),
            (2, CheckResult::Error),
            (3, CheckResult::Listed),
        ] {
            ips.record_check(&Check {
                address: "192.0.2.9".into(),
                zone: "bl.test".into(),
                result,
                code: Some("127.0.0.2".into()),
                reason: None,
                checked_at: at,
            })
            .await
            .unwrap();
        }
        let checks = ips.checks("192.0.2.9", 2).await.unwrap();
        let results: Vec<CheckResult> = checks.iter().map(|c| c.result).collect();
        assert_eq!(
            results,
            [CheckResult::Listed, CheckResult::Error],
            "{label}"
        );

        let verdict = Override {
            address: "192.0.2.9".into(),
            listed: false,
            reason: "delisted by the operator of bl.test, ticket 42".into(),
            actor: "token:abc".into(),
            decided_at: 5,
        };
        ips.set_override(&verdict).await.unwrap();
        ips.set_override(&Override {
            listed: true,
            ..verdict.clone()
        })
        .await
        .unwrap();
        assert!(
            ips.override_of("192.0.2.9").await.unwrap().unwrap().listed,
            "{label}"
        );
        assert_eq!(ips.override_of("192.0.2.10").await.unwrap(), None);

        let charge = Charge {
            key: "ip_cleanup:1".into(),
            account: "acc-1".into(),
            kind: "ip_cleanup".into(),
            amount: 250_000,
            currency: "EUR".into(),
            subject: "192.0.2.9".into(),
            detail: serde_json::json!({"zone": "bl.test"}),
            created_at: 7,
        };
        assert!(ledger.charges().record(&charge).await.unwrap());
        assert!(
            !ledger.charges().record(&charge).await.unwrap(),
            "{label}: recorded once"
        );
        assert_eq!(
            ledger.charges().of_account("acc-1", 10).await.unwrap(),
            [charge],
            "{label}"
        );
    }
}

#[tokio::test]
async fn r20_the_sweep_schedule_is_kept_per_holding() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let ips = ledger.ips();
        for (i, address) in ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
            .iter()
            .enumerate()
        {
            let slot = 10 + i as u64;
            let holder = format!("uid-{i}");
            assert!(
                ips.try_hold(&v4(address, slot, &holder, 100))
                    .await
                    .unwrap()
            );
        }
        // Held at 100, first due at 1 100.
        assert!(
            ips.due_for_check("doc", 1_099, 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        let due = ips.due_for_check("doc", 1_100, 2).await.unwrap();
        assert_eq!(due.len(), 2, "{label}: limited");
        assert_eq!(due[0].next_check_at, Some(1_100));
        ips.schedule_check(due[0].id, 5_000, 0).await.unwrap();
        ips.schedule_check(due[1].id, 2_000, 3).await.unwrap();
        let due = ips.due_for_check("doc", 2_000, 10).await.unwrap();
        let addresses: Vec<&str> = due.iter().map(|h| h.address.as_str()).collect();
        assert_eq!(
            addresses,
            ["192.0.2.12", "192.0.2.11"],
            "{label}: longest due first"
        );
        assert_eq!(due[1].inconclusive_checks, 3, "{label}");
        assert!(
            ips.due_for_check("other", 9_000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // A released holding is no longer swept.
        ips.release("uid-0", 3_000, 9_000).await.unwrap();
        assert!(
            ips.due_for_check("doc", 9_000, 10)
                .await
                .unwrap()
                .iter()
                .all(|h| h.holder != "uid-0"),
            "{label}"
        );

        ips.mark_listed(&Listing {
            address: "192.0.2.11".into(),
            pool: "doc".into(),
            family: Family::V4,
            slot: 11,
            checked: "192.0.2.11".into(),
            zone: "bl.test".into(),
            reason: "spam".into(),
            since: 1_500,
        })
        .await
        .unwrap();
        let listed = ips.listings_held_by("uid-1").await.unwrap();
        assert_eq!(listed.len(), 1, "{label}");
        assert_eq!(listed[0].reason, "spam");
        assert!(ips.listings_held_by("uid-2").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn r22_a_ptr_lives_with_its_holding_and_every_change_is_kept() {
    use stratus_store::ledger::SetPtr;
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let ips = ledger.ips();
        let ptrs = ledger.ptrs();
        assert!(
            ips.try_hold(&v4("192.0.2.7", 7, "uid-1", 100))
                .await
                .unwrap()
        );
        let holding = ips.held_by("uid-1").await.unwrap()[0].id;
        assert_eq!(ptrs.last_change().await.unwrap(), 0);
        let set = |hostname: Option<&'static str>, actor: &'static str, at: i64| SetPtr {
            address: "192.0.2.7",
            hostname,
            holding_id: holding,
            holder: "uid-1",
            actor,
            at,
        };
        assert!(
            ptrs.set(&set(Some("mail.example.com"), "token:t1", 200))
                .await
                .unwrap()
        );
        let first = ptrs.last_change().await.unwrap();
        assert!(first > 0, "{label}");
        // The same name again changes nothing, not even the serial.
        assert!(
            ptrs.set(&set(Some("mail.example.com"), "token:t1", 201))
                .await
                .unwrap()
        );
        assert_eq!(ptrs.last_change().await.unwrap(), first, "{label}");
        assert!(
            ptrs.set(&set(Some("mx.example.com"), "token:t2", 300))
                .await
                .unwrap()
        );
        assert!(ptrs.last_change().await.unwrap() > first);
        let served = ptrs.page(None, 100).await.unwrap();
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].hostname, "mx.example.com");
        assert_eq!(ptrs.of_holder("uid-1").await.unwrap(), served);
        // Another holder, or a holding that is not current, sets nothing.
        let foreign = SetPtr {
            holder: "uid-2",
            ..set(Some("evil.example.com"), "token:t3", 301)
        };
        assert!(!ptrs.set(&foreign).await.unwrap(), "{label}");

        // Released: the PTR goes with it, recorded as the controller's.
        ips.release("uid-1", 400, 1_000).await.unwrap();
        assert!(ptrs.page(None, 100).await.unwrap().is_empty(), "{label}");
        assert!(
            !ptrs
                .set(&set(Some("late.example.com"), "token:t1", 401))
                .await
                .unwrap()
        );
        let history = ptrs.history("192.0.2.7").await.unwrap();
        let said: Vec<(Option<&str>, &str, i64)> = history
            .iter()
            .map(|c| (c.hostname.as_deref(), c.actor.as_str(), c.changed_at))
            .collect();
        assert_eq!(
            said,
            [
                (Some("mail.example.com"), "token:t1", 200),
                (Some("mx.example.com"), "token:t2", 300),
                (None, "controller", 400),
            ],
            "{label}"
        );
        assert!(
            history
                .iter()
                .all(|c| c.subject == "acc-1/web" && c.holder == "uid-1")
        );
    }
}

/// A customer setting a PTR while the controller releases the address:
/// whichever order they land in, no PTR is left on the released address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r22_a_ptr_set_racing_the_release_of_its_address_is_never_left_behind() {
    use stratus_store::ledger::SetPtr;
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let (mut won, mut lost) = (0, 0);
        for round in 0..40u64 {
            let holder = format!("uid-race-{round}");
            let address = format!("198.51.100.{round}");
            let ips = ledger.ips();
            assert!(
                ips.try_hold(&v4(&address, round, &holder, 100))
                    .await
                    .unwrap()
            );
            let holding = ips.held_by(&holder).await.unwrap()[0].id;
            let ptrs = ledger.ptrs();
            let asked = SetPtr {
                address: &address,
                hostname: Some("mail.example.com"),
                holding_id: holding,
                holder: &holder,
                actor: "token:t1",
                at: 200,
            };
            let set = ptrs.set(&asked);
            let release = async {
                for _ in 0..(round % 8) * 10 {
                    tokio::task::yield_now().await;
                }
                ips.release(&holder, 200, 1_000).await
            };
            let (set, released) = tokio::join!(set, release);
            released.unwrap();
            if set.unwrap() {
                won += 1;
            } else {
                lost += 1;
            }
            assert!(
                ptrs.of_holder(&holder).await.unwrap().is_empty(),
                "{label}: a PTR was left on a released address"
            );
        }
        println!("{label}: {won} PTRs set before the release, {lost} refused after it");
    }
}
