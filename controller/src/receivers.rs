//! Local receivers of notifications, for the tests of every crate: an SMTP
//! sink and a webhook receiver, listening on 127.0.0.1 only, that record
//! what reached them and can be told to refuse the next few deliveries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line, header block or body a receiver reads: a test's
/// messages are small, and a runaway sender must not eat the memory.
const MAX_BYTES: usize = 1 << 20;

struct Shared<T> {
    received: Mutex<Vec<T>>,
    refuse: Mutex<usize>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self {
            received: Mutex::default(),
            refuse: Mutex::default(),
        }
    }
}

impl<T: Clone> Shared<T> {
    fn refuses(&self) -> bool {
        let mut refuse = self.refuse.lock().unwrap_or_else(PoisonError::into_inner);
        let refusing = *refuse > 0;
        *refuse = refuse.saturating_sub(1);
        refusing
    }

    fn push(&self, item: T) {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(item);
    }

    fn all(&self) -> Vec<T> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Serves `session` on each connection to a new port of 127.0.0.1.
async fn listen<T, S, Fut>(
    what: &'static str,
    session: S,
) -> std::io::Result<(SocketAddr, Arc<Shared<T>>)>
where
    T: Send + 'static,
    S: Fn(TcpStream, Arc<Shared<T>>) -> Fut + Send + Copy + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let shared: Arc<Shared<T>> = Arc::default();
    let serving = shared.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let session = session(stream, serving.clone());
            tokio::spawn(async move {
                if let Err(error) = session.await {
                    tracing::debug!(%error, "{what} session ended");
                }
            });
        }
    });
    Ok((address, shared))
}

/// An e-mail the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent (dot-stuffing undone).
    pub data: String,
}

impl ReceivedMail {
    /// The value of header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(current) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    current.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((key, rest)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                value = Some(rest.trim().to_owned());
            }
        }
        value
    }
}

/// An SMTP server that accepts every message (plain SMTP: the sender must
/// be configured with `tls: none`).
#[derive(Clone)]
pub struct SmtpSink {
    address: SocketAddr,
    shared: Arc<Shared<ReceivedMail>>,
}

impl SmtpSink {
    pub async fn start() -> std::io::Result<Self> {
        let (address, shared) = listen("SMTP sink", smtp_session).await?;
        Ok(Self { address, shared })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.all()
    }

    /// Answers the next `count` messages with a temporary failure (451).
    pub fn refuse_next(&self, count: usize) {
        *self
            .shared
            .refuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = count;
    }
}

async fn read_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    ))
}

async fn smtp_session(stream: TcpStream, shared: Arc<Shared<ReceivedMail>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    while let Some(line) = read_line(&mut reader).await? {
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let argument = |line: &str| {
            line.split_once(':')
                .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_owned())
                .unwrap_or_default()
        };
        let answer: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink.test\r\n250 8BITMIME\r\n",
            "HELO" | "NOOP" => b"250 OK\r\n",
            "RSET" => {
                from.clear();
                to.clear();
                b"250 OK\r\n"
            }
            "MAIL" => {
                from = argument(&line);
                b"250 OK\r\n"
            }
            "RCPT" => {
                to.push(argument(&line));
                b"250 OK\r\n"
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                loop {
                    let Some(line) = read_line(&mut reader).await? else {
                        return Ok(());
                    };
                    if line == "." {
                        break;
                    }
                    if data.len() + line.len() > MAX_BYTES {
                        return Ok(());
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push_str("\r\n");
                }
                if shared.refuses() {
                    b"451 try again later\r\n"
                } else {
                    shared.push(ReceivedMail {
                        from: std::mem::take(&mut from),
                        to: std::mem::take(&mut to),
                        data,
                    });
                    b"250 accepted\r\n"
                }
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 not implemented\r\n",
        };
        write.write_all(answer).await?;
    }
    Ok(())
}

/// A request the webhook receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedCall {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Whether it was answered 200 (or refused with 503).
    pub accepted: bool,
}

/// An HTTP/1.1 server answering every POST with 200, or 503 while told
/// to refuse.
#[derive(Clone)]
pub struct WebhookReceiver {
    address: SocketAddr,
    shared: Arc<Shared<ReceivedCall>>,
}

impl WebhookReceiver {
    pub async fn start() -> std::io::Result<Self> {
        let (address, shared) = listen("webhook receiver", http_session).await?;
        Ok(Self { address, shared })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Every request, accepted or refused.
    pub fn calls(&self) -> Vec<ReceivedCall> {
        self.shared.all()
    }

    /// The bodies of the accepted requests, as JSON.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.accepted)
            .filter_map(|c| serde_json::from_slice(&c.body).ok())
            .collect()
    }

    /// Answers the next `count` requests 503.
    pub fn refuse_next(&self, count: usize) {
        *self
            .shared
            .refuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = count;
    }
}

async fn http_session(stream: TcpStream, shared: Arc<Shared<ReceivedCall>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(request_line) = read_line(&mut reader).await? else {
            return Ok(());
        };
        let path = request_line
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let Some(line) = read_line(&mut reader).await? else {
                return Ok(());
            };
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        if length > MAX_BYTES {
            return Ok(());
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let accepted = !shared.refuses();
        shared.push(ReceivedCall {
            path,
            headers,
            body,
            accepted,
        });
        let answer: &[u8] = if accepted {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        } else {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
        };
        write.write_all(answer).await?;
    }
}
