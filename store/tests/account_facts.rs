//! Account facts and deadlines (issue 9's ledger), on SQLite and PostgreSQL.

use serde_json::json;
use stratus_store::ledger::{Ledger, NewFact, Recorded};
use stratus_store::testing;

fn overdue<'a>(id: &'a str, account: &'a str, body: &'a serde_json::Value, at: i64) -> NewFact<'a> {
    NewFact {
        id,
        account,
        kind: "invoice_overdue",
        fact: body,
        body,
        actor: "token:billing-1",
        recorded_at: at,
    }
}

/// A report is recorded once by its id: the same report again answers
/// the first; another report under a taken id is a conflict; nothing is
/// ever changed.
#[tokio::test]
async fn r10_facts_are_append_only_and_idempotent_by_id() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let facts = ledger.facts();
        let body = json!({"invoice_id": "inv-1", "due_at": "2026-03-01T00:00:00Z"});
        let Recorded::New(first) = facts
            .record(&overdue("ev-1", "acc-1", &body, 100))
            .await
            .unwrap()
        else {
            panic!("{label}: the first report is new");
        };
        assert_eq!(
            (first.kind.as_str(), first.recorded_at),
            ("invoice_overdue", 100)
        );
        let again = facts
            .record(&overdue("ev-1", "acc-1", &body, 200))
            .await
            .unwrap();
        assert_eq!(again, Recorded::Repeated(first.clone()), "{label}");
        let other = json!({"invoice_id": "inv-2", "due_at": "2026-03-01T00:00:00Z"});
        let conflict = facts
            .record(&overdue("ev-1", "acc-1", &other, 300))
            .await
            .unwrap();
        assert_eq!(conflict, Recorded::Conflicting(first.clone()), "{label}");
        let elsewhere = facts
            .record(&overdue("ev-1", "acc-2", &body, 300))
            .await
            .unwrap();
        assert_eq!(elsewhere, Recorded::Conflicting(first.clone()), "{label}");

        for (i, at) in [(2, 400), (3, 500)] {
            let id = format!("ev-{i}");
            facts
                .record(&overdue(&id, "acc-1", &body, at))
                .await
                .unwrap();
        }
        facts
            .record(&overdue("ev-9", "acc-2", &body, 450))
            .await
            .unwrap();
        let all = facts.of_account("acc-1", 0, 100).await.unwrap();
        let ids: Vec<&str> = all.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["ev-1", "ev-2", "ev-3"], "{label}");
        let page = facts.of_account("acc-1", all[0].seq, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, "ev-2", "{label}: paged in recording order");
    }
}

/// Deadlines survive in the database; the due ones come most overdue
/// first, and a cleared one is gone.
#[tokio::test]
async fn deadlines_are_durable_and_come_due_in_order() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let facts = ledger.facts();
        assert_eq!(facts.next_deadline().await.unwrap(), None, "{label}");
        facts.set_deadline("acc-1", Some(300)).await.unwrap();
        facts.set_deadline("acc-2", Some(100)).await.unwrap();
        facts.set_deadline("acc-3", Some(900)).await.unwrap();
        facts.set_deadline("acc-1", Some(200)).await.unwrap();
        assert_eq!(facts.next_deadline().await.unwrap(), Some(100));
        let due = facts.due(500, 10).await.unwrap();
        assert_eq!(
            due,
            [("acc-2".to_owned(), 100), ("acc-1".to_owned(), 200)],
            "{label}"
        );
        assert_eq!(facts.due(500, 1).await.unwrap().len(), 1);
        facts.set_deadline("acc-2", None).await.unwrap();
        let reopened = Ledger::new(scratch.db.clone());
        assert_eq!(
            reopened.facts().due(1_000, 10).await.unwrap(),
            [("acc-1".to_owned(), 200), ("acc-3".to_owned(), 900)],
            "{label}"
        );
    }
}

