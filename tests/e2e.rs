//! End to end: `stratus up` started as a user starts it, driven over HTTP,
//! restarted, and joined by a standalone agent as a second hypervisor.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{Process, Stratus, free_port, mode_of};

const BIN: &str = env!("CARGO_BIN_EXE_stratus");
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_customer_orders_runs_stops_starts_and_deletes_a_server_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &[]).await;
    let token_path = data.join("admin.token");
    assert_eq!(mode_of(&token_path), 0o600, "admin token must be private");
    let admin = stratus.client(&stratus.admin_token());
    let (account, customer) = admin.open_account("ACME").await;

    let (status, order) = customer
        .post(
            "/v1/servers",
            json!({"name": "web1", "plan": "small", "image": "debian-12"}),
        )
        .await;
    assert_eq!(status, 202, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let running = customer.wait_status(&id, "running", WAIT).await;
    assert_eq!(running["hypervisor"], "local");
    // R19: the quickstart numbers servers from the documentation ranges.
    let ipv4 = running["ipv4"]["address"].as_str().unwrap_or_default();
    assert!(ipv4.starts_with("192.0.2."), "{running}");
    let prefix = running["ipv6"]["prefix"].as_str().unwrap_or_default();
    assert!(
        prefix.starts_with("2001:db8:") && prefix.ends_with("/64"),
        "{running}"
    );

    let (status, _) = customer
        .post(
            &format!("/v1/servers/{id}/actions"),
            json!({"type": "stop"}),
        )
        .await;
    assert_eq!(status, 202);
    customer.wait_status(&id, "stopped", WAIT).await;
    let (status, _) = customer
        .post(
            &format!("/v1/servers/{id}/actions"),
            json!({"type": "start"}),
        )
        .await;
    assert_eq!(status, 202);
    customer.wait_status(&id, "running", WAIT).await;
    let (status, _) = customer
        .post(
            &format!("/v1/servers/{id}/actions"),
            json!({"type": "reboot"}),
        )
        .await;
    assert_eq!(status, 202);

    let (status, deleting) = customer.delete(&format!("/v1/servers/{id}")).await;
    assert_eq!(status, 202, "{deleting}");
    customer.wait_gone(&id, WAIT).await;
    let disk = data
        .join("hypervisor/volumes")
        .join(format!("stratus-{id}-disk.qcow2.json"));
    assert!(
        !disk.exists(),
        "the disk of a deleted server is gone from the hypervisor"
    );

    // A server that must survive the restart, in the stopped state.
    let (_, keep) = customer
        .post(
            "/v1/servers",
            json!({"name": "db1", "plan": "medium", "image": "ubuntu-24.04"}),
        )
        .await;
    let keep = keep["id"].as_str().unwrap().to_owned();
    customer.wait_status(&keep, "running", WAIT).await;
    let (_, kept_running) = customer
        .post(
            "/v1/servers",
            json!({"name": "web2", "plan": "small", "image": "debian-12"}),
        )
        .await;
    let kept_running = kept_running["id"].as_str().unwrap().to_owned();
    customer.wait_status(&kept_running, "running", WAIT).await;
    customer
        .post(
            &format!("/v1/servers/{keep}/actions"),
            json!({"type": "stop"}),
        )
        .await;
    customer.wait_status(&keep, "stopped", WAIT).await;

    stratus.process.terminate();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &[]).await;
    let admin = stratus.client(&stratus.admin_token());
    let (status, accounts) = admin.get("/v1/accounts").await;
    assert_eq!(status, 200);
    assert!(
        accounts["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == account.as_str())
    );
    // The customer's token still works; the servers came back as they were.
    let (status, list) = customer.get("/v1/servers").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    customer.wait_status(&keep, "stopped", WAIT).await;
    customer.wait_status(&kept_running, "running", WAIT).await;
    customer
        .post(
            &format!("/v1/servers/{keep}/actions"),
            json!({"type": "start"}),
        )
        .await;
    customer.wait_status(&keep, "running", WAIT).await;

    // A crash (SIGKILL) loses nothing either.
    stratus.process.crash();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &[]).await;
    customer.wait_status(&keep, "running", WAIT).await;
    let (status, hypervisors) = stratus
        .client(&stratus.admin_token())
        .get("/v1/admin/hypervisors")
        .await;
    assert_eq!(status, 200);
    assert_eq!(hypervisors["items"][0]["servers"], 2, "{hypervisors}");
    stratus.process.terminate();
}

