//! End to end: inside the box, live, through `sbx serve` and the agent on
//! both runtimes — a terminal over a WebSocket (typing, resize, Ctrl-C,
//! exit, reattach), a shell session that keeps its state, a watch, HTTP
//! and WebSockets to servers in the sandbox, a raw tunnel, and preview
//! URLs reached without a token, revoked, expired and audited.
//!
//! The WebSocket client is tokio-tungstenite, which nobody here wrote; the
//! servers in the sandbox are Python's `http.server` and a stdlib
//! WebSocket echo server (`tests/fixtures/ws_echo.py`).

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use sbx_api::client::{Client, ClientError, SandboxClient};
use sbx_api::{
    AuditQuery, CreatePreviewRequest, CreatePtyRequest, CreateSessionRequest, ErrorCode,
    ExecRequest, PortWaitQuery, PtyControl, SessionExecRequest, StartProcessRequest,
    WatchEventKind, WatchQuery,
};
use sbx_tests::{Engine, Server};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any one wait for a terminal's output or an event may take.
const WAIT: Duration = Duration::from_secs(20);
const WS_ECHO: &str = include_str!("../fixtures/ws_echo.py");

fn api_code(err: &ClientError) -> Option<ErrorCode> {
    err.api_error().map(|body| body.error_code)
}

async fn sh(sandbox: &SandboxClient<'_>, script: &str) -> Result<String> {
    let result = sandbox.exec(&ExecRequest::shell(script)).await?;
    ensure!(
        result.exit_code == 0,
        "{script:?} exited {}: {}",
        result.exit_code,
        result.stderr
    );
    Ok(result.stdout)
}

