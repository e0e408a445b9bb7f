//! Order-to-running benchmark: N customers each order M servers at once
//! through the REST API of an all-in-one `stratus up`; prints latency
//! percentiles and throughput.
//!
//! `cargo run --release -p stratus --bin stratus-bench -- --customers 10 --servers 20`

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use support::{Client, Stratus, free_port};

#[derive(Parser)]
#[command(about = "Measures order-to-running latency of stratus up")]
struct Args {
    /// Customers ordering at the same time.
    #[arg(long, default_value_t = 10)]
    customers: usize,
    /// Servers each customer orders.
    #[arg(long, default_value_t = 20)]
    servers: usize,
    /// The stratus binary (default: next to this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Configuration of the all-in-one process. Its `limits:` must let one
    /// token poll every `--poll-ms` (the default 20 requests/s would answer
    /// 429), e.g. `limits: {requestsPerSecond: 100000, burst: 100000}`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Capacity of the all-in-one process's simulated hypervisor
    /// (`vcpus=…,memory_mib=…,disk_gib=…`), for runs larger than its default.
    #[arg(long)]
    capacity: Option<String>,
    /// Database of the all-in-one process (default: SQLite in its data directory).
    #[arg(long)]
    database_url: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// How often each customer lists its servers while waiting. On a small
    /// machine this polling competes with stratus for the CPU.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// Once all run, move every server to this plan at once (R23) and
    /// measure each resize until the server runs with it again; the
    /// accounts' quota use is then checked against the plan.
    #[arg(long)]
    resize_to: Option<String>,
    /// Then reinstall every server from this image at once and measure
    /// each rebuild until the server runs on its new disk.
    #[arg(long)]
    rebuild_to: Option<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Orders `count` servers at once and waits for each to run; returns the latencies.
async fn customer_run(
    client: Client,
    customer: usize,
    count: usize,
    timeout: Duration,
    poll: Duration,
) -> Vec<Duration> {
    let orders = (0..count).map(|i| {
        let client = client.clone();
        async move {
            let sent = Instant::now();
            let (status, body) = client
                .post("/v1/servers", json!({"name": format!("c{customer}-s{i}"), "plan": "small", "image": "debian-12"}))
                .await;
            assert_eq!(status, 202, "order refused: {body}");
            (body["id"].as_str().unwrap_or_default().to_owned(), sent)
        }
    });
    let mut pending: HashMap<String, Instant> = futures::future::join_all(orders)
        .await
        .into_iter()
        .collect();
    let deadline = Instant::now() + timeout;
    let mut latencies = Vec::with_capacity(count);
    while !pending.is_empty() {
        let (status, list) = client.get("/v1/servers?limit=500").await;
        assert_eq!(status, 200, "{list}");
        let now = Instant::now();
        for server in list["items"].as_array().into_iter().flatten() {
            let id = server["id"].as_str().unwrap_or_default();
            if server["status"] == "running"
                && let Some(sent) = pending.remove(id)
            {
                latencies.push(now - sent);
            }
            assert_ne!(server["status"], "error", "server failed: {server}");
        }
        assert!(
            Instant::now() < deadline,
            "{} servers still not running",
            pending.len()
        );
        tokio::time::sleep(poll).await;
    }
    latencies
}

/// Moves every server of `client` to `plan` at once and waits until each
/// runs with it; returns the latencies and how many servers were moved.
/// Asks `action` of every server of `client` at once and answers how long
/// each took until the list shows it `done` (as `done` says) and running.
async fn action_run(
    client: Client,
    action: serde_json::Value,
    done: fn(&serde_json::Value, &serde_json::Value) -> bool,
    timeout: Duration,
    poll: Duration,
) -> Vec<Duration> {
    let (status, list) = client.get("/v1/servers?limit=500").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    let asks = ids.iter().map(|id| {
        let client = client.clone();
        let action = action.clone();
        async move {
            let sent = Instant::now();
            let (status, body) = client
                .post(&format!("/v1/servers/{id}/actions"), action)
                .await;
            assert_eq!(status, 202, "action refused: {body}");
            (id.clone(), sent)
        }
    });
    let mut pending: HashMap<String, Instant> =
        futures::future::join_all(asks).await.into_iter().collect();
    let deadline = Instant::now() + timeout;
    let mut latencies = Vec::with_capacity(ids.len());
    while !pending.is_empty() {
        let (status, list) = client.get("/v1/servers?limit=500").await;
        assert_eq!(status, 200, "{list}");
        let now = Instant::now();
        for server in list["items"].as_array().into_iter().flatten() {
            let id = server["id"].as_str().unwrap_or_default();
            if done(server, &action)
                && server["status"] == "running"
                && server["action"]["state"] == "done"
                && let Some(sent) = pending.remove(id)
            {
                latencies.push(now - sent);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} servers still not done with {action}",
            pending.len()
        );
        tokio::time::sleep(poll).await;
    }
    latencies
}

fn report(what: &str, latencies: &mut [Duration], total: usize, elapsed: Duration) {
    latencies.sort();
    println!("{what}: {}/{total}", latencies.len());
    println!(
        "{what} latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(latencies, 50.0).as_secs_f64() * 1e3,
        percentile(latencies, 99.0).as_secs_f64() * 1e3,
        percentile(latencies, 100.0).as_secs_f64() * 1e3,
    );
    println!(
        "{what} throughput: {:.1}/s ({total} in {:.2} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = match args.binary {
        Some(binary) => binary,
        None => std::env::current_exe()?.with_file_name("stratus"),
    };
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build it first (cargo build --release -p stratus)",
        binary.display()
    );
    let data_dir = std::env::temp_dir().join(format!("stratus-bench-{}", std::process::id()));
    let config = args.config.as_ref().map(|path| path.display().to_string());
    let mut extra: Vec<&str> = Vec::new();
    if let Some(url) = &args.database_url {
        extra.extend(["--database-url", url.as_str()]);
    }
    if let Some(config) = &config {
        extra.extend(["--config", config.as_str()]);
    }
    if let Some(capacity) = &args.capacity {
        extra.extend(["--capacity", capacity.as_str()]);
    }
    let stratus = Stratus::up(&binary, &data_dir, free_port(), &extra).await;
    // A database used before already has an operator, whose token is not in
    // this run's data dir: issue one for the bench.
    let token = match (&args.database_url, stratus.try_admin_token()) {
        (_, Some(token)) => token,
        (Some(url), None) => {
            let output = std::process::Command::new(&binary)
                .args([
                    "admin-token",
                    "--database-url",
                    url,
                    "--name",
                    "stratus-bench",
                ])
                .output()?;
            anyhow::ensure!(
                output.status.success(),
                "stratus admin-token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout)?.trim().to_owned()
        }
        (None, None) => anyhow::bail!("stratus up wrote no admin token in a new data dir"),
    };
    let admin = stratus.client(&token);
    let mut customers = Vec::new();
    let mut account_ids = Vec::new();
    for i in 0..args.customers {
        let (id, client) = admin.open_account(&format!("Bench customer {i}")).await;
        account_ids.push(id);
        customers.push(client);
    }

    let total = args.customers * args.servers;
    println!(
        "ordering {total} servers on {}: {} customers × {} servers, all at once",
        if args.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.customers,
        args.servers
    );
    let started = Instant::now();
    let runs = customers.iter().cloned().enumerate().map(|(i, client)| {
        tokio::spawn(customer_run(
            client,
            i,
            args.servers,
            Duration::from_secs(args.timeout),
            Duration::from_millis(args.poll_ms),
        ))
    });
    let mut latencies = Vec::with_capacity(total);
    for run in futures::future::join_all(runs).await {
        latencies.extend(run?);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!("servers running: {}/{total}", latencies.len());
    println!(
        "order-to-running latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&latencies, 99.0).as_secs_f64() * 1e3,
        percentile(&latencies, 100.0).as_secs_f64() * 1e3,
    );
    println!(
        "throughput: {:.1} servers/s ({total} in {:.2} s)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    if let Some(plan) = &args.resize_to {
        println!("resizing all {total} servers to {plan} at once");
        let started = Instant::now();
        let runs = customers.iter().cloned().map(|client| {
            tokio::spawn(action_run(
                client,
                json!({"type": "resize", "plan": plan}),
                |server, action| server["plan"] == action["plan"],
                Duration::from_secs(args.timeout),
                Duration::from_millis(args.poll_ms),
            ))
        });
        let mut latencies = Vec::with_capacity(total);
        for run in futures::future::join_all(runs).await {
            latencies.extend(run?);
        }
        report("resized", &mut latencies, total, started.elapsed());
        let (_, plans) = admin.get("/v1/plans").await;
        let wanted = plans["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == plan.as_str())
            .cloned()
            .unwrap_or_default();
        for id in &account_ids {
            let (status, account) = admin.get(&format!("/v1/accounts/{id}")).await;
            anyhow::ensure!(status == 200, "{account}");
            let usage = &account["usage"];
            // The plan says `memory_mib`, the quota `memoryMib`.
            for (plan_key, usage_key) in [
                ("vcpus", "vcpus"),
                ("memory_mib", "memoryMib"),
                ("disk_gib", "diskGib"),
            ] {
                let expected = wanted[plan_key].as_u64().unwrap_or_default() * args.servers as u64;
                anyhow::ensure!(
                    usage[usage_key].as_u64() == Some(expected),
                    "account {id}: {usage_key} used {} instead of {expected}",
                    usage[usage_key]
                );
            }
        }
        println!("quota use exact in all {} accounts", account_ids.len());
    }
    if let Some(image) = &args.rebuild_to {
        println!("rebuilding all {total} servers from {image} at once");
        let started = Instant::now();
        let runs = customers.iter().cloned().map(|client| {
            tokio::spawn(action_run(
                client,
                json!({"type": "rebuild", "image": image}),
                |server, action| {
                    server["image"] == action["image"] && server["action"]["type"] == "rebuild"
                },
                Duration::from_secs(args.timeout),
                Duration::from_millis(args.poll_ms),
            ))
        });
        let mut latencies = Vec::with_capacity(total);
        for run in futures::future::join_all(runs).await {
            latencies.extend(run?);
        }
        report("rebuilt", &mut latencies, total, started.elapsed());
    }
    stratus.process.terminate();
    std::fs::remove_dir_all(&data_dir).ok();
    Ok(())
}
