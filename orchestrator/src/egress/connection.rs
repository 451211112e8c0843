//! One proxied connection, from its first byte to its close.
//!
//! Read the head (bounded in size and time), decide with the sandbox's
//! allowlist as it is now, report the decision, resolve (refusing internal
//! addresses), connect (bounded in time), then either answer `200` to a
//! `CONNECT` or send the rewritten head, and relay bytes both ways until
//! one side closes, nothing moves for the idle timeout, or a policy change
//! takes the target out of the allowlist.
//!
//! Refusals are plain-text HTTP answers with `Connection: close`, so that
//! `curl`, `pip` or `git` show the reason to whoever reads their output.

use super::observer::EgressEvent;
use super::request::{self, ProxyRequest, RequestError, RequestKind};
use super::resolve::ResolveError;
use super::{Allowlist, SandboxEgress, Shared};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Serves one client connection of `sandbox`. Errors end up as an answer
/// to the client when one is still possible, and in the log.
pub(super) async fn serve<S>(mut client: S, sandbox: &SandboxEgress, shared: &Shared)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &shared.limits;
    let (request, buffered) =
        match tokio::time::timeout(limits.head_timeout, read_head(&mut client)).await {
            Err(_) => return, // Said nothing in time: nothing to answer.
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Io(err))) => {
                tracing::debug!(sandbox = %sandbox.id, %err, "egress client read failed");
                return;
            }
            Ok(Err(HeadError::Request(err))) => {
                let status = match err {
                    RequestError::TooLarge => Status::HeaderTooLarge,
                    RequestError::Malformed(_) => Status::BadRequest,
                };
                return refuse(&mut client, status, &format!("sbx egress proxy: {err}")).await;
            }
            Ok(Ok(head)) => head,
        };
    let ProxyRequest {
        method,
        host,
        port,
        kind,
        head_len,
    } = request;
    let event = |allowed: bool, reason: String| EgressEvent {
        sandbox_id: sandbox.id.clone(),
        host: host.clone(),
        port,
        method: method.clone(),
        allowed,
        reason,
    };

    let mut policy = sandbox.watch_allowlist();
    let allowlist = Arc::clone(&policy.borrow_and_update());
    let rule = match allowlist.matching(&host, port) {
        Some(rule) => rule,
        None => {
            shared
                .observer
                .observe(event(false, "not in the egress allowlist".into()));
            let message = format!(
                "sbx egress proxy: {host} (port {port}) is not in this sandbox's egress allowlist"
            );
            return refuse(&mut client, Status::Forbidden, &message).await;
        }
    };
    let resolved =
        tokio::time::timeout(limits.connect_timeout, shared.resolver.resolve(&host, port)).await;
    let addrs = match resolved {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(err @ ResolveError::Forbidden { .. })) => {
            shared.observer.observe(event(false, err.to_string()));
            return refuse(
                &mut client,
                Status::Forbidden,
                &format!("sbx egress proxy: {err}"),
            )
            .await;
        }
        Ok(Err(err @ ResolveError::NotFound { .. })) => {
            shared
                .observer
                .observe(event(true, format!("matches {rule}")));
            return refuse(
                &mut client,
                Status::BadGateway,
                &format!("sbx egress proxy: {err}"),
            )
            .await;
        }
        Err(_) => {
            shared
                .observer
                .observe(event(true, format!("matches {rule}")));
            let message = format!("sbx egress proxy: resolving {host} timed out");
            return refuse(&mut client, Status::GatewayTimeout, &message).await;
        }
    };
    shared
        .observer
        .observe(event(true, format!("matches {rule}")));

    let mut upstream = match connect(&addrs, limits.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
            let status = if err.kind() == io::ErrorKind::TimedOut {
                Status::GatewayTimeout
            } else {
                Status::BadGateway
            };
            let message = format!("sbx egress proxy: cannot connect to {host}:{port}: {err}");
            return refuse(&mut client, status, &message).await;
        }
    };
    let payload = &buffered[head_len..];
    let started = match &kind {
        RequestKind::Tunnel => {
            let answered = client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            match answered {
                Ok(()) => upstream.write_all(payload).await,
                Err(err) => Err(err),
            }
        }
        RequestKind::Forward { head } => {
            let mut first = Vec::with_capacity(head.len() + payload.len());
            first.extend_from_slice(head);
            first.extend_from_slice(payload);
            upstream.write_all(&first).await
        }
    };
    if let Err(err) = started {
        tracing::debug!(sandbox = %sandbox.id, %host, port, %err, "egress connection failed to start");
        return;
    }
    tokio::select! {
        relayed = relay(&mut client, &mut upstream, limits.idle_timeout) => match relayed {
            Ok((sent, received)) => {
                tracing::debug!(sandbox = %sandbox.id, %host, port, sent, received, "egress connection closed");
            }
            Err(err) => {
                tracing::debug!(sandbox = %sandbox.id, %host, port, %err, "egress connection ended");
            }
        },
        () = disallowed(&mut policy, &host, port) => {
            shared.observer.observe(event(
                false,
                "no longer in the egress allowlist: connection closed".into(),
            ));
        }
    }
}

