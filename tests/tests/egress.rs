//! End to end: a sandbox's only way out is the egress proxy, and the proxy
//! lets it reach exactly what the sandbox's allowlist names.
//!
//! The upstreams are tiny HTTP servers that this test process binds on
//! `127.0.0.1` (ephemeral ports); the server under test maps test names
//! (`allowed.test`, `a.wild.test`, …) to `127.0.0.1` with its test-only
//! `--egress-resolve`. Inside the sandbox, plain `curl` finds the proxy
//! through the variables the agent sets. No packet leaves loopback, and
//! the sandbox's own isolation is inspected (`/proc/net`), never probed.

use anyhow::{bail, ensure, Context, Result};
use sbx_api::client::{Client, ClientError};
use sbx_api::{
    AuditQuery, CreateSandboxRequest, ErrorCode, ExecRequest, NetworkPolicy, UpdateSandboxRequest,
};
use sbx_tests::{sbx_bin, Engine, Server};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Names the server resolves to 127.0.0.1 for these tests.
const TEST_NAMES: [&str; 6] = [
    "allowed.test",
    "denied.test",
    "wild.test",
    "a.wild.test",
    "deep.b.wild.test",
    "ported.test",
];

fn resolve_args() -> Vec<String> {
    TEST_NAMES
        .iter()
        .flat_map(|name| ["--egress-resolve".to_owned(), format!("{name}=127.0.0.1")])
        .collect()
}

/// A server whose proxy resolves the test names to loopback.
async fn start_server(engine: Engine) -> Result<Server> {
    let args = resolve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(engine, &args).await
}

