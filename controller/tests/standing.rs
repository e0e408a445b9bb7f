//! The deadline runner carrying out an account's standing on its servers
//! (R1–R9, R14, R18), and the notices it sends.

mod support;

use support::*;

#[tokio::test]
async fn r1_r2_r4_suspend_after_passes_every_server_of_the_account_stops_once_and_payment_restores_them()
 {
    for scratch in testing::both().await {
        let h = harness_on(scratch).await;
        h.three_running_servers().await;
        let runner = h.deadline_runner();
        h.report_overdue_invoice().await;
        runner.pass().await.unwrap();
        let spec = |name: &'static str| {
            let servers = h.servers.clone();
            async move { servers.get(Some(NS), name).await.unwrap().unwrap().spec }
        };
        assert_eq!(
            spec("vs-1").await.suspension,
            None,
            "not before suspendAfter"
        );

        h.clock.advance(jiff::SignedDuration::from_hours(15 * 24));
        let report = runner.pass().await.unwrap();
        assert_eq!(report.settled, 1);
        for name in ["vs-1", "vs-2"] {
            let suspension = spec(name).await.suspension.expect("suspended");
            assert_eq!(suspension.reasons, vec![SuspensionReason::NonPayment]);
            assert_eq!(suspension.mode, SuspensionMode::Stopped);
        }
        h.converge_all().await;
        h.converge_all().await;
        for name in ["vs-1", "vs-2"] {
            let status = h.status(name).await;
            assert_eq!(status.phase, ServerPhase::Suspended, "{name}");
            assert_eq!(status.reason.as_deref(), Some("suspended for non-payment"));
            let domain = h
                .servers
                .get(Some(NS), name)
                .await
                .unwrap()
                .unwrap()
                .status
                .unwrap()
                .domain
                .unwrap();
            assert_eq!(h.sim.state_of("hv1", &domain), Some(DomainState::Stopped));
        }
        assert_eq!(
            h.phase_of(OTHER, "vs-9").await,
            ServerPhase::Running,
            "another account is untouched"
        );
        let account = Resources::<Account>::new(h.store.clone())
            .get(None, NS)
            .await
            .unwrap()
            .unwrap();
        let status = account.status.unwrap();
        assert_eq!(status.suspensions.len(), 1);
        assert_eq!(status.suspensions[0].reason, SuspensionReason::NonPayment);
        assert_eq!(
            status.state,
            AccountState::Suspended,
            "kubectl's State column"
        );

        // Worked out again (a restart, another pass): nothing is done twice.
        let changes = h.standing_changes().await;
        assert!(changes >= 1);
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
        assert_eq!(h.standing_changes().await, changes);
        assert_eq!(
            h.events.about("Account", NS),
            [EventReason::Suspended],
            "one Event on the Account, however often it is worked out"
        );

        h.report(
            "inv-1-paid",
            FactKind::InvoicePaid {
                invoice: invoice("inv-1"),
            },
        )
        .await;
        runner.pass().await.unwrap();
        assert_eq!(spec("vs-1").await.suspension, None, "R4: payment lifts it");
        assert_eq!(
            h.events.about("Account", NS),
            [EventReason::Suspended, EventReason::SuspensionLifted]
        );
        let account = Resources::<Account>::new(h.store.clone())
            .get(None, NS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(account.status.unwrap().state, AccountState::Active);
        for _ in 0..2 {
            h.converge_all().await;
        }
        for name in ["vs-1", "vs-2"] {
            assert_eq!(
                h.phase_of(NS, name).await,
                ServerPhase::Running,
                "{name} runs again"
            );
        }
    }
}

#[tokio::test]
async fn r5_r7_an_abuse_report_cuts_one_servers_network_at_once_and_charges_once() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "abuse-1",
        FactKind::AbuseReport {
            server: "vs-1".into(),
        },
    )
    .await;
    runner.pass().await.unwrap();
    h.converge_all().await;
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    let suspension = server.spec.suspension.clone().expect("suspended at once");
    assert_eq!(suspension.mode, SuspensionMode::NetworkIsolated);
    let domain = server.status.clone().unwrap().domain.unwrap();
    assert_eq!(
        h.sim.state_of("hv1", &domain),
        Some(DomainState::Running),
        "R5: it keeps running"
    );
    assert_eq!(
        h.sim.spec_of("hv1", &domain).map(|s| s.link_up()),
        Some(false),
        "its link is down"
    );
    assert_eq!(h.status("vs-1").await.phase, ServerPhase::Suspended);
    assert_eq!(
        h.phase_of(NS, "vs-2").await,
        ServerPhase::Running,
        "only the reported server"
    );

    for _ in 0..2 {
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
    }
    let charges = h.ledger.charges().of_account(NS, 100).await.unwrap();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(
        (charges[0].kind.as_str(), charges[0].amount),
        ("abuse_report", 50_000)
    );
}

