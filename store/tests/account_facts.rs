//! Account facts and deadlines (issue 9's ledger), on SQLite and PostgreSQL.

use serde_json::json;
use stratus_store::ledger::{Ledger, NewFact, Position, Recorded};
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
/// first, and one settled with nothing pending is no longer due.
#[tokio::test]
async fn deadlines_are_durable_and_come_due_in_order() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let facts = ledger.facts();
        assert_eq!(facts.next_deadline().await.unwrap(), None, "{label}");
        assert_eq!(facts.deadline_of("acc-1").await.unwrap(), (None, 0));
        facts.make_due("acc-1", 300).await.unwrap();
        facts.make_due("acc-2", 100).await.unwrap();
        facts.make_due("acc-3", 900).await.unwrap();
        facts.make_due("acc-1", 200).await.unwrap();
        assert_eq!(facts.next_deadline().await.unwrap(), Some(100));
        let due: Vec<(String, i64, i64)> = facts
            .due(500, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.account, d.due_at, d.revision))
            .collect();
        assert_eq!(
            due,
            [("acc-2".to_owned(), 100, 1), ("acc-1".to_owned(), 200, 2)],
            "{label}: each new fact is one revision"
        );
        assert_eq!(facts.due(500, 1).await.unwrap().len(), 1);
        assert!(facts.settle_deadline("acc-2", None, 1).await.unwrap());
        let reopened = Ledger::new(scratch.db.clone());
        let due: Vec<String> = reopened
            .facts()
            .due(1_000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.account)
            .collect();
        assert_eq!(due, ["acc-1", "acc-3"], "{label}");
        assert_eq!(facts.next_deadline().await.unwrap(), Some(200));
        assert_eq!(
            facts.deadline_of("acc-2").await.unwrap(),
            (None, 1),
            "{label}: the row stays, so its revision never goes back"
        );
    }
}

/// R1–R9: a fact recorded while a settle carries out the facts it read
/// keeps its account due: the settle's deadline, worked out without it,
/// is not stored (defect 1 of issue 25: a fact answered 202 and never
/// carried out).
#[tokio::test]
async fn r1_a_fact_recorded_during_a_settle_keeps_its_account_due() {
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let facts = ledger.facts();
        let body = json!({"type": "legal_hold"});
        facts
            .record(&overdue("hold-1", "acc-1", &body, 100))
            .await
            .unwrap();
        // A settle takes the account and reads its facts...
        let taken = facts.due(150, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "{label}: a new fact makes it due");
        let read = facts.of_account("acc-1", 0, 100).await.unwrap();
        assert_eq!(read.len(), 1);
        // ...a second hold is reported meanwhile...
        let Recorded::New(_) = facts
            .record(&overdue("hold-2", "acc-1", &body, 120))
            .await
            .unwrap()
        else {
            panic!("{label}: new");
        };
        // ...and the settle's deadline, worked out without it, is refused.
        assert!(
            !facts
                .settle_deadline("acc-1", None, taken[0].revision)
                .await
                .unwrap(),
            "{label}: superseded"
        );
        let again = facts.due(150, 10).await.unwrap();
        assert_eq!(again.len(), 1, "{label}: still due for the second hold");
        assert_eq!(again[0].due_at, 100, "{label}: due since the first hold");
        assert!(
            facts
                .settle_deadline("acc-1", Some(9_000), again[0].revision)
                .await
                .unwrap(),
            "{label}: a settle that read both stores its deadline"
        );
        assert!(facts.due(150, 10).await.unwrap().is_empty(), "{label}");
        // The same report again changes nothing: not a new revision.
        let repeated = facts
            .record(&overdue("hold-2", "acc-1", &body, 130))
            .await
            .unwrap();
        assert!(matches!(repeated, Recorded::Repeated(_)), "{label}");
        assert_eq!(
            facts.deadline_of("acc-1").await.unwrap(),
            (Some(9_000), again[0].revision),
            "{label}"
        );
    }
}

/// One step of the deadline protocol, as the API and deadline runners
/// (one or two controllers) take them in any order.
#[derive(Debug, Clone)]
enum Step {
    /// The API records a new fact about account `n`.
    Report(usize),
    /// A runner takes account `n` if due and reads its facts.
    Take(usize),
    /// The `k`-th settle in flight stores its deadline (`pending`: a
    /// later one, else none).
    Store { k: usize, pending: bool },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (0..3usize).prop_map(Step::Report),
        (0..3usize).prop_map(Step::Take),
        (0..4usize, any::<bool>()).prop_map(|(k, pending)| Step::Store { k, pending }),
    ]
}

