//! The Connect protocol as E2B's SDKs speak it to envd: the JSON codec
//! only, unary calls and server streams.
//!
//! - A unary call is a POST of `application/json`; the answer is the
//!   message as JSON with 200, or an error `{code, message}` with the HTTP
//!   status Connect gives the code.
//! - A server stream is a POST of `application/connect+json` whose body is
//!   one enveloped message; the answer is 200 and a sequence of envelopes
//!   (a flags byte, a big-endian u32 length, the JSON), ending with one
//!   whose flags have 0x02 set and whose JSON is `{}` or `{"error": …}`.
//!   Errors after the head are only ever in that last envelope.
//!
//! Compressed envelopes (flag 0x01) are refused: the SDKs do not compress
//! requests unless asked, and nothing here asks.

use super::error::E2bError;
use super::sbx::read_bounded;
use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sbx_api::e2b::EndOfStream;
use sbx_api::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest request message; envd's requests are small (stdin chunks
/// included).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END_STREAM: u8 = 0x02;
const STREAM_CONTENT_TYPE: &str = "application/connect+json";
/// How many frames may wait for a slow client before the writer waits.
const STREAM_BUFFER: usize = 16;

/// Connect's name for an error code.
pub fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidRequest => "invalid_argument",
        ErrorCode::Unauthorized => "unauthenticated",
        ErrorCode::Forbidden | ErrorCode::PermissionDenied => "permission_denied",
        ErrorCode::NotFound => "not_found",
        ErrorCode::MethodNotAllowed => "unimplemented",
        ErrorCode::Conflict => "failed_precondition",
        ErrorCode::PayloadTooLarge | ErrorCode::InsufficientStorage => "resource_exhausted",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
    }
}

