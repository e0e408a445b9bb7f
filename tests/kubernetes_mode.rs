//! Kubernetes mode end to end: the API and two controller replicas started
//! as a user starts them (`--backend kubernetes`, a kubeconfig), a real agent
//! on libvirt's test driver, and a test API server. Objects applied as
//! kubectl applies them are provisioned like REST orders, both views agree,
//! one replica leads and the other takes over when it dies.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::json;
use stratus_core::resources::{ServerPhase, VirtualServer};
use stratus_store::{Database, ObjectStore, SqlObjectStore};
use support::{Client, Process, free_port, wait_healthy};

const BIN: &str = env!("CARGO_BIN_EXE_stratus");
const WAIT: Duration = Duration::from_secs(30);
const ACCOUNT: &str = "acc-00000000000000a1";

async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates `object` as `kubectl apply` would the first time.
async fn kubectl_apply(client: &kube::Client, object: serde_json::Value, namespace: Option<&str>) {
    let group_version = object["apiVersion"].as_str().unwrap().to_owned();
    let kind = object["kind"].as_str().unwrap().to_owned();
    let plural = match kind.as_str() {
        "VirtualServer" => "virtualservers",
        "Hypervisor" => "hypervisors",
        "Account" => "accounts",
        "IpPool" => "ippools",
        "Secret" => "secrets",
        "Namespace" => "namespaces",
        other => panic!("no plural known for {other}"),
    };
    let (group, version) = group_version
        .split_once('/')
        .unwrap_or(("", group_version.as_str()));
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: group_version.clone(),
        kind: kind.clone(),
        plural: plural.into(),
    };
    let namespace = namespace
        .map(str::to_owned)
        .or_else(|| object["metadata"]["namespace"].as_str().map(str::to_owned));
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("apply {kind}: {e}"));
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_use_kubectl_customers_use_rest_and_one_controller_leads() {
    let dir = tempfile::tempdir().unwrap();

    // The API server.
    let db = Database::connect(&format!(
        "sqlite://{}",
        dir.path().join("apiserver.db").display()
    ))
    .await
    .unwrap();
    let served: Arc<dyn ObjectStore> =
        // The test API server stamps times as a real one does: from its own clock.
        Arc::new(
            SqlObjectStore::new(db, Arc::new(stratus_core::SystemClock))
                .with_poll_interval(Duration::from_millis(20)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, stratus_store::testing::apiserver::router(served)).await
    });
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server_url}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let kubectl = kube::Client::try_from(kube::Config::new(server_url.parse().unwrap())).unwrap();

    // A hypervisor running the agent, with a certificate from the
    // operator's agent-link CA (as `stratus tls` or cert-manager makes).
    let ca_dir = dir.path().join("agent-link-ca");
    support::stratus_tls(
        Path::new(BIN),
        &["ca", "--dir", &ca_dir.display().to_string()],
    );
    let agent_tls = dir.path().join("par1-hv1-tls");
    support::issue_agent_certificate(Path::new(BIN), &ca_dir, "par1-hv1", &agent_tls);
    let controller_tls = dir.path().join("controller-tls");
    support::stratus_tls(
        Path::new(BIN),
        &[
            "issue",
            "--ca-dir",
            &ca_dir.display().to_string(),
            "--role",
            "controller",
            "--name",
            "controller",
            "--out",
            &controller_tls.display().to_string(),
        ],
    );
    let agent_port = free_port();
    let agent_url = format!("https://127.0.0.1:{agent_port}");
    let agent_http = support::agent_http(&controller_tls);
    let token_file = dir.path().join("agent.token");
    support::write_secret(&token_file, "kubernetes-mode-agent-token-01");
    let agent_args = support::test_agent_args(agent_port, &token_file, "par1", &agent_tls);
    let agent = Process::spawn(Path::new(BIN), &agent_args, dir.path().join("agent.log"));
    support::wait_healthy_with(&agent_http, &agent_url, &agent).await;

    // What an operator applies with kubectl: the chart's example manifests,
    // with the agent's real address and token (the examples name a private
    // address this test must not reach).
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/stratus/examples");
    for (file, namespace) in [
        ("ippool.yaml", None),
        ("hypervisor-token.yaml", Some("stratus-system")),
        ("hypervisor.yaml", None),
        ("account.yaml", None),
        ("virtualserver.yaml", None),
    ] {
        let text = std::fs::read_to_string(examples.join(file)).unwrap();
        for document in text.split("\n---").filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        }) {
            let mut object: serde_json::Value = serde_yaml::from_str(document).unwrap();
            match object["kind"].as_str() {
                Some("Hypervisor") => object["spec"]["url"] = json!(agent_url),
                Some("Secret") => {
                    object["stringData"]["token"] = json!("kubernetes-mode-agent-token-01")
                }
                _ => {}
            }
            kubectl_apply(&kubectl, object, namespace).await;
        }
    }
    let servers: Api<VirtualServer> = Api::namespaced(kubectl.clone(), ACCOUNT);
    let secrets: Api<Secret> = Api::namespaced(kubectl.clone(), "stratus-system");

    // Two controller replicas.
    let ledger = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let controller = |name: &str| {
        let mut child = std::process::Command::new(BIN);
        child
            .args(args(&[
                "controller",
                "--backend",
                "kubernetes",
                "--database-url",
                &ledger,
                "--lease-seconds",
                "3",
                "--identity",
                name,
                "--metrics-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--agent-ca",
                &controller_tls.join("ca.crt").display().to_string(),
                "--agent-client-cert",
                &controller_tls.join("tls.crt").display().to_string(),
                "--agent-client-key",
                &controller_tls.join("tls.key").display().to_string(),
            ]))
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", "stratus-system");
        Process::spawn_command(child, dir.path().join(format!("{name}.log")))
    };
    let mut replicas = vec![
        ("ctrl-a", controller("ctrl-a")),
        ("ctrl-b", controller("ctrl-b")),
    ];

    let running = until("the kubectl-applied server to run", || async {
        let server = servers.get("vs-00000000000000b1").await.ok()?;
        (server.status.as_ref()?.phase == ServerPhase::Running).then_some(server)
    })
    .await;
    assert_eq!(
        running
            .status
            .as_ref()
            .unwrap()
            .hypervisor
            .as_ref()
            .map(|h| h.as_str()),
        Some("par1-hv1")
    );
    assert!(
        running
            .metadata
            .finalizers
            .unwrap()
            .contains(&"stratus.dev/teardown".to_owned())
    );

    let leases: Api<Lease> = Api::namespaced(kubectl.clone(), "stratus-system");
    let leader = until("a leader", || async {
        leases
            .get("stratus-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    let follower = if leader == "ctrl-a" {
        "ctrl-b"
    } else {
        "ctrl-a"
    };
    let events: Api<Event> = Api::namespaced(kubectl.clone(), ACCOUNT);
    // The event is published after the status that says so is written:
    // it may trail the status read above.
    until("a Running event", || async {
        let reasons: Vec<String> = events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        reasons.contains(&"Running".to_owned()).then_some(())
    })
    .await;
    let reporting: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect();
    assert!(
        reporting.iter().all(|r| *r == leader),
        "only the leader acts: {reporting:?} (leader {leader})"
    );

    // The REST API on the same objects.
    let api_port = free_port();
    let mut api_command = std::process::Command::new(BIN);
    api_command
        .args(args(&[
            "api",
            "--backend",
            "kubernetes",
            "--database-url",
            &ledger,
            "--listen",
            &format!("127.0.0.1:{api_port}"),
        ]))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "stratus-system");
    let api = Process::spawn_command(api_command, dir.path().join("api.log"));
    let base = format!("http://127.0.0.1:{api_port}");
    wait_healthy(&base, &api).await;
    let output = std::process::Command::new(BIN)
        .args(args(&["admin-token", "--database-url", &ledger]))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let admin = Client::new(&base, String::from_utf8(output.stdout).unwrap().trim());
    let (status, all) = admin.get(&format!("/v1/servers?account={ACCOUNT}")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["items"][0]["id"], "vs-00000000000000b1");
    assert_eq!(all["items"][0]["status"], "running", "both views agree");

    let (new_account, customer) = admin.open_account("Globex").await;
    let namespaces: Api<Namespace> = Api::all(kubectl.clone());
    assert!(
        namespaces.get(&new_account).await.is_ok(),
        "an account gets its namespace"
    );
    let (status, order) = customer
        .post(
            "/v1/servers",
            json!({"name": "web2", "plan": "small", "image": "debian-12"}),
        )
        .await;
    assert_eq!(status, 202, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    customer.wait_status(&id, "running", WAIT).await;
    let ordered: Api<VirtualServer> = Api::namespaced(kubectl.clone(), &new_account);
    assert_eq!(
        ordered.get(&id).await.unwrap().spec.hostname,
        "web2",
        "a REST order is a VirtualServer"
    );

    // Two accounts both apply a server called web1, placed on the one
    // hypervisor: two domains, and deleting one leaves the other running
    // with its disk.
    for namespace in [ACCOUNT, new_account.as_str()] {
        let manifest = json!({
            "apiVersion": "stratus.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": "web1", "namespace": namespace},
            "spec": {"hostname": "web1.example", "plan": "small", "image": "debian-12", "zone": "par1",
                     "resources": {"vcpus": 1, "memoryMib": 1024, "diskGib": 25}, "power": "Running"}
        });
        kubectl_apply(&kubectl, manifest, None).await;
    }
    for namespace in [ACCOUNT, new_account.as_str()] {
        let api: Api<VirtualServer> = Api::namespaced(kubectl.clone(), namespace);
        until("both web1 servers to run", || async {
            let server = api.get("web1").await.ok()?;
            (server.status?.phase == ServerPhase::Running).then_some(())
        })
        .await;
    }
    let agent_get = |path: String| {
        let request = agent_http
            .get(format!("{agent_url}{path}"))
            .bearer_auth("kubernetes-mode-agent-token-01");
        async move {
            let response = request.send().await.unwrap();
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let mine = format!("stratus-{ACCOUNT}.web1");
    let theirs = format!("stratus-{new_account}.web1");
    let node = agent_get("/v1/node".into()).await;
    for domain in [&mine, &theirs] {
        assert!(
            node["domains"].as_array().unwrap().contains(&json!(domain)),
            "{domain} missing: {node}"
        );
    }
    ordered
        .delete("web1", &DeleteParams::default())
        .await
        .unwrap();
    until("their web1 to be torn down", || async {
        ordered.get_opt("web1").await.ok()?.is_none().then_some(())
    })
    .await;
    let kept = agent_get(format!("/v1/domains/{mine}")).await;
    assert_eq!(kept["state"], "running", "{kept}");
    assert_eq!(kept["disk_present"], true, "{kept}");
    let gone = agent_get(format!("/v1/domains/{theirs}")).await;
    assert_eq!(gone["state"], serde_json::Value::Null, "{gone}");
    assert_eq!(gone["disk_present"], false, "{gone}");

    // Registering a hypervisor through REST stores its token as a Secret.
    let (status, _) = admin
        .post("/v1/admin/hypervisors", json!({"name": "par1-hv2", "url": "https://127.0.0.1:1", "zone": "par1", "token": "second-token-0123456789"}))
        .await;
    assert_eq!(status, 201);
    let stored = secrets.get("stratus-hypervisor-par1-hv2").await.unwrap();
    assert_eq!(stored.data.unwrap()["token"].0, b"second-token-0123456789");

    // The leader dies: the other replica takes the lease and carries on.
    let position = replicas
        .iter()
        .position(|(name, _)| *name == leader)
        .unwrap();
    replicas.remove(position).1.crash();
    until("the other replica to lead", || async {
        let holder = leases
            .get("stratus-controller")
            .await
            .ok()?
            .spec?
            .holder_identity?;
        (holder == follower).then_some(())
    })
    .await;
    servers
        .delete("vs-00000000000000b1", &DeleteParams::default())
        .await
        .unwrap();
    until(
        "the deleted server to be torn down and released",
        || async {
            servers
                .get_opt("vs-00000000000000b1")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    api.terminate();
    for (_, replica) in replicas {
        replica.terminate();
    }
    agent.terminate();
}
