//! An async client for the sbx HTTP API and for the agent protocol.
//!
//! Both hops are plain HTTP/1.1, so one small hyper-based transport serves
//! the CLI and tests (TCP to `sbx serve`, with a bearer token) and the
//! orchestrator's bridge (the agent's Unix socket, no token). Each request
//! opens its own connection: on loopback and Unix sockets that costs tens of
//! microseconds, and it keeps the client free of pool state.

mod images;
mod lifecycle;
mod live;
mod policy;
mod sandbox;
mod stream;

pub use live::{WatchEvents, WebSocket};
pub use sandbox::SandboxClient;
pub use stream::{BuildEvents, ByteStream, EventStream, LifecycleEvents, NdjsonStream, PullEvents};

use crate::{CreateSandboxRequest, NetworkPolicy, UpdateSandboxRequest};
use crate::{ErrorBody, ExecRequest, ExecResult, Sandbox, SandboxList};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// Everything that can go wrong between a call and its decoded answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url {0:?}: only http://host:port is supported")]
    InvalidUrl(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("http exchange with {endpoint} failed: {source}")]
    Http {
        endpoint: String,
        source: hyper::Error,
    },
    /// The server answered with its error body.
    #[error("{body} (http {status})")]
    Api { status: u16, body: ErrorBody },
    #[error("unexpected response (http {status}): {text}")]
    Unexpected { status: u16, text: String },
    #[error("invalid json in response: {0}")]
    Decode(#[from] serde_json::Error),
}

impl ClientError {
    /// The API's error body, when the server sent one.
    pub fn api_error(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A byte stream to an agent, both ways.
pub trait AgentStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AgentStream for T {}

/// A connection being dialed.
pub type Dialing<'a> =
    Pin<Box<dyn Future<Output = std::io::Result<Box<dyn AgentStream>>> + Send + 'a>>;

/// Opens connections to an agent that is not on a local socket: a pod's
/// agent, through the cluster API server's port-forward.
pub trait AgentDialer: Send + Sync + std::fmt::Debug {
    /// A new connection to the agent.
    fn dial(&self) -> Dialing<'_>;

    /// What the connection reaches, for errors.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone)]
enum Endpoint {
    Tcp { authority: String },
    Unix(PathBuf),
    Dialed(Arc<dyn AgentDialer>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { authority } => write!(f, "http://{authority}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Dialed(dialer) => f.write_str(&dialer.describe()),
        }
    }
}

/// A client of `sbx serve` (see [`Client::new`]) or of one sandbox agent
/// (see [`Client::unix`], [`Client::dialed`]).
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    /// Sent as [`crate::AGENT_KEY_HEADER`] to an agent that needs it.
    agent_key: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the public API at `url` (`http://127.0.0.1:7070`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(invalid());
        }
        Ok(Self {
            endpoint: Endpoint::Tcp {
                authority: authority.to_owned(),
            },
            token,
            agent_key: None,
        })
    }

    /// A client of an agent listening on the Unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(path.into()),
            token: None,
            agent_key: None,
        }
    }

    /// A client of an agent `dialer` reaches, which serves only requests
    /// that carry `key`.
    pub fn dialed(dialer: Arc<dyn AgentDialer>, key: String) -> Self {
        Self {
            endpoint: Endpoint::Dialed(dialer),
            token: None,
            agent_key: Some(key),
        }
    }

    /// Sends one request and returns the response with its body unread, so
    /// callers can stream it. `path` includes any query string.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build request for {path}: {err}"),
            })?;
        self.send_request(request).await
    }

    /// Sends a request whose body may be a stream (an upload), adding the
    /// host and authorization headers. The response body is left unread.
    pub async fn send_request<B>(
        &self,
        mut request: Request<B>,
    ) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let host = match &self.endpoint {
            Endpoint::Tcp { authority } => authority.as_str(),
            Endpoint::Unix(_) | Endpoint::Dialed(_) => "sandbox-agent",
        };
        let headers = request.headers_mut();
        let invalid = |what: &str| ClientError::Unexpected {
            status: 0,
            text: format!("invalid {what} header value"),
        };
        headers.insert(
            header::HOST,
            header::HeaderValue::from_str(host).map_err(|_| invalid("host"))?,
        );
        if let Some(token) = &self.token {
            headers.insert(
                header::AUTHORIZATION,
                header::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| invalid("authorization"))?,
            );
        }
        if let Some(key) = &self.agent_key {
            headers.insert(
                crate::AGENT_KEY_HEADER,
                header::HeaderValue::from_str(key).map_err(|_| invalid("agent key"))?,
            );
        }
        let http_error = |source| ClientError::Http {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let connect_error = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let mut sender = match &self.endpoint {
            Endpoint::Tcp { authority } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_error)?;
                stream.set_nodelay(true).map_err(connect_error)?;
                handshake(TokioIo::new(stream)).await.map_err(http_error)?
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_error)?;
                handshake(TokioIo::new(stream)).await.map_err(http_error)?
            }
            Endpoint::Dialed(dialer) => {
                let stream = dialer.dial().await.map_err(connect_error)?;
                handshake(TokioIo::new(stream)).await.map_err(http_error)?
            }
        };
        sender.send_request(request).await.map_err(http_error)
    }

    /// Calls on one sandbox through the public API (`/v1/sandboxes/{id}/…`).
    pub fn sandbox(&self, id: &str) -> SandboxClient<'_> {
        SandboxClient {
            client: self,
            prefix: format!("/v1/sandboxes/{id}"),
        }
    }

    /// Calls on the agent this client is connected to (see [`Client::unix`]):
    /// the same routes without the `/v1/sandboxes/{id}` prefix.
    pub fn agent(&self) -> SandboxClient<'_> {
        SandboxClient {
            client: self,
            prefix: String::new(),
        }
    }

    /// A JSON call; `T = ()` for 204 answers.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let (content_type, bytes) = match body {
            Some(body) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(body)?),
            ),
            None => (None, Bytes::new()),
        };
        let response = self.send(method, path, content_type, bytes).await?;
        decode(response, &self.endpoint.to_string()).await
    }

    /// Checks the status and hands the body over unread, for streaming
    /// answers.
    pub(crate) async fn streaming(
        &self,
        response: Response<Incoming>,
    ) -> Result<ByteStream, ClientError> {
        if response.status().is_success() {
            return Ok(ByteStream::new(
                response.into_body(),
                self.endpoint.to_string(),
            ));
        }
        Err(read_success(response, &self.endpoint)
            .await
            .err()
            .unwrap_or(ClientError::Unexpected {
                status: 0,
                text: "error status without an error".into(),
            }))
    }

    /// `POST /v1/sandboxes`; see [`Client::create_sandbox_with_token`] for
    /// the sandbox's token.
    pub async fn create_sandbox(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, "/v1/sandboxes", Some(request))
            .await
    }

    /// `GET /v1/info`
    pub async fn info(&self) -> Result<crate::ServerInfo, ClientError> {
        self.call(Method::GET, "/v1/info", NO_BODY).await
    }

    /// `GET /metrics`: the Prometheus text exposition, as served.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let response = self
            .send(Method::GET, "/metrics", None, Bytes::new())
            .await?;
        let (_, bytes) = read_body(response, &self.endpoint.to_string()).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `GET /v1/sandboxes`
    pub async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, ClientError> {
        let list: SandboxList = self.call(Method::GET, "/v1/sandboxes", NO_BODY).await?;
        Ok(list.sandboxes)
    }

    /// `GET /v1/sandboxes/{id}`
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::GET, &format!("/v1/sandboxes/{id}"), NO_BODY)
            .await
    }

    /// `PATCH /v1/sandboxes/{id}`: changes what the request names.
    pub async fn update_sandbox(
        &self,
        id: &str,
        request: &UpdateSandboxRequest,
    ) -> Result<Sandbox, ClientError> {
        self.call(Method::PATCH, &format!("/v1/sandboxes/{id}"), Some(request))
            .await
    }

    /// Replaces a sandbox's egress allowlist (live: new connections through
    /// its proxy see it at once). An empty list denies everything.
    pub async fn set_egress(&self, id: &str, egress: Vec<String>) -> Result<Sandbox, ClientError> {
        let request = UpdateSandboxRequest {
            network: Some(NetworkPolicy { egress }),
        };
        self.update_sandbox(id, &request).await
    }

    /// `DELETE /v1/sandboxes/{id}`
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/v1/sandboxes/{id}"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/exec`
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(request),
        )
        .await
    }

    /// The agent's `GET /health`.
    pub async fn agent_health(&self) -> Result<(), ClientError> {
        let response = self
            .send(Method::GET, "/health", None, Bytes::new())
            .await?;
        read_success(response, &self.endpoint).await.map(drop)
    }

    /// The agent's `POST /exec`.
    pub async fn agent_exec(&self, request: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.call(Method::POST, "/exec", Some(request)).await
    }
}

