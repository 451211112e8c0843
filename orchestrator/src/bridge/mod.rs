//! Forwarding sandbox calls to the agent inside the sandbox.
//!
//! The public routes under `/v1/sandboxes/{id}/…` mirror the agent's own
//! routes, so the bridge does not interpret results: it sends the request
//! over the agent's Unix socket and streams the agent's status, headers and
//! body straight back — and streams request bodies (uploads) the other way —
//! never buffering a whole body in the orchestrator. The orchestrator never
//! spawns a process per call; the agent already lives inside.
//!
//! Dropping the response (the public client went away) drops the agent
//! connection with it, which is how a disconnect reaches the agent and kills
//! a streamed command.
//!
//! A forwarded call keeps its sandbox awake (`Manager::in_use`) until its
//! response body has ended: an exec stream, a log follow or a download
//! counts for as long as it runs, not just until its head is sent.
//!
//! Upgrades (a terminal's or a tunnel's WebSocket, a WebSocket to a port)
//! pass through byte for byte: the handshake goes to the agent, and when
//! the agent answers `101` the two upgraded connections are spliced. The
//! orchestrator never parses the frames, so it needs no WebSocket code of
//! its own, and what a sandbox sends reaches only the client that asked.
//! The splice holds the sandbox awake until either side closes.
//!
//! Which headers cross is the route's [`Passing`]: an API call passes only
//! what describes its body; a request proxied to a port passes every
//! end-to-end header but sbx's own credentials.

use crate::sandbox::{InUse, Manager, SandboxError};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::Instrument;

/// Headers that describe the body or what the caller accepts; everything
/// else (authorization above all) stays on this side of the bridge.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 3] =
    [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::ACCEPT];
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 2] = [header::CONTENT_TYPE, header::CONTENT_LENGTH];

/// What an upgrade's handshake needs to cross, both ways, on top of the
/// [`Passing::Api`] headers.
const UPGRADE_HEADERS: [HeaderName; 7] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_ACCEPT,
];

/// Headers that concern one hop only (RFC 9110 §7.6.1), and `Host`, which
/// the agent sets for the port it proxies to. An upgrade keeps
/// `Connection` and `Upgrade`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::HOST,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Which headers cross the bridge, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passing {
    /// A call of the agent's own API: what describes the body, and an
    /// upgrade's handshake.
    Api,
    /// A request for a server in the sandbox (`/ports/…`): every
    /// end-to-end header. `authorization` says whether the request's
    /// `Authorization` is the app's (a preview, which sbx authenticates by
    /// its URL) rather than sbx's own bearer token, which never crosses.
    Proxied { authorization: bool },
}

impl Passing {
    fn copy(self, from: &HeaderMap, to: &mut HeaderMap, api_names: &[HeaderName]) {
        match self {
            Passing::Api => {
                let upgrade: &[HeaderName] = match from.contains_key(header::UPGRADE) {
                    true => &UPGRADE_HEADERS,
                    false => &[],
                };
                for name in api_names.iter().chain(upgrade) {
                    for value in from.get_all(name) {
                        to.append(name.clone(), value.clone());
                    }
                }
            }
            Passing::Proxied { authorization } => {
                let upgrading = from.contains_key(header::UPGRADE);
                for (name, value) in from {
                    let hop = HOP_BY_HOP.contains(name)
                        && !(upgrading && (name == header::CONNECTION || name == header::UPGRADE));
                    let credentials = name == header::AUTHORIZATION && !authorization;
                    if !hop && !credentials && name.as_str() != "keep-alive" {
                        to.append(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// One call to forward: `method agent_path` (path and query, as the agent
/// spells it) with the client's `headers` and `body`.
#[derive(Debug)]
pub struct Forwarded<'a> {
    pub method: Method,
    pub agent_path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Body,
    pub passing: Passing,
    /// The client's side of an upgrade it asked for (`hyper::upgrade::on`
    /// of its request), spliced to the agent's if the agent answers `101`.
    pub upgrade: Option<OnUpgrade>,
}

/// Sends `call` to the agent of sandbox `id`; returns the agent's response
/// with its body still streaming (or, for an upgrade, the `101` whose
/// connection is spliced from then on).
pub async fn forward(
    manager: &Arc<Manager>,
    id: &str,
    call: Forwarded<'_>,
) -> Result<Response<Body>, SandboxError> {
    let in_use = manager.in_use(id);
    let agent = manager.agent(id).await?;
    let mut request = Request::builder()
        .method(call.method)
        .uri(call.agent_path)
        .body(call.body)
        .map_err(|err| SandboxError::InvalidRequest(format!("cannot forward request: {err}")))?;
    call.passing.copy(
        call.headers,
        request.headers_mut(),
        &FORWARDED_REQUEST_HEADERS,
    );
    let mut response = match agent.send_request(request).await {
        Ok(response) => response,
        Err(err) => return Err(manager.agent_failure(id, err.to_string()).await),
    };
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(err) = manager.not_serving(id).await {
            return Err(err);
        }
    }
    let spliced = match call.upgrade {
        Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            splice(client, hyper::upgrade::on(&mut response), in_use);
            None
        }
        _ => Some(in_use),
    };
    let (parts, incoming) = response.into_parts();
    let mut forwarded = match spliced {
        Some(in_use) => Response::new(Body::new(Held {
            inner: incoming,
            _in_use: in_use,
        })),
        None => Response::new(Body::empty()),
    };
    *forwarded.status_mut() = parts.status;
    call.passing.copy(
        &parts.headers,
        forwarded.headers_mut(),
        &FORWARDED_RESPONSE_HEADERS,
    );
    Ok(forwarded)
}

/// Copies bytes between the client's upgraded connection and the agent's
/// until either side closes, keeping the sandbox awake meanwhile. The
/// client's side is ready only once the `101` has been sent to it, so
/// this runs apart from the handler that returns that `101`.
fn splice(client: OnUpgrade, agent: OnUpgrade, in_use: InUse) {
    let work = async move {
        let _in_use = in_use;
        let (client, agent) = match tokio::try_join!(client, agent) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(error = %err, "an upgrade did not complete");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            tracing::debug!(error = %err, "an upgraded connection ended with an error");
        }
    };
    tokio::spawn(work.in_current_span());
}

/// A response body that keeps its sandbox in use until it ends or drops.
struct Held<B> {
    inner: B,
    _in_use: InUse,
}

impl<B> http_body::Body for Held<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