/// An HTTP server on loopback that answers every request with what it saw
/// and records the request heads it received.
struct Upstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&seen)));
            }
        });
        Ok(Self { addr, heads, task })
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one head (bounded), answers `saw <request line> host=<Host>`.
async fn answer(mut stream: tokio::net::TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&chunk[..read]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let host = head
        .lines()
        .find_map(|line| line.strip_prefix("Host: "))
        .unwrap_or_default()
        .to_owned();
    seen.lock().expect("lock").push(head);
    let body = format!("saw {request_line} host={host}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// What curl in the sandbox got.
#[derive(Debug)]
struct Fetched {
    /// The origin's (or the proxy's, for plain HTTP) status; 0 for none.
    status: u16,
    /// The proxy's answer to CONNECT; 0 when no tunnel was asked for.
    connect: u16,
    body: String,
}

/// `curl URL` inside the sandbox, through the proxy the environment names;
/// `tunnel` forces CONNECT (`-p`) even for http URLs.
async fn fetch(client: &Client, id: &str, url: &str, tunnel: bool) -> Result<Fetched> {
    fetch_with(client, id, url, if tunnel { "-p" } else { "" }).await
}

async fn fetch_with(client: &Client, id: &str, url: &str, flags: &str) -> Result<Fetched> {
    let script = format!(
        "rm -f /tmp/body; curl -s --max-time 20 {flags} -o /tmp/body \
         -w '%{{http_code}} %{{http_connect}}\\n' '{url}'; cat /tmp/body 2>/dev/null"
    );
    let result = client.exec(id, &ExecRequest::shell(script)).await?;
    let (codes, body) = result
        .stdout
        .split_once('\n')
        .with_context(|| format!("no status line from curl: {result:?}"))?;
    let (status, connect) = codes
        .split_once(' ')
        .with_context(|| format!("unexpected curl output {codes:?}"))?;
    Ok(Fetched {
        status: status.parse()?,
        connect: connect.parse()?,
        body: body.to_owned(),
    })
}

fn policy(egress: &[&str]) -> NetworkPolicy {
    NetworkPolicy {
        egress: egress.iter().map(|entry| (*entry).to_owned()).collect(),
    }
}

async fn create_with(server: &Server, network: Option<NetworkPolicy>) -> Result<String> {
    let sandbox = server
        .client()
        .create_sandbox(&CreateSandboxRequest {
            network,
            ..CreateSandboxRequest::default()
        })
        .await?;
    Ok(sandbox.id)
}

/// The proxy said no, naming the host and the allowlist.
fn assert_denied(fetched: &Fetched, host: &str) {
    assert_eq!(fetched.status, 403, "{fetched:?}");
    assert!(
        fetched.body.contains(host)
            && fetched
                .body
                .contains("is not in this sandbox's egress allowlist"),
        "{fetched:?}"
    );
}

/// The tunnel was refused with 403.
fn assert_tunnel_denied(fetched: &Fetched) {
    assert_eq!(fetched.connect, 403, "{fetched:?}");
    assert_ne!(fetched.status, 200, "{fetched:?}");
}

fn assert_reached(fetched: &Fetched, request_line: &str) {
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert!(
        fetched.body.starts_with(&format!("saw {request_line}")),
        "{fetched:?}"
    );
}

/// The network namespace has `lo` and nothing else, and no route.
async fn assert_no_network(client: &Client, id: &str) -> Result<()> {
    let interfaces = client
        .exec(
            id,
            &ExecRequest::shell("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"),
        )
        .await?;
    assert_eq!(interfaces.stdout, "lo\n", "{interfaces:?}");
    let routes = client
        .exec(
            id,
            &ExecRequest::shell("tail -n +2 /proc/net/route | wc -l"),
        )
        .await?;
    assert_eq!(routes.stdout.trim(), "0", "{routes:?}");
    Ok(())
}

async fn allowlist_decides_by_host_port_and_wildcard(engine: Engine) -> Result<()> {
    let upstream = Upstream::start().await?;
    let other_port = Upstream::start().await?;
    let server = start_server(engine).await?;
    let client = server.client();
    let port = upstream.port();
    let ported = format!("ported.test:{port}");
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest {
            network: Some(policy(&["allowed.test", "*.Wild.TEST.", &ported])),
            ..CreateSandboxRequest::default()
        })
        .await?;
    assert_eq!(
        sandbox.network.egress,
        ["allowed.test", "*.wild.test", ported.as_str()],
        "the record reports the policy in canonical form"
    );
    let id = sandbox.id;

    // Plain HTTP, forwarded in origin form with Connection: close.
    let plain = fetch(
        &client,
        &id,
        &format!("http://allowed.test:{port}/hello?x=1"),
        false,
    )
    .await?;
    assert_reached(&plain, "GET /hello?x=1 HTTP/1.1");
    assert!(
        plain.body.contains(&format!("host=allowed.test:{port}")),
        "{plain:?}"
    );
    let forwarded = upstream
        .heads()
        .into_iter()
        .find(|head| head.starts_with("GET /hello"))
        .context("the upstream saw the request")?;
    assert!(forwarded.contains("Connection: close\r\n"), "{forwarded}");
    assert!(
        !forwarded.to_ascii_lowercase().contains("proxy-"),
        "{forwarded}"
    );

    // CONNECT, then HTTP through the tunnel.
    let tunnelled = fetch(
        &client,
        &id,
        &format!("http://allowed.test:{port}/tunnel"),
        true,
    )
    .await?;
    assert_eq!(tunnelled.connect, 200, "{tunnelled:?}");
    assert_reached(&tunnelled, "GET /tunnel HTTP/1.1");

    // A host the allowlist lacks, both ways.
    let denied = fetch(&client, &id, &format!("http://denied.test:{port}/"), false).await?;
    assert_denied(&denied, "denied.test");
    assert_tunnel_denied(&fetch(&client, &id, &format!("http://denied.test:{port}/"), true).await?);

    // Both refusals, and the allowed requests before them, are in the audit
    // trail under the sandbox's identity.
    let records = client
        .audit(&AuditQuery {
            sandbox: Some(id.clone()),
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await?;
    let egress: Vec<_> = records.iter().filter(|r| r.route == "egress").collect();
    let denied_records: Vec<_> = egress
        .iter()
        .filter(|r| r.status == 403)
        .filter(|r| {
            r.summary
                .as_deref()
                .is_some_and(|s| s.starts_with("denied.test:"))
        })
        .collect();
    assert_eq!(denied_records.len(), 2, "{egress:#?}");
    assert!(
        denied_records.iter().any(|r| r.method == "CONNECT")
            && denied_records.iter().any(|r| r.method == "GET"),
        "{denied_records:#?}"
    );
    assert!(
        egress.iter().all(|r| r.identity == format!("sandbox:{id}")),
        "{egress:#?}"
    );
    assert!(
        egress.iter().any(|r| r.status == 200
            && r.summary
                .as_deref()
                .is_some_and(|s| s.starts_with("allowed.test:"))),
        "{egress:#?}"
    );

    // `*.wild.test` covers subdomains at any depth, not the apex.
    assert_reached(
        &fetch(&client, &id, &format!("http://a.wild.test:{port}/a"), true).await?,
        "GET /a HTTP/1.1",
    );
    assert_reached(
        &fetch(
            &client,
            &id,
            &format!("http://deep.b.wild.test:{port}/deep"),
            false,
        )
        .await?,
        "GET /deep HTTP/1.1",
    );
    assert_denied(
        &fetch(&client, &id, &format!("http://wild.test:{port}/"), false).await?,
        "wild.test",
    );

    // `ported.test:PORT` allows that port only.
    assert_reached(
        &fetch(&client, &id, &format!("http://ported.test:{port}/p"), true).await?,
        "GET /p HTTP/1.1",
    );
    let wrong_port = format!("http://ported.test:{}/p", other_port.port());
    assert_tunnel_denied(&fetch(&client, &id, &wrong_port, true).await?);
    assert_denied(
        &fetch(&client, &id, &wrong_port, false).await?,
        "ported.test",
    );

    // What was refused never reached an upstream.
    assert!(other_port.heads().is_empty(), "{:?}", other_port.heads());
    for head in upstream.heads() {
        assert!(
            !head.contains("denied.test") && !head.contains("Host: wild.test"),
            "a refused request got through: {head}"
        );
    }
    assert_no_network(&client, &id).await
}

async fn without_a_policy_nothing_gets_out(engine: Engine) -> Result<()> {
    let upstream = Upstream::start().await?;
    let server = start_server(engine).await?;
    let client = server.client();
    let id = create_with(&server, None).await?;
    assert!(client.get_sandbox(&id).await?.network.egress.is_empty());

    let env = client
        .exec(
            &id,
            &ExecRequest::shell(
                "echo $HTTP_PROXY $HTTPS_PROXY $http_proxy $https_proxy; echo $NO_PROXY $no_proxy",
            ),
        )
        .await?;
    let proxy = "http://127.0.0.1:3128";
    assert_eq!(
        env.stdout,
        format!("{proxy} {proxy} {proxy} {proxy}\nlocalhost,127.0.0.1 localhost,127.0.0.1\n")
    );

    let port = upstream.port();
    assert_denied(
        &fetch(&client, &id, &format!("http://allowed.test:{port}/"), false).await?,
        "allowed.test",
    );
    assert_tunnel_denied(
        &fetch(&client, &id, &format!("http://allowed.test:{port}/"), true).await?,
    );
    assert!(upstream.heads().is_empty(), "{:?}", upstream.heads());
    assert_no_network(&client, &id).await?;

    // A sandbox with a policy has no more network than one without.
    let open = create_with(&server, Some(policy(&["allowed.test"]))).await?;
    assert_no_network(&client, &open).await
}

fn sbx(server: &Server, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(sbx_bin())
        .args(args)
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .output()?;
    ensure!(output.status.success(), "sbx {args:?} failed: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

async fn policy_changes_apply_live(engine: Engine) -> Result<()> {
    let upstream = Upstream::start().await?;
    let server = start_server(engine).await?;
    let client = server.client();
    let id = create_with(&server, None).await?;
    let port = upstream.port();
    let allowed = format!("http://allowed.test:{port}/");
    let denied = format!("http://denied.test:{port}/");

    assert_denied(&fetch(&client, &id, &allowed, false).await?, "allowed.test");

    // Denied → allowed: the next request sees the change.
    let updated = client.set_egress(&id, vec!["Allowed.Test".into()]).await?;
    assert_eq!(updated.network.egress, ["allowed.test"]);
    assert_reached(
        &fetch(&client, &id, &allowed, false).await?,
        "GET / HTTP/1.1",
    );
    assert_eq!(
        client.get_sandbox(&id).await?.network.egress,
        ["allowed.test"]
    );

    // Allowed → denied, and the other way round for another host.
    client.set_egress(&id, vec!["denied.test".into()]).await?;
    assert_denied(&fetch(&client, &id, &allowed, false).await?, "allowed.test");
    assert_tunnel_denied(&fetch(&client, &id, &allowed, true).await?);
    assert_reached(&fetch(&client, &id, &denied, true).await?, "GET / HTTP/1.1");

    // A PATCH without `network` changes nothing.
    let unchanged = client
        .update_sandbox(&id, &UpdateSandboxRequest::default())
        .await?;
    assert_eq!(unchanged.network.egress, ["denied.test"]);

    // The CLI: replace, show, then deny everything.
    assert_eq!(
        sbx(&server, &["egress", &id, "--allow", "allowed.test"])?,
        "allowed.test\n"
    );
    assert_eq!(sbx(&server, &["egress", &id])?, "allowed.test\n");
    assert_reached(
        &fetch(&client, &id, &allowed, true).await?,
        "GET / HTTP/1.1",
    );
    assert_eq!(sbx(&server, &["egress", &id, "--deny-all"])?, "");
    assert_denied(&fetch(&client, &id, &allowed, false).await?, "allowed.test");
    assert_denied(&fetch(&client, &id, &denied, false).await?, "denied.test");
    Ok(())
}

/// Taking a host out of the allowlist also cuts a tunnel already open to
/// it: the proxy closes it, and the agent's relay passes the close on to
/// the client inside.
async fn a_policy_change_cuts_open_tunnels(engine: Engine) -> Result<()> {
    // An upstream that accepts one connection and holds it, silent.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (accepted, upstream_has_it) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let connection = listener.accept().await;
        let _ = accepted.send(());
        let _held = connection;
        std::future::pending::<()>().await;
    });
    let server = start_server(engine).await?;
    let client = server.client();
    let id = create_with(
        &server,
        Some(NetworkPolicy {
            egress: vec!["allowed.test".into()],
        }),
    )
    .await?;
    let script = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1024)
print(head.split(b"\r\n")[0].decode(), flush=True)
s.settimeout(60)
try:
    print("closed" if s.recv(1) == b"" else "data")
except socket.timeout:
    print("still open")
"#
    );
    let tunnel = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            client
                .exec(&id, &ExecRequest::argv(["python3", "-c", &script]))
                .await
        })
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), upstream_has_it)
        .await
        .context("the tunnel reaches the upstream")??;
    client.set_egress(&id, Vec::new()).await?;
    let result = tunnel.await??;
    holder.abort();
    assert_eq!(
        result.stdout, "HTTP/1.1 200 Connection established\nclosed\n",
        "{}",
        result.stderr
    );
    Ok(())
}

