//! The live tools: a shell session whose `cd` and variables carry over
//! from one command to the next, and a sandbox's servers: wait for one,
//! fetch a page from it, and give a person a preview URL of it.
//!
//! `session_exec` makes its session on first use and names it in every
//! answer, so a model keeps one id, not a handshake. Terminals, watches
//! and tunnels stay REST and WebSocket routes: a model does not hold a
//! connection open between calls.

use super::{query, report_run, sandbox_path, Answer, ToolError, MAX_JSON_BYTES};
use crate::mcp::rest::Rest;
use crate::mcp::text::{self, INLINE_BYTES};
use axum::body::Body;
use axum::http::Method;
use sbx_api::{CreatePreviewRequest, CreateSessionRequest, Preview, Session, SessionExecRequest};
use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt::Write as _;

/// Page bytes `fetch_port` shows at most.
const MAX_FETCHED_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Shell text, run as if typed at the session's prompt.
    command: String,
    /// The session to run it in, as an earlier session_exec answer named it; leave it out to start a new session.
    #[serde(default)]
    session_id: Option<String>,
    /// Kill the command (not the session) after this many seconds (default 120, at most 3600).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchPortArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The TCP port a server in the sandbox listens on, e.g. 3000.
    #[schemars(range(min = 1, max = 65535))]
    port: u16,
    /// The path (and query) to request, e.g. "/" or "/api/items?limit=5" (default "/").
    #[serde(default)]
    path: Option<String>,
    /// "GET" (the default), "POST", "PUT", "PATCH", "DELETE" or "HEAD".
    #[serde(default)]
    method: Option<String>,
    /// A request body, sent as it is (for POST, PUT, PATCH).
    #[serde(default)]
    body: Option<String>,
    /// Its content type, e.g. "application/json".
    #[serde(default)]
    content_type: Option<String>,
    /// Seconds to wait for something to listen on the port first (default 0: do not wait).
    #[serde(default)]
    #[schemars(range(min = 0, max = 600))]
    wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewPortArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The TCP port a web server in the sandbox listens on, e.g. 3000.
    #[schemars(range(min = 1, max = 65535))]
    port: u16,
    /// Seconds the URL works for (default 3600, at most 604800).
    #[serde(default)]
    #[schemars(range(min = 1, max = 604800))]
    ttl_seconds: Option<u64>,
    /// Seconds to wait for something to listen on the port first (default 30).
    #[serde(default)]
    #[schemars(range(min = 0, max = 600))]
    wait_seconds: Option<u64>,
}

/// `session_exec`: the command in the session named (or a new one), its
/// answer put as exec's is, with the session's id first.
pub async fn session_exec(rest: &Rest, args: SessionExecArgs) -> Result<Answer, ToolError> {
    let base = sandbox_path(&args.sandbox_id)?;
    let seconds = args
        .timeout_seconds
        .unwrap_or(super::DEFAULT_EXEC_TIMEOUT_S);
    if !(1..=super::MAX_EXEC_TIMEOUT_S).contains(&seconds) {
        return Err(ToolError::Invalid(format!(
            "timeout_seconds {seconds} is out of range (1..={})",
            super::MAX_EXEC_TIMEOUT_S
        )));
    }
    let request = SessionExecRequest {
        timeout_ms: Some(seconds * 1000),
        stream: true,
        ..SessionExecRequest::new(args.command)
    };
    request.validate().map_err(ToolError::Invalid)?;
    let session = match args.session_id {
        Some(id) if is_session_id(&id) => id,
        Some(id) => {
            return Err(ToolError::Invalid(format!(
                "{} is not a session id; leave session_id out to start a session",
                text::printable(&id)
            )))
        }
        None => {
            let created: Session = rest
                .json(
                    Method::POST,
                    &format!("{base}/sessions"),
                    Some(&CreateSessionRequest::default()),
                    MAX_JSON_BYTES,
                )
                .await?;
            created.id
        }
    };
    let body = serde_json::to_vec(&request)
        .map_err(|err| ToolError::Internal(format!("cannot encode a command: {err}")))?;
    let uri = format!("{base}/sessions/{session}/exec");
    let response = rest
        .send(Method::POST, &uri, Some(Body::from(body)), true)
        .await?;
    let answer = report_run(rest, &args.sandbox_id, response, seconds, "session").await?;
    Ok(answer.headed(&format!(
        "session {session} (pass it as session_id to run the next command there)"
    )))
}

