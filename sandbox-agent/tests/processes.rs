//! Background processes against the real agent binary: lifecycle, logs
//! (tail, follow, several followers), stdin, signals to the whole group,
//! and the error answers.

mod common;

use bytes::Bytes;
use common::{all_events, gone_within, next_event, read_pid, TestAgent};
use http::Method;
use http_body_util::BodyExt;
use sbx_api::client::{ClientError, EventStream};
use sbx_api::{
    ErrorBody, ErrorCode, ExecEvent, LogsQuery, ProcessInfo, ProcessState, StartProcessRequest,
};
use std::time::Duration;

/// Upper bound for any single wait in these tests.
const LIMIT: Duration = common::EVENT_LIMIT;

fn shell(script: impl Into<String>) -> StartProcessRequest {
    StartProcessRequest {
        shell: Some(script.into()),
        ..StartProcessRequest::default()
    }
}

async fn start(agent: &TestAgent, request: &StartProcessRequest) -> ProcessInfo {
    agent
        .client()
        .agent()
        .start_process(request)
        .await
        .expect("process starts")
}

async fn wait(agent: &TestAgent, pid: i32) -> ProcessInfo {
    tokio::time::timeout(LIMIT, agent.client().agent().wait_process(pid))
        .await
        .expect("exits within the limit")
        .expect("wait answers")
}

async fn logs(agent: &TestAgent, pid: i32, query: &LogsQuery) -> EventStream {
    agent
        .client()
        .agent()
        .process_logs(pid, query)
        .await
        .expect("logs open")
}

