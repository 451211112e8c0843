//! envd's `process` service on sbx's background processes.
//!
//! `Start` starts an sbx process (`POST /v1/…/processes`) and streams its
//! followed logs as Connect messages: a `start` with the pid first, the
//! output as it happens, an `end` with the exit code last. The process
//! does not depend on the stream: a client that leaves (a background
//! command in the SDKs) leaves it running, as envd does. A stream deadline
//! (`Connect-Timeout-Ms`, the SDKs' command `timeout`) kills the process
//! and ends the stream with `deadline_exceeded`.
//!
//! Without `stdin: true` the process's stdin is closed at once, so a
//! command that reads it sees end of file rather than waiting forever.
//! A tag is kept as the sbx process's name, which is how a tag selects a
//! process later.

use super::connect::{self, Stream};
use super::envd::Envd;
use super::error::E2bError;
use super::filesystem::absolute;
use super::sbx::{ndjson, NO_BODY};
use super::E2b;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use futures_util::StreamExt;
use sbx_api::e2b::{
    DataEvent, Empty, EndEvent, ListResponse, ProcessConfig, ProcessEvent, ProcessInfo,
    ProcessRequest, ProcessSelector, ProcessStreamMessage, SendInputRequest, SendSignalRequest,
    StartRequest,
};
use sbx_api::{ExecEvent, ProcessList, ProcessState, SignalRequest, StartProcessRequest};
use std::time::Duration;

pub async fn start(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    let envd = match Envd::new(&state, &headers, "process.Start") {
        Ok(envd) => envd,
        Err(error) => return connect::stream_error(error),
    };
    let asked: StartRequest = match connect::read_enveloped(body).await {
        Ok(asked) => asked,
        Err(error) => return connect::stream_error(error),
    };
    match spawn(&envd, asked).await {
        Ok(pid) => follow(envd, pid, &headers, None),
        Err(error) => connect::stream_error(error),
    }
}

async fn spawn(envd: &Envd, asked: StartRequest) -> Result<u32, E2bError> {
    if asked.pty.is_some() {
        return Err(E2bError::invalid(
            "terminals are not served over envd here: sbx's are at /v1/sandboxes/{id}/pty",
        ));
    }
    let ProcessConfig {
        cmd,
        args,
        envs,
        cwd,
    } = asked.process;
    let request = StartProcessRequest {
        cmd: Some(std::iter::once(cmd).chain(args).collect()),
        cwd: Some(absolute(
            cwd.as_deref().unwrap_or_default(),
            envd.user.as_deref(),
        )),
        env: envs,
        user: envd.user.clone(),
        name: asked.tag,
        shell: None,
    };
    let started: sbx_api::ProcessInfo = envd
        .sbx
        .json(Method::POST, &envd.uri("processes"), Some(&request))
        .await?;
    let pid = pid_of(started.pid)?;
    if asked.stdin != Some(true) {
        let closed = envd
            .sbx
            .call(
                Method::POST,
                &envd.uri(&format!("processes/{pid}/stdin?close=true")),
                NO_BODY,
            )
            .await;
        match closed {
            // Exited already: there is no stdin left to close.
            Err(E2bError::Api(body)) if body.error_code == sbx_api::ErrorCode::Conflict => {}
            other => other?,
        }
    }
    Ok(pid)
}

fn pid_of(pid: i32) -> Result<u32, E2bError> {
    u32::try_from(pid).map_err(|_| E2bError::internal(format!("a process with pid {pid}")))
}

/// The stream of `pid`'s events, from its start (`tail: None`) or from
/// now (`Some(0)`).
fn follow(envd: Envd, pid: u32, headers: &HeaderMap, tail: Option<usize>) -> Response {
    let deadline = connect::timeout(headers);
    let keepalive = headers
        .get("keepalive-ping-interval")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|&seconds| seconds > 0)
        .map(Duration::from_secs);
    let (stream, response) = Stream::open();
    tokio::spawn(relay(envd, pid, stream, deadline, keepalive, tail));
    response
}

fn message(event: ProcessEvent) -> ProcessStreamMessage {
    ProcessStreamMessage { event }
}

