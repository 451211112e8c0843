//! A background process's kept output, and reading it back as events
//! (`GET /processes/{pid}/logs`).

use super::{Live, Process};
use crate::events::{OutputKind, Utf8Decoder, MAX_EVENT_BYTES};
use futures_util::Stream;
use sbx_api::{ExecEvent, LogsQuery, PROCESS_LOG_CAP};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// The kept output of both streams.
#[derive(Debug, Default)]
pub(super) struct Output {
    stdout: Ring,
    stderr: Ring,
}

impl Output {
    pub(super) fn ring(&mut self, kind: OutputKind) -> &mut Ring {
        match kind {
            OutputKind::Stdout => &mut self.stdout,
            OutputKind::Stderr => &mut self.stderr,
        }
    }

    /// Forgets everything (an old exited process's logs).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The last [`PROCESS_LOG_CAP`] bytes of one stream. Grows with the output
/// and never beyond the cap (a power of two, so the deque's allocation
/// stops exactly there).
#[derive(Debug, Default)]
pub(super) struct Ring {
    data: VecDeque<u8>,
    /// Older bytes were dropped, so the first byte may be mid-character.
    cut: bool,
}

impl Ring {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(PROCESS_LOG_CAP)..];
        let overflow = (self.data.len() + bytes.len()).saturating_sub(PROCESS_LOG_CAP);
        if overflow > 0 {
            self.data.drain(..overflow);
            self.cut = true;
        }
        self.data.extend(bytes);
    }

    /// The last `limit` bytes (all when `None`), starting at a character
    /// boundary when the start was cut.
    fn tail(&self, limit: Option<usize>) -> Vec<u8> {
        let len = self.data.len();
        let keep = limit.map_or(len, |limit| limit.min(len));
        let cut = self.cut || keep < len;
        let mut tail: Vec<u8> = self.data.range(len - keep..).copied().collect();
        if cut {
            // UTF-8 continuation bytes are 0b10xx_xxxx; a character has at
            // most three of them.
            let partial = tail
                .iter()
                .take(3)
                .take_while(|&&byte| byte & 0xc0 == 0x80)
                .count();
            tail.drain(..partial);
        }
        tail
    }
}

/// The events of one `logs` request: the kept output, then (when
/// following) live output, then `exit` once the process has ended.
#[derive(Debug)]
pub struct LogReader {
    process: Arc<Process>,
    queue: VecDeque<ExecEvent>,
    live: Option<broadcast::Receiver<Live>>,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
}

impl LogReader {
    pub fn open(process: Arc<Process>, query: &LogsQuery) -> Self {
        // One critical section: see the module docs of `processes`.
        let (out, err, ended, live) = {
            let mut output = process.lock_output();
            let out = output.ring(OutputKind::Stdout).tail(query.tail);
            let err = output.ring(OutputKind::Stderr).tail(query.tail);
            let ended = process.ended().is_some();
            let live = (query.follow && !ended).then(|| process.live.subscribe());
            (out, err, ended, live)
        };
        let mut reader = Self {
            process,
            queue: VecDeque::new(),
            live,
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
        };
        for (kind, bytes) in [(OutputKind::Stdout, out), (OutputKind::Stderr, err)] {
            for piece in bytes.chunks(MAX_EVENT_BYTES) {
                reader.queue_output(kind, piece);
            }
        }
        if ended {
            reader.queue_end();
        } else if reader.live.is_none() {
            // A character still being written is not part of this answer.
            reader.stdout.discard();
            reader.stderr.discard();
        }
        reader
    }

    fn decoder(&mut self, kind: OutputKind) -> &mut Utf8Decoder {
        match kind {
            OutputKind::Stdout => &mut self.stdout,
            OutputKind::Stderr => &mut self.stderr,
        }
    }

    fn queue_output(&mut self, kind: OutputKind, bytes: &[u8]) {
        let text = self.decoder(kind).decode(bytes);
        if !text.is_empty() {
            self.queue.push_back(kind.event(text));
        }
    }

    /// The rest of held-back output, then `exit`.
    fn queue_end(&mut self) {
        for kind in [OutputKind::Stdout, OutputKind::Stderr] {
            let rest = self.decoder(kind).finish();
            if !rest.is_empty() {
                self.queue.push_back(kind.event(rest));
            }
        }
        if let Some(ended) = self.process.ended() {
            self.queue.push_back(ExecEvent::Exit {
                exit_code: ended.exit_code,
                duration_ms: u64::try_from(ended.duration.as_millis()).unwrap_or(u64::MAX),
                timed_out: false,
            });
        }
    }

    /// The next event, `None` at the end.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(Live::Output(kind, bytes)) => self.queue_output(kind, &bytes),
                Ok(Live::Ended) | Err(RecvError::Closed) => {
                    self.live = None;
                    self.queue_end();
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(pid = self.process.pid, missed, "log follower fell behind");
                    // What was held back will not be continued.
                    self.stdout.discard();
                    self.stderr.discard();
                }
            }
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = ExecEvent> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|event| (event, reader))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let mut ring = Ring::default();
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.tail(None), b"hello world");
        assert_eq!(ring.tail(Some(5)), b"world");
        assert_eq!(ring.tail(Some(100)), b"hello world");
        ring.push(&vec![b'x'; PROCESS_LOG_CAP]);
        assert_eq!(ring.data.len(), PROCESS_LOG_CAP);
        assert!(ring.tail(None).iter().all(|&b| b == b'x'));
        ring.push(b"end");
        let tail = ring.tail(None);
        assert_eq!(tail.len(), PROCESS_LOG_CAP);
        assert!(tail.ends_with(b"xend"));
        assert!(ring.data.capacity() <= PROCESS_LOG_CAP);
    }

    #[test]
    fn oversized_chunks_keep_their_end() {
        let mut ring = Ring::default();
        let mut chunk = vec![b'a'; PROCESS_LOG_CAP + 10];
        chunk.extend_from_slice(b"z");
        ring.push(&chunk);
        let tail = ring.tail(None);
        assert_eq!(tail.len(), PROCESS_LOG_CAP);
        assert_eq!(tail.last(), Some(&b'z'));
    }

    #[test]
    fn cut_tails_start_at_a_character() {
        let mut ring = Ring::default();
        ring.push("a€b".as_bytes());
        // "€" is e2 82 ac: the last 3 bytes start with its 82.
        assert_eq!(ring.tail(Some(3)), b"b");
        assert_eq!(ring.tail(Some(4)), "€b".as_bytes());
    }
}
