//! NDJSON event streams (streamed exec, process logs) and the UTF-8
//! decoding of output chunks they carry.
//!
//! Output arrives as raw pipe reads, which may cut a multi-byte character
//! in two; [`Utf8Decoder`] holds such an incomplete tail back until the
//! next chunk instead of turning each half into U+FFFD. Bytes that can
//! never be UTF-8 become U+FFFD, as in the buffered exec.
//!
//! Each event is one body frame, and hyper writes and flushes a frame as
//! soon as it gets it, so a line the command prints reaches the client
//! without waiting for more.
//!
//! No heartbeat is needed to notice a client that leaves a silent stream:
//! hyper keeps reading the socket while it streams a response (half-close
//! is off) and treats EOF mid-message as an error, which drops the body —
//! and the `sbx_api` client closes its connection when it drops a response
//! body. Both are checked by the agent tests.

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sbx_api::{ExecEvent, NDJSON};
use std::convert::Infallible;

/// Largest slice of buffered output put into one event, so a 1 MiB log
/// replay does not become a single 1 MiB line.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Stdout,
    Stderr,
}

impl OutputKind {
    /// The event carrying `data` from this stream.
    pub fn event(self, data: String) -> ExecEvent {
        match self {
            OutputKind::Stdout => ExecEvent::Stdout { data },
            OutputKind::Stderr => ExecEvent::Stderr { data },
        }
    }
}

/// A 200 response streaming `events` as NDJSON, one event per frame.
pub fn ndjson_response<S>(events: S) -> Response
where
    S: Stream<Item = ExecEvent> + Send + 'static,
{
    let lines = events.map(|event| Ok::<_, Infallible>(event_line(&event)));
    ([(CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response()
}

fn event_line(event: &ExecEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).expect("events serialize to json");
    line.push(b'\n');
    Bytes::from(line)
}

/// Incremental UTF-8 decoding; see the module docs.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    /// The start of a character whose other bytes have not arrived yet (at
    /// most three bytes).
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes `bytes` after whatever was held back, holding back a
    /// trailing incomplete character in turn.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        let joined;
        let mut rest = if self.pending.is_empty() {
            bytes
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(bytes);
            joined = pending;
            &joined[..]
        };
        let mut text = String::with_capacity(rest.len());
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    return text;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).expect("checked valid prefix"));
                    match err.error_len() {
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[invalid..];
                        }
                        None => {
                            self.pending = after.to_vec();
                            return text;
                        }
                    }
                }
            }
        }
    }

    /// The stream is over: whatever was held back can never complete.
    pub fn finish(&mut self) -> String {
        let pending = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&pending).into_owned()
    }

    /// Forgets a held-back partial character (output that will never be
    /// continued for this reader).
    pub fn discard(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_are_joined() {
        let text = "añ€😀";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut decoder = Utf8Decoder::default();
            let mut out = decoder.decode(&bytes[..split]);
            out.push_str(&decoder.decode(&bytes[split..]));
            out.push_str(&decoder.finish());
            assert_eq!(out, text, "split at {split}");
        }
        let mut decoder = Utf8Decoder::default();
        let out: String = bytes.iter().map(|b| decoder.decode(&[*b])).collect();
        assert_eq!(out, text, "byte by byte");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.decode(b"a\xffb\xc3"), "a\u{fffd}b");
        assert_eq!(decoder.decode(b"("), "\u{fffd}(");
        assert_eq!(decoder.decode(b"\xe2\x82"), "");
        assert_eq!(decoder.finish(), "\u{fffd}");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn events_are_json_lines() {
        let line = event_line(&OutputKind::Stderr.event("x\n".into()));
        assert_eq!(&line[..], b"{\"type\":\"stderr\",\"data\":\"x\\n\"}\n");
    }
}
