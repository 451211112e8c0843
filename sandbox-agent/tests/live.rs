//! Terminals and shell sessions against the real agent binary: a bash on a
//! pty driven over a WebSocket (typing, resize, Ctrl-C, exit, reattach,
//! several viewers, delete, shutdown), and persistent sessions with each
//! trap a marker-based design falls into (stdin readers, no final newline,
//! marker-like output, `exit`, background jobs, timeouts, signals).

mod common;

use common::{all_events, gone_within, next_event, TestAgent, EVENT_LIMIT};
use futures_util::{SinkExt, StreamExt};
use http::Method;
use sbx_api::client::ClientError;
use sbx_api::{
    CreatePtyRequest, CreateSessionRequest, ErrorCode, ExecEvent, ExecResult, PtyControl, PtySize,
    SessionExecRequest,
};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Upper bound for any single wait in these tests.
const LIMIT: Duration = EVENT_LIMIT;

/// The status and error code of a call expected to fail.
fn api_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, ErrorCode) {
    match result {
        Err(ClientError::Api { status, body }) => (status, body.error_code),
        other => panic!("expected an api error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- terminals

/// A bash without rc files, so the tests do not depend on the host's.
fn bash_pty() -> CreatePtyRequest {
    CreatePtyRequest {
        cmd: Some(
            ["/bin/bash", "--norc", "--noprofile", "-i"]
                .map(String::from)
                .to_vec(),
        ),
        ..CreatePtyRequest::shell(80, 24)
    }
}

async fn create_pty(agent: &TestAgent, request: &CreatePtyRequest) -> sbx_api::Pty {
    agent
        .client()
        .agent()
        .create_pty(request)
        .await
        .expect("terminal starts")
}

/// One WebSocket viewer, with everything it has been sent so far.
struct Viewer {
    ws: WebSocketStream<UnixStream>,
    seen: String,
}

impl Viewer {
    async fn attach(agent: &TestAgent, tid: &str) -> Self {
        let stream = UnixStream::connect(&agent.socket)
            .await
            .expect("agent socket");
        let (ws, response) =
            tokio_tungstenite::client_async(format!("ws://sandbox-agent/pty/{tid}"), stream)
                .await
                .expect("websocket handshake");
        assert_eq!(response.status(), 101);
        Self {
            ws,
            seen: String::new(),
        }
    }

    async fn type_text(&mut self, text: &str) {
        self.ws
            .send(Message::binary(text.as_bytes().to_vec()))
            .await
            .expect("typed");
    }

    /// The next frame within the limit.
    async fn frame(&mut self) -> Option<Message> {
        tokio::time::timeout(LIMIT, self.ws.next())
            .await
            .expect("a frame within the limit")
            .map(|message| message.expect("well-formed frame"))
    }

    /// Reads output until `needle` has been seen.
    async fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.seen.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not seen in {:?}",
                self.seen
            );
            match self.frame().await {
                Some(Message::Binary(bytes)) => {
                    self.seen.push_str(&String::from_utf8_lossy(&bytes))
                }
                other => panic!("expected output, got {other:?} after {:?}", self.seen),
            }
        }
    }

    /// Reads output until `prefix` followed by digits and `=` shows up;
    /// returns the number.
    async fn wait_for_pid(&mut self, prefix: &str) -> i32 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let found = self.seen.match_indices(prefix).find_map(|(at, _)| {
                let rest = &self.seen[at + prefix.len()..];
                let digits = rest.find(|c: char| !c.is_ascii_digit())?;
                (digits > 0 && rest[digits..].starts_with('='))
                    .then(|| rest[..digits].parse().ok())
                    .flatten()
            });
            if let Some(pid) = found {
                return pid;
            }
            assert!(Instant::now() < deadline, "no pid in {:?}", self.seen);
            match self.frame().await {
                Some(Message::Binary(bytes)) => {
                    self.seen.push_str(&String::from_utf8_lossy(&bytes))
                }
                other => panic!("expected output, got {other:?} after {:?}", self.seen),
            }
        }
    }

    /// Reads the rest: output, the exit frame, then the close frame.
    async fn exit_code(&mut self) -> i32 {
        loop {
            match self.frame().await {
                Some(Message::Binary(bytes)) => {
                    self.seen.push_str(&String::from_utf8_lossy(&bytes))
                }
                Some(Message::Text(text)) => {
                    let control: PtyControl = serde_json::from_str(&text).expect("control frame");
                    let PtyControl::Exit { exit_code } = control else {
                        panic!("unexpected control frame {text}");
                    };
                    match self.frame().await {
                        Some(Message::Close(Some(frame))) => {
                            assert_eq!(frame.code, CloseCode::Normal);
                        }
                        other => panic!("expected a close frame, got {other:?}"),
                    }
                    return exit_code;
                }
                other => panic!("expected output or exit, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn pty_login_shell_runs_what_is_typed() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &CreatePtyRequest::shell(80, 24)).await;
    assert_eq!(pty.cmd, vec!["/bin/bash".to_owned()], "root's login shell");
    assert_eq!((pty.cols, pty.rows, pty.exit_code), (80, 24, None));
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    // The arithmetic shows the command ran: the echo of what was typed
    // cannot contain its result.
    viewer.type_text("echo hi-$((6*7)) $TERM $0\r").await;
    viewer.wait_for("hi-42 xterm-256color -bash").await;
    viewer.type_text("tty\r").await;
    viewer.wait_for("/dev/pts/").await;
}

#[tokio::test]
async fn pty_resize_reaches_the_program() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let client = agent.client();
    client
        .agent()
        .resize_pty(
            &pty.id,
            PtySize {
                cols: 123,
                rows: 41,
            },
        )
        .await
        .expect("resized");
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    viewer.type_text("echo cols=$(tput cols)\r").await;
    viewer.wait_for("cols=123").await;
    // The same through a text frame.
    viewer
        .ws
        .send(Message::text(r#"{"type":"resize","cols":97,"rows":33}"#))
        .await
        .expect("resize frame");
    viewer.type_text("echo size=$(stty size)\r").await;
    viewer.wait_for("size=33 97").await;
    let listed = client.agent().terminals().await.expect("list");
    assert_eq!((listed[0].cols, listed[0].rows), (97, 33));
    assert_eq!(listed[0].viewers, 1);
    let (status, code) = api_error(
        client
            .agent()
            .resize_pty(&pty.id, PtySize { cols: 0, rows: 5 })
            .await,
    );
    assert_eq!((status, code), (400, ErrorCode::InvalidRequest));
}

#[tokio::test]
async fn pty_ctrl_c_interrupts_the_foreground_command() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    viewer.type_text("sleep 100; echo not-$((1+1))\r").await;
    viewer.wait_for("sleep 100").await;
    // Let bash start the sleep in the foreground.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    viewer.type_text("\x03").await;
    viewer.type_text("echo after-$((1+1)) $?\r").await;
    viewer.wait_for("after-2 130").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!viewer.seen.contains("not-2"), "{}", viewer.seen);
}

#[tokio::test]
async fn pty_exit_sends_output_exit_code_and_close() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    viewer.type_text("echo bye-$((3*3)); exit 7\r").await;
    assert_eq!(viewer.exit_code().await, 7);
    assert!(viewer.seen.contains("bye-9"), "{}", viewer.seen);
    let listed = agent.client().agent().terminals().await.expect("list");
    assert_eq!(listed.len(), 1, "an exited terminal stays listed");
    assert_eq!(listed[0].exit_code, Some(7));
    let (status, code) = api_error(
        agent
            .client()
            .agent()
            .resize_pty(&pty.id, PtySize { cols: 10, rows: 10 })
            .await,
    );
    assert_eq!((status, code), (409, ErrorCode::Conflict));
    // Attaching afterwards replays the scrollback, then the exit.
    let mut late = Viewer::attach(&agent, &pty.id).await;
    assert_eq!(late.exit_code().await, 7);
    assert!(late.seen.contains("bye-9"), "{}", late.seen);
}

#[tokio::test]
async fn pty_signal_deaths_report_128_plus_the_signal() {
    let agent = TestAgent::start();
    let request = CreatePtyRequest {
        cmd: Some(
            ["sh", "-c", "echo ready; kill -TERM $$"]
                .map(String::from)
                .to_vec(),
        ),
        ..CreatePtyRequest::shell(80, 24)
    };
    let pty = create_pty(&agent, &request).await;
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    assert_eq!(viewer.exit_code().await, 143);
    assert!(viewer.seen.contains("ready"), "{}", viewer.seen);
}

#[tokio::test]
async fn pty_reattach_replays_the_scrollback() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let mut first = Viewer::attach(&agent, &pty.id).await;
    first.type_text("echo marker-$((40+2))\r").await;
    first.wait_for("marker-42").await;
    drop(first);
    // The terminal lives on without viewers.
    let mut second = Viewer::attach(&agent, &pty.id).await;
    match second.frame().await {
        Some(Message::Binary(bytes)) => {
            let replay = String::from_utf8_lossy(&bytes);
            assert!(replay.contains("marker-42"), "{replay}");
        }
        other => panic!("expected the scrollback first, got {other:?}"),
    }
    second.type_text("echo again-$((1+1))\r").await;
    second.wait_for("again-2").await;
}