/// Resolves once the sandbox's allowlist stops allowing `host:port`.
async fn disallowed(policy: &mut watch::Receiver<Arc<Allowlist>>, host: &str, port: u16) {
    loop {
        if policy.changed().await.is_err() {
            // The sandbox's proxy state is gone, and its policy with it:
            // nothing can change any more.
            return std::future::pending().await;
        }
        if policy.borrow_and_update().matching(host, port).is_none() {
            return;
        }
    }
}

enum HeadError {
    /// The client closed before sending a whole head.
    Closed,
    Io(io::Error),
    Request(RequestError),
}

/// Reads until a whole head is buffered; returns it parsed and the buffer,
/// which may hold payload bytes beyond the head.
async fn read_head<S: AsyncRead + Unpin>(
    client: &mut S,
) -> Result<(ProxyRequest, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // `parse` gives up once the buffer reaches MAX_HEAD_BYTES without a
    // whole head, so the buffer stays below MAX_HEAD_BYTES + one chunk.
    loop {
        let read = client.read(&mut chunk).await.map_err(HeadError::Io)?;
        if read == 0 {
            return Err(HeadError::Closed);
        }
        buffer.extend_from_slice(&chunk[..read]);
        match request::parse(&buffer) {
            Ok(Some(request)) => return Ok((request, buffer)),
            Ok(None) => {}
            Err(err) => return Err(HeadError::Request(err)),
        }
    }
}

/// Tries `addrs` in order within one overall `limit`.
async fn connect(addrs: &[SocketAddr], limit: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(err) => last = err,
            }
        }
        Err(last)
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        })
}

#[derive(Debug, Clone, Copy)]
enum Status {
    BadRequest,
    Forbidden,
    HeaderTooLarge,
    BadGateway,
    GatewayTimeout,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::Forbidden => "403 Forbidden",
            Status::HeaderTooLarge => "431 Request Header Fields Too Large",
            Status::BadGateway => "502 Bad Gateway",
            Status::GatewayTimeout => "504 Gateway Timeout",
        }
    }
}

/// A plain-text answer (`message` and a newline), then close.
async fn refuse<S: AsyncWrite + Unpin>(client: &mut S, status: Status, message: &str) {
    let answer = format!(
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}\n",
        status.line(),
        message.len() + 1,
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Copies both ways until both directions are done; fails when no byte
/// moves either way for `idle`. Returns bytes sent upstream and received.
pub(super) async fn relay<A, B>(
    client: &mut A,
    upstream: &mut B,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Tracked::new(client, &activity, epoch);
    let mut upstream = Tracked::new(upstream, &activity, epoch);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => copied,
        () = idle_expired(&activity, epoch, idle) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("idle for {idle:?}"),
        )),
    }
}

/// Resolves once `idle` has passed since the last activity.
async fn idle_expired(activity: &AtomicU64, epoch: Instant, idle: Duration) {
    loop {
        let last = epoch + Duration::from_millis(activity.load(Ordering::Relaxed));
        if Instant::now() >= last + idle {
            return;
        }
        tokio::time::sleep_until(last + idle).await;
    }
}