/// Any interleaving of reports and settles (two runners at once too):
/// whenever an account is not due, the last deadline stored came from a
/// settle that had read every one of its facts; after the runners drain
/// what is due, every fact was read by a settle.
#[test]
fn r1_no_interleaving_of_reports_and_settles_loses_a_fact() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let databases = runtime.block_on(testing::both());
    let case = std::sync::atomic::AtomicUsize::new(0);
    const NOW: i64 = 1_000;
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..40))| {
        for scratch in &databases {
            let label = scratch.label;
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ledger = Ledger::new(scratch.db.clone());
            runtime.block_on(async {
                let facts = ledger.facts();
                let account = |n: usize| format!("acc-{case}-{n}");
                let mut reported = [0usize; 3];
                let mut settled = [0usize; 3];
                // Settles in flight: (account, revision, facts read).
                let mut flight: Vec<(usize, i64, usize)> = Vec::new();
                let body = json!({"type": "legal_hold"});
                let mut next_fact = 0;
                for step in &steps {
                    match *step {
                        Step::Report(n) => {
                            next_fact += 1;
                            let id = format!("{case}-{next_fact}");
                            let recorded = facts
                                .record(&overdue(&id, &account(n), &body, NOW))
                                .await
                                .unwrap();
                            prop_assert!(matches!(recorded, Recorded::New(_)));
                            reported[n] += 1;
                        }
                        Step::Take(n) => {
                            let due = facts.due(NOW, 1_000).await.unwrap();
                            if let Some(d) = due.iter().find(|d| d.account == account(n)) {
                                let read = facts.of_account(&account(n), 0, 1_000).await.unwrap();
                                flight.push((n, d.revision, read.len()));
                            }
                        }
                        Step::Store { k, pending } => {
                            if flight.is_empty() {
                                continue;
                            }
                            let (n, revision, read) = flight.remove(k % flight.len());
                            let next = pending.then_some(NOW + 10_000);
                            if facts.settle_deadline(&account(n), next, revision).await.unwrap() {
                                settled[n] = read;
                            }
                        }
                    }
                    let due = facts.due(NOW, 1_000).await.unwrap();
                    for n in 0..3 {
                        if !due.iter().any(|d| d.account == account(n)) {
                            prop_assert_eq!(settled[n], reported[n],
                                "{}: account {} not due with a fact no settle read", label, n);
                        }
                    }
                }
                // The runners drain what is due.
                flight.clear();
                loop {
                    let due = facts.due(NOW, 1_000).await.unwrap();
                    let ours: Vec<_> = due.into_iter()
                        .filter(|d| d.account.starts_with(&format!("acc-{case}-")))
                        .collect();
                    if ours.is_empty() {
                        break;
                    }
                    for d in ours {
                        let n: usize = d.account.rsplit('-').next().unwrap().parse().unwrap();
                        let read = facts.of_account(&d.account, 0, 1_000).await.unwrap();
                        if facts.settle_deadline(&d.account, None, d.revision).await.unwrap() {
                            settled[n] = read.len();
                        }
                    }
                }
                prop_assert_eq!(settled, reported, "{}: every fact read by a settle", label);
                Ok(())
            })?;
        }
    });
}

fn abuse_charge(key: &str) -> stratus_store::ledger::Charge {
    stratus_store::ledger::Charge {
        key: key.into(),
        account: "acc-0000000000000001".into(),
        kind: "abuse_report".into(),
        amount: 1,
        currency: "EUR".into(),
        subject: "server/acc-0000000000000001/vs-0000000000000001".into(),
        detail: serde_json::json!({}),
        created_at: 1,
    }
}

/// Reads every charge after `cursor` a reader can see within 10 s (other
/// tests' transactions on the same server hold the horizon back for a
/// moment, as a billing consumer's poll would wait).
async fn read_until(ledger: &Ledger, mut cursor: Position, want: usize) -> (Vec<String>, Position) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut keys = Vec::new();
    while keys.len() < want && std::time::Instant::now() < deadline {
        let page = ledger.charges().since(cursor, 2).await.unwrap();
        if page.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for (at, charge) in page {
            assert!(
                at > cursor || matches!(cursor, Position::Id(_)),
                "{at:?} after {cursor:?}"
            );
            cursor = at;
            keys.push(charge.key);
        }
    }
    (keys, cursor)
}

