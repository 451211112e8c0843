//! Streamed `POST /exec` (`"stream": true` or `Accept: application/x-ndjson`):
//! the command's events as they happen, as NDJSON.
//!
//! A task per command (the *pump*) feeds stdin, forwards each output chunk
//! as an event into a small bounded channel, applies the timeout and sends
//! `exit` last; the response body is the channel's receiving end. So:
//! - nothing is buffered beyond [`EVENT_BUFFER`] events: when the client
//!   reads slowly the pump waits, the pipe fills and the command blocks on
//!   its next write, which is the backpressure a terminal would apply too;
//! - the timeout does not depend on the client reading;
//! - a client that goes away drops the body, hence the receiver; the pump
//!   sees its channel close (even while the command is silent), stops, and
//!   its [`GroupKillGuard`] kills the command's process group. hyper notices
//!   a closed connection while streaming a response without having to
//!   write to it (it keeps reading the socket, and EOF mid-message is an
//!   error, as half-close is off), so a silent command dies too.
//!
//! A program that cannot be run is answered as by the buffered exec, as a
//! shell would: a stream with no `start` (there is no pid), the reason as a
//! `stderr` event and `exit` 127 (not found) or 126. Invalid requests are
//! rejected with a 400 before any stream starts.

use crate::error::AgentError;
use crate::events::{OutputKind, Utf8Decoder};
use crate::exec::{command_spec, feed, not_runnable, wait_exit};
use crate::process::{self, is_program_error, GroupKillGuard, OutputStream};
use crate::Agent;
use futures_util::Stream;
use sbx_api::{ExecEvent, ExecRequest};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events in flight between the pump and the response body.
pub const EVENT_BUFFER: usize = 16;

/// Starts a validated request; its events follow as the stream is polled.
pub fn start(
    agent: &Agent,
    request: ExecRequest,
) -> Result<impl Stream<Item = ExecEvent> + Send + 'static, AgentError> {
    let spec = command_spec(agent, &request)?;
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    match process::spawn(&agent.reaper, &spec) {
        Ok(spawned) => {
            tracing::debug!(pid = spawned.pid, program = %spec.argv[0], "streamed exec started");
            tx.try_send(ExecEvent::Start { pid: spawned.pid })
                .expect("an empty channel has room");
            let timeout = request.timeout_ms.map(Duration::from_millis);
            tokio::spawn(pump(spawned, request.stdin, timeout, tx));
        }
        Err(AgentError::Spawn { program, source }) if is_program_error(&source) => {
            let result = not_runnable(&program, &source);
            for event in [
                OutputKind::Stderr.event(result.stderr),
                ExecEvent::Exit {
                    exit_code: result.exit_code,
                    duration_ms: result.duration_ms,
                    timed_out: false,
                },
            ] {
                tx.try_send(event).expect("the channel has room for two");
            }
        }
        Err(err) => return Err(err),
    }
    Ok(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    }))
}

/// Drives the command to its end, or kills it when the client is gone.
async fn pump(
    spawned: process::Spawned,
    stdin: Option<String>,
    timeout: Option<Duration>,
    tx: mpsc::Sender<ExecEvent>,
) {
    let process::Spawned {
        pid,
        started,
        stdin: stdin_pipe,
        stdout,
        stderr,
        exit,
    } = spawned;
    let mut guard = GroupKillGuard::new(pid);
    let feed_exit = exit.clone();
    let run = async {
        let ((), (), waited, ()) = tokio::join!(
            forward(stdout, OutputKind::Stdout, &tx),
            forward(stderr, OutputKind::Stderr, &tx),
            wait_exit(pid, exit, timeout),
            feed(stdin_pipe, stdin, feed_exit),
        );
        waited
    };
    let last = tokio::select! {
        waited = run => match waited {
            Ok((status, timed_out)) => {
                guard.disarm();
                ExecEvent::Exit {
                    exit_code: status.code(),
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    timed_out,
                }
            }
            // The guard kills a command whose exit we can no longer see.
            Err(err) => ExecEvent::Error {
                error_code: err.error_code(),
                message: err.to_string(),
            },
        },
        () = tx.closed() => {
            tracing::debug!(pid, "stream client went away");
            return;
        }
    };
    let _ = tx.send(last).await;
}

/// Sends one stream's output as events until it ends or the client leaves.
async fn forward(mut stream: OutputStream, kind: OutputKind, tx: &mpsc::Sender<ExecEvent>) {
    let mut decoder = Utf8Decoder::default();
    while let Some(chunk) = stream.next_chunk().await {
        let text = decoder.decode(&chunk);
        if !text.is_empty() && tx.send(kind.event(text)).await.is_err() {
            return;
        }
    }
    let rest = decoder.finish();
    if !rest.is_empty() {
        let _ = tx.send(kind.event(rest)).await;
    }
}