/// PostgreSQL hands out ids before commit: a charge written by a slower
/// transaction with a smaller id must not be skipped by a reader that
/// already moved its cursor past a faster one's.
#[tokio::test]
async fn r7_a_billing_reader_never_skips_a_charge_committed_late() {
    let scratch = stratus_store::testing::postgres().await;
    let ledger = stratus_store::ledger::Ledger::new(scratch.db.clone());
    let charge = |key: &str| stratus_store::ledger::Charge {
        key: key.into(),
        account: "acc-0000000000000001".into(),
        kind: "abuse_report".into(),
        amount: 1,
        currency: "EUR".into(),
        subject: "server/acc-0000000000000001/vs-0000000000000001".into(),
        detail: serde_json::json!({}),
        created_at: 1,
    };
    let mut slow = scratch.db.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO billing_charges (charge_key, account, kind, amount, currency, subject, detail, created_at) \
         VALUES ('slow', 'acc-0000000000000001', 'abuse_report', 1, 'EUR', 's', '{}', 1)",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    assert!(ledger.charges().record(&charge("fast")).await.unwrap());
    let while_open = ledger.charges().since(0, 10).await.unwrap();
    assert!(
        while_open.is_empty(),
        "nothing is shown past a running writer: {while_open:?}"
    );
    slow.commit().await.unwrap();
    // Other tests' transactions on the same server hold the horizon back
    // for a moment too: a reader polls, as a billing consumer does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let keys: Vec<String> = ledger
            .charges()
            .since(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, c)| c.key)
            .collect();
        if keys.len() == 2 || std::time::Instant::now() > deadline {
            assert_eq!(keys, ["slow", "fast"]);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn notice(key: &str, at: i64) -> stratus_store::ledger::NewNotification {
    stratus_store::ledger::NewNotification {
        key: key.into(),
        account: "acc-0000000000000001".into(),
        channel: stratus_store::ledger::Channel::Email,
        recipient: "ops@example.org".into(),
        message: json!({"subject": key}),
        created_at: at,
    }
}

/// The outbox queues a notice once by its key; a claim hides it from
/// other senders until its lease runs out (a sender that died); a failed
/// attempt is retried at the time given, then given up and listed as
/// failed until an operator queues it again.
#[tokio::test]
async fn notifications_are_queued_once_claimed_once_and_retried() {
    use stratus_store::ledger::DeliveryState;
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let outbox = ledger.notifications();
        assert!(outbox.enqueue(&notice("n-1", 100)).await.unwrap());
        assert!(
            !outbox.enqueue(&notice("n-1", 150)).await.unwrap(),
            "{label}: once"
        );
        assert!(outbox.enqueue(&notice("n-2", 200)).await.unwrap());

        assert!(
            outbox.claim_due(99, 1_000, 10).await.unwrap().is_empty(),
            "{label}: not due yet"
        );
        let claimed = outbox.claim_due(150, 1_000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1, "{label}");
        let first = &claimed[0];
        assert_eq!((first.key.as_str(), first.attempts), ("n-1", 1));
        let second = outbox.claim_due(500, 1_000, 10).await.unwrap();
        assert_eq!(second.len(), 1, "{label}: n-1 is leased, only n-2 is due");
        assert_eq!(second[0].key, "n-2");

        outbox.delivered(second[0].id, 510).await.unwrap();
        // The sender of n-1 died: its lease runs out and it is claimed again.
        let again = outbox.claim_due(1_000, 2_000, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{label}");
        assert_eq!((again[0].id, again[0].attempts), (first.id, 2));
        outbox
            .attempt_failed(first.id, &"refused ".repeat(500), Some(1_500))
            .await
            .unwrap();
        assert!(outbox.claim_due(1_400, 3_000, 10).await.unwrap().is_empty());
        let third = outbox.claim_due(1_500, 3_000, 10).await.unwrap();
        assert_eq!(third[0].attempts, 3, "{label}");
        outbox
            .attempt_failed(first.id, "refused", None)
            .await
            .unwrap();

        let failed = outbox
            .page(Some(DeliveryState::Failed), 0, 10)
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{label}");
        assert_eq!(failed[0].last_error.as_deref(), Some("refused"));
        assert_eq!(outbox.count(DeliveryState::Failed).await.unwrap(), 1);
        let delivered = outbox
            .page(Some(DeliveryState::Delivered), 0, 10)
            .await
            .unwrap();
        assert_eq!(delivered[0].delivered_at, Some(510), "{label}");
        assert_eq!(outbox.page(None, first.id, 10).await.unwrap().len(), 1);
        assert!(
            outbox
                .claim_due(i64::MAX, i64::MAX, 10)
                .await
                .unwrap()
                .is_empty()
        );

        assert!(
            !outbox.retry(second[0].id, 4_000).await.unwrap(),
            "{label}: only a failed one"
        );
        assert!(outbox.retry(first.id, 4_000).await.unwrap());
        let retried = outbox.claim_due(4_000, 5_000, 10).await.unwrap();
        assert_eq!(
            (retried[0].id, retried[0].attempts),
            (first.id, 1),
            "{label}"
        );
    }
}

/// An outbound feed's position survives and never moves back.
#[tokio::test]
async fn feed_positions_only_move_forward() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let outbox = ledger.notifications();
        assert_eq!(outbox.feed_position("billing_webhook").await.unwrap(), 0);
        outbox.advance_feed("billing_webhook", 7).await.unwrap();
        outbox.advance_feed("billing_webhook", 3).await.unwrap();
        assert_eq!(
            outbox.feed_position("billing_webhook").await.unwrap(),
            7,
            "{label}"
        );
        outbox.advance_feed("billing_webhook", 9).await.unwrap();
        let reopened = Ledger::new(scratch.db.clone());
        assert_eq!(
            reopened
                .notifications()
                .feed_position("billing_webhook")
                .await
                .unwrap(),
            9
        );
        assert_eq!(
            reopened
                .notifications()
                .feed_position("other")
                .await
                .unwrap(),
            0,
            "{label}"
        );
    }
}