const NO_BODY: Option<&()> = None;

async fn handshake<IO, B>(
    io: TokioIo<IO>,
) -> Result<hyper::client::conn::http1::SendRequest<B>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task ends by itself when the response body is done or
    // dropped; its error, if any, surfaces through the request instead.
    // With upgrades, a `101` hands the connection to `hyper::upgrade::on`
    // (a terminal, a tunnel, a proxied WebSocket) instead of ending it.
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

/// Decodes a JSON answer; an empty body (204) decodes as `null`, i.e. `()`.
async fn decode<T: DeserializeOwned>(
    response: Response<Incoming>,
    endpoint: &str,
) -> Result<T, ClientError> {
    let (status, bytes) = read_body(response, endpoint).await?;
    if status == StatusCode::NO_CONTENT || bytes.is_empty() {
        return Ok(serde_json::from_slice(b"null")?);
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Reads the whole body; a non-2xx status becomes [`ClientError::Api`]
/// when the body is the API's error body.
async fn read_success(
    response: Response<Incoming>,
    endpoint: &Endpoint,
) -> Result<(StatusCode, Bytes), ClientError> {
    read_body(response, &endpoint.to_string()).await
}

async fn read_body(
    response: Response<Incoming>,
    endpoint: &str,
) -> Result<(StatusCode, Bytes), ClientError> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Http {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .to_bytes();
    if status.is_success() {
        return Ok((status, bytes));
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => ClientError::Api {
            status: status.as_u16(),
            body,
        },
        Err(_) => ClientError::Unexpected {
            status: status.as_u16(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_plain_http_urls() {
        assert!(Client::new("http://127.0.0.1:7070", None).is_ok());
        assert!(Client::new("http://127.0.0.1:7070/", None).is_ok());
        assert!(Client::new("https://127.0.0.1:7070", None).is_err());
        assert!(Client::new("127.0.0.1:7070", None).is_err());
        assert!(Client::new("http://host/path", None).is_err());
    }
}
