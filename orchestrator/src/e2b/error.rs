//! The E2B surface's one error type, and the three shapes it takes on the
//! wire: the control plane's `{code, message}` (the SDKs read `code`, and
//! decode the body of every error, so it is JSON even for a 404), envd's
//! REST `{code, message}`, and Connect's `{code: "not_found", message}`.
//!
//! Errors of the REST API keep their message, which is already written
//! for clients; internal failures are logged here and answered with a
//! generic message.

use super::connect;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::e2b::{ConnectError, E2bErrorBody};
use sbx_api::{ErrorBody, ErrorCode};

/// What an E2B call can fail with. The `Display` text is the internal
/// one, for logs; [`E2bError::message`] is what the caller is told.
#[derive(Debug, thiserror::Error)]
pub enum E2bError {
    /// The REST API's answer, or one shaped like it.
    #[error("{}", .0.message)]
    Api(ErrorBody),
    /// A request the E2B surface cannot serve as asked.
    #[error("{0}")]
    Invalid(String),
    /// A sandbox or stream that went away mid-call.
    #[error("{0}")]
    Unavailable(String),
    /// An envd call for a sandbox that is gone, or that the caller's token
    /// does not reach (a sandbox's own token dies with it): said the way
    /// E2B's proxy says it, a 502 or `unavailable` whose message says the
    /// sandbox "was not found", which the SDKs raise as "not running".
    #[error("sandbox {0} was not found")]
    Gone(String),
    /// The call's deadline passed (Connect's `deadline_exceeded`).
    #[error("{0}")]
    Deadline(String),
    /// Something the caller can do nothing about.
    #[error("{0}")]
    Internal(String),
}

impl E2bError {
    pub fn internal(message: impl Into<String>) -> Self {
        E2bError::Internal(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        E2bError::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        E2bError::Api(ErrorBody::new(ErrorCode::NotFound, message))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            E2bError::Api(body) => body.error_code,
            E2bError::Invalid(_) => ErrorCode::InvalidRequest,
            E2bError::Unavailable(_) | E2bError::Deadline(_) | E2bError::Gone(_) => {
                ErrorCode::Unavailable
            }
            E2bError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            E2bError::Api(body) => body.message.clone(),
            E2bError::Invalid(message)
            | E2bError::Unavailable(message)
            | E2bError::Deadline(message) => message.clone(),
            E2bError::Gone(sandbox) => format!("sandbox {sandbox} was not found"),
            E2bError::Internal(message) => {
                tracing::error!(%message, "e2b call failed");
                "internal error".to_string()
            }
        }
    }

    fn status(&self) -> StatusCode {
        if let E2bError::Gone(_) = self {
            return StatusCode::BAD_GATEWAY;
        }
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The control plane's and envd REST's shape.
    pub fn into_json(self) -> Response {
        let status = self.status();
        let body = E2bErrorBody {
            code: status.as_u16(),
            message: self.message(),
        };
        (status, Json(body)).into_response()
    }

    /// Connect's error, for a unary answer or a stream's end.
    pub fn into_connect(self) -> ConnectError {
        let code = match self {
            E2bError::Deadline(_) => "deadline_exceeded",
            _ => connect::code_name(self.code()),
        };
        ConnectError {
            code,
            message: self.message(),
        }
    }
}

/// The control plane's errors (and envd REST's): `{code, message}`.
#[derive(Debug)]
pub struct JsonError(pub E2bError);

impl From<E2bError> for JsonError {
    fn from(error: E2bError) -> Self {
        JsonError(error)
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        self.0.into_json()
    }
}
