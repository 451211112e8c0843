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
use sbx_api::e2b::{ConnectError, E2bError};
use sbx_api::{ErrorBody, ErrorCode};

#[derive(Debug)]
pub enum Failure {
    /// The REST API's answer, or one shaped like it.
    Api(ErrorBody),
    /// A request the E2B surface cannot serve as asked.
    Invalid(String),
    /// A sandbox or stream that went away mid-call.
    Unavailable(String),
    /// An envd call for a sandbox that is gone, or that the caller's token
    /// does not reach (a sandbox's own token dies with it): said the way
    /// E2B's proxy says it, a 502 or `unavailable` whose message says the
    /// sandbox "was not found", which the SDKs raise as "not running".
    Gone(String),
    /// The call's deadline passed (Connect's `deadline_exceeded`).
    Deadline(String),
    /// Something the caller can do nothing about.
    Internal(String),
}

impl Failure {
    pub fn internal(message: impl Into<String>) -> Self {
        Failure::Internal(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::Api(ErrorBody::new(ErrorCode::NotFound, message))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Failure::Api(body) => body.error_code,
            Failure::Invalid(_) => ErrorCode::InvalidRequest,
            Failure::Unavailable(_) | Failure::Deadline(_) | Failure::Gone(_) => {
                ErrorCode::Unavailable
            }
            Failure::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Failure::Api(body) => body.message.clone(),
            Failure::Invalid(message)
            | Failure::Unavailable(message)
            | Failure::Deadline(message) => message.clone(),
            Failure::Gone(sandbox) => format!("sandbox {sandbox} was not found"),
            Failure::Internal(message) => {
                tracing::error!(%message, "e2b call failed");
                "internal error".to_string()
            }
        }
    }

    fn status(&self) -> StatusCode {
        if let Failure::Gone(_) = self {
            return StatusCode::BAD_GATEWAY;
        }
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The control plane's and envd REST's shape.
    pub fn into_json(self) -> Response {
        let status = self.status();
        let body = E2bError {
            code: status.as_u16(),
            message: self.message(),
        };
        (status, Json(body)).into_response()
    }

    /// Connect's error, for a unary answer or a stream's end.
    pub fn into_connect(self) -> ConnectError {
        let code = match self {
            Failure::Deadline(_) => "deadline_exceeded",
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
pub struct JsonFailure(pub Failure);

impl From<Failure> for JsonFailure {
    fn from(failure: Failure) -> Self {
        JsonFailure(failure)
    }
}

impl IntoResponse for JsonFailure {
    fn into_response(self) -> Response {
        self.0.into_json()
    }
}
