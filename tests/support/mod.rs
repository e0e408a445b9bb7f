//! Starting stratus the way a user does (a subprocess on a free loopback
//! port and a scratch data directory) and talking to it over HTTP.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A free port on 127.0.0.1 (the listener is closed before the port is used).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A `stratus` process that is killed when dropped.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(binary: &Path, args: &[String], log: PathBuf) -> Self {
        let mut command = Command::new(binary);
        command.args(args);
        Self::spawn_command(command, log)
    }

    /// Starts `command` (with its own arguments and environment), logging to `log`.
    pub fn spawn_command(mut command: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = command
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process as an operator would (SIGTERM), waiting for it to exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process did not stop on SIGTERM:\n{}", self.log_text());
    }

    /// Kills the process at once, as a crash would.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `stratus up` on a free port with its data in `data_dir`.
pub struct Stratus {
    pub process: Process,
    pub base: String,
    pub data_dir: PathBuf,
}

impl Stratus {
    pub async fn up(binary: &Path, data_dir: &Path, port: u16, extra: &[&str]) -> Self {
        let mut args = vec![
            "up".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = data_dir.with_extension(format!("{port}.log"));
        let process = Process::spawn(binary, &args, log);
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base, &process).await;
        Self {
            process,
            base,
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn admin_token(&self) -> String {
        self.try_admin_token()
            .expect("admin.token written by stratus up")
    }

    /// The operator token `stratus up` wrote, if it wrote one (not when the
    /// database already had an operator).
    pub fn try_admin_token(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir.join("admin.token")).ok()?;
        Some(text.trim().to_owned())
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.base, token)
    }
}

pub async fn wait_healthy(base: &str, process: &Process) {
    wait_healthy_with(&http_client(), base, process).await;
}

/// Waits until `base/healthz` answers through `http`.
pub async fn wait_healthy_with(http: &reqwest::Client, base: &str, process: &Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} did not become healthy:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: http_client(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// One request; an answer of 429 (the polls of a test share their
    /// token's request rate) is asked again after the pause it names.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut refused = 0;
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{path}: {e:?}"));
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || refused == 30 {
                break response;
            }
            refused += 1;
            let pause = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 2);
            tokio::time::sleep(Duration::from_secs(pause)).await;
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A POST that may find the server gone (a test that kills it).
    pub async fn try_post(&self, path: &str, body: Value) -> Option<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Deletes `path` and waits until it answers 404: what it held on the
    /// hypervisors (domains, volumes) is wiped and gone, so a test leaves
    /// nothing running or filling the pools behind it.
    pub async fn delete_and_wait(&self, path: &str, timeout: Duration) {
        let (status, body) = self.delete(path).await;
        assert!(
            status == 202 || status == 404,
            "DELETE {path}: HTTP {status} {body}"
        );
        self.wait_absent(path, timeout).await;
    }

    /// Polls `path` until it answers 404, within `timeout`.
    pub async fn wait_absent(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path).await;
            if status == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} was not deleted: HTTP {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Opens an account with the admin client; returns (account id, customer client).
    pub async fn open_account(&self, name: &str) -> (String, Client) {
        let (status, account) = self
            .post(
                "/v1/accounts",
                json!({"name": name, "email": "ops@example.com"}),
            )
            .await;
        assert_eq!(status, 201, "{account}");
        let id = account["id"].as_str().expect("account id").to_owned();
        let (status, token) = self
            .post(&format!("/v1/accounts/{id}/tokens"), json!({"name": "e2e"}))
            .await;
        assert_eq!(status, 201, "{token}");
        (
            id,
            Client::new(&self.base, token["token"].as_str().expect("token")),
        )
    }

    /// Polls `path` until it answers 200 with a body `done` accepts, within
    /// `timeout`; returns that body, or fails saying `what` did not happen.
    pub async fn wait_until(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{what}: HTTP {status} {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls a server until its status is `want`; returns it.
    pub async fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> Value {
        self.wait_until(
            &format!("/v1/servers/{id}"),
            &format!("server {id} did not become {want}"),
            timeout,
            |server| server["status"] == want,
        )
        .await
    }

    /// Polls until the server is gone (404).
    pub async fn wait_gone(&self, id: &str, timeout: Duration) {
        self.wait_absent(&format!("/v1/servers/{id}"), timeout)
            .await;
    }
}

/// Writes a secret file as an operator must: readable by its owner only
/// (stratus refuses secret files others can read).
pub fn write_secret(path: &Path, contents: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create a secret file");
    std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write a secret file");
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

/// A plain HTTP client for the REST API. The binary's reqwest has no
/// built-in crypto provider (rustls with ring, chosen explicitly), so the
/// process default is set first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // stratus closes a connection idle for 10 s (its header-read limit); a
    // test that blocks its runtime meanwhile (hashing a file) would not see
    // the close and send its next request on the dead connection.
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// Runs `stratus tls …` (CA and certificates for the agent link).
pub fn stratus_tls(binary: &Path, args: &[&str]) {
    let output = Command::new(binary)
        .arg("tls")
        .args(args)
        .output()
        .expect("run stratus tls");
    assert!(
        output.status.success(),
        "stratus tls {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Issues an agent certificate for 127.0.0.1 from the CA in `ca_dir` into `out`.
pub fn issue_agent_certificate(binary: &Path, ca_dir: &Path, name: &str, out: &Path) {
    stratus_tls(
        binary,
        &[
            "issue",
            "--ca-dir",
            &ca_dir.display().to_string(),
            "--role",
            "agent",
            "--name",
            name,
            "--host",
            "127.0.0.1",
            "--out",
            &out.display().to_string(),
        ],
    );
}

/// The flags of a standalone agent on libvirt's test driver: listening on
/// 127.0.0.1:`port` in `zone`, with one image and room for a few servers,
/// its token in `token_file` and its certificate in `tls_dir`.
pub fn test_agent_args(port: u16, token_file: &Path, zone: &str, tls_dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--token-file",
        &token_file.display().to_string(),
        "--zone",
        zone,
        "--libvirt-uri",
        "test:///default",
        "--seed-image",
        "debian-12.qcow2",
        "--capacity",
        "vcpus=32,memory_mib=65536,disk_gib=2000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(agent_tls_args(tls_dir));
    args
}

/// The agent's TLS flags for the files `stratus tls issue` wrote in `dir`.
pub fn agent_tls_args(dir: &Path) -> Vec<String> {
    [
        ("--tls-cert", "tls.crt"),
        ("--tls-key", "tls.key"),
        ("--client-ca", "ca.crt"),
    ]
    .iter()
    .flat_map(|(flag, file)| [(*flag).to_owned(), dir.join(file).display().to_string()])
    .collect()
}

/// An HTTP client of agents presenting the certificate in `dir` (as the
/// controller does), trusting agents signed by the CA there.
pub fn agent_http(dir: &Path) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.crt")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}