#[tokio::test]
async fn pty_viewers_all_see_the_output() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let mut first = Viewer::attach(&agent, &pty.id).await;
    let mut second = Viewer::attach(&agent, &pty.id).await;
    second
        .type_text("for i in 1 2 3; do echo line-$i-$((i*i)); done\r")
        .await;
    for viewer in [&mut first, &mut second] {
        viewer.wait_for("line-3-9").await;
        assert!(viewer.seen.contains("line-1-1"), "{}", viewer.seen);
        assert!(viewer.seen.contains("line-2-4"), "{}", viewer.seen);
    }
    let listed = agent.client().agent().terminals().await.expect("list");
    assert_eq!(listed[0].viewers, 2);
    first.type_text("exit 3\r").await;
    assert_eq!(first.exit_code().await, 3);
    assert_eq!(second.exit_code().await, 3);
}

#[tokio::test]
async fn pty_delete_kills_the_session_and_forgets_the_terminal() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    // A job in a process group of its own: the shell's group is not enough.
    // The echo of what was typed shows `$((j+0))`; only the output has
    // the pid between the two `=`.
    viewer
        .type_text("sleep 1000 & j=$!; echo \"job=$((j+0))=\"\r")
        .await;
    let job = viewer.wait_for_pid("job=").await;
    let client = agent.client();
    client.agent().kill_pty(&pty.id).await.expect("deleted");
    let exit_code = viewer.exit_code().await;
    assert!(exit_code > 128, "killed by a signal: {exit_code}");
    assert!(gone_within(pty.pid, LIMIT), "the shell is gone");
    assert!(gone_within(job, LIMIT), "its job is gone");
    assert!(client.agent().terminals().await.expect("list").is_empty());
    let (status, code) = api_error(client.agent().kill_pty(&pty.id).await);
    assert_eq!((status, code), (404, ErrorCode::NotFound));
}

