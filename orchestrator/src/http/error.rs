//! The one place where errors become HTTP responses.
//!
//! Every failure a client can see is an [`ApiError`]: a stable
//! [`ErrorCode`], whose HTTP status is fixed in `sbx-api`, and a message
//! naming what was involved. Layers below produce their own error enums;
//! the `From` impls here decide, once, what each of them means to a client.
//!
//! Like dropshot's `HttpError`, an `ApiError` keeps what the client may
//! read (the external message) apart from what only the operator may (the
//! internal detail). Everything inside a sandbox is hostile, and a sandbox's
//! own token can provoke runtime, store and io failures whose text names
//! host paths, libcontainer or Docker internals: those reach the client as
//! `internal` with a generic message, and the detail goes to the log. Every
//! error body carries the call's request id (see [`super::request_id`]),
//! which the log line repeats, so one leads to the other.
//!
//! The detail is logged when the error is made, not when it is answered: a
//! call whose client left (its work detached, see [`super::detached`]) is
//! never answered, and its failure must still reach the log.

use super::request_id::RequestId;
use crate::audit::AuditError;
use crate::egress::EgressError;
use crate::images::ImageError;
use crate::sandbox::SandboxError;
use crate::tokens::TokenError;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sbx_api::{ErrorBody, ErrorCode};
use std::fmt::Display;

/// The message of every `internal` error: what failed is in the log, under
/// the request id the body carries.
const INTERNAL_MESSAGE: &str = "internal error";

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    /// What the client reads.
    external: String,
    /// What only the log reads; none when the external message is all
    /// there is to say.
    internal: Option<String>,
}

impl ApiError {
    /// The body a client reads, for an error reported inside another
    /// answer (a fork's outcome) rather than as the response.
    pub fn body(&self) -> sbx_api::ErrorBody {
        if let Some(internal) = &self.internal {
            tracing::error!(code = %self.code, error = %internal, "error reported in an answer");
        }
        let request_id = RequestId::current().map(|id| id.to_string());
        sbx_api::ErrorBody::new(self.code, self.external.clone()).with_request_id(request_id)
    }

    /// An error whose message is meant for the client (a 4xx).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            external: message.into(),
            internal: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// A failure of the server: the client learns only that it happened.
    pub fn internal(detail: impl Display) -> Self {
        Self::hidden(ErrorCode::Internal, INTERNAL_MESSAGE, detail)
    }

    /// An error that tells the client `external` and logs `detail` (with
    /// the request id, from the call's span).
    fn hidden(code: ErrorCode, external: impl Into<String>, detail: impl Display) -> Self {
        let detail = detail.to_string();
        tracing::error!(%code, error = %detail, "request failed");
        Self {
            code,
            external: external.into(),
            internal: Some(detail),
        }
    }
}

