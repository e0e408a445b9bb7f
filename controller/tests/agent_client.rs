//! The HTTP agent client against hostile agents on 127.0.0.1.

use stratus_controller::agent_client::MAX_AGENT_RESPONSE;
use stratus_controller::{AgentCallError, AgentClient, AgentEndpoint, HttpAgentClient};
use stratus_core::ids::HypervisorName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An "agent" that answers every request with a 200 head and then `body_len`
/// bytes of JSON whitespace, without announcing a length.
async fn endless_agent(body_len: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
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
    format!("http://{address}")
}

#[tokio::test]
async fn an_agent_answer_beyond_the_cap_is_refused_not_buffered() {
    let agent = AgentEndpoint {
        hypervisor: HypervisorName::parse("hv1").unwrap(),
        url: endless_agent(4 * MAX_AGENT_RESPONSE).await,
        token: "t".into(),
    };
    let client = HttpAgentClient::new().unwrap();
    match client.node(&agent).await {
        Err(AgentCallError::Unreachable(why)) => assert!(why.contains("larger than"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
