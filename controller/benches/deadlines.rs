//! The deadline machinery at a provider's scale: accounts with an overdue
//! invoice and a reminder, the clock moved past `billing.suspendAfter`, and
//! how long until every account was suspended, each suspension and notice
//! queued for a webhook, and every notification delivered to a local
//! receiver; prints figures (no pass/fail).
//!
//! `STRATUS_BENCH_ACCOUNTS=100000 cargo bench -p stratus-controller --bench deadlines`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use stratus_agent_client::simulated::SimulatedAgent;
use stratus_controller::deadlines::DeadlineRunner;
use stratus_controller::notifier::{Notifier, Outbox};
use stratus_controller::receivers::WebhookReceiver;
use stratus_controller::{AgentDirectory, Context};
use stratus_core::notices::{Notifications, Webhook};
use stratus_core::policy::Policy;
use stratus_core::resources::{Account, AccountSpec, Hypervisor};
use stratus_core::standing::FactKind;
use stratus_core::{Clock, ManualClock};
use stratus_store::ledger::{DeliveryState, Ledger, NewFact};
use stratus_store::private_files::write_private_file;
use stratus_store::vault::Vault;
use stratus_store::{Database, ObjectStore, Resources, SqlObjectStore};

fn account_id(i: usize) -> String {
    format!("acc-{i:016x}")
}

#[tokio::main]
async fn main() {
    let accounts: usize = std::env::var("STRATUS_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Database::connect(&format!("sqlite://{}", dir.path().join("b.db").display()))
        .await
        .expect("database");
    let clock = Arc::new(ManualClock::at_test_time());
    let store: Arc<dyn ObjectStore> = Arc::new(SqlObjectStore::new(db.clone(), clock.clone()));
    let ledger = Ledger::new(db.clone());
    let vault = Arc::new(Vault::new(db.clone(), &[7u8; 32], clock.clone()).expect("vault"));
    let ctx = Context::new(
        clock.clone(),
        Arc::new(SimulatedAgent::default()),
        AgentDirectory::new(Resources::<Hypervisor>::new(store.clone()), vault),
        ledger.clone(),
    );
    let objects = Resources::<Account>::new(store.clone());

    let started = Instant::now();
    let now = clock.now();
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(64) {
        join_all(chunk.iter().map(|&i| {
            let objects = objects.clone();
            let ledger = ledger.clone();
            async move {
                let id = account_id(i);
                objects
                    .create(&Account::new(
                        &id,
                        AccountSpec {
                            display_name: format!("customer {i}"),
                            email: format!("billing{i}@example.com"),
                            quota: None,
                        },
                    ))
                    .await
                    .expect("account");
                for (n, kind) in [
                    FactKind::InvoiceOverdue {
                        invoice: format!("inv-{i}"),
                        due_at: now,
                    },
                    FactKind::ReminderSent {
                        invoice: format!("inv-{i}"),
                    },
                ]
                .into_iter()
                .enumerate()
                {
                    let fact = serde_json::to_value(&kind).expect("fact");
                    ledger
                        .facts()
                        .record(&NewFact {
                            id: &format!("{id}-{n}"),
                            account: &id,
                            kind: fact["type"].as_str().unwrap_or_default(),
                            fact: &fact,
                            body: &fact,
                            actor: "bench",
                            recorded_at: now.as_millisecond(),
                        })
                        .await
                        .expect("record");
                }
            }
        }))
        .await;
    }
    println!(
        "setup: {accounts} accounts, {} facts in {:.1} s",
        accounts * 2,
        started.elapsed().as_secs_f64()
    );

    let receiver = WebhookReceiver::start().await.expect("webhook receiver");
    let secret = dir.path().join("webhook.secret");
    write_private_file(&secret, b"a-benchmark-webhook-secret-0123").expect("secret");
    let channels = Notifications {
        webhook: Some(Webhook {
            url: receiver.url("/notices"),
            secret_file: secret.display().to_string(),
        }),
        ..Notifications::default()
    };
    let notifier = Notifier::new(ctx.clone(), &channels, Duration::from_secs(1)).expect("notifier");
    let runner = DeadlineRunner::new(
        ctx,
        objects.clone(),
        Resources::new(store.clone()),
        Arc::new(Policy::default()),
        Duration::from_secs(1),
    )
    .notifying(Outbox::new(&channels));
    let first = Instant::now();
    let report = runner.pass().await.expect("first pass");
    let first = first.elapsed();
    println!(
        "reported: {} accounts worked out in {:.1} s ({:.0} accounts/s), next deadline stored for each",
        report.settled,
        first.as_secs_f64(),
        report.settled as f64 / first.as_secs_f64()
    );

    clock.advance(jiff::SignedDuration::from_hours(15 * 24));
    let due = Instant::now();
    let report = runner.pass().await.expect("due pass");
    let due = due.elapsed();
    let sample = objects
        .get(None, &account_id(accounts / 2))
        .await
        .expect("read")
        .and_then(|a| a.status)
        .map(|s| s.suspensions.len());
    println!(
        "15 days later: {} accounts suspended in {:.1} s ({:.0} accounts/s; failed: {}); a sample account holds {:?} suspension(s)",
        report.settled,
        due.as_secs_f64(),
        report.settled as f64 / due.as_secs_f64(),
        report.failed,
        sample
    );
    let queued = ledger
        .notifications()
        .count(DeliveryState::Pending)
        .await
        .expect("count");
    let delivering = Instant::now();
    let delivery = notifier.pass().await.expect("delivery pass");
    let delivering = delivering.elapsed();
    println!(
        "notifications: {queued} queued by that pass (the suspension and the 72h and 24h notices of each account), {} delivered to a local webhook in {:.1} s ({:.0}/s; retrying: {}, failed: {})",
        delivery.delivered,
        delivering.as_secs_f64(),
        delivery.delivered as f64 / delivering.as_secs_f64(),
        delivery.retrying,
        delivery.failed
    );
    let again = Instant::now();
    let report = runner.pass().await.expect("idle pass");
    println!(
        "an idle pass (nothing due) took {:.1} ms and settled {}",
        again.elapsed().as_secs_f64() * 1000.0,
        report.settled
    );
}