/// The operator's view: the external message and, if there is one, the
/// internal detail the client never sees.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.external)?;
        match &self.internal {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let request_id = RequestId::current().map(|id| id.to_string());
        let body = ErrorBody::new(self.code, self.external).with_request_id(request_id);
        // Read by the layer that counts errors (`super::metrics`).
        (status, Extension(self.code), Json(body)).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(err: SandboxError) -> Self {
        let code = match &err {
            SandboxError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            SandboxError::NotFound(_)
            | SandboxError::ImageNotFound(_)
            | SandboxError::SnapshotNotFound(_)
            | SandboxError::PreviewNotFound(_) => ErrorCode::NotFound,
            SandboxError::WrongState { .. } | SandboxError::Conflict(_) => ErrorCode::Conflict,
            SandboxError::InsufficientStorage(_) => ErrorCode::InsufficientStorage,
            SandboxError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            SandboxError::Image(
                ImageError::Invalid(_) | ImageError::BadEntry { .. } | ImageError::Registry(_),
            ) => ErrorCode::InvalidRequest,
            SandboxError::Image(ImageError::NotInRegistry(_)) => ErrorCode::NotFound,
            SandboxError::Image(ImageError::Unreachable(_)) => ErrorCode::Unavailable,
            SandboxError::Image(ImageError::Io { .. }) => return Self::internal(err),
            SandboxError::Egress {
                source: EgressError::InvalidPolicy(_),
                ..
            } => ErrorCode::InvalidRequest,
            // Its reason names the host side of the agent's socket.
            SandboxError::AgentUnavailable { id, .. } => {
                let external = format!("agent of sandbox {id} is unavailable");
                return Self::hidden(ErrorCode::Unavailable, external, err);
            }
            // Transient: the engine or the host was too slow this time.
            SandboxError::TimedOut { id, what, .. } => {
                let external = format!("sandbox {id}: {what} timed out");
                return Self::hidden(ErrorCode::Unavailable, external, err);
            }
            SandboxError::Runtime { .. }
            | SandboxError::Store(_)
            | SandboxError::Egress { .. }
            | SandboxError::Io { .. } => return Self::internal(err),
        };
        Self::new(code, err.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        let code = match &err {
            TokenError::Unauthorized(_) => ErrorCode::Unauthorized,
            TokenError::Forbidden(_) => ErrorCode::Forbidden,
            TokenError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            TokenError::NotFound(_) | TokenError::SandboxNotFound(_) => ErrorCode::NotFound,
            TokenError::Store(_) => return Self::internal(err),
        };
        Self::new(code, err.to_string())
    }
}

impl From<AuditError> for ApiError {
    fn from(err: AuditError) -> Self {
        Self::internal(err)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        Self::new(code, rejection.body_text().to_lowercase())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid(rejection.body_text().to_lowercase())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(rejection.body_text().to_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_errors_map_to_stable_codes() {
        let cases = [
            (
                SandboxError::NotFound("abc".into()),
                404,
                ErrorCode::NotFound,
            ),
            (
                SandboxError::InvalidRequest("bad".into()),
                400,
                ErrorCode::InvalidRequest,
            ),
            (
                SandboxError::WrongState {
                    id: "abc".into(),
                    state: "creating",
                },
                409,
                ErrorCode::Conflict,
            ),
            (
                SandboxError::AgentUnavailable {
                    id: "abc".into(),
                    reason: "gone".into(),
                },
                503,
                ErrorCode::Unavailable,
            ),
            (
                SandboxError::Egress {
                    id: "abc".into(),
                    source: EgressError::InvalidPolicy("bad entry".into()),
                },
                400,
                ErrorCode::InvalidRequest,
            ),
            (
                SandboxError::Egress {
                    id: "abc".into(),
                    source: EgressError::Listen {
                        path: "/x/egress.sock".into(),
                        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    },
                },
                500,
                ErrorCode::Internal,
            ),
        ];
        for (err, status, code) in cases {
            let api: ApiError = err.into();
            assert_eq!(api.code, code);
            assert_eq!(api.into_response().status().as_u16(), status);
        }
    }

    #[test]
    fn token_errors_map_to_stable_codes() {
        let cases = [
            (
                TokenError::Unauthorized("x".into()),
                401,
                ErrorCode::Unauthorized,
            ),
            (TokenError::Forbidden("x".into()), 403, ErrorCode::Forbidden),
            (
                TokenError::InvalidRequest("x".into()),
                400,
                ErrorCode::InvalidRequest,
            ),
            (TokenError::NotFound("x".into()), 404, ErrorCode::NotFound),
            (
                TokenError::SandboxNotFound("x".into()),
                404,
                ErrorCode::NotFound,
            ),
        ];
        for (err, status, code) in cases {
            let api: ApiError = err.into();
            assert_eq!(api.code, code);
            assert_eq!(api.into_response().status().as_u16(), status);
        }
    }

    /// The body `err` answers with inside a call whose request id is `id`.
    async fn answered(err: impl Into<ApiError>, id: &RequestId) -> (u16, ErrorBody) {
        let response = id.clone().scope(async { err.into().into_response() }).await;
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .expect("a small body");
        let body = serde_json::from_slice(&bytes).expect("an error body");
        (status, body)
    }

    #[tokio::test]
    async fn internal_errors_reach_the_client_without_their_detail() {
        let host_path = "/var/lib/sbx/sandboxes/0123456789abcdef/rootfs";
        let cases: [(SandboxError, &str); 4] = [
            (
                SandboxError::Io {
                    context: format!("cannot remove {host_path}"),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                },
                host_path,
            ),
            (
                SandboxError::Runtime {
                    id: "abc".into(),
                    source: crate::runtime::RuntimeError::Engine {
                        context: "docker create".into(),
                        message: "bollard: 500 overlay mount failed".into(),
                    },
                },
                "bollard",
            ),
            (
                SandboxError::Egress {
                    id: "abc".into(),
                    source: EgressError::Listen {
                        path: format!("{host_path}/../run/egress.sock").into(),
                        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
                    },
                },
                host_path,
            ),
            (
                SandboxError::AgentUnavailable {
                    id: "abc".into(),
                    reason: format!("cannot connect to unix:{host_path}/../run/agent.sock"),
                },
                host_path,
            ),
        ];
        for (err, detail) in cases {
            assert!(
                err.to_string().contains(detail),
                "the case carries {detail}"
            );
            let api = ApiError::from(err);
            assert!(api.to_string().contains(detail), "the log keeps {detail}");
            let id = RequestId::new();
            let (status, body) = answered(api, &id).await;
            let json = serde_json::to_string(&body).expect("serializable");
            assert!(!json.contains(detail), "{detail} leaked: {json}");
            assert!(!json.contains("/var/lib"), "a host path leaked: {json}");
            assert_eq!(body.request_id.as_deref(), Some(id.as_str()), "{json}");
            match status {
                500 => {
                    assert_eq!(body.error_code, ErrorCode::Internal);
                    assert_eq!(body.message, "internal error");
                }
                503 => {
                    assert_eq!(body.error_code, ErrorCode::Unavailable);
                    assert_eq!(body.message, "agent of sandbox abc is unavailable");
                }
                other => panic!("unexpected status {other}: {json}"),
            }
        }
        let store = crate::store::StoreError::Corrupt {
            id: "abc".into(),
            reason: "secret detail".into(),
        };
        let (status, body) = answered(TokenError::Store(store), &RequestId::new()).await;
        assert_eq!((status, body.message.as_str()), (500, "internal error"));
    }

    #[tokio::test]
    async fn client_errors_keep_their_message_and_gain_the_request_id() {
        let id = RequestId::new();
        let (status, body) = answered(SandboxError::NotFound("abc".into()), &id).await;
        assert_eq!(status, 404);
        assert_eq!(body.message, "sandbox abc not found");
        assert_eq!(body.request_id.as_deref(), Some(id.as_str()));
    }
}
