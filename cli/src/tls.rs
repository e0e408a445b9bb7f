//! Mutual TLS between the controller and the agents: certificate files
//! loaded into rustls configurations and reloaded when they change (so a
//! rotated certificate needs no restart), their expiry exported as a metric,
//! and the small CA `stratus up` and `stratus tls` issue certificates from.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use prometheus_client::metrics::gauge::Gauge;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use stratus_store::private_files::{ensure_private_dir, read_private_file, write_private_file};
use tokio::sync::watch;

/// How often certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The three files of one side of the link: its certificate (chain), its
/// private key, and the CA it trusts for the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// `tls.crt`, `tls.key` and `ca.crt` in `dir`: the layout of a
    /// Kubernetes TLS Secret (cert-manager's) and of `stratus tls issue`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
        }
    }

    /// Together, or not at all: the flags of one side.
    pub fn from_flags(
        cert: Option<&PathBuf>,
        key: Option<&PathBuf>,
        ca: Option<&PathBuf>,
        flags: [&str; 3],
    ) -> anyhow::Result<Option<Self>> {
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => bail!(
                "--{}, --{} and --{} go together: give all three",
                flags[0],
                flags[1],
                flags[2]
            ),
        }
    }

    /// What changes when any of the files is replaced (Kubernetes swaps a
    /// symlink, an operator rewrites or renames a file).
    fn fingerprint(&self) -> Vec<(i64, i64, u64, u64)> {
        [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|path| {
                std::fs::metadata(path)
                    .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One side's identity and the roots it trusts, read from files.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    /// When the leaf certificate expires, seconds since the epoch.
    not_after: i64,
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certificates)
}

/// When `certificate` expires, seconds since the epoch.
pub fn not_after(certificate: &CertificateDer<'_>) -> anyhow::Result<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(parsed.validity().not_after.timestamp())
}

fn read_material(files: &TlsFiles) -> anyhow::Result<Material> {
    let chain = read_certificates(&files.cert)?;
    let key_pem = read_private_file(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("{} holds no PEM private key", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certificates(&files.ca)? {
        roots
            .add(ca)
            .with_context(|| format!("{} holds an unusable CA certificate", files.ca.display()))?;
    }
    let not_after =
        not_after(&chain[0]).with_context(|| format!("certificate {}", files.cert.display()))?;
    Ok(Material {
        chain,
        key,
        roots,
        not_after,
    })
}

fn unusable_pair(files: &TlsFiles) -> String {
    format!(
        "{} and {} do not form a usable certificate and key",
        files.cert.display(),
        files.key.display()
    )
}

/// The agent's side: serves its certificate and accepts only clients whose
/// certificate the CA signed.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<(Arc<ServerConfig>, i64)> {
    let material = read_material(files)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(material.roots), provider())
            .build()
            .context("cannot build the client certificate verifier")?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.chain, material.key)
        .with_context(|| unusable_pair(files))?;
    Ok((Arc::new(config), material.not_after))
}

/// The controller's side: trusts only agents whose certificate the CA
/// signed, and presents its own.
pub fn client_config(files: &TlsFiles) -> anyhow::Result<(ClientConfig, i64)> {
    let material = read_material(files)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .with_context(|| unusable_pair(files))?;
    Ok((config, material.not_after))
}

/// Loads `files` with `load` now (an error stops the start) and again
/// whenever they change, checking every `every`. A change that does not
/// load (a key written before its certificate) keeps the previous
/// configuration and is retried at the next change. `expiry` follows the
/// certificate in use.
pub fn watch_files<T: Send + Sync + 'static>(
    what: &'static str,
    files: TlsFiles,
    load: impl Fn(&TlsFiles) -> anyhow::Result<(T, i64)> + Send + 'static,
    expiry: Gauge,
    every: Duration,
) -> anyhow::Result<watch::Receiver<T>> {
    let mut seen = files.fingerprint();
    let (config, not_after) = load(&files).with_context(|| format!("{what} TLS"))?;
    expiry.set(not_after);
    let (sender, receiver) = watch::channel(config);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if sender.is_closed() {
                return;
            }
            let now = files.fingerprint();
            if now == seen {
                continue;
            }
            seen = now;
            match load(&files) {
                Ok((config, not_after)) => {
                    expiry.set(not_after);
                    let _ = sender.send(config);
                    tracing::info!(what, cert = %files.cert.display(), not_after, "reloaded TLS certificate");
                }
                Err(error) => {
                    tracing::warn!(
                        what,
                        error = format!("{error:#}"),
                        "changed TLS files do not load; keeping the previous certificate"
                    );
                }
            }
        }
    });
    Ok(receiver)
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// An agent: a TLS server, named by its hosts.
    Agent,
    /// The controller: a TLS client of the agents.
    Controller,
}

