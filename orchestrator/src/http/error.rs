//! The one place where errors become HTTP responses.
//!
//! Every failure a client can see is an [`ApiError`]: a stable
//! [`ErrorCode`], whose HTTP status is fixed in `sbx-api`, and a message
//! naming what was involved. Layers below produce their own error enums;
//! the `From` impls here decide, once, what each of them means to a client.

use crate::audit::AuditError;
use crate::egress::EgressError;
use crate::sandbox::SandboxError;
use crate::tokens::TokenError;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::{ErrorBody, ErrorCode};

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, "request failed");
        }
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(err: SandboxError) -> Self {
        let code = match &err {
            SandboxError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            SandboxError::NotFound(_) | SandboxError::ImageNotFound(_) => ErrorCode::NotFound,
            SandboxError::WrongState { .. } => ErrorCode::Conflict,
            SandboxError::AgentUnavailable { .. } | SandboxError::TimedOut { .. } => {
                ErrorCode::Unavailable
            }
            SandboxError::Egress {
                source: EgressError::InvalidPolicy(_),
                ..
            } => ErrorCode::InvalidRequest,
            SandboxError::Runtime { .. }
            | SandboxError::Store(_)
            | SandboxError::Egress { .. }
            | SandboxError::Io { .. } => ErrorCode::Internal,
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
            TokenError::Store(_) => ErrorCode::Internal,
        };
        Self::new(code, err.to_string())
    }
}

impl From<AuditError> for ApiError {
    fn from(err: AuditError) -> Self {
        Self::new(ErrorCode::Internal, err.to_string())
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
}
