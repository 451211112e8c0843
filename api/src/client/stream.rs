//! Reading streamed response bodies: NDJSON streams and raw bytes.
//!
//! One line splitter serves every NDJSON route (exec and process logs,
//! lifecycle events); only the item type differs.

use super::ClientError;
use crate::{Event, ExecEvent};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// A response body read frame by frame, never collected whole.
#[derive(Debug)]
pub struct ByteStream {
    body: Incoming,
    endpoint: String,
}

impl ByteStream {
    pub(crate) fn new(body: Incoming, endpoint: String) -> Self {
        Self { body, endpoint }
    }

    /// The next chunk of data, or `None` at the end of the body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        while let Some(frame) = self.body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                endpoint: self.endpoint.clone(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
        Ok(None)
    }

    /// Reads the rest of the body into memory (for small bodies and tests).
    pub async fn bytes(mut self) -> Result<Bytes, ClientError> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }

    /// The underlying body, e.g. to forward it as it is.
    pub fn into_inner(self) -> Incoming {
        self.body
    }
}

/// An NDJSON stream: one `T` per line, read as the lines arrive.
#[derive(Debug)]
pub struct NdjsonStream<T> {
    bytes: ByteStream,
    pending: BytesMut,
    item: PhantomData<fn() -> T>,
}

/// An NDJSON stream of [`ExecEvent`]s (streamed exec, process logs).
pub type EventStream = NdjsonStream<ExecEvent>;

/// An NDJSON stream of lifecycle [`Event`]s (`GET /v1/events`).
pub type LifecycleEvents = NdjsonStream<Event>;

/// An NDJSON stream of [`crate::PullEvent`]s (an image pull).
pub type PullEvents = NdjsonStream<crate::PullEvent>;

/// An NDJSON stream of [`crate::BuildEvent`]s (a Dockerfile build).
pub type BuildEvents = NdjsonStream<crate::BuildEvent>;

impl<T: DeserializeOwned> NdjsonStream<T> {
    pub(crate) fn new(bytes: ByteStream) -> Self {
        Self {
            bytes,
            pending: BytesMut::new(),
            item: PhantomData,
        }
    }

    /// The next item, or `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            if let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending.split_to(newline + 1);
                let line = &line[..newline];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(line)?));
            }
            match self.bytes.next_chunk().await? {
                Some(chunk) => self.pending.extend_from_slice(chunk.chunk()),
                None if self.pending.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => {
                    let rest = self.pending.split();
                    return Ok(Some(serde_json::from_slice(&rest)?));
                }
            }
        }
    }

    /// Reads every remaining item.
    pub async fn collect(mut self) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await? {
            items.push(item);
        }
        Ok(items)
    }
}
