//! Agent tests: the real binary on a temporary socket on the host, driven
//! through the `sbx-api` client as the orchestrator would. No container is
//! needed: the agent makes itself a child subreaper, so orphan reaping is
//! exercised here too.

mod common;

use bytes::Bytes;
use common::{gone_within, read_pid, TestAgent};
use http::Method;
use http_body_util::BodyExt;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbx_api::client::ClientError;
use sbx_api::{ErrorBody, ErrorCode, ExecRequest, ExecResult, DEFAULT_OUTPUT_CAP};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

async fn exec(agent: &TestAgent, request: ExecRequest) -> ExecResult {
    agent
        .client()
        .agent_exec(&request)
        .await
        .expect("exec succeeds")
}

async fn exec_error(agent: &TestAgent, request: ExecRequest) -> (u16, ErrorBody) {
    match agent.client().agent_exec(&request).await {
        Err(ClientError::Api { status, body }) => (status, body),
        other => panic!("expected an api error, got {other:?}"),
    }
}

/// Sends raw bytes, for requests the typed client cannot produce.
async fn raw(
    agent: &TestAgent,
    method: Method,
    path: &str,
    body: &'static [u8],
) -> (u16, ErrorBody) {
    let response = agent
        .client()
        .send(
            method,
            path,
            Some("application/json"),
            Bytes::from_static(body),
        )
        .await
        .expect("request goes through");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        panic!(
            "not an ErrorBody ({err}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

fn with_env(mut request: ExecRequest, pairs: &[(&str, &str)]) -> ExecRequest {
    request.env = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    request
}

#[tokio::test]
async fn health_answers_ok() {
    let agent = TestAgent::start();
    agent.client().agent_health().await.expect("healthy");
}

#[tokio::test]
async fn argv_and_shell_commands_run() {
    let agent = TestAgent::start();
    let echo = exec(&agent, ExecRequest::argv(["echo", "hi"])).await;
    assert_eq!(echo.stdout, "hi\n");
    assert_eq!(echo.exit_code, 0);
    assert!(!echo.timed_out && !echo.truncated);
    let pipeline = exec(&agent, ExecRequest::shell("echo hi | tr a-z A-Z")).await;
    assert_eq!(pipeline.stdout, "HI\n");
}

#[tokio::test]
async fn exit_codes_and_stderr_come_back() {
    let agent = TestAgent::start();
    assert_eq!(
        exec(&agent, ExecRequest::shell("exit 3")).await.exit_code,
        3
    );
    let stderr = exec(&agent, ExecRequest::shell("echo oops >&2")).await;
    assert_eq!(stderr.stderr, "oops\n");
    assert_eq!(stderr.stdout, "");
    let killed = exec(&agent, ExecRequest::shell("kill -9 $$")).await;
    assert_eq!(killed.exit_code, 137);
    assert!(!killed.timed_out);
}

#[tokio::test]
async fn stdin_is_delivered_and_closed() {
    let agent = TestAgent::start();
    let small = ExecRequest {
        stdin: Some("hello\nworld\n".into()),
        ..ExecRequest::argv(["cat"])
    };
    assert_eq!(exec(&agent, small).await.stdout, "hello\nworld\n");
    // Larger than any pipe buffer both ways: writing and reading must overlap.
    let big_input = "x".repeat(4 * 1024 * 1024);
    let big = ExecRequest {
        stdin: Some(big_input.clone()),
        ..ExecRequest::argv(["cat"])
    };
    let result = exec(&agent, big).await;
    assert_eq!(result.stdout.len(), big_input.len());
    assert!(result.stdout == big_input);
    let no_stdin = exec(&agent, ExecRequest::argv(["cat"])).await;
    assert_eq!(no_stdin.stdout, "", "stdin defaults to /dev/null");
}

#[tokio::test]
async fn environment_is_clean_base_then_request() {
    let agent = TestAgent::start_with_env(&[
        ("SBX_ENV_BASE", "base"),
        ("SBX_ENV_OVER", "base"),
        ("AGENT_PRIVATE", "must not leak"),
    ]);
    let request = with_env(
        ExecRequest::argv(["env"]),
        &[("OVER", "request"), ("REQ", "1")],
    );
    let result = exec(&agent, request).await;
    let env: BTreeMap<&str, &str> = result
        .stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    assert_eq!(env.get("BASE"), Some(&"base"));
    assert_eq!(env.get("OVER"), Some(&"request"));
    assert_eq!(env.get("REQ"), Some(&"1"));
    assert_eq!(env.get("HOME"), Some(&"/root"));
    assert_eq!(env.get("LANG"), Some(&"C.UTF-8"));
    assert!(env["PATH"].contains("/usr/bin"));
    assert!(
        !env.contains_key("AGENT_PRIVATE"),
        "agent env leaked: {env:?}"
    );
    assert!(!env.contains_key("SBX_ENV_BASE"));
    assert!(
        !env.keys().any(|key| key.starts_with("CARGO")),
        "agent env leaked: {env:?}"
    );
}

/// Commands find the egress relay through the proxy variables, which the
/// sandbox's env and the request can override; the address they name is
/// the relay, which hands each connection to the orchestrator's socket.
#[tokio::test]
async fn proxy_variables_name_the_relay_which_reaches_the_egress_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let agent = TestAgent::start_with_env(&[("SBX_ENV_NO_PROXY", "internal.example")]);
    let result = exec(&agent, ExecRequest::argv(["env"])).await;
    let env = env_of(&result.stdout);
    let proxy = env["HTTP_PROXY"];
    for key in ["HTTPS_PROXY", "http_proxy", "https_proxy"] {
        assert_eq!(env.get(key), Some(&proxy), "{key}");
    }
    assert_eq!(env.get("no_proxy"), Some(&"localhost,127.0.0.1"));
    assert_eq!(
        env.get("NO_PROXY"),
        Some(&"internal.example"),
        "the sandbox's env wins over the defaults"
    );
    let overridden = exec(
        &agent,
        with_env(ExecRequest::argv(["env"]), &[("https_proxy", "")]),
    )
    .await;
    assert_eq!(env_of(&overridden.stdout).get("https_proxy"), Some(&""));

    let addr = proxy
        .strip_prefix("http://127.0.0.1:")
        .expect("a loopback proxy url");
    assert_ne!(addr, "0", "the bound port, not the asked-for one");
    let egress = tokio::net::UnixListener::bind(agent.path("egress.sock")).expect("bind");
    let mut client = tokio::net::TcpStream::connect(format!("127.0.0.1:{addr}"))
        .await
        .expect("the relay listens where the variables say");
    client.write_all(b"ping").await.expect("write");
    let (mut relayed, _) = tokio::time::timeout(Duration::from_secs(10), egress.accept())
        .await
        .expect("relayed in time")
        .expect("accept");
    let mut ping = [0u8; 4];
    relayed.read_exact(&mut ping).await.expect("read");
    assert_eq!(&ping, b"ping");
    relayed.write_all(b"pong").await.expect("write back");
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).await.expect("read back");
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn cwd_is_honoured_and_defaults_to_workdir() {
    let agent = TestAgent::start();
    let sub = agent.path("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    let in_sub = ExecRequest {
        cwd: Some(sub.to_str().expect("utf-8 path").to_owned()),
        ..ExecRequest::argv(["pwd"])
    };
    let expected = format!("{}\n", sub.canonicalize().expect("canonical").display());
    assert_eq!(exec(&agent, in_sub).await.stdout, expected);
    let default = exec(&agent, ExecRequest::argv(["pwd"])).await;
    let workdir = agent.dir.path().canonicalize().expect("canonical");
    assert_eq!(default.stdout, format!("{}\n", workdir.display()));
}

#[tokio::test]
async fn missing_cwd_is_a_bad_request() {
    let agent = TestAgent::start();
    let missing = agent.path("nope");
    let request = ExecRequest {
        cwd: Some(missing.to_str().expect("utf-8 path").to_owned()),
        ..ExecRequest::argv(["true"])
    };
    let (status, body) = exec_error(&agent, request).await;
    assert_eq!(status, 400);
    assert_eq!(body.error_code, ErrorCode::InvalidRequest);
    assert!(
        body.message.contains(missing.to_str().expect("utf-8")),
        "{body}"
    );
}

#[tokio::test]
async fn missing_program_exits_127() {
    let agent = TestAgent::start();
    let result = exec(&agent, ExecRequest::argv(["sbx-no-such-program", "x"])).await;
    assert_eq!(result.exit_code, 127);
    assert!(
        result.stderr.contains("sbx-no-such-program"),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains("No such file or directory"),
        "{}",
        result.stderr
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let agent = TestAgent::start();
    let pidfile = agent.path("grandchild.pid");
    let request = ExecRequest {
        timeout_ms: Some(300),
        ..ExecRequest::shell(format!(
            "sleep 30 & echo $! > {}; sleep 30",
            pidfile.display()
        ))
    };
    let started = Instant::now();
    let result = exec(&agent, request).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(result.timed_out);
    assert_eq!(result.exit_code, 137);
    assert!(result.duration_ms >= 300, "{}", result.duration_ms);
    let grandchild = read_pid(&pidfile);
    assert!(
        gone_within(grandchild, Duration::from_secs(5)),
        "grandchild {grandchild} survived the timeout"
    );
}

#[tokio::test]
async fn output_beyond_the_cap_is_truncated() {
    let agent = TestAgent::start();
    let result = exec(
        &agent,
        ExecRequest::shell("head -c 11M /dev/zero | tr '\\0' a"),
    )
    .await;
    assert_eq!(result.exit_code, 0);
    assert!(result.truncated);
    assert_eq!(result.stdout.len(), DEFAULT_OUTPUT_CAP);
    assert!(result.stdout.bytes().all(|byte| byte == b'a'));
}

#[tokio::test]
async fn background_grandchild_does_not_hold_the_reply() {
    let agent = TestAgent::start();
    let pidfile = agent.path("background.pid");
    let request = ExecRequest::shell(format!(
        "sleep 5 & echo $! > {}; echo done",
        pidfile.display()
    ));
    let started = Instant::now();
    let result = exec(&agent, request).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(result.stdout, "done\n");
    // The sleep outlives its exec by design; do not leave it behind. It is
    // now the agent's orphan, so its disappearance also shows the agent
    // reaps processes it never registered.
    let background = read_pid(&pidfile);
    kill(Pid::from_raw(background), Signal::SIGKILL).expect("background sleep still running");
    assert!(
        gone_within(background, Duration::from_secs(5)),
        "orphan {background} not reaped"
    );
}

#[tokio::test]
async fn malformed_requests_get_error_bodies() {
    let agent = TestAgent::start();
    for body in [
        &b"{not json"[..],
        br#"{"cmd": "echo"}"#,
        br#"{"cmd": ["true"], "bogus": 1}"#,
        br#"{"cmd": ["true"], "shell": "true"}"#,
        br#"{}"#,
    ] {
        let (status, error) = raw(&agent, Method::POST, "/exec", body).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(error.error_code, ErrorCode::InvalidRequest);
    }
    let both = ExecRequest {
        shell: Some("true".into()),
        ..ExecRequest::argv(["true"])
    };
    let (status, error) = exec_error(&agent, both).await;
    assert_eq!(status, 400);
    assert!(error.message.contains("not both"), "{error}");

    let (status, error) = raw(&agent, Method::GET, "/no/such/route", b"").await;
    assert_eq!(status, 404);
    assert_eq!(error.error_code, ErrorCode::NotFound);
    let (status, error) = raw(&agent, Method::GET, "/exec", b"").await;
    assert_eq!(status, 405);
    assert_eq!(error.error_code, ErrorCode::MethodNotAllowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_execs() {
    let agent = TestAgent::start();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = agent.client();
        tasks.spawn(async move {
            let request = if i % 2 == 0 {
                ExecRequest::argv(["echo".to_owned(), i.to_string()])
            } else {
                ExecRequest::shell(format!("sleep 0.1; echo {i}"))
            };
            let result = client.agent_exec(&request).await.expect("exec succeeds");
            (i, result)
        });
    }
    let mut seen = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.expect("task completes");
        assert_eq!(result.stdout, format!("{i}\n"));
        assert_eq!(result.exit_code, 0);
        seen += 1;
    }
    assert_eq!(seen, 50);
}

// Multi-threaded: the exec runs on another worker while this test blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_children_and_removes_the_socket() {
    let mut agent = TestAgent::start();
    let leader_file = agent.path("leader.pid");
    let background_file = agent.path("background.pid");
    let request = ExecRequest::shell(format!(
        "sleep 30 & echo $! > {}; echo $$ > {}; wait",
        background_file.display(),
        leader_file.display()
    ));
    let client = agent.client();
    let running = tokio::spawn(async move { client.agent_exec(&request).await });
    let leader = read_pid(&leader_file);
    let background = read_pid(&background_file);

    let started = Instant::now();
    kill(agent.pid(), Signal::SIGTERM).expect("signal the agent");
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("agent exits within 5 s");
    assert!(status.success(), "agent exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(!agent.socket.exists(), "socket left behind");
    for pid in [leader, background] {
        assert!(
            gone_within(pid, Duration::from_secs(5)),
            "child {pid} survived SIGTERM"
        );
    }
    // The in-flight exec either got its (killed) result or lost the
    // connection; both are fine, it must just not hang.
    if let Ok(Ok(Ok(result))) = tokio::time::timeout(Duration::from_secs(5), running).await {
        assert_ne!(result.exit_code, 0);
    }
}

fn as_user(user: &str, request: ExecRequest) -> ExecRequest {
    ExecRequest {
        user: Some(user.to_owned()),
        ..request
    }
}

fn env_of(stdout: &str) -> BTreeMap<&str, &str> {
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect()
}

#[tokio::test]
async fn numeric_user_runs_with_those_ids() {
    let agent = TestAgent::start();
    let ids = exec(
        &agent,
        as_user("1000:1000", ExecRequest::shell("id -u; id -g; id -G")),
    )
    .await;
    assert_eq!(ids.exit_code, 0, "{}", ids.stderr);
    let lines: Vec<&str> = ids.stdout.lines().collect();
    assert_eq!(lines[..2], ["1000", "1000"], "{}", ids.stdout);
    assert!(
        !lines[2].split(' ').any(|gid| gid == "0"),
        "root's group kept: {}",
        ids.stdout
    );
    // Not in any /etc/passwd: the gid defaults to the uid, HOME to /.
    let stranger = exec(
        &agent,
        as_user("4242", ExecRequest::shell("id -u; id -g; env")),
    )
    .await;
    assert_eq!(stranger.exit_code, 0, "{}", stranger.stderr);
    assert!(
        stranger.stdout.starts_with("4242\n4242\n"),
        "{}",
        stranger.stdout
    );
    assert_eq!(env_of(&stranger.stdout).get("HOME"), Some(&"/"));
}

#[tokio::test]
async fn named_user_gets_ids_groups_and_home_from_passwd() {
    let agent = TestAgent::start();
    // Debian's nobody: 65534:65534, home /nonexistent.
    let result = exec(
        &agent,
        as_user("nobody", ExecRequest::shell("id -un; id -u; id -g; env")),
    )
    .await;
    assert_eq!(result.exit_code, 0, "{}", result.stderr);
    assert!(
        result.stdout.starts_with("nobody\n65534\n65534\n"),
        "{}",
        result.stdout
    );
    let env = env_of(&result.stdout);
    assert_eq!(env.get("HOME"), Some(&"/nonexistent"));
    assert_eq!(env.get("USER"), Some(&"nobody"));
    assert_eq!(env.get("LOGNAME"), Some(&"nobody"));
    assert_eq!(env.get("LANG"), Some(&"C.UTF-8"));
    // The request's env still wins.
    let overridden = exec(
        &agent,
        as_user(
            "nobody",
            with_env(ExecRequest::argv(["env"]), &[("HOME", "/tmp")]),
        ),
    )
    .await;
    assert_eq!(env_of(&overridden.stdout).get("HOME"), Some(&"/tmp"));
    // Root by name keeps root's home and sets no USER.
    let root = exec(&agent, as_user("root", ExecRequest::shell("id -u; env"))).await;
    assert!(root.stdout.starts_with("0\n"), "{}", root.stdout);
    assert_eq!(env_of(&root.stdout).get("HOME"), Some(&"/root"));
}

#[tokio::test]
async fn unknown_user_is_a_bad_request() {
    let agent = TestAgent::start();
    let (status, body) = exec_error(
        &agent,
        as_user("sbx-no-such-user", ExecRequest::argv(["true"])),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body.error_code, ErrorCode::InvalidRequest);
    assert!(body.message.contains("sbx-no-such-user"), "{body}");
    let (status, _) = exec_error(&agent, as_user("Bad/Name", ExecRequest::argv(["true"]))).await;
    assert_eq!(status, 400);
}