/// A CA kept as `ca.crt` and `ca.key` (0600) in a private directory.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

const CA_YEARS: i64 = 10;
/// Issued certificates live a year (`stratus up` issues its own at every start).
pub const CERTIFICATE_DAYS: i64 = 365;

fn days_from_now(days: i64) -> anyhow::Result<time::OffsetDateTime> {
    let now = time::OffsetDateTime::now_utc();
    now.checked_add(time::Duration::days(days))
        .context("date out of range")
}

impl CertificateAuthority {
    pub fn certificate_path(dir: &Path) -> PathBuf {
        dir.join("ca.crt")
    }

    /// Opens the CA in `dir`, making a new one when there is none.
    pub fn open_or_create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        ensure_private_dir(dir)?;
        let (cert_path, key_path) = (Self::certificate_path(dir), dir.join("ca.key"));
        if std::fs::symlink_metadata(&key_path).is_ok() {
            return Self::open(dir);
        }
        let key = KeyPair::generate().context("cannot generate a CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = days_from_now(-1)?;
        params.not_after = days_from_now(CA_YEARS * 365)?;
        let certificate = params.self_signed(&key).context("cannot sign the CA")?;
        write_private_file(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, certificate.pem())
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        Ok(Self {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Opens the existing CA in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let cert_path = Self::certificate_path(dir);
        let key = KeyPair::from_pem(&read_private_file(&dir.join("ca.key"))?)
            .with_context(|| format!("{} holds no usable key", dir.join("ca.key").display()))?;
        let pem = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read {}", cert_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key)
            .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
        Ok(Self { issuer, pem })
    }

    /// Issues a certificate for `role` named `name`, valid for `hosts` (an
    /// agent's DNS names and IP addresses), into `out` as `tls.crt`,
    /// `tls.key` (0600) and a copy of the CA certificate as `ca.crt`.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        hosts: &[String],
        days: i64,
        out: &Path,
    ) -> anyhow::Result<TlsFiles> {
        if role == Role::Agent && hosts.is_empty() {
            bail!("an agent certificate needs at least one host name or address (--host)");
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => host
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .with_context(|| format!("{host:?} is neither an IP address nor a DNS name")),
            })
            .collect::<anyhow::Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match role {
            Role::Agent => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Controller => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.not_before = days_from_now(-1)?;
        params.not_after = days_from_now(days)?;
        let key = KeyPair::generate().context("cannot generate a key")?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .context("cannot sign the certificate")?;
        ensure_private_dir(out)?;
        let files = TlsFiles::in_dir(out);
        // The key first: a watcher that sees the new certificate must find its key.
        write_private_file(&files.key, key.serialize_pem().as_bytes())?;
        write_public(&files.cert, &certificate.pem())?;
        write_public(&files.ca, &self.pem)?;
        Ok(files)
    }
}

/// Replaces `path` in one step, so a reader never sees half a file.
fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, contents)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "stratus");
    name.push(DnType::CommonName, common_name);
    name
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    use super::*;
    use crate::serving::{Limits, serve};

    const LOOPBACK: &[&str] = &["127.0.0.1"];

    fn hosts() -> Vec<String> {
        LOOPBACK.iter().map(|h| (*h).to_owned()).collect()
    }

    /// A CA with an agent and a controller certificate under `dir`.
    fn pki(dir: &Path, name: &str) -> (CertificateAuthority, TlsFiles, TlsFiles) {
        let ca = CertificateAuthority::open_or_create(&dir.join(name), name).unwrap();
        let agent = ca
            .issue(
                Role::Agent,
                "hv1",
                &hosts(),
                30,
                &dir.join(format!("{name}-agent")),
            )
            .unwrap();
        let controller = ca
            .issue(
                Role::Controller,
                "controller",
                &[],
                30,
                &dir.join(format!("{name}-controller")),
            )
            .unwrap();
        (ca, agent, controller)
    }

    async fn agent(
        files: TlsFiles,
        expiry: Gauge,
        every: Duration,
    ) -> (SocketAddr, watch::Sender<bool>) {
        let tls = watch_files("agent", files, server_config, expiry, every).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, router, Limits::AGENT, Some(tls), stopped));
        (address, stop)
    }

    async fn get(config: ClientConfig, address: SocketAddr) -> Result<String, String> {
        let client = stratus_controller::HttpAgentClient::https_client(config).unwrap();
        let response = client
            .get(format!("https://{address}/"))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        response.text().await.map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn an_agent_serves_only_clients_whose_certificate_its_ca_signed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, agent_files, controller_files) = pki(dir.path(), "ca");
        let (_, _, rogue_files) = pki(dir.path(), "rogue");
        let (address, _stop) = agent(agent_files.clone(), Gauge::default(), RELOAD_CHECK).await;

        let (good, _) = client_config(&controller_files).unwrap();
        assert_eq!(get(good, address).await.unwrap(), "ok");

        // A client certificate from another CA (trusting the right server).
        let rogue = TlsFiles {
            ca: controller_files.ca.clone(),
            ..rogue_files
        };
        let (rogue, _) = client_config(&rogue).unwrap();
        assert!(
            get(rogue, address).await.is_err(),
            "a foreign client certificate was accepted"
        );

        // No client certificate at all.
        let mut roots = RootCertStore::empty();
        roots
            .add(read_certificates(&controller_files.ca).unwrap().remove(0))
            .unwrap();
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert!(
            get(anonymous, address).await.is_err(),
            "a client without a certificate was served"
        );

        // Plain HTTP gets no HTTP answer.
        let mut plain = TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"),
            "plain HTTP was served"
        );
    }

    #[tokio::test]
    async fn the_controller_refuses_an_agent_its_ca_did_not_sign() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, controller_files) = pki(dir.path(), "ca");
        let (_, impostor_files, _) = pki(dir.path(), "impostor");
        // The impostor accepts the controller's certificate, but presents its own CA's.
        let impostor = TlsFiles {
            ca: controller_files.ca.clone(),
            ..impostor_files
        };
        let (address, _stop) = agent(impostor, Gauge::default(), RELOAD_CHECK).await;
        let (config, _) = client_config(&controller_files).unwrap();
        let error = get(config, address).await.unwrap_err();
        assert!(
            error.contains("UnknownIssuer") || error.contains("certificate"),
            "{error}"
        );
    }

    /// The expiry the server presents to a fresh handshake.
    async fn served_expiry(controller: &TlsFiles, address: SocketAddr) -> i64 {
        let (config, _) = client_config(controller).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, stream).await.unwrap();
        let certificate = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        not_after(&certificate).unwrap()
    }

    #[tokio::test]
    async fn a_rotated_certificate_is_served_without_restart_and_its_expiry_exported() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, agent_files, controller_files) = pki(dir.path(), "ca");
        let expiry = Gauge::default();
        let (address, _stop) = agent(
            agent_files.clone(),
            expiry.clone(),
            Duration::from_millis(50),
        )
        .await;
        let first = served_expiry(&controller_files, address).await;
        assert_eq!(expiry.get(), first);

        // A half-finished rotation (a certificate that is not PEM) keeps the old one.
        std::fs::write(&agent_files.cert, "not a certificate").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(served_expiry(&controller_files, address).await, first);
        assert_eq!(expiry.get(), first);

        let agent_dir = agent_files.cert.parent().unwrap();
        ca.issue(Role::Agent, "hv1", &hosts(), 200, agent_dir)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while expiry.get() == first {
            assert!(
                std::time::Instant::now() < deadline,
                "the new certificate was never loaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rotated = served_expiry(&controller_files, address).await;
        assert!(rotated > first + 100 * 86_400, "{rotated} vs {first}");
        assert_eq!(expiry.get(), rotated);
    }

    #[test]
    fn keys_are_private_and_a_ca_is_reopened_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (_, agent_files, _) = pki(dir.path(), "ca");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode(&agent_files.key), 0o600);
        assert_eq!(mode(&dir.path().join("ca/ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("ca")), 0o700);
        let before = std::fs::read(dir.path().join("ca/ca.crt")).unwrap();
        CertificateAuthority::open_or_create(&dir.path().join("ca"), "ca").unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca/ca.crt")).unwrap(), before);
        // A key others can read is refused.
        std::fs::set_permissions(&agent_files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = format!("{:#}", server_config(&agent_files).unwrap_err());
        assert!(error.contains("accessible to other users"), "{error}");
    }

    #[test]
    fn an_agent_certificate_needs_a_host_and_flags_come_together() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::open_or_create(&dir.path().join("ca"), "ca").unwrap();
        assert!(
            ca.issue(Role::Agent, "hv1", &[], 30, &dir.path().join("out"))
                .is_err()
        );
        let path = PathBuf::from("x");
        let error = TlsFiles::from_flags(Some(&path), None, None, ["a", "b", "c"]).unwrap_err();
        assert!(error.to_string().contains("--a, --b and --c"), "{error}");
    }
}
