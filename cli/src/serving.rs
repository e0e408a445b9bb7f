//! The HTTP server of the API and the agent, bounded against slow and
//! greedy clients: a client must finish its request headers in time, a
//! request must finish in time (a content stream instead must keep moving:
//! it takes as long as its size needs), and only so many connections are
//! served at once (more wait in the kernel's accept backlog).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How much a server gives one client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A client that has not sent its whole request head by then is dropped.
    pub header_read: Duration,
    /// A request still running after this is answered 408 (content
    /// streams excepted).
    pub request: Duration,
    /// Connections served at once.
    pub connections: usize,
    /// The requests that carry a content stream (an upload or a download
    /// of a customer's data): never cut by `request`, only when no byte of
    /// their body arrives for `stream_idle`.
    pub streams: fn(&Method, &str) -> bool,
    pub stream_idle: Duration,
}

fn no_streams(_: &Method, _: &str) -> bool {
    false
}

/// `PUT`/`GET /v1/storage/{id}/content`.
fn api_streams(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (method == Method::PUT || method == Method::GET)
        && matches!(segments.as_slice(), ["v1", "storage", _, "content"])
}

/// `PUT`/`GET /v1/volumes/{name}/versions/{version}`.
fn agent_streams(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    (method == Method::PUT || method == Method::GET)
        && matches!(segments.as_slice(), ["v1", "volumes", _, "versions", _])
}

impl Limits {
    /// The customer API: short requests, many clients.
    pub const API: Self = Self {
        header_read: Duration::from_secs(10),
        request: Duration::from_secs(60),
        connections: 1024,
        streams: api_streams,
        stream_idle: Duration::from_secs(120),
    };
    /// The agent: one controller, but libvirt calls (creating a disk) can
    /// take a while on a real hypervisor.
    pub const AGENT: Self = Self {
        header_read: Duration::from_secs(10),
        request: Duration::from_secs(300),
        connections: 256,
        streams: agent_streams,
        stream_idle: Duration::from_secs(120),
    };
    /// Metrics and health endpoints.
    pub const METRICS: Self = Self {
        header_read: Duration::from_secs(10),
        request: Duration::from_secs(30),
        connections: 64,
        streams: no_streams,
        stream_idle: Duration::from_secs(30),
    };
}

/// Holds a request to its limits: a total time, or for a content stream a
/// request body that keeps moving.
async fn bounded(limits: Limits, request: Request, next: Next) -> Response {
    if (limits.streams)(request.method(), request.uri().path()) {
        let idle = limits.stream_idle;
        let request = request.map(|body| axum::body::Body::from_stream(idle_body(body, idle)));
        return next.run(request).await;
    }
    match tokio::time::timeout(limits.request, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// The data of `body`, failing when no byte comes for `idle`.
fn idle_body(
    body: axum::body::Body,
    idle: Duration,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send {
    use futures::StreamExt;
    futures::stream::unfold(Some(body.into_data_stream()), move |data| async move {
        let mut data = data?;
        match tokio::time::timeout(idle, data.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(data))),
            Ok(Some(Err(error))) => Some((Err(std::io::Error::other(error)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no byte of the body came for {} s", idle.as_secs()),
                )),
                None,
            )),
        }
    })
}

/// How long open connections get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The TLS configuration of a server, replaced when its files change.
pub type ServerTls = watch::Receiver<Arc<rustls::ServerConfig>>;