/// A stream that stamps `activity` (milliseconds since `epoch`) whenever a
/// read returns data: every write of the relay follows a read, so reads
/// alone tell whether anything moves.
struct Tracked<'a, S> {
    inner: &'a mut S,
    activity: Arc<AtomicU64>,
    epoch: Instant,
}

impl<'a, S> Tracked<'a, S> {
    fn new(inner: &'a mut S, activity: &Arc<AtomicU64>, epoch: Instant) -> Self {
        Self {
            inner,
            activity: Arc::clone(activity),
            epoch,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.activity.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::observer::EgressObserver;
    use crate::egress::request::MAX_HEAD_BYTES;
    use crate::egress::resolve::Resolver;
    use crate::egress::{Allowlist, Limits};
    use sbx_api::NetworkPolicy;
    use std::sync::Mutex;
    use tokio::io::duplex;
    use tokio::net::TcpListener;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<EgressEvent>>);

    impl EgressObserver for Recorder {
        fn observe(&self, event: EgressEvent) {
            self.0.lock().expect("lock").push(event);
        }
    }

    /// An origin on loopback that answers every connection with what it
    /// received, then closes.
    async fn echo_origin() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut seen = vec![0u8; 4096];
                    let read = stream.read(&mut seen).await.unwrap_or(0);
                    let body = &seen[..read];
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body).await;
                });
            }
        });
        addr
    }

    fn setup(egress: &[&str], limits: Limits) -> (SandboxEgress, Shared, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let policy = NetworkPolicy {
            egress: egress.iter().map(|entry| (*entry).to_owned()).collect(),
        };
        let sandbox = SandboxEgress::new("sbx1".into(), Allowlist::new(&policy).expect("valid"));
        let shared = Shared {
            resolver: Resolver::with_overrides([
                ("allowed.test".to_owned(), "127.0.0.1".parse().expect("ip")),
                ("denied.test".to_owned(), "127.0.0.1".parse().expect("ip")),
            ]),
            observer: recorder.clone(),
            limits,
        };
        (sandbox, shared, recorder)
    }

    /// Sends `request` through a proxy connection and returns all it got.
    async fn exchange(sandbox: &SandboxEgress, shared: &Shared, request: &[u8]) -> String {
        let (mut client, server) = duplex(64 * 1024);
        client.write_all(request).await.expect("write");
        // The client end closes once the answer is read, as curl's would.
        let ((), answer) = tokio::join!(serve(server, sandbox, shared), async move {
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("read");
            answer
        });
        String::from_utf8(answer).expect("utf-8")
    }

    #[tokio::test]
    async fn forwards_allowed_requests_in_origin_form() {
        let origin = echo_origin().await;
        let (sandbox, shared, recorder) = setup(&["allowed.test"], Limits::default());
        let port = origin.port();
        let request = format!(
            "GET http://allowed.test:{port}/x HTTP/1.1\r\nHost: allowed.test:{port}\r\nProxy-Connection: keep-alive\r\n\r\n"
        );
        let answer = exchange(&sandbox, &shared, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains(&format!(
                "GET /x HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"
            )),
            "{answer}"
        );
        assert!(!answer.contains("Proxy-Connection"), "{answer}");
        let events = recorder.0.lock().expect("lock");
        assert_eq!(events.len(), 1);
        assert!(events[0].allowed);
        assert_eq!(events[0].method, "GET");
        assert_eq!(events[0].reason, "matches allowed.test");
    }

    #[tokio::test]
    async fn tunnels_allowed_connects_and_passes_early_payload() {
        let origin = echo_origin().await;
        let (sandbox, shared, _) = setup(&["allowed.test"], Limits::default());
        let request = format!(
            "CONNECT allowed.test:{} HTTP/1.1\r\n\r\nhello",
            origin.port()
        );
        let answer = exchange(&sandbox, &shared, request.as_bytes()).await;
        assert_eq!(
            answer,
            "HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        );
    }

    #[tokio::test]
    async fn denies_what_the_allowlist_lacks_with_a_reason() {
        let (sandbox, shared, recorder) = setup(&["allowed.test:1"], Limits::default());
        for request in [
            "CONNECT denied.test:443 HTTP/1.1\r\n\r\n",
            "GET http://denied.test/ HTTP/1.1\r\n\r\n",
            "CONNECT allowed.test:2 HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(&sandbox, &shared, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
            assert!(
                answer.contains("is not in this sandbox's egress allowlist\n"),
                "{answer}"
            );
        }
        let events = recorder.0.lock().expect("lock");
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|event| !event.allowed));
        assert_eq!(
            (
                events[0].host.as_str(),
                events[0].port,
                events[0].method.as_str()
            ),
            ("denied.test", 443, "CONNECT")
        );
    }

    #[tokio::test]
    async fn refuses_loopback_names_even_when_allowed() {
        let (sandbox, shared, recorder) = setup(&["localhost", "127.0.0.1"], Limits::default());
        for request in [
            "CONNECT localhost:9 HTTP/1.1\r\n\r\n",
            "GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n",
        ] {
            let answer = exchange(&sandbox, &shared, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
            assert!(answer.contains("a loopback address"), "{answer}");
        }
        assert!(recorder
            .0
            .lock()
            .expect("lock")
            .iter()
            .all(|event| !event.allowed));
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_get_4xx() {
        let (sandbox, shared, _) = setup(&[], Limits::default());
        let answer = exchange(&sandbox, &shared, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        let huge = format!(
            "GET http://x/ HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let answer = exchange(&sandbox, &shared, huge.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_policy_change_cuts_the_tunnels_it_no_longer_allows() {
        // An origin that echoes for as long as the connection lasts.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let (mut from, mut to) = stream.split();
            let _ = tokio::io::copy(&mut from, &mut to).await;
        });
        let (sandbox, shared, recorder) = setup(&["allowed.test", "other.test"], Limits::default());
        let (mut client, server) = duplex(64 * 1024);
        let request = format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n");
        client.write_all(request.as_bytes()).await.expect("write");
        let changing = async {
            let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
            let mut answer = vec![0; established.len()];
            client
                .read_exact(&mut answer)
                .await
                .expect("the tunnel opens");
            assert_eq!(&answer[..], established);
            let only_allowed = NetworkPolicy {
                egress: vec!["allowed.test".into()],
            };
            sandbox.set_allowlist(Allowlist::new(&only_allowed).expect("valid"));
            client.write_all(b"ping").await.expect("write");
            let mut echoed = [0; 4];
            client.read_exact(&mut echoed).await.expect("still open");
            assert_eq!(&echoed, b"ping", "a change that still allows it keeps it");
            sandbox.set_allowlist(Allowlist::default());
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("read");
            rest
        };
        let ((), rest) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(serve(server, &sandbox, &shared), changing)
        })
        .await
        .expect("taking the host out of the allowlist closes its tunnel");
        assert!(rest.is_empty(), "{rest:?}");
        let events = recorder.0.lock().expect("lock");
        let last = events.last().expect("events");
        assert!(!last.allowed);
        assert_eq!(
            last.reason,
            "no longer in the egress allowlist: connection closed"
        );
    }

    #[tokio::test]
    async fn silent_clients_and_idle_tunnels_are_cut() {
        let limits = Limits {
            head_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let (sandbox, shared, _) = setup(&["allowed.test"], limits);
        // A client that never finishes its head.
        let answer = exchange(&sandbox, &shared, b"CONNECT allowed.test:1 HTT").await;
        assert_eq!(answer, "");

        // An origin that accepts and then says nothing.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held = tokio::spawn(async move { listener.accept().await.map(|(stream, _)| stream) });
        let request = format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(&sandbox, &shared, request.as_bytes()),
        )
        .await
        .expect("the idle timeout ends the tunnel");
        assert_eq!(answer, "HTTP/1.1 200 Connection established\r\n\r\n");
        drop(held);
    }
}