/// R7: PostgreSQL hands out ids before commit, so a charge with a smaller
/// id can commit after one with a larger id. A reader whose cursor passed
/// the larger one must still get the smaller one (defect 2 of issue 25:
/// the cursor paged by id and skipped it for ever).
#[tokio::test]
async fn r7_a_billing_reader_never_skips_a_charge_committed_late() {
    let scratch = stratus_store::testing::postgres().await;
    let ledger = Ledger::new(scratch.db.clone());
    // The older transaction takes its id last; the younger one first.
    let mut older = scratch.db.pool().begin().await.unwrap();
    sqlx::query("SELECT CAST(pg_current_xact_id() AS TEXT)")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut younger = scratch.db.pool().begin().await.unwrap();
    let insert = |key: &'static str| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO billing_charges (charge_key, account, kind, amount, currency, subject, detail, created_at) \
             VALUES ('{key}', 'acc-0000000000000001', 'abuse_report', 1, 'EUR', 's', '{{}}', 1)"
        )))
    };
    insert("smaller-id").execute(&mut *younger).await.unwrap();
    insert("larger-id").execute(&mut *older).await.unwrap();
    older.commit().await.unwrap();
    let (first, cursor) = read_until(&ledger, Position::Start, 1).await;
    assert_eq!(first, ["larger-id"], "the older writer's charge is final");
    assert!(
        ledger.charges().since(cursor, 10).await.unwrap().is_empty(),
        "nothing is shown past a running writer"
    );
    younger.commit().await.unwrap();
    let (then, _) = read_until(&ledger, cursor, 1).await;
    assert_eq!(then, ["smaller-id"], "committed late, read after");

    // A cursor stored in the integer form before positions existed keeps
    // working, even past a charge with a smaller id still being written
    // when it was handed out: that one comes after it too.
    let mut older = scratch.db.pool().begin().await.unwrap();
    sqlx::query("SELECT CAST(pg_current_xact_id() AS TEXT)")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut younger = scratch.db.pool().begin().await.unwrap();
    insert("late-small").execute(&mut *younger).await.unwrap();
    insert("early-large").execute(&mut *older).await.unwrap();
    older.commit().await.unwrap();
    let handed_out: i64 = sqlx::Row::try_get(
        &sqlx::query("SELECT id FROM billing_charges WHERE charge_key = 'early-large'")
            .fetch_one(scratch.db.pool())
            .await
            .unwrap(),
        "id",
    )
    .unwrap();
    younger.commit().await.unwrap();
    assert!(
        ledger
            .charges()
            .record(&abuse_charge("after"))
            .await
            .unwrap()
    );
    let (legacy, _) = read_until(&ledger, Position::Id(handed_out), 2).await;
    assert_eq!(legacy, ["late-small", "after"]);
}

/// R7: sixteen writers record charges while a reader pages by cursor:
/// every charge is read exactly once, on both databases.
#[tokio::test]
async fn r7_charges_from_concurrent_writers_are_each_read_exactly_once() {
    const WRITERS: usize = 16;
    const EACH: usize = 40;
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        let writers = futures::future::join_all((0..WRITERS).map(|w| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    let key = format!("w{w}-{n}");
                    assert!(ledger.charges().record(&abuse_charge(&key)).await.unwrap());
                    if n % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        }));
        let reader = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut cursor = Position::Start;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while seen.len() < WRITERS * EACH && std::time::Instant::now() < deadline {
                    let page = ledger.charges().since(cursor, 7).await.unwrap();
                    if page.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    for (at, charge) in page {
                        cursor = at;
                        seen.push(charge.key);
                    }
                }
                seen
            })
        };
        for writer in writers.await {
            writer.unwrap();
        }
        let seen = reader.await.unwrap();
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{label}: a charge read twice");
        assert_eq!(seen.len(), WRITERS * EACH, "{label}: a charge skipped");
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
        assert_eq!(
            outbox.feed_position("billing_webhook").await.unwrap(),
            Position::Start
        );
        outbox
            .advance_feed("billing_webhook", Position::Id(7))
            .await
            .unwrap();
        outbox
            .advance_feed("billing_webhook", Position::Id(3))
            .await
            .unwrap();
        assert_eq!(
            outbox.feed_position("billing_webhook").await.unwrap(),
            Position::Id(7),
            "{label}"
        );
        outbox
            .advance_feed("billing_webhook", Position::Id(9))
            .await
            .unwrap();
        let reopened = Ledger::new(scratch.db.clone());
        assert_eq!(
            reopened
                .notifications()
                .feed_position("billing_webhook")
                .await
                .unwrap(),
            Position::Id(9)
        );
        // A position stored as an id (before positions had a writer) is
        // followed by a written one, which then never moves back.
        let written = |writer, id| Position::Written { writer, id };
        for position in [
            written(50, 4),
            written(49, 8),
            written(50, 3),
            Position::Id(20),
        ] {
            outbox
                .advance_feed("billing_webhook", position)
                .await
                .unwrap();
        }
        assert_eq!(
            outbox.feed_position("billing_webhook").await.unwrap(),
            written(50, 4),
            "{label}"
        );
        outbox
            .advance_feed("billing_webhook", written(51, 1))
            .await
            .unwrap();
        assert_eq!(
            outbox.feed_position("billing_webhook").await.unwrap(),
            written(51, 1),
            "{label}"
        );
        assert_eq!(
            reopened
                .notifications()
                .feed_position("other")
                .await
                .unwrap(),
            Position::Start,
            "{label}"
        );
    }
}