/// Serves `router` on `listener` within `limits` until `shutdown` turns
/// true; over TLS when `tls` is given (the handshake counts against the
/// header-read limit, and a client that does not complete it is dropped).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<ServerTls>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let router = router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| bounded(limits, request, next),
    ));
    let permits = Arc::new(Semaphore::new(limits.connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.context("connection limit closed")?,
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = WriteStall::new(stream, limits.stream_idle);
        // Handlers and the API's per-client limits see who connected.
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let (http, watcher) = (http.clone(), graceful.watcher());
        let acceptor = tls
            .as_ref()
            .map(|tls| tokio_rustls::TlsAcceptor::from(tls.borrow().clone()));
        tokio::spawn(async move {
            let outcome = match acceptor {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake refused");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?} were dropped");
    }
    Ok(())
}

/// A connection whose writes may not stall: a peer that takes no byte of
/// an answer for `limit` (it stopped reading a download, its window is
/// zero) is dropped, and with it the stream's slot and whatever produced
/// the body. Reads are not bounded here (request heads and bodies have
/// their own limits).
struct WriteStall<T> {
    inner: T,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    fn guard<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::future::Future;
        match poll {
            std::task::Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer took no byte for {} s", limit.as_secs()),
                    )));
                }
                std::task::Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, poll)
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    const TIGHT: Limits = Limits {
        header_read: Duration::from_millis(300),
        request: Duration::from_millis(300),
        connections: 1,
        streams: |_, path| path == "/upload",
        stream_idle: Duration::from_millis(400),
    };

    async fn start(limits: Limits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/download",
                axum::routing::get(|| async {
                    // 256 MiB, produced as it is taken; says when dropped.
                    struct Produced;
                    impl Drop for Produced {
                        fn drop(&mut self) {
                            DOWNLOAD_DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let produced = Produced;
                    let chunks = futures::stream::iter((0..256).map(move |_| {
                        let _held = &produced;
                        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 1 << 20]))
                    }));
                    axum::body::Body::from_stream(chunks)
                }),
            )
            .route(
                "/upload",
                axum::routing::put(|body: axum::body::Body| async move {
                    match axum::body::to_bytes(body, usize::MAX).await {
                        Ok(bytes) => format!("stored {}", bytes.len()).into_response(),
                        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
                    }
                }),
            );
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, None, stopped));
        (address, stop)
    }

    /// Reads what the server sends until it closes, or until `within` passes.
    async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut answer = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut answer))
            .await
            .ok()
            .map(|_| String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_dropped() {
        let (address, _stop) = start(TIGHT).await;
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(answer.is_some(), "the connection was still open after 5 s");
    }

    #[tokio::test]
    async fn a_request_that_runs_too_long_is_answered_408() {
        let (address, _stop) = start(TIGHT).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_until_closed(&mut client, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_one() {
        let limits = Limits {
            header_read: Duration::from_secs(30),
            ..TIGHT
        };
        let (address, _stop) = start(limits).await;
        let holder = TcpStream::connect(address).await.unwrap();
        let mut waiting = TcpStream::connect(address).await.unwrap();
        waiting
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(
            read_until_closed(&mut waiting, Duration::from_millis(300))
                .await
                .is_none(),
            "served beyond the connection limit"
        );
        drop(holder);
        let answer = read_until_closed(&mut waiting, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// Sends a chunked upload of `chunks` chunks of 1 KiB, `gap` apart,
    /// then waits for the answer.
    async fn upload(address: std::net::SocketAddr, chunks: usize, gap: Duration) -> String {
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(
                b"PUT /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        for _ in 0..chunks {
            tokio::time::sleep(gap).await;
            let mut chunk = b"400\r\n".to_vec();
            chunk.extend_from_slice(&[7u8; 1024]);
            chunk.extend_from_slice(b"\r\n");
            if client.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = client.write_all(b"0\r\n\r\n").await;
        read_until_closed(&mut client, Duration::from_secs(10))
            .await
            .unwrap_or_default()
    }

    /// Defect 3 of issue 25: a content stream takes as long as its size
    /// needs (here three times the request limit), as long as it moves.
    #[tokio::test]
    async fn a_content_stream_that_keeps_moving_is_never_cut() {
        let (address, _stop) = start(TIGHT).await;
        let answer = upload(address, 10, Duration::from_millis(100)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("stored 10240"), "{answer}");
    }

    /// A content stream that stops moving for the idle limit is cut.
    #[tokio::test]
    async fn a_content_stream_that_stalls_is_cut() {
        let (address, _stop) = start(TIGHT).await;
        let answer = upload(address, 2, Duration::from_millis(900)).await;
        assert!(!answer.contains("stored"), "{answer}");
    }

    static DOWNLOAD_DROPPED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// Defect 12 of issue 25: a client that stops reading a download (its
    /// window fills) does not hold its connection, and what produces the
    /// body, for ever: dropped once it took no byte for the idle limit.
    #[tokio::test]
    async fn a_client_that_stops_reading_a_download_is_dropped() {
        let (address, _stop) = start(TIGHT).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = client.read(&mut head).await.unwrap();
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        // Reads nothing more.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !DOWNLOAD_DROPPED.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the stalled download was still held after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(client);
    }
}
