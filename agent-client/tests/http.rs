//! The HTTP agent client against hostile agents on 127.0.0.1.

use std::sync::Arc;
use stratus_agent_client::MAX_AGENT_RESPONSE;
use stratus_agent_client::{AgentCallError, AgentClient, AgentEndpoint, HttpAgentClient};

use rcgen::{CertificateParams, CertifiedKey, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use stratus_core::ids::HypervisorName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    hosts: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> CertifiedKey<KeyPair> {
    let mut params =
        CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let signing_key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&signing_key, issuer).unwrap();
    CertifiedKey { cert, signing_key }
}

fn der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(key.serialize_der()).unwrap()
}

/// The two ends of an agent link, from one throw-away CA: the agent's
/// server configuration and the controller's client.
fn link() -> (Arc<rustls::ServerConfig>, HttpAgentClient) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert.der().to_vec()))
        .unwrap();
    let roots = Arc::new(roots);

    let agent = leaf(&issuer, &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![agent.cert.der().clone()], der(&agent.signing_key))
        .unwrap();

    let controller = leaf(&issuer, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![controller.cert.der().clone()],
            der(&controller.signing_key),
        )
        .unwrap();
    let client = HttpAgentClient::fixed(HttpAgentClient::https_client(client).unwrap());
    (Arc::new(server), client)
}

/// An "agent" that answers every request with a 200 head and then `body_len`
/// bytes of JSON whitespace, without announcing a length.
async fn endless_agent(tls: Arc<rustls::ServerConfig>, body_len: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < body_len {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    format!("https://{address}")
}

#[tokio::test]
async fn an_agent_answer_beyond_the_cap_is_refused_not_buffered() {
    let (tls, client) = link();
    let agent = AgentEndpoint {
        hypervisor: HypervisorName::parse("hv1").unwrap(),
        url: endless_agent(tls, 4 * MAX_AGENT_RESPONSE).await,
        token: "t".into(),
    };
    match client.node(&agent).await {
        Err(AgentCallError::Unreachable(why)) => assert!(why.contains("larger than"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_url_in_clear_text_is_never_called() {
    let (_, client) = link();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = AgentEndpoint {
        hypervisor: HypervisorName::parse("hv1").unwrap(),
        url: format!("http://{}", listener.local_addr().unwrap()),
        token: "secret-agent-token".into(),
    };
    assert!(matches!(
        client.node(&agent).await,
        Err(AgentCallError::Unreachable(_))
    ));
    // Nothing connected: the token never left in clear.
    let accepted =
        tokio::time::timeout(std::time::Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the client connected over plain HTTP");
}

/// Counts the reads of a credential store holding `hypervisor/{name}` tokens.
#[derive(Default)]
struct CountedSecrets {
    values: std::sync::Mutex<std::collections::HashMap<String, String>>,
    reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl stratus_store::secrets::Secrets for CountedSecrets {
    async fn put(&self, name: &str, value: &str) -> stratus_store::error::Result<()> {
        self.values
            .lock()
            .unwrap()
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    async fn get(&self, name: &str) -> stratus_store::error::Result<Option<String>> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.values.lock().unwrap().get(name).cloned())
    }
}

#[tokio::test]
async fn agent_tokens_are_read_once_and_again_when_forgotten_or_renamed() {
    use std::sync::atomic::Ordering;
    use stratus_agent_client::AgentDirectory;
    use stratus_store::secrets::Secrets;

    let scratch = stratus_store::testing::sqlite().await;
    let store: Arc<dyn stratus_store::ObjectStore> = Arc::new(stratus_store::SqlObjectStore::new(
        scratch.db.clone(),
        stratus_store::testing::clock(),
    ));
    let hypervisors = stratus_store::Resources::new(store);
    let secrets = Arc::new(CountedSecrets::default());
    let directory = AgentDirectory::new(hypervisors.clone(), secrets.clone());
    let hv1 = HypervisorName::parse("hv1").unwrap();
    hypervisors
        .create(&stratus_core::testing::hypervisor("hv1").build())
        .await
        .unwrap();
    secrets.put(&hv1.credential_name(), "first").await.unwrap();

    for _ in 0..50 {
        let endpoint = directory.by_name(&hv1).await.unwrap();
        assert_eq!(endpoint.token, "first");
    }
    assert_eq!(
        secrets.reads.load(Ordering::SeqCst),
        1,
        "one read for 50 resolutions"
    );

    // Rotated: the agent refuses the old token, the reconciler forgets it.
    secrets.put(&hv1.credential_name(), "second").await.unwrap();
    directory.forget_token(&hv1);
    assert_eq!(directory.by_name(&hv1).await.unwrap().token, "second");
    assert_eq!(secrets.reads.load(Ordering::SeqCst), 2);

    // Pointed at another credential: never the token cached for the old one.
    let point_at = |credential: &'static str| {
        let hypervisors = hypervisors.clone();
        async move {
            hypervisors
                .update(None, "hv1", |h| {
                    h.spec.credential = credential.into();
                    true
                })
                .await
                .unwrap();
        }
    };
    secrets.put("hypervisor/hv1-new", "third").await.unwrap();
    point_at("hypervisor/hv1-new").await;
    assert_eq!(directory.by_name(&hv1).await.unwrap().token, "third");

    // A missing credential is an error, and nothing is cached for it.
    point_at("hypervisor/gone").await;
    assert!(directory.by_name(&hv1).await.is_err());
    assert!(directory.by_name(&hv1).await.is_err());
    assert_eq!(secrets.reads.load(Ordering::SeqCst), 5);
}

/// A listener that counts the connections made to it.
async fn counting_listener() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (format!("https://{address}"), connections)
}

#[tokio::test]
async fn a_replica_that_no_longer_leads_reaches_no_agent() {
    use std::sync::atomic::Ordering;
    let (_, client) = link();
    let (leading_tx, leading) = tokio::sync::watch::channel(true);
    let client = client.fenced(leading);
    let (url, connections) = counting_listener().await;
    let agent = AgentEndpoint {
        hypervisor: HypervisorName::parse("hv1").unwrap(),
        url,
        token: "t".into(),
    };

    // While leading, calls go out (this listener answers nothing useful).
    assert!(client.node(&agent).await.is_err());
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    leading_tx.send(false).unwrap();
    let spec_free_calls = [
        client.node(&agent).await.map(drop),
        client.observe(&agent, "stratus-a").await.map(drop),
        client.destroy(&agent, "stratus-a").await.map(drop),
        client.destroy_volume(&agent, "stratus-v").await.map(drop),
        client
            .delete_version(&agent, "stratus-v", 1)
            .await
            .map(drop),
        client
            .checksum_version(&agent, "stratus-v", 1, 1)
            .await
            .map(drop),
        client
            .copy_version(&agent, "stratus-v", 1, 2, false)
            .await
            .map(drop),
        client
            .read_version(&agent, "stratus-v", 1, 1)
            .await
            .map(drop),
    ];
    for answer in spec_free_calls {
        match answer {
            Err(AgentCallError::Unreachable(why)) => {
                assert!(why.contains("no longer leads"), "{why}");
            }
            other => panic!("a deposed replica's call went through: {other:?}"),
        }
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "a deposed replica connected to an agent"
    );
}