#[tokio::test]
async fn r6_r14_a_server_terminated_with_notice_is_wiped_and_gone_at_the_deadline() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "terminate-1",
        FactKind::Terminate {
            server: "vs-1".into(),
            cause: TerminationCause::Abuse,
            immediate: false,
        },
    )
    .await;
    runner.pass().await.unwrap();
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert!(
        server.metadata.deletion_timestamp.is_none(),
        "not before the notice ends"
    );
    assert!(server.spec.termination.is_none());

    h.clock.advance(jiff::SignedDuration::from_hours(72));
    runner.pass().await.unwrap();
    let server = h.servers.get(Some(NS), "vs-1").await.unwrap().unwrap();
    assert!(
        server.metadata.deletion_timestamp.is_none(),
        "kept, listed as terminated"
    );
    assert!(
        server.spec.termination.as_ref().is_some_and(|t| t.wipe),
        "the wipe is due"
    );
    for _ in 0..4 {
        h.converge_all().await;
    }
    let status = h.status("vs-1").await;
    assert_eq!(status.phase, ServerPhase::Terminated);
    assert!(status.wiped_at.is_some(), "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .unwrap()
            .starts_with("terminated (abuse); its disk was wiped at")
    );
    assert_eq!(
        (status.hypervisor, status.ipv4),
        (None, None),
        "its addresses are given back"
    );
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerDestroyed).await.len(),
        1,
        "destroyed once"
    );
    for _ in 0..2 {
        h.converge_all().await;
    }
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerReleased).await.len(),
        1,
        "released once"
    );

    // termination.recordRetention (30 days) later it is forgotten.
    h.clock
        .advance(jiff::SignedDuration::from_hours(30 * 24 - 1));
    runner.pass().await.unwrap();
    assert!(
        h.servers
            .get(Some(NS), "vs-1")
            .await
            .unwrap()
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    h.clock.advance(jiff::SignedDuration::from_hours(1));
    assert_eq!(
        runner.pass().await.unwrap().settled,
        1,
        "its deadline was stored"
    );
    for _ in 0..2 {
        h.converge_all().await;
    }
    assert!(
        h.servers.get(Some(NS), "vs-1").await.unwrap().is_none(),
        "gone"
    );
    assert_eq!(
        h.audited("vs-1", AuditAction::ServerDestroyed).await.len(),
        1
    );
    assert_eq!(h.phase_of(NS, "vs-2").await, ServerPhase::Running);
}