#[tokio::test]
async fn pty_attach_needs_a_handshake_and_a_known_id() {
    let agent = TestAgent::start();
    let pty = create_pty(&agent, &bash_pty()).await;
    let client = agent.client();
    let plain = client
        .send(
            Method::GET,
            &format!("/pty/{}", pty.id),
            None,
            Default::default(),
        )
        .await
        .expect("answered");
    assert_eq!(plain.status(), 400);
    let missing = client
        .send(Method::GET, "/pty/t999", None, Default::default())
        .await
        .expect("answered");
    assert_eq!(missing.status(), 404);
    let bad = CreatePtyRequest {
        cmd: Some(vec!["/nonexistent/program".into()]),
        ..CreatePtyRequest::shell(80, 24)
    };
    let (status, _) = api_error(client.agent().create_pty(&bad).await);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn pty_count_is_capped() {
    let agent = TestAgent::start();
    let sleeper = CreatePtyRequest {
        cmd: Some(["sleep", "1000"].map(String::from).to_vec()),
        ..CreatePtyRequest::shell(80, 24)
    };
    let client = agent.client();
    for _ in 0..sandbox_agent::pty::MAX_TERMINALS {
        client
            .agent()
            .create_pty(&sleeper)
            .await
            .expect("under the cap");
    }
    let (status, code) = api_error(client.agent().create_pty(&sleeper).await);
    assert_eq!((status, code), (409, ErrorCode::Conflict));
}

#[tokio::test]
async fn pty_runs_as_the_requested_user_who_owns_the_terminal() {
    let agent = TestAgent::start();
    let request = CreatePtyRequest {
        cmd: Some(
            [
                "sh",
                "-c",
                "echo \"user=$(id -u) owner=$(stat -c %u \"$(tty)\") cwd=$PWD\"",
            ]
            .map(String::from)
            .to_vec(),
        ),
        user: Some("nobody".into()),
        ..CreatePtyRequest::shell(80, 24)
    };
    let pty = create_pty(&agent, &request).await;
    let mut viewer = Viewer::attach(&agent, &pty.id).await;
    assert_eq!(viewer.exit_code().await, 0);
    // nobody's home does not exist: the terminal starts in `/`.
    assert!(
        viewer.seen.contains("user=65534 owner=65534 cwd=/\r\n"),
        "{}",
        viewer.seen
    );
}

#[test]
fn pty_commands_and_their_jobs_stop_with_the_agent() {
    let mut agent = TestAgent::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (pty, job) = runtime.block_on(async {
        let pty = create_pty(&agent, &bash_pty()).await;
        let mut viewer = Viewer::attach(&agent, &pty.id).await;
        viewer
            .type_text("sleep 1000 & j=$!; echo \"job=$((j+0))=\"\r")
            .await;
        let job = viewer.wait_for_pid("job=").await;
        (pty, job)
    });
    nix::sys::signal::kill(agent.pid(), nix::sys::signal::Signal::SIGTERM).expect("sigterm");
    let status = agent.wait_exit(LIMIT).expect("agent stops");
    assert!(status.success(), "{status}");
    assert!(gone_within(pty.pid, LIMIT), "the terminal's shell is gone");
    assert!(gone_within(job, LIMIT), "its job is gone");
}

// ----------------------------------------------------------------- sessions

async fn create_session(agent: &TestAgent) -> String {
    agent
        .client()
        .agent()
        .create_session(&CreateSessionRequest::default())
        .await
        .expect("session starts")
        .id
}

async fn run(agent: &TestAgent, sid: &str, command: &str) -> ExecResult {
    run_request(agent, sid, &SessionExecRequest::new(command)).await
}

async fn run_request(agent: &TestAgent, sid: &str, request: &SessionExecRequest) -> ExecResult {
    tokio::time::timeout(LIMIT, agent.client().agent().session_exec(sid, request))
        .await
        .expect("answers within the limit")
        .expect("command runs")
}

#[tokio::test]
async fn session_keeps_cwd_exports_functions_and_status() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let set = run(
        &agent,
        &sid,
        "cd /tmp && export GREETING=hello; shout() { echo \"$1!\"; }; false",
    )
    .await;
    assert_eq!(set.exit_code, 1);
    assert_eq!(run(&agent, &sid, "echo $?").await.stdout, "1\n");
    let state = run(&agent, &sid, "pwd; echo $GREETING; shout hey").await;
    assert_eq!(state.stdout, "/tmp\nhello\nhey!\n");
    assert_eq!(state.exit_code, 0);
    let failed = run(&agent, &sid, "(exit 42)").await;
    assert_eq!(failed.exit_code, 42);
    assert_eq!(run(&agent, &sid, "echo $?").await.stdout, "42\n");
    let listed = agent.client().agent().sessions().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].commands, listed[0].busy), (5, false));
}