async fn policy_survives_a_server_restart(engine: Engine) -> Result<()> {
    let upstream = Upstream::start().await?;
    let mut first = start_server(engine).await?;
    let id = create_with(&first, Some(policy(&["allowed.test"]))).await?;
    let port = upstream.port();
    let allowed = format!("http://allowed.test:{port}/");
    assert_reached(
        &fetch(&first.client(), &id, &allowed, false).await?,
        "GET / HTTP/1.1",
    );
    let data_dir = first
        .take_data_dir()
        .context("the harness owns a temp dir")?;
    first.kill();

    let args = resolve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let second = Server::start_on_with(engine, data_dir.path(), &args).await?;
    let client = second.client();
    assert_eq!(
        client.get_sandbox(&id).await?.network.egress,
        ["allowed.test"]
    );
    assert_reached(
        &fetch(&client, &id, &allowed, true).await?,
        "GET / HTTP/1.1",
    );
    assert_denied(
        &fetch(&client, &id, &format!("http://denied.test:{port}/"), false).await?,
        "denied.test",
    );
    Ok(())
}

async fn internal_addresses_are_refused_even_when_allowed(engine: Engine) -> Result<()> {
    let upstream = Upstream::start().await?;
    let server = start_server(engine).await?;
    let client = server.client();
    let id = create_with(&server, Some(policy(&["localhost", "127.0.0.1"]))).await?;
    let api_port = server
        .url
        .rsplit(':')
        .next()
        .context("the server url has a port")?
        .to_owned();
    // NO_PROXY spares these names from the proxy; `--noproxy ''` sends them
    // through it as a client that ignores NO_PROXY would.
    for url in [
        format!("http://localhost:{}/", upstream.port()),
        format!("http://127.0.0.1:{}/", upstream.port()),
        format!("http://localhost:{api_port}/health"),
    ] {
        for flags in ["--noproxy ''", "--noproxy '' -p"] {
            let fetched = fetch_with(&client, &id, &url, flags).await?;
            let refused = if flags.ends_with("-p") {
                fetched.connect == 403
            } else {
                fetched.status == 403 && fetched.body.contains("a loopback address")
            };
            if !refused {
                bail!("{url} ({flags}) was not refused: {fetched:?}");
            }
        }
    }
    assert!(upstream.heads().is_empty(), "{:?}", upstream.heads());
    Ok(())
}

