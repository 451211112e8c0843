//! Streamed exec against the real agent binary: event order, liveness
//! (output arrives while the command runs), UTF-8 across reads, and the
//! command dying with its client.

mod common;

use bytes::Bytes;
use common::{all_events, gone_within, next_event, read_pid, TestAgent};
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use sbx_api::client::{ClientError, EventStream};
use sbx_api::{ErrorCode, ExecEvent, ExecRequest, NDJSON};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Upper bound for any single wait in these tests.
const LIMIT: Duration = common::EVENT_LIMIT;

async fn open(agent: &TestAgent, request: &ExecRequest) -> EventStream {
    agent
        .client()
        .agent()
        .exec_stream(request)
        .await
        .expect("stream opens")
}

/// Concatenated stdout and stderr of `events`.
fn output(events: &[ExecEvent]) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for event in events {
        match event {
            ExecEvent::Stdout { data } => out.push_str(data),
            ExecEvent::Stderr { data } => err.push_str(data),
            _ => {}
        }
    }
    (out, err)
}

#[tokio::test]
async fn events_come_in_order_start_output_exit() {
    let agent = TestAgent::start();
    let events = all_events(
        open(
            &agent,
            &ExecRequest::shell("echo out; echo err >&2; exit 3"),
        )
        .await,
    )
    .await;
    let Some(ExecEvent::Start { pid }) = events.first() else {
        panic!("first event is not start: {events:?}");
    };
    assert!(*pid > 1);
    let Some(ExecEvent::Exit {
        exit_code,
        timed_out,
        ..
    }) = events.last()
    else {
        panic!("last event is not exit: {events:?}");
    };
    assert_eq!((*exit_code, *timed_out), (3, false));
    assert_eq!(output(&events), ("out\n".into(), "err\n".into()));
    let starts = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Start { .. }))
        .count();
    let exits = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::Exit { .. }))
        .count();
    assert_eq!((starts, exits), (1, 1), "{events:?}");
}

#[tokio::test]
async fn output_arrives_while_the_command_runs() {
    let agent = TestAgent::start();
    let opened = Instant::now();
    let mut events = open(&agent, &ExecRequest::shell("echo a; sleep 1; echo b")).await;
    let mut seen = Vec::new();
    while let Some(event) = next_event(&mut events).await {
        seen.push((opened.elapsed(), event));
    }
    let at = |wanted: &ExecEvent| {
        seen.iter()
            .find(|(_, event)| event == wanted)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no {wanted:?} in {seen:?}"))
    };
    let a = at(&ExecEvent::Stdout { data: "a\n".into() });
    let b = at(&ExecEvent::Stdout { data: "b\n".into() });
    let exit = seen.last().expect("events").0;
    assert!(matches!(
        seen.last(),
        Some((_, ExecEvent::Exit { exit_code: 0, .. }))
    ));
    // `a` is not held back until the end: it comes about a second before
    // `b` and the exit.
    assert!(
        b - a >= Duration::from_millis(700),
        "a at {a:?}, b at {b:?}"
    );
    assert!(
        exit - a >= Duration::from_millis(700),
        "a at {a:?}, exit at {exit:?}"
    );
}

#[tokio::test]
async fn accept_header_selects_the_stream() {
    let agent = TestAgent::start();
    let body = serde_json::to_vec(&ExecRequest::argv(["echo", "hi"])).expect("json");
    let request = Request::builder()
        .method(Method::POST)
        .uri("/exec")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, format!("text/plain;q=0.5, {NDJSON}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = agent
        .client()
        .send_request(request)
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_TYPE], NDJSON);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let events: Vec<ExecEvent> = std::str::from_utf8(&bytes)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event per line"))
        .collect();
    assert!(
        matches!(events.first(), Some(ExecEvent::Start { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ExecEvent::Exit { exit_code: 0, .. })),
        "{events:?}"
    );
    assert_eq!(output(&events).0, "hi\n");
}

