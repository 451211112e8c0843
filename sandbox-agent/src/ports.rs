//! The sandbox's ports, reached through the agent: an HTTP reverse proxy
//! (`/ports/{port}/…`), a readiness wait (`/ports/{port}/wait`) and raw TCP
//! tunnels over a WebSocket (`/tunnel/{port}`).
//!
//! A sandbox's network namespace has only `lo`, so nothing outside can
//! connect to a server in it; the agent, inside, can. Everything here
//! connects to `127.0.0.1:{port}`, and to `[::1]:{port}` when that is
//! refused: servers that bind `localhost` often get only `::1`, and the
//! wait (which sees both tables) would otherwise say "listening" for a
//! server the proxy cannot reach.
//!
//! The proxy opens one upstream connection per request (loopback connects
//! cost microseconds, and a pool would have to learn which servers keep
//! connections alive) and streams both bodies frame by frame through hyper,
//! so an upload or download of any size costs a few buffers and the agent's
//! body limit does not apply. It drops hop-by-hop headers both ways and
//! sets `Host: localhost:{port}`, which is what development servers that
//! check the host expect. An upgrade request (WebSocket or any `Connection:
//! upgrade`) keeps its `Connection`/`Upgrade` headers; if the server
//! answers 101, that answer goes back as it is and, once both sides have
//! switched, the two connections are spliced byte for byte. The server's
//! refusal (any other answer) goes back as any answer does. Nothing
//! listening is a 502 `unavailable` naming the port.
//!
//! The wait reads `/proc/net/tcp` and `/proc/net/tcp6` (the agent's
//! namespace is the sandbox's) for a listening socket on the port, every
//! [`PORT_POLL_INTERVAL`]: a probe `connect` would be seen by the server
//! (and logged, or accepted as a client) — reading the tables is not.
//!
//! The tunnel connects first and only then accepts the WebSocket, so a
//! port with nothing on it is a plain 502 rather than a socket that closes
//! at once. Binary frames carry the bytes (text frames are taken as their
//! UTF-8 bytes too); the port's EOF sends a close frame, and the client's
//! close frame shuts the port's write side and ends the tunnel.

use crate::error::AgentError;
use crate::files::{fs_error, QueryParams};
use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, RawPathParams, Request};
use axum::http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::future::{self, Either};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sbx_api::{PortStatus, PortWaitQuery, DEFAULT_PORT_WAIT_MS};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::pin::pin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often `GET /ports/{port}/wait` looks at the socket tables.
pub const PORT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Largest chunk of TCP bytes put into one tunnel frame.
const TUNNEL_CHUNK: usize = 64 * 1024;

/// How long a tunnel whose port closed waits for the client's close frame
/// (and what the client still sends) before it ends.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `st` of a listening socket in `/proc/net/tcp*`.
const TCP_LISTEN: &str = "0A";

/// The proxy, wait and tunnel routes. Stateless, so any state fits.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/ports/{port}/", any(proxy))
        .route("/ports/{port}/{*path}", any(proxy))
        // Only `GET …/wait` is the wait; other methods reach the server.
        .route("/ports/{port}/wait", get(wait).fallback(proxy))
        .route("/tunnel/{port}", get(tunnel))
        // Proxied bodies are streamed, never held: the limit server.rs sets
        // for JSON bodies does not apply.
        .layer(DefaultBodyLimit::disable())
}

/// The `{port}` path parameter, 1 to 65535; anything else is a 400.
#[derive(Debug, Clone, Copy)]
struct PortParam(u16);

impl<S> FromRequestParts<S> for PortParam
where
    S: Send + Sync,
{
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                AgentError::InvalidRequest(format!("invalid path: {}", rejection.body_text()))
            })?;
        let text = params
            .iter()
            .find_map(|(name, value)| (name == "port").then_some(value))
            .unwrap_or_default();
        parse_port(text).map(PortParam)
    }
}

fn parse_port(text: &str) -> Result<u16, AgentError> {
    let port = text
        .bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .filter(|&port| port > 0);
    port.ok_or_else(|| {
        AgentError::InvalidRequest(format!("port {text:?} is not between 1 and 65535"))
    })
}

fn unreachable(port: u16, reason: impl Into<String>) -> AgentError {
    AgentError::PortUnreachable {
        port,
        reason: reason.into(),
    }
}

