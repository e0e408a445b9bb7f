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