#[tokio::test]
async fn closing_the_connection_kills_a_silent_command() {
    let agent = TestAgent::start();
    let pidfile = agent.path("sleep.pid");
    let request = ExecRequest {
        stream: true,
        ..ExecRequest::shell(format!("sleep 30 & echo $! > {}; wait", pidfile.display()))
    };
    let body = serde_json::to_vec(&request).expect("json");
    let mut socket = UnixStream::connect(&agent.socket).await.expect("connect");
    let head = format!(
        "POST /exec HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.expect("send head");
    socket.write_all(&body).await.expect("send body");
    let mut received = Vec::new();
    let leader = loop {
        let mut buf = [0; 4096];
        let n = tokio::time::timeout(LIMIT, socket.read(&mut buf))
            .await
            .expect("start within the limit")
            .expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
        if let Some(pid) = start_pid(&received) {
            break pid;
        }
    };
    let sleeper = read_pid(&pidfile);
    // The command prints nothing, so the agent has nothing to write: it
    // must notice the closed connection by itself.
    drop(socket);
    for pid in [leader, sleeper] {
        assert!(
            gone_within(pid, Duration::from_secs(5)),
            "{pid} survived its client's connection"
        );
    }
}

/// The pid of the `start` event in a raw response, once it is complete.
fn start_pid(response: &[u8]) -> Option<i32> {
    let text = String::from_utf8_lossy(response);
    let rest = &text[text.find(r#""type":"start","pid":"#)? + 21..];
    let end = rest.find('}')?;
    rest[..end].parse().ok()
}

/// What the orchestrator's bridge does when its own client leaves: drop the
/// response body of the `sbx_api` client, which closes the connection.
#[tokio::test]
async fn dropping_the_stream_kills_a_silent_command() {
    let agent = TestAgent::start();
    let pidfile = agent.path("sleep.pid");
    let request = ExecRequest::shell(format!("sleep 30 & echo $! > {}; wait", pidfile.display()));
    let mut events = open(&agent, &request).await;
    let Some(ExecEvent::Start { pid: leader }) = next_event(&mut events).await else {
        panic!("no start event");
    };
    let sleeper = read_pid(&pidfile);
    assert!(
        !gone_within(sleeper, Duration::from_millis(200)),
        "the command ended by itself"
    );
    // The command prints nothing: only the closed connection can tell the
    // agent that nobody is listening any more.
    drop(events);
    for pid in [leader, sleeper] {
        // Off the runtime: the client's connection task must keep running
        // to close the connection.
        let limit = Duration::from_secs(5);
        let gone = tokio::task::spawn_blocking(move || gone_within(pid, limit));
        assert!(gone.await.expect("wait task"), "{pid} survived its client");
    }
}

#[tokio::test]
async fn timeout_applies_to_streams() {
    let agent = TestAgent::start();
    let request = ExecRequest {
        timeout_ms: Some(300),
        ..ExecRequest::shell("echo started; sleep 30")
    };
    let events = all_events(open(&agent, &request).await).await;
    assert_eq!(output(&events).0, "started\n");
    let Some(ExecEvent::Exit {
        exit_code,
        timed_out,
        duration_ms,
    }) = events.last()
    else {
        panic!("last event is not exit: {events:?}");
    };
    assert_eq!((*exit_code, *timed_out), (137, true));
    assert!(*duration_ms >= 300, "{duration_ms}");
}

#[tokio::test]
async fn characters_split_across_reads_stay_whole() {
    let agent = TestAgent::start();
    // "€" is e2 82 ac, written in two parts a moment apart (two reads).
    let request = ExecRequest::shell(r"printf '\342\202'; sleep 0.2; printf '\254\n\377\n'");
    let events = all_events(open(&agent, &request).await).await;
    assert_eq!(output(&events).0, "€\n\u{fffd}\n", "{events:?}");
}

#[tokio::test]
async fn streams_are_not_capped() {
    let agent = TestAgent::start();
    let size = sbx_api::DEFAULT_OUTPUT_CAP + 1024 * 1024;
    let request = ExecRequest::shell(format!("head -c {size} /dev/zero | tr '\\0' a"));
    let events = all_events(open(&agent, &request).await).await;
    let (out, _) = output(&events);
    assert_eq!(out.len(), size);
    assert!(out.bytes().all(|b| b == b'a'));
    assert!(matches!(
        events.last(),
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));
}

#[tokio::test]
async fn unrunnable_programs_stream_a_shell_style_failure() {
    let agent = TestAgent::start();
    let events = all_events(open(&agent, &ExecRequest::argv(["sbx-no-such-program"])).await).await;
    assert!(
        !events.iter().any(|e| matches!(e, ExecEvent::Start { .. })),
        "{events:?}"
    );
    assert!(
        output(&events).1.contains("sbx-no-such-program"),
        "{events:?}"
    );
    assert!(matches!(
        events.last(),
        Some(ExecEvent::Exit { exit_code: 127, .. })
    ));
}

#[tokio::test]
async fn invalid_requests_are_errors_not_streams() {
    let agent = TestAgent::start();
    let request = ExecRequest {
        cwd: Some(agent.path("missing").display().to_string()),
        ..ExecRequest::argv(["true"])
    };
    match agent.client().agent().exec_stream(&request).await {
        Err(ClientError::Api { status, body }) => {
            assert_eq!(status, 400);
            assert_eq!(body.error_code, ErrorCode::InvalidRequest);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}