fn stdout_of(events: &[ExecEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Stdout { data } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

fn stderr_of(events: &[ExecEvent]) -> String {
    events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Stderr { data } => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

/// The status and error body of a call expected to fail.
fn api_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, ErrorBody) {
    match result {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("expected an api error, got {other:?}"),
    }
}

/// Reads events until `wanted` (skipping others), within the limit.
async fn expect_event(events: &mut EventStream, wanted: &ExecEvent) {
    loop {
        match next_event(events).await {
            Some(event) if &event == wanted => return,
            Some(_) => {}
            None => panic!("stream ended before {wanted:?}"),
        }
    }
}

#[tokio::test]
async fn lifecycle_start_list_signal_wait() {
    let agent = TestAgent::start();
    let request = StartProcessRequest {
        name: Some("sleeper".into()),
        ..StartProcessRequest {
            cmd: Some(vec!["sleep".into(), "300".into()]),
            ..StartProcessRequest::default()
        }
    };
    // The raw call, to see the status code.
    let response = agent
        .client()
        .send(
            Method::POST,
            "/processes",
            Some("application/json"),
            Bytes::from(serde_json::to_vec(&request).expect("json")),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let started: ProcessInfo = serde_json::from_slice(&bytes).expect("ProcessInfo");
    assert_eq!(started.state, ProcessState::Running);
    assert_eq!(started.name.as_deref(), Some("sleeper"));
    assert_eq!(started.cmd, ["sleep", "300"]);
    assert_eq!(started.exit_code, None);

    let client = agent.client();
    let sandbox = client.agent();
    let listed = sandbox.processes().await.expect("list");
    assert!(listed.iter().any(|p| p.pid == started.pid), "{listed:?}");
    let status = sandbox.process(started.pid).await.expect("get");
    assert_eq!(status.state, ProcessState::Running);

    sandbox.signal(started.pid, "TERM").await.expect("signal");
    let exited = wait(&agent, started.pid).await;
    assert_eq!(exited.state, ProcessState::Exited);
    assert_eq!(exited.exit_code, Some(143));
    assert!(exited.exited_at.is_some());
    // Exited processes stay listed.
    let status = sandbox.process(started.pid).await.expect("get");
    assert_eq!(status.exit_code, Some(143));
    let listed = sandbox.processes().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|p| p.pid == started.pid && p.state == ProcessState::Exited),
        "{listed:?}"
    );
    assert!(gone_within(started.pid, Duration::from_secs(5)));
}

#[tokio::test]
async fn followers_get_new_output_then_exit() {
    let agent = TestAgent::start();
    let go = agent.path("go");
    let script = format!(
        "echo before; while [ ! -e {go} ]; do sleep 0.01; done; echo after; echo late >&2; exit 3",
        go = go.display()
    );
    let process = start(&agent, &shell(script)).await;
    let follow = LogsQuery {
        tail: None,
        follow: true,
    };
    // Two followers at once; both must see everything from here on.
    let mut first = logs(&agent, process.pid, &follow).await;
    let mut second = logs(&agent, process.pid, &follow).await;
    // `before` comes from the buffer or live, depending on timing.
    let before = ExecEvent::Stdout {
        data: "before\n".into(),
    };
    expect_event(&mut first, &before).await;
    expect_event(&mut second, &before).await;

    // Produced only now, after both followers are attached.
    std::fs::write(&go, b"").expect("create go file");
    for follower in [first, second] {
        let rest = all_events(follower).await;
        assert_eq!(stdout_of(&rest), "after\n", "{rest:?}");
        assert_eq!(stderr_of(&rest), "late\n", "{rest:?}");
        assert!(
            matches!(rest.last(), Some(ExecEvent::Exit { exit_code: 3, .. })),
            "{rest:?}"
        );
    }
    // Logs of an exited process end with its exit too, follow or not.
    let replay = all_events(logs(&agent, process.pid, &LogsQuery::default()).await).await;
    assert_eq!(stdout_of(&replay), "before\nafter\n");
    assert!(matches!(
        replay.last(),
        Some(ExecEvent::Exit { exit_code: 3, .. })
    ));
}

#[tokio::test]
async fn logs_of_a_running_process_end_after_the_buffer() {
    let agent = TestAgent::start();
    let ready = agent.path("ready");
    let script = format!("echo hello; touch {}; exec sleep 300", ready.display());
    let process = start(&agent, &shell(script)).await;
    read_ready(&ready);
    let mut events = logs(&agent, process.pid, &LogsQuery::default()).await;
    let mut seen = Vec::new();
    while let Some(event) = next_event(&mut events).await {
        seen.push(event);
    }
    assert_eq!(
        seen,
        [ExecEvent::Stdout {
            data: "hello\n".into()
        }]
    );
    agent
        .client()
        .agent()
        .signal(process.pid, "KILL")
        .await
        .expect("kill");
    assert_eq!(wait(&agent, process.pid).await.exit_code, Some(137));
}

fn read_ready(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn tail_returns_only_the_last_bytes() {
    let agent = TestAgent::start();
    let process = start(&agent, &shell("printf 0123456789; printf abcdef >&2")).await;
    wait(&agent, process.pid).await;
    let query = LogsQuery {
        tail: Some(4),
        follow: false,
    };
    let events = all_events(logs(&agent, process.pid, &query).await).await;
    assert_eq!(stdout_of(&events), "6789");
    assert_eq!(stderr_of(&events), "cdef");
    assert!(matches!(
        events.last(),
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));
}

#[tokio::test]
async fn stdin_reaches_the_process_and_closes() {
    let agent = TestAgent::start();
    let cat = start(
        &agent,
        &StartProcessRequest {
            cmd: Some(vec!["cat".into()]),
            ..StartProcessRequest::default()
        },
    )
    .await;
    let client = agent.client();
    let sandbox = client.agent();
    let mut follower = logs(
        &agent,
        cat.pid,
        &LogsQuery {
            tail: None,
            follow: true,
        },
    )
    .await;
    sandbox
        .write_stdin(cat.pid, Bytes::from_static(b"hello\n"), false)
        .await
        .expect("write");
    expect_event(
        &mut follower,
        &ExecEvent::Stdout {
            data: "hello\n".into(),
        },
    )
    .await;
    // Larger than a pipe buffer: it streams through while cat echoes it
    // (and the follower keeps reading, so it does not fall behind).
    let reading = tokio::spawn(all_events(follower));
    let big = vec![b'x'; 1024 * 1024];
    sandbox
        .write_stdin(cat.pid, Bytes::from(big), true)
        .await
        .expect("write and close");
    let exited = wait(&agent, cat.pid).await;
    assert_eq!(exited.exit_code, Some(0), "cat saw EOF");
    let rest = reading.await.expect("follower task");
    assert_eq!(stdout_of(&rest).len(), 1024 * 1024);
    assert!(matches!(
        rest.last(),
        Some(ExecEvent::Exit { exit_code: 0, .. })
    ));

    let (status, body) = api_error(
        sandbox
            .write_stdin(cat.pid, Bytes::from_static(b"late\n"), false)
            .await,
    );
    assert_eq!(status, 409);
    assert_eq!(body.error_code, ErrorCode::Conflict);
}

#[tokio::test]
async fn closed_stdin_is_a_conflict() {
    let agent = TestAgent::start();
    let process = start(&agent, &shell("exec sleep 300")).await;
    let client = agent.client();
    let sandbox = client.agent();
    sandbox
        .write_stdin(process.pid, Bytes::new(), true)
        .await
        .expect("close");
    let (status, body) = api_error(
        sandbox
            .write_stdin(process.pid, Bytes::from_static(b"x"), false)
            .await,
    );
    assert_eq!(status, 409);
    assert!(body.message.contains("stdin"), "{body}");
    sandbox.signal(process.pid, "9").await.expect("kill");
    wait(&agent, process.pid).await;
}

#[tokio::test]
async fn signals_reach_grandchildren() {
    let agent = TestAgent::start();
    let pidfile = agent.path("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let process = start(&agent, &shell(script)).await;
    let grandchild = read_pid(&pidfile);
    agent
        .client()
        .agent()
        .signal(process.pid, "SIGTERM")
        .await
        .expect("signal");
    assert!(
        gone_within(grandchild, Duration::from_secs(5)),
        "grandchild {grandchild} survived"
    );
    let exited = wait(&agent, process.pid).await;
    assert_eq!(exited.state, ProcessState::Exited);
}

#[tokio::test]
async fn errors_have_codes() {
    let agent = TestAgent::start();
    let client = agent.client();
    let sandbox = client.agent();
    let unknown = 999_999_999;
    let (status, body) = api_error(sandbox.process(unknown).await);
    assert_eq!((status, body.error_code), (404, ErrorCode::NotFound));
    assert!(body.message.contains("999999999"), "{body}");
    assert_eq!(api_error(sandbox.wait_process(unknown).await).0, 404);
    assert_eq!(api_error(sandbox.signal(unknown, "TERM").await).0, 404);
    assert_eq!(
        api_error(sandbox.write_stdin(unknown, Bytes::new(), true).await).0,
        404
    );
    assert_eq!(
        api_error(sandbox.process_logs(unknown, &LogsQuery::default()).await).0,
        404
    );

    let process = start(&agent, &shell("exec sleep 300")).await;
    for bad in ["NOPE", "0", "SIGFOO", ""] {
        let (status, body) = api_error(sandbox.signal(process.pid, bad).await);
        assert_eq!(
            (status, body.error_code),
            (400, ErrorCode::InvalidRequest),
            "{bad}"
        );
    }
    let raw = |method, path: String| {
        let client = agent.client();
        async move {
            let response = client
                .send(method, &path, None, Bytes::new())
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body: ErrorBody = serde_json::from_slice(&bytes).expect("an ErrorBody");
            (status, body.error_code)
        }
    };
    assert_eq!(
        raw(Method::GET, "/processes/abc".into()).await,
        (400, ErrorCode::InvalidRequest)
    );
    assert_eq!(
        raw(
            Method::GET,
            format!("/processes/{}/logs?tail=x", process.pid)
        )
        .await,
        (400, ErrorCode::InvalidRequest)
    );
    assert_eq!(
        raw(Method::DELETE, format!("/processes/{}", process.pid)).await,
        (405, ErrorCode::MethodNotAllowed)
    );
    let (status, body) = api_error(
        sandbox
            .start_process(&StartProcessRequest {
                cmd: Some(vec!["sbx-no-such-program".into()]),
                ..StartProcessRequest::default()
            })
            .await,
    );
    assert_eq!((status, body.error_code), (400, ErrorCode::InvalidRequest));
    assert!(body.message.contains("sbx-no-such-program"), "{body}");

    sandbox.signal(process.pid, "KILL").await.expect("kill");
    wait(&agent, process.pid).await;
    let (status, body) = api_error(sandbox.signal(process.pid, "TERM").await);
    assert_eq!((status, body.error_code), (409, ErrorCode::Conflict));
}

#[tokio::test]
async fn processes_can_run_as_another_user() {
    let agent = TestAgent::start();
    let request = StartProcessRequest {
        user: Some("1000:1000".into()),
        ..shell("id -u")
    };
    let process = start(&agent, &request).await;
    wait(&agent, process.pid).await;
    let events = all_events(logs(&agent, process.pid, &LogsQuery::default()).await).await;
    assert_eq!(stdout_of(&events), "1000\n");
}

// Multi-threaded: the agent's shutdown is awaited while this test blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_background_processes() {
    let mut agent = TestAgent::start();
    let pidfile = agent.path("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let process = start(&agent, &shell(script)).await;
    let grandchild = read_pid(&pidfile);
    nix::sys::signal::kill(agent.pid(), nix::sys::signal::Signal::SIGTERM)
        .expect("signal the agent");
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits within 5 s");
    assert!(status.success(), "{status}");
    for pid in [process.pid, grandchild] {
        assert!(gone_within(pid, Duration::from_secs(5)), "{pid} survived");
    }
}