fn api_code(err: &ClientError) -> Option<ErrorCode> {
    err.api_error().map(|body| body.error_code)
}

async fn bad_policies_are_rejected(engine: Engine) -> Result<()> {
    let server = start_server(engine).await?;
    let client = server.client();
    for entry in [
        "https://github.com",
        "github.com/org",
        "*",
        "a.*.example.com",
        "example..com",
        "",
        "github.com:0",
        "github.com:http",
    ] {
        let err = client
            .create_sandbox(&CreateSandboxRequest {
                network: Some(policy(&[entry])),
                ..CreateSandboxRequest::default()
            })
            .await
            .expect_err(entry);
        assert_eq!(
            api_code(&err),
            Some(ErrorCode::InvalidRequest),
            "{entry}: {err}"
        );
        let message = &err.api_error().expect("an api error").message;
        assert!(
            message.contains(&format!("{entry:?}")),
            "{entry}: {message}"
        );
    }
    assert!(
        client.list_sandboxes().await?.is_empty(),
        "nothing was created"
    );

    let id = server.new_sandbox().await?;
    let err = client
        .set_egress(&id, vec!["http://x.test".into()])
        .await
        .expect_err("a url");
    assert_eq!(api_code(&err), Some(ErrorCode::InvalidRequest));
    assert!(client.get_sandbox(&id).await?.network.egress.is_empty());
    let err = client
        .set_egress("0123456789abcdef", vec!["x.test".into()])
        .await
        .expect_err("no such sandbox");
    assert_eq!(api_code(&err), Some(ErrorCode::NotFound));

    let response = client
        .send(
            http::Method::PATCH,
            &format!("/v1/sandboxes/{id}"),
            Some("application/json"),
            bytes::Bytes::from_static(br#"{"memory_mb":1024}"#),
        )
        .await?;
    assert_eq!(response.status(), 400, "unknown fields are refused");
    Ok(())
}

sbx_tests::on_every_runtime!(
    bad_policies_are_rejected,
    // hosts_only: the egress proxy is not reachable from a pod yet, so every
    // allowing policy is refused there (tests/kubernetes.rs).
    ; hosts_only:
    allowlist_decides_by_host_port_and_wildcard,
    a_policy_change_cuts_open_tunnels,
    internal_addresses_are_refused_even_when_allowed,
    policy_changes_apply_live,
    policy_survives_a_server_restart,
    without_a_policy_nothing_gets_out,
);