/// The HTTP status of a unary error, by Connect's table.
fn unary_status(code: &str) -> StatusCode {
    match code {
        "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "not_found" | "unimplemented" => StatusCode::NOT_FOUND,
        "already_exists" | "aborted" => StatusCode::CONFLICT,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A unary answer.
pub fn unary<T: Serialize>(result: Result<T, E2bError>) -> Response {
    match result {
        Ok(message) => axum::Json(message).into_response(),
        Err(error) => unary_error(error.into_connect()),
    }
}

pub fn unary_error(error: sbx_api::e2b::ConnectError) -> Response {
    (unary_status(error.code), axum::Json(error)).into_response()
}

/// A unary request's message; an empty body is the message's defaults.
pub async fn read_unary<T: DeserializeOwned + Default>(body: Body) -> Result<T, E2bError> {
    let bytes = read_bounded(body, MAX_REQUEST_BYTES).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    parse(&bytes)
}

/// A server stream's one request message, out of its envelope.
pub async fn read_enveloped<T: DeserializeOwned + Default>(body: Body) -> Result<T, E2bError> {
    let bytes = read_bounded(body, MAX_REQUEST_BYTES).await?;
    let Some((&flags, rest)) = bytes.split_first() else {
        return Ok(T::default());
    };
    if flags & FLAG_COMPRESSED != 0 {
        return Err(E2bError::invalid("compressed messages are not supported"));
    }
    let (length, message) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| E2bError::invalid("a truncated envelope"))?;
    let length = u32::from_be_bytes(*length) as usize;
    let message = message
        .get(..length)
        .ok_or_else(|| E2bError::invalid("a truncated envelope"))?;
    if message.is_empty() {
        return Ok(T::default());
    }
    parse(message)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, E2bError> {
    serde_json::from_slice(bytes)
        .map_err(|err| E2bError::invalid(format!("a malformed message: {err}")))
}

/// `Connect-Timeout-Ms`: how long the caller gives the call.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// The writing end of a server stream; dropping it without [`end`]
/// (Stream::end) ends the stream with an `internal` error.
pub struct Stream {
    frames: mpsc::Sender<Bytes>,
    ended: bool,
}

impl Stream {
    /// A stream and the response that carries it. The writer learns that
    /// the client left when a send fails.
    pub fn open() -> (Stream, Response) {
        let (frames, mut pending) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        let body = futures_util::stream::poll_fn(move |cx| {
            pending
                .poll_recv(cx)
                .map(|frame| frame.map(Ok::<_, std::io::Error>))
        });
        let response = (
            [(CONTENT_TYPE, STREAM_CONTENT_TYPE)],
            Body::from_stream(body),
        )
            .into_response();
        (
            Stream {
                frames,
                ended: false,
            },
            response,
        )
    }

    /// Sends one message; false once the client has left.
    pub async fn send(&self, message: &impl Serialize) -> bool {
        match serde_json::to_vec(message) {
            Ok(json) => self.frames.send(envelope(0, &json)).await.is_ok(),
            Err(_) => false,
        }
    }

    /// Resolves once the client has left (the response body was dropped),
    /// so that a writer waiting on something else notices.
    pub async fn client_left(&self) {
        self.frames.closed().await;
    }

    /// Ends the stream, with an error or without.
    pub async fn end(mut self, error: Option<E2bError>) {
        self.ended = true;
        let end = EndOfStream {
            error: error.map(E2bError::into_connect),
        };
        let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
        let _ = self.frames.send(envelope(FLAG_END_STREAM, &json)).await;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.ended {
            let end = br#"{"error":{"code":"internal","message":"the stream ended early"}}"#;
            let _ = self.frames.try_send(envelope(FLAG_END_STREAM, end));
        }
    }
}

/// A stream that fails before its first message: Connect allows the error
/// as the whole answer, in the end envelope.
pub fn stream_error(error: E2bError) -> Response {
    let end = EndOfStream {
        error: Some(error.into_connect()),
    };
    let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
    (
        [(CONTENT_TYPE, STREAM_CONTENT_TYPE)],
        envelope(FLAG_END_STREAM, &json),
    )
        .into_response()
}

fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + json.len());
    frame.push(flags);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(json);
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbx_api::e2b::StartRequest;

    #[tokio::test]
    async fn an_enveloped_request_is_read_and_a_compressed_one_refused() {
        let json = br#"{"process":{"cmd":"/bin/bash","args":["-c","echo hi"]},"stdin":false}"#;
        let request: StartRequest = read_enveloped(Body::from(envelope(0, json)))
            .await
            .expect("a valid envelope");
        assert_eq!(request.process.cmd, "/bin/bash");
        assert_eq!(request.process.args, ["-c", "echo hi"]);
        assert_eq!(request.stdin, Some(false));

        let compressed =
            read_enveloped::<StartRequest>(Body::from(envelope(FLAG_COMPRESSED, json))).await;
        assert!(matches!(compressed, Err(E2bError::Invalid(_))));
        let truncated =
            read_enveloped::<StartRequest>(Body::from(envelope(0, json).slice(..20))).await;
        assert!(matches!(truncated, Err(E2bError::Invalid(_))));
    }

    #[tokio::test]
    async fn a_stream_ends_with_the_end_flag_even_when_its_writer_is_dropped() {
        let (stream, response) = Stream::open();
        assert!(
            stream
                .send(&serde_json::json!({"event": {"start": {"pid": 7}}}))
                .await
        );
        drop(stream);
        let body = read_bounded(response.into_body(), 1 << 20)
            .await
            .expect("the body");
        let first_len = u32::from_be_bytes(body[1..5].try_into().expect("a length")) as usize;
        assert_eq!(body[0], 0);
        assert_eq!(&body[5..5 + first_len], br#"{"event":{"start":{"pid":7}}}"#);
        let end = &body[5 + first_len..];
        assert_eq!(end[0], FLAG_END_STREAM);
        let end_json: serde_json::Value = serde_json::from_slice(&end[5..]).expect("JSON");
        assert_eq!(end_json["error"]["code"], "internal");
    }
}