/// R5, R6, R7, notices: an abuse report and a termination with notice tell
/// the account at once by e-mail and by signed webhook (the suspension,
/// the termination scheduled, the 72h notice), and the 24h notice when it
/// is owed; a refusing receiver is tried again after the backoff, then
/// given up and listed as failed until an operator queues it again; a
/// standing worked out again (a restart) queues nothing twice; the abuse
/// fee reaches the billing webhook once.
#[tokio::test]
async fn r6_notices_reach_smtp_and_webhook_once_and_refusals_are_retried() {
    use stratus_controller::notifier::{Notifier, Outbox};
    use stratus_controller::receivers::{SmtpSink, WebhookReceiver};
    use stratus_store::ledger::DeliveryState;
    for scratch in testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        h.three_running_servers().await;
        let dir = tempfile::tempdir().unwrap();
        let (smtp, hook, billing) = (
            SmtpSink::start().await.unwrap(),
            WebhookReceiver::start().await.unwrap(),
            WebhookReceiver::start().await.unwrap(),
        );
        let channels = local_channels(dir.path(), &smtp, &hook, &billing);
        let runner = h.deadline_runner().notifying(Outbox::new(&channels));
        let notifier = Notifier::new(h.ctx.clone(), &channels, Duration::from_millis(50)).unwrap();

        h.report(
            "abuse-1",
            FactKind::AbuseReport {
                server: "vs-1".into(),
            },
        )
        .await;
        h.report(
            "terminate-1",
            FactKind::Terminate {
                server: "vs-1".into(),
                cause: TerminationCause::Abuse,
                immediate: false,
            },
        )
        .await;
        runner.pass().await.unwrap();
        hook.refuse_next(1);
        let first = notifier.pass().await.unwrap();
        assert_eq!(
            (first.delivered, first.retrying),
            (5, 1),
            "{label}: {first:?}"
        );
        assert_eq!(first.billing_events, 1, "{label}");

        let subjects: Vec<String> = smtp
            .received()
            .iter()
            .map(|m| m.header("Subject").unwrap())
            .collect();
        assert_eq!(subjects.len(), 3, "{label}: {subjects:?}");
        assert!(
            subjects.contains(&"Your server vs-1 suspended for abuse".to_owned()),
            "{subjects:?}"
        );
        assert!(
            subjects
                .iter()
                .any(|s| s.starts_with("Your server vs-1 will be terminated on"))
        );
        for mail in smtp.received() {
            assert_eq!(mail.to, ["ops@acme.example"], "{label}");
            assert_eq!(mail.from, "noc@example.net");
            assert!(
                mail.header("Message-ID")
                    .unwrap()
                    .ends_with("@example.net>")
            );
        }
        assert!(
            hook.calls().iter().all(signed),
            "{label}: every call is signed"
        );
        assert_eq!(
            hook.accepted().len(),
            2,
            "{label}: one of three was refused"
        );

        // The refused one is tried again after the backoff, not before.
        assert_eq!(notifier.pass().await.unwrap().delivered, 0);
        h.clock.advance(jiff::SignedDuration::from_secs(30));
        assert_eq!(notifier.pass().await.unwrap().delivered, 1, "{label}");
        let received = hook.accepted();
        assert_eq!(received.len(), 3);
        let mut ids: Vec<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{label}: three different messages");
        assert!(received.iter().all(|m| m["account"] == NS));

        // Worked out again, as after a restart: nothing new is queued.
        h.ledger
            .facts()
            .make_due(NS, h.clock.now().as_millisecond())
            .await
            .unwrap();
        runner.pass().await.unwrap();
        assert_eq!(
            notifier.pass().await.unwrap(),
            Default::default(),
            "{label}"
        );

        // 24h before the termination: one more notice, which the SMTP
        // server refuses every time until it is given up.
        smtp.refuse_next(3);
        h.clock.advance(jiff::SignedDuration::from_hours(48));
        runner.pass().await.unwrap();
        let due = notifier.pass().await.unwrap();
        assert_eq!((due.delivered, due.retrying), (1, 1), "{label}: {due:?}");
        h.clock.advance(jiff::SignedDuration::from_secs(30));
        assert_eq!(notifier.pass().await.unwrap().retrying, 1);
        h.clock.advance(jiff::SignedDuration::from_secs(60));
        assert_eq!(
            notifier.pass().await.unwrap().failed,
            1,
            "{label}: given up after 3 attempts"
        );
        let outbox = h.ledger.notifications();
        let failed = outbox
            .page(Some(DeliveryState::Failed), 0, 10)
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{label}");
        assert!(
            failed[0].last_error.as_deref().unwrap().contains("451"),
            "{:?}",
            failed[0].last_error
        );
        assert!(
            outbox
                .retry(failed[0].id, h.clock.now().as_millisecond())
                .await
                .unwrap()
        );
        assert_eq!(
            notifier.pass().await.unwrap().delivered,
            1,
            "{label}: queued again by an operator"
        );
        let last = smtp.received().pop().unwrap();
        assert!(
            last.header("Subject")
                .unwrap()
                .starts_with("Reminder: your server vs-1 will be terminated on")
        );
        assert_eq!(smtp.received().len(), 4, "{label}");
        assert_eq!(billing.accepted().len(), 1, "{label}: the fee once");
        let fee = &billing.accepted()[0]["events"][0];
        assert_eq!(
            (fee["type"].as_str(), fee["amount"].as_u64()),
            (Some("abuse_report"), Some(50_000))
        );
        assert!(billing.calls().iter().all(signed));
    }
}

/// R14, R18: a terminated server wiped at once stays listed as terminated;
/// an operator's restore provisions it afresh (its disk was destroyed)
/// with new addresses, and it runs again.
#[tokio::test]
async fn r18_a_restore_after_the_wipe_provisions_the_server_afresh() {
    let h = harness().await;
    h.three_running_servers().await;
    let runner = h.deadline_runner();
    h.report(
        "terminate-now",
        FactKind::Terminate {
            server: "vs-2".into(),
            cause: TerminationCause::Operator,
            immediate: true,
        },
    )
    .await;
    runner.pass().await.unwrap();
    for _ in 0..4 {
        h.converge_all().await;
    }
    let wiped = h.status("vs-2").await;
    assert_eq!(wiped.phase, ServerPhase::Terminated);
    assert!(wiped.wiped_at.is_some() && !wiped.provisioned, "{wiped:?}");

    h.report(
        "restore-1",
        FactKind::Restore {
            server: "vs-2".into(),
            source: None,
        },
    )
    .await;
    runner.pass().await.unwrap();
    assert!(
        h.servers
            .get(Some(NS), "vs-2")
            .await
            .unwrap()
            .unwrap()
            .spec
            .termination
            .is_none()
    );
    for _ in 0..6 {
        h.converge_all().await;
    }
    let restored = h.status("vs-2").await;
    assert_eq!(restored.phase, ServerPhase::Running, "{restored:?}");
    assert!(restored.provisioned && restored.ipv4.is_some());
}