#[tokio::test]
async fn session_starts_in_the_requested_cwd_with_its_env() {
    let agent = TestAgent::start();
    let request = CreateSessionRequest {
        cwd: Some("/tmp".into()),
        env: [("FLAVOUR".to_owned(), "mint".to_owned())].into(),
        user: None,
    };
    let session = agent
        .client()
        .agent()
        .create_session(&request)
        .await
        .expect("session starts");
    let result = run(&agent, &session.id, "pwd; echo $FLAVOUR").await;
    assert_eq!(result.stdout, "/tmp\nmint\n");
    let missing = CreateSessionRequest {
        cwd: Some("/nonexistent/dir".into()),
        ..CreateSessionRequest::default()
    };
    let (status, _) = api_error(agent.client().agent().create_session(&missing).await);
    assert_eq!(status, 400);
}

#[tokio::test]
async fn session_runs_as_the_requested_user() {
    let agent = TestAgent::start();
    let request = CreateSessionRequest {
        cwd: Some("/".into()),
        user: Some("nobody".into()),
        ..CreateSessionRequest::default()
    };
    let session = agent
        .client()
        .agent()
        .create_session(&request)
        .await
        .expect("session starts");
    let result = run(&agent, &session.id, "id -u; cd /tmp").await;
    assert_eq!((result.stdout.as_str(), result.exit_code), ("65534\n", 0));
    assert_eq!(run(&agent, &session.id, "pwd").await.stdout, "/tmp\n");
}

