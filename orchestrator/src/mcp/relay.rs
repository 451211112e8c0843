//! `sbx mcp`: the server's MCP tools for clients that spawn a command.
//!
//! It is a relay, not a second server: JSON-RPC messages read from stdin
//! are sent to a running `sbx serve`'s `/mcp` (found through `SBX_URL`,
//! with `SBX_TOKEN`), and what comes back is written to stdout. So the
//! tools, their scopes and their audit records are the server's, whatever
//! the client's transport. Both ends are rmcp's: its stdio transport on
//! one side, its streamable HTTP client on the other, joined at the
//! transport level (messages pass through unparsed beyond their framing;
//! the HTTP client adds the protocol headers the server checks).
//!
//! Sending a message to the server completes only when the server has
//! answered it, so sends run concurrently (a long `exec` does not hold up a
//! quick `read_file`). They are started in the order the client wrote them
//! (`FuturesUnordered` polls new futures first-in first-out, and a send
//! queues its message on its first poll), which keeps `initialize` ahead of
//! what follows. A message the server cannot take (no server, a bad token)
//! is answered here with a JSON-RPC error for its request id, so that the
//! client is told instead of waiting forever; when the server side ends
//! (rmcp's HTTP client stops at a refused `initialize`), the messages in
//! flight are answered that way before the relay exits.

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rmcp::model::{ClientJsonRpcMessage, ErrorData, JsonRpcError, ServerJsonRpcMessage};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, Transport};
use rmcp::{RoleClient, RoleServer};

/// Largest JSON-RPC message accepted from either side.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// Relays MCP between this process's stdin/stdout and `url`'s `/mcp`,
/// until stdin closes or the server side ends.
pub async fn relay_stdio(url: &str, token: String) -> Result<(), RelayError> {
    let endpoint = format!("{}/mcp", url.trim_end_matches('/'));
    let mut config = StreamableHttpClientTransportConfig::with_uri(endpoint);
    config.auth_header = Some(token);
    config.max_json_response_size = MAX_MESSAGE_BYTES;
    let mut server = StreamableHttpClientTransport::from_config(config);
    let mut client =
        AsyncRwTransport::<RoleServer, _, _>::new_server(tokio::io::stdin(), tokio::io::stdout())
            .with_max_line_length(MAX_MESSAGE_BYTES);
    let mut sends = FuturesUnordered::new();
    loop {
        tokio::select! {
            from_client = Transport::<RoleServer>::receive(&mut client) => {
                let Some(message) = from_client else { break };
                let id = request_id(&message);
                let send = Transport::<RoleClient>::send(&mut server, message);
                sends.push(async move { (id, send.await) });
            }
            from_server = Transport::<RoleClient>::receive(&mut server) => {
                let Some(message) = from_server else {
                    // The server side gave up (a refused token ends it at
                    // the first message): answer what is in flight, then stop.
                    while let Some((id, sent)) = sends.next().await {
                        failed(&mut client, id, sent).await?;
                    }
                    break;
                };
                deliver(&mut client, message).await?;
            }
            Some((id, sent)) = sends.next(), if !sends.is_empty() => {
                failed(&mut client, id, sent).await?;
            }
        }
    }
    // The client hung up: let the requests in flight finish (their answers
    // have nowhere to go) only as long as it takes to close.
    drop(sends);
    let _ = Transport::<RoleClient>::close(&mut server).await;
    Ok(())
}

/// Answers a request the server could not be sent with a JSON-RPC error.
async fn failed<T: Transport<RoleServer>, E: std::fmt::Display>(
    client: &mut T,
    id: Option<rmcp::model::RequestId>,
    sent: Result<(), E>,
) -> Result<(), RelayError> {
    let (Some(id), Err(err)) = (id, sent) else {
        return Ok(());
    };
    tracing::warn!(error = %err, "cannot relay a message to the server");
    let error = ErrorData::internal_error(format!("sbx mcp cannot reach the server: {err}"), None);
    deliver(
        client,
        ServerJsonRpcMessage::Error(JsonRpcError::new(Some(id), error)),
    )
    .await
}

fn request_id(message: &ClientJsonRpcMessage) -> Option<rmcp::model::RequestId> {
    match message {
        ClientJsonRpcMessage::Request(request) => Some(request.id.clone()),
        _ => None,
    }
}

async fn deliver<T: Transport<RoleServer>>(
    client: &mut T,
    message: ServerJsonRpcMessage,
) -> Result<(), RelayError> {
    client
        .send(message)
        .await
        .map_err(|err| RelayError::Stdout(std::io::Error::other(err.to_string())))
}