/// A WebSocket to `path` on the server, with `token` as its bearer.
async fn websocket(server: &Server, path: &str, token: &str) -> Result<Ws> {
    let url = format!("{}{path}", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// What a terminal showed, and how it ended.
#[derive(Default)]
struct Screen {
    text: String,
    exit: Option<i32>,
}

/// Reads the terminal until its output holds `needle`, or, for an empty
/// needle, until it exits.
async fn read_until(ws: &mut Ws, screen: &mut Screen, needle: &str) -> Result<()> {
    let reading = async {
        // An empty needle reads to the exit frame.
        while needle.is_empty() || !screen.text.contains(needle) {
            match ws.next().await.context("the terminal's socket ended")?? {
                Message::Binary(bytes) => screen.text.push_str(&String::from_utf8_lossy(&bytes)),
                Message::Text(text) => {
                    if let PtyControl::Exit { exit_code } = serde_json::from_str(&text)? {
                        screen.exit = Some(exit_code);
                        if needle.is_empty() {
                            return Ok(());
                        }
                        bail!("exited {exit_code} before {needle:?} showed");
                    }
                }
                Message::Close(_) => bail!("closed before {needle:?} showed"),
                _ => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(WAIT, reading).await {
        Ok(result) => result.with_context(|| format!("screen so far: {:?}", screen.text)),
        Err(_) => bail!("{needle:?} did not show; screen: {:?}", screen.text),
    }
}

async fn type_line(ws: &mut Ws, line: &str) -> Result<()> {
    ws.send(Message::Binary(format!("{line}\n").into_bytes().into()))
        .await?;
    Ok(())
}

async fn a_terminal_is_driven_over_a_websocket(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let pty = sandbox.create_pty(&CreatePtyRequest::shell(80, 24)).await?;
    let path = sandbox.route(&format!("/pty/{}", pty.id));

    let mut ws = websocket(&server, &path, &server.token).await?;
    let mut screen = Screen::default();
    // The output, not the echo of what was typed, holds the sum.
    type_line(&mut ws, "echo typed-$((6*7))").await?;
    read_until(&mut ws, &mut screen, "typed-42").await?;

    let resize = serde_json::to_string(&PtyControl::Resize {
        cols: 123,
        rows: 41,
    })?;
    ws.send(Message::Text(resize.into())).await?;
    type_line(&mut ws, "echo cols-$(tput cols) rows-$(tput lines)").await?;
    read_until(&mut ws, &mut screen, "cols-123 rows-41").await?;

    // Ctrl-C reaches the foreground job through the terminal's line
    // discipline; the shell goes on. The job says when it runs (a Ctrl-C
    // typed before that would reach the shell, not the job).
    type_line(&mut ws, "sh -c 'echo running-$((3+4)); exec sleep 1000'").await?;
    read_until(&mut ws, &mut screen, "running-7").await?;
    ws.send(Message::Binary(vec![0x03].into())).await?;
    type_line(&mut ws, "echo after-$?").await?;
    read_until(&mut ws, &mut screen, "after-130").await?;

    // Leaving ends nothing: a new viewer gets the scrollback first, and a
    // second one sees the same live output.
    drop(ws);
    let mut again = websocket(&server, &path, &server.token).await?;
    let mut replay = Screen::default();
    read_until(&mut again, &mut replay, "typed-42").await?;
    let mut second = websocket(&server, &path, &server.token).await?;
    let mut second_screen = Screen::default();
    type_line(&mut again, "echo both-$((2*3))").await?;
    read_until(&mut again, &mut replay, "both-6").await?;
    read_until(&mut second, &mut second_screen, "both-6").await?;
    let listed = sandbox.terminals().await?;
    ensure!(
        listed.iter().any(|t| t.id == pty.id && t.viewers == 2),
        "{listed:?}"
    );

    type_line(&mut again, "exit 7").await?;
    read_until(&mut again, &mut replay, "").await?;
    ensure!(replay.exit == Some(7), "exit frame: {:?}", replay.exit);
    sandbox.kill_pty(&pty.id).await?;
    let gone = sandbox.kill_pty(&pty.id).await.expect_err("deleted");
    ensure!(api_code(&gone) == Some(ErrorCode::NotFound), "{gone}");

    // A token of another sandbox cannot attach.
    let other = client
        .create_sandbox_with_token(&sbx_api::CreateSandboxRequest::default())
        .await?;
    let pty = sandbox.create_pty(&CreatePtyRequest::shell(80, 24)).await?;
    let path = sandbox.route(&format!("/pty/{}", pty.id));
    let refused = websocket(&server, &path, &other.token).await;
    ensure!(refused.is_err(), "another sandbox's token attached");
    Ok(())
}

async fn a_session_keeps_its_shell_state(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let session = sandbox
        .create_session(&CreateSessionRequest::default())
        .await?;
    let run = |command: &str| {
        let request = SessionExecRequest::new(command);
        let (sandbox, sid) = (&sandbox, session.id.clone());
        async move { sandbox.session_exec(&sid, &request).await }
    };
    run("cd /tmp && export GREETING=hello && shout() { echo \"$1!\"; }").await?;
    run("false").await?;
    let state = run("echo \"$?\"; pwd; echo $GREETING; shout hey").await?;
    ensure!(
        state.stdout == "1\n/tmp\nhello\nhey!\n",
        "{:?}",
        state.stdout
    );

    let timed = SessionExecRequest {
        timeout_ms: Some(500),
        ..SessionExecRequest::new("sleep 1000")
    };
    let result = sandbox.session_exec(&session.id, &timed).await?;
    ensure!(result.timed_out, "{result:?}");
    ensure!(run("pwd").await?.stdout == "/tmp\n", "the session survived");

    let mut streamed = sandbox
        .session_exec_stream(
            &session.id,
            &SessionExecRequest::new("printf part; echo two >&2"),
        )
        .await?;
    let mut seen = (String::new(), String::new());
    while let Some(event) = streamed.next().await? {
        match event {
            sbx_api::ExecEvent::Stdout { data } => seen.0.push_str(&data),
            sbx_api::ExecEvent::Stderr { data } => seen.1.push_str(&data),
            _ => {}
        }
    }
    ensure!(seen == ("part".into(), "two\n".into()), "{seen:?}");

    let ended = run("exit 4").await?;
    ensure!(ended.exit_code == 4, "{ended:?}");
    let gone = run("true").await.expect_err("the session ended");
    ensure!(api_code(&gone) == Some(ErrorCode::NotFound), "{gone}");

    // A sandbox without the session's default cwd (schemathesis had
    // deleted it): the shell cannot start, which is the caller's error,
    // not the server's.
    sh(&sandbox, "rm -rf /workspace").await?;
    let shell_less = sandbox
        .create_session(&CreateSessionRequest::default())
        .await
        .expect_err("no shell to start");
    ensure!(
        api_code(&shell_less) == Some(ErrorCode::InvalidRequest),
        "{shell_less}"
    );
    Ok(())
}

async fn a_watch_reports_changes_deep_inside(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    sh(&sandbox, "mkdir -p /workspace/watched").await?;
    let query = WatchQuery {
        path: "/workspace/watched".into(),
        recursive: true,
    };
    let mut events = sandbox.watch(&query).await?;
    // The new tree first: the agent watches each new directory as it
    // reports it, so a file made once `c` is reported is seen. (A file made
    // and moved away before its directory is watched leaves no trace to
    // report, which under load made this test flaky.)
    sh(&sandbox, "mkdir -p /workspace/watched/a/b/c").await?;
    let mut seen = Vec::new();
    let tree = async {
        while !seen.iter().any(|event: &sbx_api::WatchEvent| {
            event.kind == WatchEventKind::Create && event.path == "/workspace/watched/a/b/c"
        }) {
            seen.push(events.next().await?.context("the watch ended")?);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(WAIT, tree)
        .await
        .with_context(|| format!("events: {seen:?}"))??;
    sh(
        &sandbox,
        "echo x > /workspace/watched/a/b/c/deep \
         && mv /workspace/watched/a/b/c/deep /workspace/watched/moved",
    )
    .await?;
    let wanted = |seen: &Vec<sbx_api::WatchEvent>| {
        seen.iter().any(|event| {
            event.kind == WatchEventKind::Create && event.path == "/workspace/watched/a/b/c/deep"
        }) && seen.iter().any(|event| {
            event.kind == WatchEventKind::Move
                && event.path == "/workspace/watched/moved"
                && event.from.as_deref() == Some("/workspace/watched/a/b/c/deep")
        })
    };
    let reading = async {
        while !wanted(&seen) {
            seen.push(events.next().await?.context("the watch ended")?);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(WAIT, reading)
        .await
        .with_context(|| format!("events: {seen:?}"))??;
    Ok(())
}

/// Starts `python3 -m http.server` on 8000 (serving /workspace/site) and
/// the WebSocket echo server on 8001, and waits for both.
async fn start_servers(sandbox: &SandboxClient<'_>) -> Result<()> {
    sh(
        sandbox,
        "mkdir -p /workspace/site && echo '<p>hello from the sandbox</p>' > /workspace/site/index.html",
    )
    .await?;
    sandbox
        .write_file(
            "/workspace/ws_echo.py",
            None,
            Full::new(Bytes::from(WS_ECHO)),
        )
        .await?;
    for script in [
        "python3 -m http.server 8000 --bind 127.0.0.1 --directory /workspace/site",
        "python3 /workspace/ws_echo.py 8001",
    ] {
        sandbox
            .start_process(&StartProcessRequest {
                shell: Some(script.into()),
                ..StartProcessRequest::default()
            })
            .await?;
    }
    for port in [8000, 8001] {
        let status = sandbox
            .wait_for_port(
                port,
                &PortWaitQuery {
                    timeout_ms: Some(20_000),
                },
            )
            .await?;
        ensure!(status.listening, "{status:?}");
    }
    Ok(())
}

async fn body_of(response: http::Response<hyper::body::Incoming>) -> Result<Bytes> {
    Ok(response.into_body().collect().await?.to_bytes())
}

async fn servers_in_the_sandbox_answer_through_the_proxy(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    start_servers(&sandbox).await?;

    let page = sandbox
        .port_request(
            8000,
            Method::GET,
            "/index.html?x=1",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    ensure!(page.status() == StatusCode::OK);
    ensure!(body_of(page).await? == "<p>hello from the sandbox</p>\n");
    let missing = sandbox
        .port_request(
            8000,
            Method::GET,
            "/nothing-here",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    ensure!(
        missing.status() == StatusCode::NOT_FOUND,
        "the app's own 404"
    );

    // A large download streams through, byte for byte.
    let digest = sh(
        &sandbox,
        "head -c 100000000 /dev/urandom > /workspace/site/big.bin && sha256sum /workspace/site/big.bin",
    )
    .await?;
    let response = sandbox
        .port_request(
            8000,
            Method::GET,
            "/big.bin",
            HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    ensure!(response.status() == StatusCode::OK);
    let mut body = sandbox.port_body(response);
    let (mut hasher, mut length) = (Sha256::new(), 0usize);
    while let Some(chunk) = body.next_chunk().await? {
        length += chunk.len();
        hasher.update(&chunk);
    }
    ensure!(length == 100_000_000, "{length} bytes");
    ensure!(
        digest.starts_with(&format!("{:x}", hasher.finalize())),
        "{digest}"
    );

    // Nothing listens: the agent says so.
    let closed = sandbox
        .port_request(8999, Method::GET, "/", HeaderMap::new(), Bytes::new())
        .await?;
    ensure!(
        closed.status() == StatusCode::BAD_GATEWAY,
        "{}",
        closed.status()
    );

    // A WebSocket to a port passes through the proxy's upgrade.
    let path = sandbox.route("/ports/8001/");
    let mut ws = websocket(&server, &path, &server.token).await?;
    ws.send(Message::Text("ping through the proxy".into()))
        .await?;
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await?
        .context("ended")??;
    ensure!(
        echoed == Message::Text("ping through the proxy".into()),
        "{echoed:?}"
    );

    // A tunnel carries raw TCP: an HTTP/1.0 request typed by hand.
    let path = sandbox.route("/tunnel/8000");
    let mut tunnel = websocket(&server, &path, &server.token).await?;
    tunnel
        .send(Message::Binary(
            b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n"
                .to_vec()
                .into(),
        ))
        .await?;
    let mut answer = Vec::new();
    let reading = async {
        while let Some(message) = tunnel.next().await {
            match message? {
                Message::Binary(bytes) => answer.extend_from_slice(&bytes),
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(WAIT, reading).await??;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.starts_with("HTTP/1.0 200") && answer.contains("hello from the sandbox"),
        "{answer}"
    );
    Ok(())
}

/// `GET path` on the server without a token.
async fn anonymous_get(server: &Server, path: &str) -> Result<(StatusCode, HeaderMap, Bytes)> {
    let anonymous = Client::new(&server.url, None)?;
    let response = anonymous
        .send(Method::GET, path, None, Bytes::new())
        .await?;
    let (status, headers) = (response.status(), response.headers().clone());
    Ok((status, headers, body_of(response).await?))
}

async fn previews_serve_a_browser_until_revoked_or_expired(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    start_servers(&sandbox).await?;

    let preview = sandbox
        .create_preview(&CreatePreviewRequest {
            port: 8000,
            ttl_s: None,
        })
        .await?;
    let url = preview.url.clone().context("a new preview has its URL")?;
    let path = url
        .strip_prefix(&server.url)
        .with_context(|| format!("{url} is on {}", server.url))?
        .to_owned();
    let secret = path
        .trim_start_matches("/p/")
        .trim_end_matches('/')
        .to_owned();
    let (status, _, body) = anonymous_get(&server, &format!("{path}index.html")).await?;
    ensure!(status == StatusCode::OK && body == "<p>hello from the sandbox</p>\n");
    let (status, headers, _) = anonymous_get(&server, path.trim_end_matches('/')).await?;
    ensure!(status == StatusCode::PERMANENT_REDIRECT, "{status}");
    ensure!(headers["location"] == path.as_str());
    let listed = sandbox.previews().await?;
    ensure!(
        listed.len() == 1 && listed[0].id == preview.id && listed[0].url.is_none(),
        "{listed:?}"
    );

    // The secret opens the preview and nothing else: not as a token, not
    // for another sandbox.
    let as_token = server.client_with_token(Some(&secret));
    let refused = as_token
        .sandbox(&id)
        .exec(&ExecRequest::shell("true"))
        .await;
    ensure!(
        refused.as_ref().err().and_then(api_code) == Some(ErrorCode::Unauthorized),
        "{refused:?}"
    );
    let other = server.new_sandbox().await?;
    let refused = as_token.sandbox(&other).previews().await;
    ensure!(refused.is_err(), "{refused:?}");
    let foreign = client.sandbox(&other).revoke_preview(&preview.id).await;
    ensure!(
        foreign.as_ref().err().and_then(api_code) == Some(ErrorCode::NotFound),
        "another sandbox cannot revoke it: {foreign:?}"
    );

    sandbox.revoke_preview(&preview.id).await?;
    let (status, _, _) = anonymous_get(&server, &format!("{path}index.html")).await?;
    ensure!(status == StatusCode::NOT_FOUND, "revoked: {status}");

    let short = sandbox
        .create_preview(&CreatePreviewRequest {
            port: 8000,
            ttl_s: Some(1),
        })
        .await?;
    let short_path = short.url.context("url")?.replacen(&server.url, "", 1);
    let expired = sbx_tests::eventually(Duration::from_secs(10), || async {
        matches!(
            anonymous_get(&server, &short_path).await,
            Ok((StatusCode::NOT_FOUND, _, _))
        )
    })
    .await;
    ensure!(expired, "a preview of one second still answers");

    // Every request through a preview is audited as the preview's, and
    // no record holds a secret.
    let records = client
        .audit(&AuditQuery {
            sandbox: Some(id.clone()),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await?;
    let through: Vec<_> = records
        .iter()
        .filter(|record| record.identity == format!("preview {}", preview.id))
        .collect();
    ensure!(
        through
            .iter()
            .any(|record| record.route == "/p/{secret}" && record.status == 200),
        "{records:?}"
    );
    let all = client
        .audit(&AuditQuery {
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await?;
    ensure!(
        !serde_json::to_string(&all)?.contains(&secret),
        "a preview's secret is in the audit trail"
    );
    Ok(())
}

/// What a raw HTTP/1.1 exchange answered: status, headers in lowercase,
/// body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET target` on the server as a browser on `host` sends it: the Host
/// header a wildcard DNS name gives, and a cookie if it has one.
async fn get_on_host(
    server: &Server,
    host: &str,
    target: &str,
    cookie: Option<&str>,
) -> Result<Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await?;
    let cookie = cookie
        .map(|cookie| format!("Cookie: {cookie}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await??;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("an HTTP answer")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("a status line")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

async fn previews_are_their_own_hosts_under_a_preview_domain(engine: Engine) -> Result<()> {
    let server = Server::start_with(engine, &["--preview-domain", "preview.test"]).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    start_servers(&sandbox).await?;
    let preview = sandbox
        .create_preview(&CreatePreviewRequest {
            port: 8000,
            ttl_s: None,
        })
        .await?;
    let url = preview.url.context("a new preview has its URL")?;
    let server_port = server.url.rsplit(':').next().context("a port")?;
    let host = format!("8000-{id}.preview.test:{server_port}");
    let first = url
        .strip_prefix(&format!("http://{host}"))
        .with_context(|| format!("{url} is on {host}"))?;
    let secret = first
        .strip_prefix("/?sbx_preview_token=")
        .with_context(|| format!("{url} carries its secret in the query"))?;

    // The first visit trades the secret for a cookie of this host and
    // drops it from the URL.
    let traded = get_on_host(&server, &host, first, None).await?;
    ensure!(traded.status == 303, "{}", traded.status);
    ensure!(
        traded.header("location") == Some("/"),
        "{:?}",
        traded.headers
    );
    let cookie = traded.header("set-cookie").context("a cookie")?;
    ensure!(
        cookie.starts_with(&format!("sbx_preview={secret};")) && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let jar = format!("theme=dark; sbx_preview={secret}");
    let page = get_on_host(&server, &host, "/index.html", Some(&jar)).await?;
    ensure!(
        page.status == 200 && page.body == "<p>hello from the sandbox</p>\n",
        "{} {}",
        page.status,
        page.body
    );

    // Without the cookie, nothing; on a preview's host, no API either; and
    // the cookie opens no other sandbox's host.
    let bare = get_on_host(&server, &host, "/index.html", None).await?;
    ensure!(bare.status == 404, "{}", bare.status);
    let api = get_on_host(&server, &host, "/v1/sandboxes", Some(&jar)).await?;
    ensure!(
        api.status == 404 && !api.body.contains(&id),
        "{} {}",
        api.status,
        api.body
    );
    let other = server.new_sandbox().await?;
    let elsewhere = format!("8000-{other}.preview.test:{server_port}");
    let refused = get_on_host(&server, &elsewhere, "/index.html", Some(&jar)).await?;
    ensure!(refused.status == 404, "{}", refused.status);

    // The path form still works, and revocation ends both.
    let by_path = format!("/p/{secret}/index.html");
    let (status, _, _) = anonymous_get(&server, &by_path).await?;
    ensure!(status == StatusCode::OK, "{status}");
    sandbox.revoke_preview(&preview.id).await?;
    let revoked = get_on_host(&server, &host, "/index.html", Some(&jar)).await?;
    ensure!(revoked.status == 404, "{}", revoked.status);

    let records = client
        .audit(&AuditQuery {
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await?;
    ensure!(
        records.iter().any(
            |record| record.identity == format!("preview {}", preview.id)
                && record.route == "/p/{secret}"
                && record.status == 200
        ),
        "{records:?}"
    );
    ensure!(
        !serde_json::to_string(&records)?.contains(secret),
        "a preview's secret is in the audit trail"
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    a_terminal_is_driven_over_a_websocket,
    a_session_keeps_its_shell_state,
    a_watch_reports_changes_deep_inside,
    servers_in_the_sandbox_answer_through_the_proxy,
    previews_serve_a_browser_until_revoked_or_expired,
    previews_are_their_own_hosts_under_a_preview_domain,
);