#[tokio::test]
async fn session_commands_read_an_empty_stdin() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let started = Instant::now();
    let result = run(&agent, &sid, "cat; read line; echo \"read=$? [$line]\"").await;
    assert_eq!(result.stdout, "read=1 []\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The protocol is intact afterwards.
    assert_eq!(run(&agent, &sid, "echo still").await.stdout, "still\n");
}

#[tokio::test]
async fn session_output_keeps_its_exact_bytes() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let result = run(&agent, &sid, "printf 'no newline'; printf 'err only' >&2").await;
    assert_eq!(result.stdout, "no newline");
    assert_eq!(result.stderr, "err only");
    assert_eq!(run(&agent, &sid, "printf ''").await.stdout, "");
    let big = run(&agent, &sid, "head -c 300000 /dev/zero | tr '\\0' x").await;
    assert_eq!(big.stdout.len(), 300_000);
    assert!(!big.truncated);
}

#[tokio::test]
async fn session_output_may_look_like_the_protocol() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    // Status-like lines, the helper names, and the control line's own text.
    let tricky = "0\n__sbx_rc=$?; __sbx_in=; printf '%s\\n' \"$__sbx_rc\"\n137\n";
    let command = format!(
        "printf '%s' '{}'; printf '%s' '{}' >&2",
        tricky.replace('\'', r"'\''"),
        tricky.replace('\'', r"'\''")
    );
    let result = run(&agent, &sid, &command).await;
    assert_eq!(result.stdout, tricky);
    assert_eq!(result.stderr, tricky);
    assert_eq!(result.exit_code, 0);
    let next = run(&agent, &sid, "echo 5; exit_code=3; (exit $exit_code)").await;
    assert_eq!((next.stdout.as_str(), next.exit_code), ("5\n", 3));
}