/// R1–R9 (defect 11 of issue 25): a fact answered 202 must survive a power
/// cut, not only a crash of the process: the embedded database syncs its
/// log at every commit (`synchronous=FULL`; NORMAL loses the last
/// transactions of a WAL database when the machine loses power).
#[tokio::test]
async fn r1_an_answered_fact_is_synced_to_disk_at_commit() {
    let scratch = testing::sqlite().await;
    for _ in 0..6 {
        // Every connection of the pool, not only the first.
        let mut connections = Vec::new();
        for _ in 0..4 {
            connections.push(scratch.db.pool().acquire().await.unwrap());
        }
        for connection in &mut connections {
            let row = sqlx::query("PRAGMA synchronous")
                .fetch_one(&mut **connection)
                .await
                .unwrap();
            let level: i64 = sqlx::Row::try_get(&row, 0).unwrap();
            assert_eq!(level, 2, "PRAGMA synchronous is FULL (2)");
        }
    }
}

/// R10: an account's history is read by position like the billing events:
/// an entry written by a transaction that commits late is read after the
/// entries a reader already passed, on PostgreSQL, and on both databases a
/// reader paging from its last position sees every entry once.
#[tokio::test]
async fn r10_an_accounts_history_never_skips_an_entry_committed_late() {
    use stratus_core::ids::AccountId;
    let account = AccountId::parse("acc-00000000000000a1").unwrap();
    let insert = |action: &'static str| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_log (at, actor, action, subject, detail) \
             VALUES (1, 'controller', '{action}', 'account/{account}', '{{}}')"
        )))
    };
    async fn read_all(
        ledger: &Ledger,
        account: &AccountId,
        want: usize,
    ) -> (Vec<String>, Position) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut seen, mut cursor) = (Vec::new(), Position::Start);
        while seen.len() < want && std::time::Instant::now() < deadline {
            let page = ledger
                .audit()
                .account_page(account, cursor, 2)
                .await
                .unwrap();
            if page.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            for (at, entry) in page {
                cursor = at;
                seen.push(entry.action.as_str().to_owned());
            }
        }
        (seen, cursor)
    }
    for scratch in testing::both().await {
        let label = scratch.label;
        let ledger = Ledger::new(scratch.db.clone());
        for action in ["account.fact", "standing.change", "server.order"] {
            insert(action).execute(scratch.db.pool()).await.unwrap();
        }
        let (seen, _) = read_all(&ledger, &account, 3).await;
        assert_eq!(
            seen,
            ["account.fact", "standing.change", "server.order"],
            "{label}"
        );
    }
    let scratch = testing::postgres().await;
    let ledger = Ledger::new(scratch.db.clone());
    let mut older = scratch.db.pool().begin().await.unwrap();
    sqlx::query("SELECT CAST(pg_current_xact_id() AS TEXT)")
        .execute(&mut *older)
        .await
        .unwrap();
    let mut younger = scratch.db.pool().begin().await.unwrap();
    insert("server.stop").execute(&mut *younger).await.unwrap();
    insert("server.start").execute(&mut *older).await.unwrap();
    older.commit().await.unwrap();
    let (first, cursor) = read_all(&ledger, &account, 1).await;
    assert_eq!(first, ["server.start"]);
    younger.commit().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut then = Vec::new();
    while then.is_empty() && std::time::Instant::now() < deadline {
        then = ledger
            .audit()
            .account_page(&account, cursor, 10)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let actions: Vec<&str> = then.iter().map(|(_, e)| e.action.as_str()).collect();
    assert_eq!(actions, ["server.stop"], "committed late, read after");
}