/// Connects to the port on loopback; see the module docs for `::1`.
async fn connect(port: u16) -> Result<TcpStream, AgentError> {
    let stream = match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
        Ok(stream) => stream,
        Err(v4) if v4.kind() == io::ErrorKind::ConnectionRefused => {
            TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .map_err(|_| {
                    unreachable(
                        port,
                        format!("nothing listens on it ({})", crate::fs_safe::describe(&v4)),
                    )
                })?
        }
        Err(err) => return Err(unreachable(port, crate::fs_safe::describe(&err))),
    };
    // Interactive traffic (terminals, WebSockets) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `/ports/{port}/rest?query` → `/rest?query`, from the raw (still
/// percent-encoded) request target.
fn upstream_target(uri: &Uri) -> String {
    let rest = uri
        .path()
        .strip_prefix("/ports/")
        .and_then(|after| after.find('/').map(|slash| &after[slash..]))
        .unwrap_or("/");
    match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    }
}

/// The `Upgrade` values of a request that asks for a protocol switch.
fn requested_upgrade(headers: &HeaderMap) -> Option<Vec<HeaderValue>> {
    let asks = connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"));
    let protocols: Vec<_> = headers.get_all(UPGRADE).iter().cloned().collect();
    (asks && !protocols.is_empty()).then_some(protocols)
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1):
/// those `Connection` names, the fixed list, and every `Proxy-*`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// `ANY /ports/{port}/…`: the request, streamed to the port's server, and
/// its answer, streamed back; see the module docs.
async fn proxy(PortParam(port): PortParam, mut request: Request) -> Result<Response, AgentError> {
    let target = upstream_target(request.uri());
    let upgrade = requested_upgrade(request.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // hyper answers `Expect: 100-continue` itself when the body is read.
    headers.remove(EXPECT);
    headers.insert(
        HOST,
        HeaderValue::from_str(&format!("localhost:{port}")).expect("ascii host"),
    );
    if let Some(protocols) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        for protocol in protocols {
            headers.append(UPGRADE, protocol);
        }
    }
    let mut upstream_request = axum::http::Request::builder()
        .method(parts.method)
        .uri(&target)
        .version(Version::HTTP_11)
        .body(body)
        .map_err(|err| AgentError::InvalidRequest(format!("cannot proxy {target}: {err}")))?;
    *upstream_request.headers_mut() = headers;

    let stream = connect(port).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| unreachable(port, err.to_string()))?;
    tokio::spawn(async move {
        // Errors here also fail the request or the response body.
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(port, %err, "proxy: upstream connection failed");
        }
    });
    let mut response = sender
        .send_request(upstream_request)
        .await
        .map_err(|err| unreachable(port, format!("it did not answer http: {err}")))?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(unreachable(port, "it switched protocols unasked"));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(splice(port, client_upgrade, upstream_upgrade));
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Copies bytes both ways between a client and a server that both switched
/// protocols, until both sides are done.
async fn splice(port: u16, client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(port, %err, "proxy: protocol switch failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(port, %err, "proxy: upgraded connection ended");
    }
}

/// `GET /ports/{port}/wait?timeout_ms=N`: 200 once something listens on the
/// port, 503 after the timeout.
async fn wait(
    PortParam(port): PortParam,
    QueryParams(query): QueryParams<PortWaitQuery>,
) -> Result<Json<PortStatus>, AgentError> {
    query.validate().map_err(AgentError::InvalidRequest)?;
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(DEFAULT_PORT_WAIT_MS));
    let start = Instant::now();
    loop {
        let listening = is_listening(port).await?;
        let waited = start.elapsed();
        let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        if listening {
            return Ok(Json(PortStatus {
                port,
                listening,
                waited_ms,
            }));
        }
        if waited >= timeout {
            return Err(AgentError::PortNotListening { port, waited_ms });
        }
        tokio::time::sleep(PORT_POLL_INTERVAL.min(timeout - waited)).await;
    }
}

/// Whether a socket listens on `port`, at any address, in the agent's
/// network namespace.
async fn is_listening(port: u16) -> Result<bool, AgentError> {
    let v4 = Path::new("/proc/net/tcp");
    let table = tokio::fs::read_to_string(v4)
        .await
        .map_err(|err| fs_error("read", v4, err))?;
    if has_listener(&table, port) {
        return Ok(true);
    }
    // Absent when the kernel has no IPv6.
    Ok(tokio::fs::read_to_string("/proc/net/tcp6")
        .await
        .is_ok_and(|table| has_listener(&table, port)))
}

