//! Live calls on one sandbox: terminals, shell sessions, watches, ports
//! and previews. Like [`SandboxClient`]'s others, they serve the public API
//! and an agent reached on its socket alike, except previews (the
//! orchestrator's own).
//!
//! A terminal's and a tunnel's WebSocket ([`SandboxClient::attach_pty`],
//! [`SandboxClient::open_tunnel`]) is opened on the client's own transport:
//! the handshake is one more hyper request, with the same host and bearer
//! headers as every call, and a `101` hands its connection to
//! tokio-tungstenite. So it works over TCP and the agent's Unix socket
//! alike, and a refusal (401, 404, 502) is the API's [`ClientError::Api`]
//! with its error body, which tungstenite's own client handshake would keep
//! from us.

use super::stream::{ByteStream, EventStream, NdjsonStream};
use super::{read_body, ClientError, SandboxClient};
use crate::{
    CreatePreviewRequest, CreatePtyRequest, CreateSessionRequest, ExecResult, PortStatus,
    PortWaitQuery, Preview, PreviewList, Pty, PtyList, PtySize, Session, SessionExecRequest,
    SessionList, SignalRequest, WatchEvent, WatchQuery, NDJSON,
};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// An NDJSON stream of [`WatchEvent`]s.
pub type WatchEvents = NdjsonStream<WatchEvent>;

/// A WebSocket to a terminal or a tunnel (see the module docs).
pub type WebSocket = WebSocketStream<TokioIo<Upgraded>>;

const NO_BODY: Option<&()> = None;