/// Relays the process's logs until its exit, the deadline, or the
/// client's leaving (a failed send).
async fn relay(
    envd: Envd,
    pid: u32,
    stream: Stream,
    deadline: Option<Duration>,
    keepalive: Option<Duration>,
    tail: Option<usize>,
) {
    if !stream.send(&message(ProcessEvent::Start { pid })).await {
        return;
    }
    let query = match tail {
        Some(bytes) => format!("follow=true&tail={bytes}"),
        None => "follow=true".to_string(),
    };
    let logs = envd
        .sbx
        .send(
            Method::GET,
            &envd.uri(&format!("processes/{pid}/logs?{query}")),
            Body::empty(),
            None,
        )
        .await;
    let logs = match logs {
        Ok(logs) => logs,
        Err(error) => return stream.end(Some(error)).await,
    };
    let mut events = ndjson::<ExecEvent>(logs.into_body());
    let expired = async {
        match deadline {
            Some(deadline) => tokio::time::sleep(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let mut ping = tokio::time::interval(keepalive.unwrap_or(Duration::from_secs(3600)));
    ping.tick().await;
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else {
                    return stream
                        .end(Some(E2bError::Unavailable("the process's output ended before its exit".into())))
                        .await;
                };
                match event {
                    Ok(ExecEvent::Start { .. }) => {}
                    Ok(ExecEvent::Stdout { data }) => {
                        if !stream.send(&message(ProcessEvent::Data(DataEvent::Stdout(data.into_bytes())))).await {
                            return;
                        }
                    }
                    Ok(ExecEvent::Stderr { data }) => {
                        if !stream.send(&message(ProcessEvent::Data(DataEvent::Stderr(data.into_bytes())))).await {
                            return;
                        }
                    }
                    Ok(ExecEvent::Exit { exit_code, timed_out, .. }) => {
                        let end = EndEvent {
                            exit_code,
                            exited: !timed_out,
                            status: format!("exit status {exit_code}"),
                            error: None,
                        };
                        stream.send(&message(ProcessEvent::End(end))).await;
                        return stream.end(None).await;
                    }
                    Ok(ExecEvent::Error { error_code, message }) => {
                        return stream
                            .end(Some(E2bError::Api(sbx_api::ErrorBody::new(error_code, message))))
                            .await;
                    }
                    Err(error) => return stream.end(Some(error)).await,
                }
            }
            // A client that left (a background command's handle
            // disconnected) leaves the process running: the deadline is
            // the call's, and the call is over.
            () = stream.client_left() => return,
            () = &mut expired => {
                let kill = SignalRequest { signal: "SIGKILL".to_string() };
                let _ = envd
                    .sbx
                    .call(Method::POST, &envd.uri(&format!("processes/{pid}/signal")), Some(&kill))
                    .await;
                return stream
                    .end(Some(E2bError::Deadline(format!("process {pid} was killed at the call's deadline"))))
                    .await;
            }
            _ = ping.tick(), if keepalive.is_some() => {
                let alive = serde_json::json!({ "event": { "keepalive": {} } });
                if !stream.send(&alive).await {
                    return;
                }
            }
        }
    }
}

/// A selector's pid: the pid itself, or the running process named by the
/// tag.
async fn resolve(envd: &Envd, selector: &ProcessSelector) -> Result<u32, E2bError> {
    if let Some(pid) = selector.pid {
        return Ok(pid);
    }
    let Some(tag) = &selector.tag else {
        return Err(E2bError::invalid("name a process by pid or tag"));
    };
    let listed: ProcessList = envd
        .sbx
        .json(Method::GET, &envd.uri("processes"), NO_BODY)
        .await?;
    let found = listed.processes.into_iter().find(|process| {
        process.state == ProcessState::Running && process.name.as_deref() == Some(tag.as_str())
    });
    match found {
        Some(process) => pid_of(process.pid),
        None => Err(E2bError::not_found(format!(
            "no running process is tagged {tag}"
        ))),
    }
}