/// Whether a `/proc/net/tcp`-style table has a listening socket on `port`:
/// `sl local_address rem_address st …`, addresses as `HEX:PORT`.
fn has_listener(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        let local_port = local
            .and_then(|address| address.rsplit_once(':'))
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        state == Some(TCP_LISTEN) && local_port == Some(port)
    })
}

/// `GET /tunnel/{port}`: a WebSocket carrying one TCP connection's bytes.
async fn tunnel(
    PortParam(port): PortParam,
    handshake: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AgentError> {
    let handshake = handshake.map_err(|rejection| {
        AgentError::InvalidRequest(format!(
            "/tunnel/{port} needs a WebSocket handshake: {}",
            rejection.body_text().to_lowercase()
        ))
    })?;
    let stream = connect(port).await?;
    Ok(handshake
        .on_failed_upgrade(move |err| tracing::debug!(port, %err, "tunnel: upgrade failed"))
        .on_upgrade(move |socket| relay(socket, stream))
        .into_response())
}

/// Relays between the WebSocket and the TCP connection; see the module
/// docs for how each side's end ends the other.
async fn relay(socket: WebSocket, stream: TcpStream) {
    let (mut to_client, mut from_client) = socket.split();
    let (mut from_port, mut to_port) = stream.into_split();
    {
        let client_to_port = pin!(async {
            while let Some(Ok(message)) = from_client.next().await {
                let bytes = match message {
                    // An empty frame is the client's EOF: a WebSocket has
                    // no half close of its own (a close frame is answered
                    // at once, which ends the connection both ways).
                    Message::Binary(bytes) if bytes.is_empty() => break,
                    Message::Binary(bytes) => bytes,
                    Message::Text(text) => Bytes::from(text),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if to_port.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = to_port.shutdown().await;
        });
        let port_to_client = pin!(async {
            let mut buffer = vec![0; TUNNEL_CHUNK];
            loop {
                match from_port.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        let frame = Message::Binary(Bytes::copy_from_slice(&buffer[..read]));
                        if to_client.send(frame).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = to_client.send(Message::Close(None)).await;
        });
        match future::select(client_to_port, port_to_client).await {
            // The client's EOF is a half close, as a TCP client's shutdown
            // is: the port has its EOF, and what it still says goes back
            // until it ends (an answer to a request sent whole). After a
            // close frame, nothing more can go back.
            Either::Left(((), port_to_client)) => port_to_client.await,
            // The port is done; the client may still be sending until its
            // close frame answers ours.
            Either::Right(((), client_to_port)) => {
                let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, client_to_port).await;
            }
        }
    }
    // Answers the client's close frame (or completes ours) before the
    // connection goes.
    let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, to_client.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_1_to_65535_in_digits() {
        assert_eq!(parse_port("8000").expect("valid"), 8000);
        assert_eq!(parse_port("65535").expect("valid"), 65535);
        for bad in ["0", "65536", "-1", "+80", "", "80a", " 80"] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn targets_keep_the_rest_of_the_path_and_the_query() {
        let target = |uri: &str| upstream_target(&uri.parse().expect("uri"));
        assert_eq!(target("/ports/8000/"), "/");
        assert_eq!(target("/ports/8000/a/b%20c?x=1&y"), "/a/b%20c?x=1&y");
        assert_eq!(target("/ports/8000/wait"), "/wait");
        assert_eq!(target("/ports/8000/?q"), "/?q");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-whatever", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
            ("content-length", "3"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn upgrades_need_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(requested_upgrade(&headers).is_none());
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            requested_upgrade(&headers).expect("upgrade"),
            [HeaderValue::from_static("websocket")]
        );
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        assert!(requested_upgrade(&headers).is_none());
    }

    #[test]
    fn listeners_are_found_in_both_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F41 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
        assert!(has_listener(tcp, 8000));
        assert!(
            !has_listener(tcp, 8001),
            "an established socket is not listening"
        );
        assert!(has_listener(tcp6, 3000));
        assert!(!has_listener(tcp6, 8000));
        assert!(!has_listener("", 8000));
    }
}