#[tokio::test]
async fn session_exit_ends_the_session() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let result = run(&agent, &sid, "echo bye; exit 7").await;
    assert_eq!((result.stdout.as_str(), result.exit_code), ("bye\n", 7));
    let (status, code) = api_error(
        agent
            .client()
            .agent()
            .session_exec(&sid, &SessionExecRequest::new("true"))
            .await,
    );
    assert_eq!((status, code), (404, ErrorCode::NotFound));
    assert!(agent
        .client()
        .agent()
        .sessions()
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn session_background_jobs_neither_hang_nor_leak_into_later_commands() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let started = Instant::now();
    let quiet = run(&agent, &sid, "sleep 1000 & echo $!").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the job"
    );
    let sleeper: i32 = quiet.stdout.trim().parse().expect("a pid");
    let chatty = run(
        &agent,
        &sid,
        "(while :; do echo tick; echo tock >&2; sleep 0.02; done) & echo started",
    )
    .await;
    assert_eq!(chatty.stdout.matches("started").count(), 1);
    let ticker: i32 = run(&agent, &sid, "echo $!")
        .await
        .stdout
        .trim()
        .parse()
        .expect("a pid");
    for _ in 0..3 {
        let clean = run(&agent, &sid, "sleep 0.2; echo clean").await;
        assert_eq!(clean.stdout, "clean\n");
        assert_eq!(clean.stderr, "");
    }
    // Neither job was killed by its command finishing (no SIGPIPE).
    let alive = run(
        &agent,
        &sid,
        &format!("kill -0 {sleeper} {ticker} && echo both"),
    )
    .await;
    assert_eq!(alive.stdout, "both\n");
}

#[tokio::test]
async fn session_timeout_kills_the_command_not_the_session() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let started = Instant::now();
    let request = SessionExecRequest {
        timeout_ms: Some(300),
        ..SessionExecRequest::new("echo before; sleep 100; echo after")
    };
    let result = run_request(&agent, &sid, &request).await;
    assert!(result.timed_out);
    assert_eq!(result.exit_code, 137);
    assert_eq!(
        result.stdout, "before\n",
        "the rest of the command is skipped"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(run(&agent, &sid, "echo $?").await.stdout, "137\n");
    // A loop of builtins only is stopped too, without ending the shell.
    let spin = SessionExecRequest {
        timeout_ms: Some(300),
        ..SessionExecRequest::new("export KEPT=yes; while :; do :; done")
    };
    let result = run_request(&agent, &sid, &spin).await;
    assert!(result.timed_out);
    assert_eq!(run(&agent, &sid, "echo $KEPT").await.stdout, "yes\n");
    assert_eq!(
        agent.client().agent().sessions().await.expect("list").len(),
        1
    );
}

#[tokio::test]
async fn session_timeout_of_an_untrappable_command_ends_the_session() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    // The command takes the abort trap away: only killing the shell stops it.
    let request = SessionExecRequest {
        timeout_ms: Some(200),
        ..SessionExecRequest::new("trap '' USR2; while :; do :; done")
    };
    let result = run_request(&agent, &sid, &request).await;
    assert!(result.timed_out);
    assert_eq!(result.exit_code, 137);
    let (status, _) = api_error(
        agent
            .client()
            .agent()
            .session_exec(&sid, &SessionExecRequest::new("true"))
            .await,
    );
    assert_eq!(status, 404);
}