impl SandboxClient<'_> {
    /// The full path of `route` on this sandbox (`/v1/sandboxes/{id}/pty/…`
    /// through the API, the route itself on an agent).
    pub fn route(&self, route: &str) -> String {
        self.url(route)
    }

    pub async fn create_pty(&self, request: &CreatePtyRequest) -> Result<Pty, ClientError> {
        self.json(Method::POST, "/pty", Some(request)).await
    }

    pub async fn terminals(&self) -> Result<Vec<Pty>, ClientError> {
        let list: PtyList = self.json(Method::GET, "/pty", NO_BODY).await?;
        Ok(list.terminals)
    }

    /// `GET pty/{tid}` as a WebSocket: the scrollback, then the live
    /// output, as binary frames; a [`crate::PtyControl`] exit as the last
    /// text frame. Binary frames sent are typed, text frames are
    /// [`crate::PtyControl`] resizes.
    pub async fn attach_pty(&self, tid: &str) -> Result<WebSocket, ClientError> {
        self.websocket(&format!("/pty/{tid}")).await
    }

    /// `GET tunnel/{port}` as a WebSocket: one TCP connection to
    /// `127.0.0.1:{port}` in the sandbox, its bytes in binary frames both
    /// ways. A close frame either way ends it. Nothing listening is a 502
    /// before the upgrade.
    pub async fn open_tunnel(&self, port: u16) -> Result<WebSocket, ClientError> {
        self.websocket(&format!("/tunnel/{port}")).await
    }

    /// Any route that upgrades to a WebSocket (a terminal, a tunnel, or a
    /// WebSocket server behind `ports/{port}/…`).
    pub async fn websocket(&self, route: &str) -> Result<WebSocket, ClientError> {
        let key = generate_key();
        let request = Request::builder()
            .method(Method::GET)
            .uri(self.url(route))
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, &key)
            .body(Full::new(Bytes::new()))
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build request for {route}: {err}"),
            })?;
        let mut response = self.client.send_request(request).await?;
        let endpoint = self.client.endpoint.to_string();
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            // An error status is the API's error; any other is no upgrade.
            let (_, body) = read_body(response, &endpoint).await?;
            return Err(ClientError::Unexpected {
                status: status.as_u16(),
                text: format!(
                    "{route} answered without upgrading to a WebSocket: {}",
                    String::from_utf8_lossy(&body)
                ),
            });
        }
        let accept = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
        if accept.map(|value| value.as_bytes())
            != Some(derive_accept_key(key.as_bytes()).as_bytes())
        {
            return Err(ClientError::Unexpected {
                status: status.as_u16(),
                text: format!("{route} answered 101 without accepting this WebSocket's key"),
            });
        }
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .map_err(|source| ClientError::Http { endpoint, source })?;
        Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
    }

    pub async fn resize_pty(&self, tid: &str, size: PtySize) -> Result<(), ClientError> {
        self.json(Method::POST, &format!("/pty/{tid}/resize"), Some(&size))
            .await
    }

    pub async fn kill_pty(&self, tid: &str) -> Result<(), ClientError> {
        self.json(Method::DELETE, &format!("/pty/{tid}"), NO_BODY)
            .await
    }

    pub async fn create_session(
        &self,
        request: &CreateSessionRequest,
    ) -> Result<Session, ClientError> {
        self.json(Method::POST, "/sessions", Some(request)).await
    }

    pub async fn sessions(&self) -> Result<Vec<Session>, ClientError> {
        let list: SessionList = self.json(Method::GET, "/sessions", NO_BODY).await?;
        Ok(list.sessions)
    }

    /// `POST sessions/{sid}/exec`, buffered.
    pub async fn session_exec(
        &self,
        sid: &str,
        request: &SessionExecRequest,
    ) -> Result<ExecResult, ClientError> {
        let request = SessionExecRequest {
            stream: false,
            ..request.clone()
        };
        let route = format!("/sessions/{sid}/exec");
        self.json(Method::POST, &route, Some(&request)).await
    }

    /// `POST sessions/{sid}/exec`, streamed.
    pub async fn session_exec_stream(
        &self,
        sid: &str,
        request: &SessionExecRequest,
    ) -> Result<EventStream, ClientError> {
        let request = SessionExecRequest {
            stream: true,
            ..request.clone()
        };
        let body = Bytes::from(serde_json::to_vec(&request)?);
        let route = format!("/sessions/{sid}/exec");
        let response = self
            .request(
                Method::POST,
                &route,
                Some("application/json"),
                Some(NDJSON),
                Full::new(body),
            )
            .await?;
        Ok(EventStream::new(self.streaming(response).await?))
    }

    pub async fn signal_session(&self, sid: &str, signal: &str) -> Result<(), ClientError> {
        let request = SignalRequest {
            signal: signal.to_owned(),
        };
        let route = format!("/sessions/{sid}/signal");
        self.json(Method::POST, &route, Some(&request)).await
    }

    pub async fn end_session(&self, sid: &str) -> Result<(), ClientError> {
        self.json(Method::DELETE, &format!("/sessions/{sid}"), NO_BODY)
            .await
    }

    /// `GET watch`: returns once every directory is watched.
    pub async fn watch(&self, query: &WatchQuery) -> Result<WatchEvents, ClientError> {
        let route = format!("/watch?{}", super::sandbox::query(query)?);
        let response = self
            .request(Method::GET, &route, None, None, Full::new(Bytes::new()))
            .await?;
        Ok(NdjsonStream::new(self.streaming(response).await?))
    }

    pub async fn wait_for_port(
        &self,
        port: u16,
        query: &PortWaitQuery,
    ) -> Result<PortStatus, ClientError> {
        let route = format!("/ports/{port}/wait?{}", super::sandbox::query(query)?);
        self.json(Method::GET, &route, NO_BODY).await
    }

    /// Any request to `port`'s `path` (with its query), answered as the
    /// server in the sandbox answers, whatever the status: the caller
    /// reads status, headers and body.
    pub async fn port_request(
        &self,
        port: u16,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        let route = format!("/ports/{port}/{path}");
        let mut request = http::Request::builder()
            .method(method)
            .uri(self.url(&route))
            .body(Full::new(body))
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build request for {route}: {err}"),
            })?;
        request.headers_mut().extend(headers);
        self.client.send_request(request).await
    }

    /// A port's answer body, streamed (see [`SandboxClient::port_request`]).
    pub fn port_body(&self, response: Response<Incoming>) -> ByteStream {
        ByteStream::new(response.into_body(), self.client.endpoint.to_string())
    }

    pub async fn create_preview(
        &self,
        request: &CreatePreviewRequest,
    ) -> Result<Preview, ClientError> {
        self.json(Method::POST, "/previews", Some(request)).await
    }

    pub async fn previews(&self) -> Result<Vec<Preview>, ClientError> {
        let list: PreviewList = self.json(Method::GET, "/previews", NO_BODY).await?;
        Ok(list.previews)
    }

    pub async fn revoke_preview(&self, preview_id: &str) -> Result<(), ClientError> {
        self.json(Method::DELETE, &format!("/previews/{preview_id}"), NO_BODY)
            .await
    }
}
