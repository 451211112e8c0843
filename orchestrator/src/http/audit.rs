//! Recording every `/v1` call in the audit trail, and `GET /v1/audit`.
//!
//! [`record`] wraps every `/v1` route (and the `/v1` fallback): it notes
//! the time, method, matched route and sandbox on the way in, and on the
//! way out reads what the layers inside left in the response's extensions:
//! the caller's [`Principal`] (put there by `auth`, refusals included; none
//! means the call was not authenticated) and an [`AuditNote`] (put there
//! by handlers that know how to summarise their request). Handlers only
//! summarise what they parsed anyway, or small JSON bodies; a refused call
//! never reaches its handler, so it is recorded without a summary.

use super::error::ApiError;
use super::extract::{raw_id_param, ApiQuery};
use super::AppState;
use crate::audit::{summarize, AuditEntry};
use crate::store::AuditFilter;
use crate::tokens::Principal;
use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use sbx_api::{
    AuditList, AuditQuery, CreateSandboxRequest, CreateTokenRequest, ExecRequest, MkdirRequest,
    MoveRequest, SignalRequest, StartProcessRequest, ANONYMOUS,
};
use std::sync::Arc;
use std::time::Instant;

/// Longest route or sandbox id recorded as sent (an unmatched path, a
/// hostile id); longer ones are cut.
const MAX_FIELD_BYTES: usize = 256;

/// What a handler tells the audit trail about its request.
#[derive(Debug, Clone)]
pub struct AuditNote {
    summary: String,
    /// The sandbox the call was about, when its route does not name it
    /// (a create).
    sandbox: Option<String>,
}

impl AuditNote {
    pub fn new(summary: impl AsRef<str>) -> Self {
        Self {
            summary: summarize(summary.as_ref()),
            sandbox: None,
        }
    }

    pub fn with_sandbox(self, sandbox: &str) -> Self {
        Self {
            sandbox: Some(sandbox.to_owned()),
            ..self
        }
    }

    /// Attaches the note to whatever the handler answers, errors included.
    pub fn attach(self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// Attaches `note`, if there is one, to `response`.
pub fn noted(note: Option<AuditNote>, response: impl IntoResponse) -> Response {
    match note {
        Some(note) => note.attach(response),
        None => response.into_response(),
    }
}

/// A one-line description of a request, without its contents.
pub trait Summary {
    fn summary(&self) -> String;
}

/// `echo 'a b'`: the argv as a shell would need it typed.
fn command_line(argv: &[String]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

fn command(cmd: Option<&Vec<String>>, shell: Option<&String>) -> String {
    match (cmd, shell) {
        (Some(argv), _) => command_line(argv),
        (None, Some(script)) => format!("shell: {script}"),
        (None, None) => String::new(),
    }
}

impl Summary for ExecRequest {
    fn summary(&self) -> String {
        command(self.cmd.as_ref(), self.shell.as_ref())
    }
}

impl Summary for StartProcessRequest {
    fn summary(&self) -> String {
        command(self.cmd.as_ref(), self.shell.as_ref())
    }
}

impl Summary for MkdirRequest {
    fn summary(&self) -> String {
        self.path.clone()
    }
}

impl Summary for MoveRequest {
    fn summary(&self) -> String {
        format!("{} -> {}", self.from, self.to)
    }
}

impl Summary for SignalRequest {
    fn summary(&self) -> String {
        format!("signal {}", self.signal)
    }
}

impl Summary for CreateSandboxRequest {
    fn summary(&self) -> String {
        format!(
            "image {}",
            self.image.as_deref().unwrap_or(sbx_api::DEFAULT_IMAGE)
        )
    }
}

impl Summary for CreateTokenRequest {
    fn summary(&self) -> String {
        let scopes: Vec<&str> = self.scopes.iter().map(|scope| scope.as_str()).collect();
        let mut summary = format!("token {} scopes {}", self.name, scopes.join(","));
        if let Some(sandbox) = &self.sandbox {
            summary.push_str(&format!(" sandbox {sandbox}"));
        }
        summary
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_FIELD_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_FIELD_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The middleware: one audit entry per call.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let time = Utc::now();
    let method = request.method().to_string();
    // An unmatched path has no template; the path itself (as sent, before
    // nesting stripped `/v1`) says what was tried.
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_owned(),
        None => match request.extensions().get::<OriginalUri>() {
            Some(OriginalUri(uri)) => cut(uri.path()),
            None => cut(request.uri().path()),
        },
    };
    let sandbox = if route.starts_with("/v1/sandboxes/{id}") {
        raw_id_param(&mut request).await.map(|id| cut(&id))
    } else {
        None
    };
    let response = next.run(request).await;
    let principal = response.extensions().get::<Arc<Principal>>();
    let note = response.extensions().get::<AuditNote>();
    state.audit.record(AuditEntry {
        time,
        identity: principal.map_or_else(|| ANONYMOUS.to_owned(), |p| p.name.clone()),
        token_id: principal.and_then(|p| p.token_id.clone()),
        method,
        route,
        sandbox: sandbox.or_else(|| note.and_then(|note| note.sandbox.clone())),
        summary: note.map(|note| note.summary.clone()),
        status: response.status().as_u16(),
        duration: started.elapsed(),
    });
    response
}

/// `GET /v1/audit?sandbox=ID&since=RFC3339&limit=N`, newest first.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let filter = AuditFilter {
        limit: query.effective_limit().map_err(ApiError::invalid)?,
        sandbox: query.sandbox,
        since: query.since,
    };
    let records = state.audit.query(&filter).await?;
    Ok(Json(AuditList { records }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn exec_summaries_show_the_command_and_nothing_else() {
        let mut request = ExecRequest::argv(["echo", "hello world", "it's", "--x=1"]);
        request.stdin = Some("SECRET-STDIN".into());
        request.env = BTreeMap::from([("KEY".into(), "SECRET-ENV".into())]);
        assert_eq!(request.summary(), r"echo 'hello world' 'it'\''s' --x=1");
        assert_eq!(
            ExecRequest::shell("ls | wc -l").summary(),
            "shell: ls | wc -l"
        );
        let process = StartProcessRequest {
            cmd: Some(vec!["sleep".into(), "10".into()]),
            env: BTreeMap::from([("TOKEN".into(), "SECRET".into())]),
            ..StartProcessRequest::default()
        };
        assert_eq!(process.summary(), "sleep 10");
    }

    #[test]
    fn other_summaries() {
        assert_eq!(CreateSandboxRequest::default().summary(), "image base");
        let token = CreateTokenRequest {
            name: "ci-bot".into(),
            scopes: vec![
                sbx_api::Scope::SandboxesCreate,
                sbx_api::Scope::SandboxesRead,
            ],
            ttl_s: Some(60),
            sandbox: None,
        };
        assert_eq!(
            token.summary(),
            "token ci-bot scopes sandboxes:create,sandboxes:read"
        );
        let moved = MoveRequest {
            from: "/a".into(),
            to: "/b".into(),
        };
        assert_eq!(moved.summary(), "/a -> /b");
    }

    #[test]
    fn long_fields_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_FIELD_BYTES);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_FIELD_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