#[tokio::test]
async fn session_signal_stops_the_command_and_one_command_runs_at_a_time() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let client = agent.client();
    let (status, code) = api_error(client.agent().signal_session(&sid, "INT").await);
    assert_eq!((status, code), (409, ErrorCode::Conflict), "nothing runs");
    let mut events = client
        .agent()
        .session_exec_stream(
            &sid,
            &SessionExecRequest::new("echo go; sleep 100; echo after"),
        )
        .await
        .expect("stream starts");
    assert!(matches!(
        next_event(&mut events).await,
        Some(ExecEvent::Start { .. })
    ));
    assert_eq!(
        next_event(&mut events).await,
        Some(ExecEvent::Stdout {
            data: "go\n".into()
        })
    );
    let listed = client.agent().sessions().await.expect("list");
    assert!(listed[0].busy);
    let (status, code) = api_error(
        client
            .agent()
            .session_exec(&sid, &SessionExecRequest::new("true"))
            .await,
    );
    assert_eq!((status, code), (409, ErrorCode::Conflict), "busy");
    client
        .agent()
        .signal_session(&sid, "INT")
        .await
        .expect("signalled");
    let rest = all_events(events).await;
    let Some(ExecEvent::Exit {
        exit_code,
        timed_out,
        ..
    }) = rest.last()
    else {
        panic!("no exit in {rest:?}");
    };
    assert_eq!((*exit_code, *timed_out), (130, false));
    assert!(
        !rest
            .iter()
            .any(|event| matches!(event, ExecEvent::Stdout { data } if data.contains("after"))),
        "{rest:?}"
    );
    assert_eq!(
        run(&agent, &sid, "echo $?; echo alive").await.stdout,
        "130\nalive\n"
    );
}

#[tokio::test]
async fn session_streams_events_in_order() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let events = agent
        .client()
        .agent()
        .session_exec_stream(
            &sid,
            &SessionExecRequest::new("printf a; printf b >&2; exit_status=4; (exit $exit_status)"),
        )
        .await
        .expect("stream starts");
    let events = all_events(events).await;
    assert!(
        matches!(events.first(), Some(ExecEvent::Start { .. })),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stdout { data: "a".into() }),
        "{events:?}"
    );
    assert!(
        events.contains(&ExecEvent::Stderr { data: "b".into() }),
        "{events:?}"
    );
    assert!(
        matches!(
            events.last(),
            Some(ExecEvent::Exit {
                exit_code: 4,
                timed_out: false,
                ..
            })
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn session_syntax_errors_leave_the_session_usable() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let result = run(&agent, &sid, "if then").await;
    assert_eq!(result.exit_code, 2);
    assert!(result.stderr.contains("syntax error"), "{}", result.stderr);
    assert_eq!(run(&agent, &sid, "echo fine").await.stdout, "fine\n");
}

#[tokio::test]
async fn session_output_is_capped_like_exec() {
    let agent = TestAgent::start();
    let sid = create_session(&agent).await;
    let result = run(&agent, &sid, "head -c 11000000 /dev/zero | tr '\\0' x").await;
    assert!(result.truncated);
    assert_eq!(result.stdout.len(), sbx_api::DEFAULT_OUTPUT_CAP);
    assert_eq!(result.exit_code, 0);
}

#[tokio::test]
async fn session_delete_kills_its_processes() {
    let agent = TestAgent::start();
    let session = agent
        .client()
        .agent()
        .create_session(&CreateSessionRequest::default())
        .await
        .expect("session starts");
    let job: i32 = run(&agent, &session.id, "sleep 1000 & echo $!")
        .await
        .stdout
        .trim()
        .parse()
        .expect("a pid");
    let client = agent.client();
    client
        .agent()
        .end_session(&session.id)
        .await
        .expect("deleted");
    assert!(gone_within(session.pid, LIMIT), "the shell is gone");
    assert!(gone_within(job, LIMIT), "its job is gone");
    let (status, code) = api_error(client.agent().end_session(&session.id).await);
    assert_eq!((status, code), (404, ErrorCode::NotFound));
}

#[tokio::test]
async fn session_count_is_capped() {
    let agent = TestAgent::start();
    let client = agent.client();
    for _ in 0..sandbox_agent::session::MAX_SESSIONS {
        client
            .agent()
            .create_session(&CreateSessionRequest::default())
            .await
            .expect("under the cap");
    }
    let (status, code) = api_error(
        client
            .agent()
            .create_session(&CreateSessionRequest::default())
            .await,
    );
    assert_eq!((status, code), (409, ErrorCode::Conflict));
}
