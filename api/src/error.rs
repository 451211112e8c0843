//! The one error body of the HTTP API and the agent protocol.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable, machine-readable error codes. Clients branch on these, never on
/// the message, so a variant is never renamed once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range (400).
    InvalidRequest,
    /// No or an unknown bearer token (401).
    Unauthorized,
    /// The token is valid but may not do this (403).
    Forbidden,
    /// The sandbox's own permissions refuse the file operation (403).
    PermissionDenied,
    /// The sandbox, image or path does not exist (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The resource is in a state that does not allow the call (409).
    Conflict,
    /// The body is larger than the server accepts (413).
    PayloadTooLarge,
    /// The storage pool cannot hold what the call would promise (507).
    InsufficientStorage,
    /// The sandbox's agent or the runtime could not be reached (503).
    Unavailable,
    /// A bug or an unexpected failure on the server (500).
    Internal,
}

impl ErrorCode {
    /// Every code (the metrics count each from zero).
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InsufficientStorage,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status that goes with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// The response header that names each call of the public API: a fresh
/// random id the server chooses (a client-sent one is ignored), which the
/// server's log lines, the call's audit record and its error body repeat.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// `{"error_code": "not_found", "message": "sandbox abc not found",
/// "request_id": "0123456789abcdef"}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error_code: ErrorCode,
    pub message: String,
    /// The call's [`REQUEST_ID_HEADER`], so that an error a user reports
    /// leads to the server's log lines about it. Absent on the agent hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ErrorBody {
    pub fn new(error_code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error_code,
            message: message.into(),
            request_id: None,
        }
    }

    pub fn with_request_id(self, request_id: Option<String>) -> Self {
        Self { request_id, ..self }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_code, self.message)?;
        match &self.request_id {
            Some(id) => write!(f, " (request {id})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once() {
        // The match fails to compile when a code is added; its position
        // must then be in ALL too.
        let position = |code: ErrorCode| match code {
            ErrorCode::InvalidRequest => 0,
            ErrorCode::Unauthorized => 1,
            ErrorCode::Forbidden => 2,
            ErrorCode::PermissionDenied => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::MethodNotAllowed => 5,
            ErrorCode::Conflict => 6,
            ErrorCode::PayloadTooLarge => 7,
            ErrorCode::InsufficientStorage => 8,
            ErrorCode::Unavailable => 9,
            ErrorCode::Internal => 10,
        };
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(position(code), index, "{code}");
        }
    }

    #[test]
    fn error_code_serializes_snake_case() {
        let body = ErrorBody::new(ErrorCode::NotFound, "sandbox abc not found");
        let json = serde_json::to_string(&body).expect("serializable");
        assert_eq!(
            json,
            r#"{"error_code":"not_found","message":"sandbox abc not found"}"#
        );
        assert_eq!(ErrorCode::PayloadTooLarge.to_string(), "payload_too_large");
        let with_id = body.with_request_id(Some("0123456789abcdef".into()));
        assert_eq!(
            serde_json::to_string(&with_id).expect("serializable"),
            r#"{"error_code":"not_found","message":"sandbox abc not found","request_id":"0123456789abcdef"}"#
        );
        assert_eq!(
            with_id.to_string(),
            "not_found: sandbox abc not found (request 0123456789abcdef)"
        );
    }
}