/// R19, R22: `stratus up` killed (SIGKILL) while servers are being
/// numbered leaves no address held twice and none leaked: after the
/// restart every server holds its own addresses, a /27 gives out exactly
/// its 29, the rest wait with `no_clean_address`, and deleting them all
/// puts every address in quarantine.
#[tokio::test]
async fn r22_a_crash_during_allocation_neither_doubles_nor_leaks_an_address() {
    const ORDERS: usize = 40;
    const USABLE: u64 = 32 - 3; // network, gateway, broadcast
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stratus.yaml");
    std::fs::write(
        &config,
        "limits: { requestsPerSecond: 10000, burst: 10000 }\n\
         ipPools:\n\
         \x20 - name: crash\n\
         \x20   zone: default\n\
         \x20   ipv4: { cidr: 203.0.113.32/27, gateway: 203.0.113.33 }\n\
         \x20   ipv6: { prefix: \"2001:db8:5::/56\", gateway: \"2001:db8:5::1\" }\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let data = dir.path().join("data");
    let port = free_port();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &["--config", &config]).await;
    let admin = stratus.client(&stratus.admin_token());
    let (_, customer) = admin.open_account("ACME").await;
    let customer = std::sync::Arc::new(customer);
    let order =
        |i: usize| json!({"name": format!("vs-{i}"), "plan": "small", "image": "debian-12"});

    // Orders stream in from several clients at once (more than the
    // controller numbers meanwhile); the process dies once a few are
    // numbered and others accepted are still waiting for addresses.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (customer, next, accepted) = (customer.clone(), next.clone(), accepted.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::SeqCst;
                loop {
                    let i = next.fetch_add(1, SeqCst);
                    if i >= ORDERS {
                        break;
                    }
                    match customer.try_post("/v1/servers", order(i)).await {
                        Some((202, _)) => {
                            accepted.fetch_add(1, SeqCst);
                        }
                        Some((status, body)) => panic!("order refused: {status} {body}"),
                        None => break,
                    }
                }
            })
        })
        .collect();
    let numbering = std::time::Instant::now() + WAIT;
    let allocated_at_crash = loop {
        let (_, pool) = admin.get("/v1/admin/ip-pools/crash").await;
        let allocated = pool["ipv4_counts"]["allocated"]
            .as_u64()
            .unwrap_or_default();
        let waiting = accepted.load(std::sync::atomic::Ordering::SeqCst) as u64 > allocated;
        if allocated >= 5 && waiting {
            break allocated;
        }
        assert!(
            std::time::Instant::now() < numbering,
            "no moment with orders numbered and others waiting: {pool}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stratus.process.crash();
    for client in clients {
        client.await.unwrap();
    }
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("killed with {allocated_at_crash} of {accepted} accepted orders numbered");
    assert!(
        accepted as u64 > allocated_at_crash,
        "orders were still waiting for addresses when the process died"
    );

    let stratus = Stratus::up(Path::new(BIN), &data, port, &["--config", &config]).await;
    // An order in flight at the kill (one per client) may have been
    // stored unanswered; the others are ordered again.
    let (_, list) = customer.get("/v1/servers?limit=100").await;
    let names: Vec<String> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        (accepted..=accepted + 8).contains(&names.len()),
        "{accepted} accepted: {list}"
    );
    for i in 0..ORDERS {
        if !names.contains(&format!("vs-{i}")) {
            let (status, body) = customer.post("/v1/servers", order(i)).await;
            assert_eq!(status, 202, "{body}");
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let servers = loop {
        let (_, list) = customer.get("/v1/servers?limit=100").await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let settled = items.iter().all(|s| {
            s["ipv4"]["address"].is_string()
                || s["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("no_clean_address"))
        });
        if items.len() == ORDERS && settled {
            break items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "servers did not settle: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let numbered: Vec<&serde_json::Value> = servers
        .iter()
        .filter(|s| s["ipv4"]["address"].is_string())
        .collect();
    assert_eq!(numbered.len() as u64, USABLE, "the /27 is given out whole");
    for family in ["ipv4", "ipv6"] {
        let held: std::collections::HashSet<&str> = numbered
            .iter()
            .map(|s| s[family]["address"].as_str().unwrap())
            .collect();
        assert_eq!(held.len() as u64, USABLE, "{family}: no address held twice");
    }
    let (_, pool) = admin.get("/v1/admin/ip-pools/crash").await;
    for counts in ["ipv4_counts", "ipv6_counts"] {
        assert_eq!(pool[counts]["allocated"], USABLE, "nothing leaked: {pool}");
        assert_eq!(pool[counts]["quarantined"], 0, "{pool}");
    }
    // The ledger agrees: each address has one open holding, its server's.
    for server in &numbered {
        let address = server["ipv4"]["address"].as_str().unwrap();
        let (_, history) = admin.get(&format!("/v1/admin/ips/{address}/history")).await;
        let open: Vec<&serde_json::Value> = history["holdings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["to"].is_null())
            .collect();
        assert_eq!(open.len(), 1, "{history}");
        assert_eq!(
            open[0]["server"],
            format!(
                "{}/{}",
                server["account_id"].as_str().unwrap(),
                server["id"].as_str().unwrap()
            ),
            "{history}"
        );
    }

    for server in &servers {
        let id = server["id"].as_str().unwrap();
        let (status, body) = customer.delete(&format!("/v1/servers/{id}")).await;
        assert_eq!(status, 202, "{body}");
    }
    for server in &servers {
        customer
            .wait_gone(server["id"].as_str().unwrap(), WAIT)
            .await;
    }
    let (_, pool) = admin.get("/v1/admin/ip-pools/crash").await;
    assert_eq!(pool["ipv4_counts"]["allocated"], 0, "{pool}");
    assert_eq!(pool["ipv4_counts"]["quarantined"], USABLE, "{pool}");
    stratus.process.terminate();
}

#[tokio::test]
async fn a_vanished_disk_puts_the_server_in_error_instead_of_recreating_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &[]).await;
    let admin = stratus.client(&stratus.admin_token());
    let (account, customer) = admin.open_account("ACME").await;
    let (_, order) = customer
        .post(
            "/v1/servers",
            json!({"name": "web1", "plan": "small", "image": "debian-12"}),
        )
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    customer.wait_status(&id, "running", WAIT).await;
    stratus.process.terminate();
    let disk_record = format!("stratus-{account}.{id}-disk.qcow2.json");
    // The hypervisor loses the disk while stratus is down.
    std::fs::remove_file(data.join("hypervisor/volumes").join(&disk_record)).unwrap();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &[]).await;
    let failed = customer.wait_status(&id, "error", WAIT).await;
    assert!(
        failed["status_reason"].as_str().unwrap().contains("disk"),
        "{failed}"
    );
    assert!(!data.join("hypervisor/volumes").join(&disk_record).exists());
    // It can still be deleted.
    customer.delete(&format!("/v1/servers/{id}")).await;
    customer.wait_gone(&id, WAIT).await;
    stratus.process.terminate();
}

#[tokio::test]
async fn a_standalone_agent_joins_as_a_second_hypervisor_in_its_zone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let stratus = Stratus::up(Path::new(BIN), &dir.path().join("data"), port, &[]).await;
    let admin = stratus.client(&stratus.admin_token());

    let agent_port = free_port();
    let token_file = dir.path().join("agent.token");
    support::write_secret(&token_file, "second-agent-token-0123456789");
    // Its certificate comes from the CA `stratus up` made in its data dir.
    let agent_tls = dir.path().join("hv-b-tls");
    support::issue_agent_certificate(
        Path::new(BIN),
        &stratus.data_dir.join("tls"),
        "hv-b",
        &agent_tls,
    );
    let args = support::test_agent_args(agent_port, &token_file, "zone-b", &agent_tls);
    let agent = Process::spawn(Path::new(BIN), &args, dir.path().join("agent.log"));
    let agent_url = format!("https://127.0.0.1:{agent_port}");
    let controller_side = support::agent_http(&stratus.data_dir.join("tls/controller"));
    support::wait_healthy_with(&controller_side, &agent_url, &agent).await;
    // Without the controller's certificate, or in clear, the agent answers nothing.
    assert!(
        support::http_client()
            .get(format!("http://127.0.0.1:{agent_port}/healthz"))
            .send()
            .await
            .is_err(),
        "the agent answered plain HTTP"
    );
    let (status, refused) = admin
        .post(
            "/v1/admin/hypervisors",
            json!({"name": "hv-b", "url": format!("http://127.0.0.1:{agent_port}"), "zone": "zone-b", "token": "second-agent-token-0123456789"}),
        )
        .await;
    assert_eq!(status, 422, "a clear-text agent URL is refused: {refused}");

    let wrong = admin
        .post(
            "/v1/admin/hypervisors",
            json!({"name": "hv-b", "url": agent_url, "zone": "zone-b", "token": "not-the-agent-token-000"}),
        )
        .await;
    assert_eq!(wrong.0, 201, "registration stores what the operator gives");
    // With the wrong token the agent refuses, and the hypervisor shows unreachable.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, hv) = admin.get("/v1/admin/hypervisors/hv-b").await;
        if hv["message"]
            .as_str()
            .is_some_and(|m| m.contains("unauthorized") || m.contains("Unauthorized"))
        {
            assert_eq!(hv["reachable"], false);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "probe never reported the refused token: {hv}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = admin
        .post(
            "/v1/admin/hypervisors",
            json!({"name": "hv-b2", "url": agent_url, "zone": "zone-b", "token": "second-agent-token-0123456789"}),
        )
        .await;
    assert_eq!(status, 201);
    // The new zone's addresses: an operator creates its pool.
    let (status, pool) = admin
        .post(
            "/v1/admin/ip-pools",
            json!({"name": "zone-b", "zone": "zone-b",
                   "ipv4": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1"}}),
        )
        .await;
    assert_eq!(status, 201, "{pool}");

    let (_, customer) = admin.open_account("ACME").await;
    let (status, order) = customer
        .post(
            "/v1/servers",
            json!({"name": "web1", "plan": "small", "image": "debian-12", "zone": "zone-b"}),
        )
        .await;
    assert_eq!(status, 202, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let running = customer.wait_status(&id, "running", WAIT).await;
    assert_eq!(running["hypervisor"], "hv-b2", "{running}");
    assert!(
        running["ipv4"]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("198.51.100.")),
        "{running}"
    );
    assert_eq!(
        running["ipv6"],
        serde_json::Value::Null,
        "the pool has no IPv6"
    );
    let (_, hv) = admin.get("/v1/admin/hypervisors/hv-b2").await;
    assert_eq!(hv["reachable"], true);
    assert_eq!(hv["capacity"]["vcpus"], 32);
    assert_eq!(hv["servers"], 1);

    // The agent goes away: the server cannot be deleted until it is back.
    agent.terminate();
    customer.delete(&format!("/v1/servers/{id}")).await;
    // Asserting that something does NOT happen needs a fixed wait: give the
    // controller time to try (and fail) the teardown.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, server) = customer.get(&format!("/v1/servers/{id}")).await;
    assert_eq!(
        status, 200,
        "finalizer holds the server while its agent is down"
    );
    assert_eq!(server["status"], "terminating");
    stratus.process.terminate();
}

/// `stratus up` on a database an earlier data dir initialized: the operator
/// is told where the token is not and how to get one.
#[tokio::test]
async fn up_on_a_database_initialized_elsewhere_says_how_to_get_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("shared.db").display());
    let port = free_port();
    let first = Stratus::up(
        Path::new(BIN),
        &dir.path().join("first"),
        port,
        &["--database-url", &database],
    )
    .await;
    assert!(first.try_admin_token().is_some());
    first.process.terminate();
    let second = Stratus::up(
        Path::new(BIN),
        &dir.path().join("second"),
        port,
        &["--database-url", &database],
    )
    .await;
    assert!(second.try_admin_token().is_none());
    let said = second.process.log_text();
    assert!(said.contains("initialized elsewhere"), "{said}");
    assert!(said.contains("stratus admin-token"), "{said}");
    for private in [
        "shared.db",
        "second/master.key",
        "second/agent.token",
        "second/tls/ca.key",
        "second/tls/agent/tls.key",
        "second/tls/controller/tls.key",
    ] {
        assert_eq!(mode_of(&dir.path().join(private)), 0o600, "{private}");
    }
    assert_eq!(mode_of(&dir.path().join("second")), 0o700, "the data dir");
    second.process.terminate();
}

/// R1, R2, R4, R5, R6, R7, R14, R22 and the notices, on `stratus up` with
/// policy durations of seconds: non-payment suspends every server of the
/// account and no other, payment brings it back; an abuse report naming
/// an address and a time isolates the server that held it; a termination
/// with notice is announced by e-mail (a local SMTP sink) and by webhook
/// (a local receiver), survives a SIGKILL, and at its deadline the server
/// is wiped and listed as terminated, its address quarantined; the fee
/// reaches the billing webhook once, every message arrives once, and the
/// audit log has every step.
#[tokio::test]
async fn r1_r5_r6_billing_and_abuse_enforcement_end_to_end_across_a_kill() {
    use stratus_controller::receivers::{SmtpSink, WebhookReceiver};
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start().await.unwrap();
    let hooks = WebhookReceiver::start().await.unwrap();
    let secret = dir.path().join("webhook.secret");
    support::write_secret(&secret, "an-e2e-webhook-secret-0123456789");
    let config = dir.path().join("stratus.yaml");
    std::fs::write(
        &config,
        format!(
            "limits: {{ requestsPerSecond: 10000, burst: 10000 }}\n\
             policy:\n\
             \x20 billing: {{ suspendAfter: 2s }}\n\
             \x20 abuse: {{ terminationNotice: 8s }}\n\
             \x20 notice: {{ before: [6s] }}\n\
             notifications:\n\
             \x20 email:\n\
             \x20   from: \"Example Hosting <noc@example.net>\"\n\
             \x20   smtp: {{ host: 127.0.0.1, port: {}, tls: none }}\n\
             \x20 webhook: {{ url: \"{}\", secretFile: \"{}\" }}\n\
             \x20 billingWebhook: {{ url: \"{}\", secretFile: \"{}\" }}\n",
            smtp.port(),
            hooks.url("/notices"),
            secret.display(),
            hooks.url("/billing"),
            secret.display(),
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let data = dir.path().join("data");
    let port = free_port();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &["--config", &config]).await;
    let admin = stratus.client(&stratus.admin_token());
    let (acme, customer) = admin.open_account("ACME").await;
    let (_, other) = admin.open_account("Globex").await;
    let order = json!({"name": "web", "plan": "small", "image": "debian-12"});
    let (_, web) = customer.post("/v1/servers", order.clone()).await;
    let (_, theirs) = other.post("/v1/servers", order).await;
    let web = web["id"].as_str().unwrap().to_owned();
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let running = customer.wait_status(&web, "running", WAIT).await;
    other.wait_status(&theirs, "running", WAIT).await;
    let address = running["ipv4"]["address"].as_str().unwrap().to_owned();
    let report = |body: serde_json::Value| {
        let admin = &admin;
        let acme = &acme;
        async move {
            let (status, reply) = admin
                .post(&format!("/v1/admin/accounts/{acme}/events"), body)
                .await;
            assert_eq!(status, 202, "{reply}");
        }
    };
    let now = || jiff::Timestamp::now().to_string();

    // R1, R2: overdue, reminded, unpaid 2 s later: suspended; Globex is not.
    report(json!({"id": "inv-1-due", "type": "invoice_overdue", "invoice_id": "inv-1", "due_at": now()})).await;
    report(json!({"id": "inv-1-reminder", "type": "reminder_sent", "invoice_id": "inv-1"})).await;
    let suspended = customer.wait_status(&web, "suspended", WAIT).await;
    assert_eq!(suspended["status_reason"], "non_payment", "{suspended}");
    let (_, refused) = customer
        .post(
            &format!("/v1/servers/{web}/actions"),
            json!({"type": "start"}),
        )
        .await;
    assert_eq!(refused["error"]["code"], "server_suspended", "{refused}");
    assert_eq!(
        other.get(&format!("/v1/servers/{theirs}")).await.1["status"],
        "running"
    );
    // R4: paid, it runs again.
    report(json!({"id": "inv-1-paid", "type": "invoice_paid", "invoice_id": "inv-1"})).await;
    customer.wait_status(&web, "running", WAIT).await;

    // R5, R22: a report naming the address and a time isolates it at once.
    let (status, reply) = admin
        .post(
            "/v1/admin/events",
            json!({"id": "abuse-1", "type": "abuse_report", "ip": address, "received_at": now(), "evidence": "spam run"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let isolated = customer.wait_status(&web, "suspended", WAIT).await;
    assert_eq!(isolated["status_reason"], "abuse");
    assert_eq!(
        isolated["suspension"]["mode"], "network_isolated",
        "{isolated}"
    );
    assert_eq!(isolated["desired_power"], "running", "the VM keeps running");
    assert_eq!(
        other.get(&format!("/v1/servers/{theirs}")).await.1["status"],
        "running"
    );

    // R6: terminated with 8 s notice; the notice is out before the kill.
    report(json!({"id": "term-1", "type": "terminate", "server": web, "reason": "abuse", "notice": "policy"})).await;
    let announced = |page: &serde_json::Value| {
        page["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .filter(|n| {
                    n["subject"]
                        .as_str()
                        .is_some_and(|s| s.contains("will be terminated"))
                })
                .count()
                >= 4
        })
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, page) = admin
            .get("/v1/admin/notifications?state=delivered&limit=1000")
            .await;
        if announced(&page) {
            break;
        }
        // What the process did meanwhile says why, should it not come.
        assert!(
            std::time::Instant::now() < deadline,
            "the termination was not announced: {page}\n{}",
            notable_lines(&stratus.process.log_text())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stratus.process.crash();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &["--config", &config]).await;
    let admin = stratus.client(&stratus.admin_token());
    let terminated = customer
        .wait_until(
            &format!("/v1/servers/{web}"),
            "terminated and wiped",
            WAIT,
            |server| server["status"] == "terminated" && server["ipv4"].is_null(),
        )
        .await;
    assert_eq!(terminated["status_reason"], "abuse", "{terminated}");
    assert_eq!(
        other.get(&format!("/v1/servers/{theirs}")).await.1["status"],
        "running"
    );
    let history = admin
        .get(&format!("/v1/admin/ips/{address}/history"))
        .await
        .1;
    assert!(
        !history["holdings"][0]["to"].is_null(),
        "R22: the address is released to quarantine: {history}"
    );

    // Every notification delivered, once each.
    let outbox = admin
        .wait_until(
            "/v1/admin/notifications?limit=1000",
            "every notification delivered",
            WAIT,
            |page| {
                page["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().all(|n| n["state"] == "delivered"))
                    && page["items"].as_array().is_some_and(|items| {
                        items.iter().any(|n| {
                            n["subject"]
                                .as_str()
                                .is_some_and(|s| s.contains("data was destroyed"))
                        })
                    })
            },
        )
        .await;
    let mails = smtp.received();
    let mut message_ids: Vec<String> = mails
        .iter()
        .map(|mail| {
            assert_eq!(mail.to, ["ops@example.com"]);
            mail.header("Message-ID").unwrap()
        })
        .collect();
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), mails.len(), "no e-mail twice");
    let subjects: Vec<String> = mails.iter().map(|m| m.header("Subject").unwrap()).collect();
    for expected in [
        "All services of your account suspended for non-payment",
        "Suspension for non-payment lifted",
        &format!("Your server {web} suspended for abuse"),
        &format!("Your server {web} was terminated"),
        &format!("Your server {web}'s data was destroyed"),
    ] {
        assert!(
            subjects.iter().any(|s| s == expected),
            "{expected}: {subjects:#?}"
        );
    }
    for announced in ["Your server", "Reminder: your server"] {
        let prefix = format!("{announced} {web} will be terminated on");
        assert_eq!(
            subjects.iter().filter(|s| s.starts_with(&prefix)).count(),
            1,
            "the termination scheduled, and its notice: {subjects:#?}"
        );
    }
    let notices: Vec<_> = hooks
        .calls()
        .into_iter()
        .filter(|c| c.path == "/notices")
        .collect();
    assert!(notices.iter().all(|c| {
        c.headers
            .get("stratus-signature")
            .is_some_and(|s| s.starts_with("t="))
    }));
    let mut ids: Vec<String> = notices
        .iter()
        .map(|c| {
            serde_json::from_slice::<serde_json::Value>(&c.body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let sent = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sent, "no webhook message twice");
    assert_eq!(
        sent,
        subjects.len(),
        "the same messages by both channels: {}",
        outbox
    );

    // R7: the fee, once, in the ledger and on the billing webhook.
    let fees = hooks
        .calls()
        .into_iter()
        .filter(|c| c.path == "/billing")
        .flat_map(|c| {
            serde_json::from_slice::<serde_json::Value>(&c.body).unwrap()["events"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect::<Vec<_>>();
    assert_eq!(fees.len(), 1, "{fees:?}");
    assert_eq!(
        (fees[0]["type"].as_str(), fees[0]["amount"].as_u64()),
        (Some("abuse_report"), Some(50_000))
    );
    let (_, events) = admin.get("/v1/admin/billing-events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1, "{events}");

    // R10: every step in the audit log.
    let (_, trail) = admin
        .get(&format!("/v1/admin/accounts/{acme}/audit?limit=1000"))
        .await;
    let trail = trail.to_string();
    for step in [
        "inv-1-due",
        "inv-1-paid",
        "abuse-1",
        "term-1",
        "suspended",
        "lifted",
        "terminated",
        "wiped",
        "\"action\":\"destroyed\"",
    ] {
        assert!(trail.contains(step), "{step} missing from the audit log");
    }
    stratus.process.terminate();
}

/// The lines of a process's log that say what it decided or what failed.
fn notable_lines(log: &str) -> String {
    log.lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.contains("standing")
                || l.contains("notification")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `dig -x address @127.0.0.1 -p port +short`: what stratus's DNS server
/// answers for the address's PTR.
fn dig_ptr(address: &str, port: u16) -> String {
    let output = std::process::Command::new("dig")
        .args([
            "-x",
            address,
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=1",
            "+time=2",
        ])
        .output()
        .expect("dig (Debian's bind9-dnsutils) runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn wait_dig(address: &str, port: u16, want: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answer = dig_ptr(address, port);
        if answer == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dig -x {address} answers {answer:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// R22 end to end: `stratus up` serves the reverse zone of its pool; a PTR
/// set through the API is what `dig -x` gets from it, the default before
/// and again once the server is gone.
#[tokio::test]
async fn r22_a_ptr_set_through_the_api_is_what_dig_gets_from_stratus_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let dns_port = free_port();
    let config = dir.path().join("stratus.yaml");
    std::fs::write(
        &config,
        format!(
            "rdns:\n  listen: 127.0.0.1:{dns_port}\n  defaultTemplate: static-{{ip-dashed}}.example.net\n  requireForwardMatch: false\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let stratus = Stratus::up(Path::new(BIN), &data, port, &["--config", &config]).await;
    let admin = stratus.client(&stratus.admin_token());
    let (_, customer) = admin.open_account("ACME").await;
    let (_, order) = customer
        .post(
            "/v1/servers",
            json!({"name": "mail", "plan": "small", "image": "debian-12"}),
        )
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    let running = customer.wait_status(&id, "running", WAIT).await;
    let ipv4 = running["ipv4"]["address"].as_str().unwrap().to_owned();
    let dashed = ipv4.replace('.', "-");
    wait_dig(&ipv4, dns_port, &format!("static-{dashed}.example.net.")).await;

    let (status, body) = customer
        .put(
            &format!("/v1/servers/{id}/ptr"),
            json!({"ip": ipv4, "hostname": "mail.example.com"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_dig(&ipv4, dns_port, "mail.example.com.").await;

    customer
        .delete_and_wait(&format!("/v1/servers/{id}"), WAIT)
        .await;
    wait_dig(&ipv4, dns_port, &format!("static-{dashed}.example.net.")).await;
    stratus.process.terminate();
}