pub async fn connect(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    let envd = match Envd::new(&state, &headers, "process.Connect") {
        Ok(envd) => envd,
        Err(error) => return connect::stream_error(error),
    };
    let asked: ProcessRequest = match connect::read_enveloped(body).await {
        Ok(asked) => asked,
        Err(error) => return connect::stream_error(error),
    };
    let pid = match resolve(&envd, &asked.process).await {
        Ok(pid) => pid,
        Err(error) => return connect::stream_error(error),
    };
    // Known to the agent, or the stream would only fail after its start.
    let found = envd
        .sbx
        .call(Method::GET, &envd.uri(&format!("processes/{pid}")), NO_BODY)
        .await;
    if let Err(error) = found {
        return connect::stream_error(error);
    }
    follow(envd, pid, &headers, Some(0))
}

pub async fn list(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(list_running(&state, &headers, body).await)
}

async fn list_running(
    state: &E2b,
    headers: &HeaderMap,
    body: Body,
) -> Result<ListResponse, E2bError> {
    let envd = Envd::new(state, headers, "process.List")?;
    let _: Empty = connect::read_unary(body).await?;
    let listed: ProcessList = envd
        .sbx
        .json(Method::GET, &envd.uri("processes"), NO_BODY)
        .await?;
    let processes = listed
        .processes
        .into_iter()
        .filter(|process| process.state == ProcessState::Running)
        .filter_map(|process| {
            let pid = u32::try_from(process.pid).ok()?;
            let mut argv = process.cmd.into_iter();
            Some(ProcessInfo {
                config: ProcessConfig {
                    cmd: argv.next().unwrap_or_default(),
                    args: argv.collect(),
                    ..ProcessConfig::default()
                },
                pid,
                tag: process.name,
            })
        })
        .collect();
    Ok(ListResponse { processes })
}

pub async fn send_input(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(write_stdin(&state, &headers, body).await)
}

async fn write_stdin(state: &E2b, headers: &HeaderMap, body: Body) -> Result<Empty, E2bError> {
    let envd = Envd::new(state, headers, "process.SendInput")?;
    let asked: SendInputRequest = connect::read_unary(body).await?;
    if asked.input.pty.is_some() {
        return Err(E2bError::invalid(
            "terminal input is served at /v1/sandboxes/{id}/pty",
        ));
    }
    let pid = resolve(&envd, &asked.process).await?;
    let input = asked.input.stdin.unwrap_or_default();
    envd.sbx
        .send(
            Method::POST,
            &envd.uri(&format!("processes/{pid}/stdin")),
            Body::from(input),
            Some("application/octet-stream"),
        )
        .await?;
    Ok(Empty {})
}

pub async fn close_stdin(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(close(&state, &headers, body).await)
}

async fn close(state: &E2b, headers: &HeaderMap, body: Body) -> Result<Empty, E2bError> {
    let envd = Envd::new(state, headers, "process.CloseStdin")?;
    let asked: ProcessRequest = connect::read_unary(body).await?;
    let pid = resolve(&envd, &asked.process).await?;
    envd.sbx
        .call(
            Method::POST,
            &envd.uri(&format!("processes/{pid}/stdin?close=true")),
            NO_BODY,
        )
        .await?;
    Ok(Empty {})
}

pub async fn send_signal(State(state): State<E2b>, headers: HeaderMap, body: Body) -> Response {
    connect::unary(signal(&state, &headers, body).await)
}

async fn signal(state: &E2b, headers: &HeaderMap, body: Body) -> Result<Empty, E2bError> {
    let envd = Envd::new(state, headers, "process.SendSignal")?;
    let asked: SendSignalRequest = connect::read_unary(body).await?;
    let signal = asked
        .signal
        .ok_or_else(|| E2bError::invalid("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL"))?;
    let pid = resolve(&envd, &asked.process).await?;
    let request = SignalRequest {
        signal: signal.name().to_string(),
    };
    let signalled = envd
        .sbx
        .call(
            Method::POST,
            &envd.uri(&format!("processes/{pid}/signal")),
            Some(&request),
        )
        .await;
    match signalled {
        // An exited process is no process to envd: the SDKs' kill answers
        // False on not_found.
        Err(E2bError::Api(body)) if body.error_code == sbx_api::ErrorCode::Conflict => {
            Err(E2bError::not_found(body.message))
        }
        other => other.map(|()| Empty {}),
    }
}