/// Session ids are the agent's: short, of letters, digits, `-` and `_`.
fn is_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Waits up to `seconds` for the port to listen, when asked to.
async fn wait_for(rest: &Rest, base: &str, port: u16, seconds: u64) -> Result<(), ToolError> {
    if seconds == 0 {
        return Ok(());
    }
    let uri = format!(
        "{base}/ports/{port}/wait?{}",
        query(&[("timeout_ms", &(seconds * 1000).to_string())])
    );
    rest.call(Method::GET, &uri, None, false).await
}

/// `fetch_port`: one request to a server in the sandbox; its status,
/// content type and the start of its body, whatever the status.
pub async fn fetch_port(rest: &Rest, args: FetchPortArgs) -> Result<Answer, ToolError> {
    let base = sandbox_path(&args.sandbox_id)?;
    let method = match args
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase()
        .as_str()
    {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "PUT" => Method::PUT,
        "PATCH" => Method::PATCH,
        "DELETE" => Method::DELETE,
        "HEAD" => Method::HEAD,
        other => {
            return Err(ToolError::Invalid(format!(
                "method {} is not one of GET, POST, PUT, PATCH, DELETE, HEAD",
                text::printable(other)
            )))
        }
    };
    let path = args.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.contains(['\0', '\r', '\n', ' ', '#']) {
        return Err(ToolError::Invalid(format!(
            "path {} must start with '/' and hold no spaces, control characters or '#'",
            text::printable(&path)
        )));
    }
    wait_for(rest, &base, args.port, args.wait_seconds.unwrap_or(0)).await?;
    let uri = format!("{base}/ports/{}{path}", args.port);
    let response = rest
        .raw(
            method,
            &uri,
            args.body.map(Body::from),
            args.content_type.as_deref(),
        )
        .await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    let limited = http_body_util::Limited::new(response.into_body(), MAX_FETCHED_BYTES);
    let (bytes, cut) = match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => (collected.to_bytes(), false),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => (Default::default(), true),
        Err(err) => return Err(ToolError::Internal(format!("cannot read an answer: {err}"))),
    };
    let mut text = format!("HTTP {status}  content-type: {content_type}\n");
    if cut {
        let _ = write!(
            text,
            "(the body is larger than {MAX_FETCHED_BYTES} bytes; fetch a narrower path, or use exec with curl and head)"
        );
    } else {
        let body = String::from_utf8_lossy(&bytes);
        let shown = text::printable(&body[..body.len().min(INLINE_BYTES)]);
        text.push_str(&shown);
        if body.len() > INLINE_BYTES {
            let _ = write!(text, "\n… ({} bytes in all)", bytes.len());
        }
    }
    Ok(Answer::text(text).with(serde_json::json!({
        "status": status.as_u16(),
        "content_type": content_type,
    })))
}

/// `preview_port`: a URL a person's browser opens, no token needed.
pub async fn preview_port(rest: &Rest, args: PreviewPortArgs) -> Result<Answer, ToolError> {
    let base = sandbox_path(&args.sandbox_id)?;
    wait_for(rest, &base, args.port, args.wait_seconds.unwrap_or(30)).await?;
    let request = CreatePreviewRequest {
        port: args.port,
        ttl_s: args.ttl_seconds,
    };
    request.validate().map_err(ToolError::Invalid)?;
    let preview: Preview = rest
        .json(
            Method::POST,
            &format!("{base}/previews"),
            Some(&request),
            MAX_JSON_BYTES,
        )
        .await?;
    let url = preview.url.clone().unwrap_or_default();
    let text = format!(
        "{url}\nopens port {} of sandbox {} in a browser, no token needed, until {} \
         (preview {}). Links that start with '/' leave the URL's prefix; relative ones work.",
        preview.port,
        preview.sandbox_id,
        preview
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        preview.id
    );
    Ok(Answer::text(text).with(&preview))
}
