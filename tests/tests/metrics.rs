//! End to end: `GET /metrics`, on both runtimes. Who may scrape (the
//! `metrics:read` scope, the admin; refusals audited, scrapes not), and
//! that each family moves by exactly what the calls did: a create, execs
//! (buffered and streamed), file and archive transfers, egress decisions,
//! errors made by the server and passed on from an agent, a delete; and
//! that the sandboxes-by-state gauge follows.
//!
//! The egress upstream is a listener this test binds on `127.0.0.1`; the
//! server resolves `allowed.test` to it (`--egress-resolve`), and the
//! denied name is refused before anything is resolved. No packet leaves
//! loopback.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use sbx_api::client::{Client, ClientError};
use sbx_api::{
    AuditQuery, CreateSandboxRequest, CreateTokenRequest, ErrorCode, ExecEvent, ExecRequest,
    NetworkPolicy, Scope,
};
use sbx_tests::{tree_tar, Engine, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One scrape, as `(series, value)` pairs: the series is the sample's name
/// and labels as written (`sbx_execs_total{mode="buffered"}`).
#[derive(Debug)]
struct Scrape {
    samples: Vec<(String, f64)>,
    text: String,
}

impl Scrape {
    fn parse(text: String) -> Result<Self> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("a sample line without a value: {line:?}"))?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("a sample line with a bad value: {line:?}"))?;
            samples.push((series.to_owned(), value));
        }
        Ok(Self { samples, text })
    }

    /// The sum of the samples named `name` whose labels include every
    /// `labels` pair.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                series_name == name
                    && labels
                        .iter()
                        .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

async fn scrape(client: &Client) -> Result<Scrape> {
    Scrape::parse(client.metrics().await?)
}

/// A series selector and how far it should move: `(name, labels, change)`.
type Moved<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// How far each of `checks` moved between two scrapes, against what was
/// expected.
fn assert_moved(before: &Scrape, after: &Scrape, what: &str, checks: &[Moved<'_>]) {
    for (name, labels, expected) in checks {
        let moved = after.sum(name, labels) - before.sum(name, labels);
        assert_eq!(
            moved, *expected,
            "{what}: {name}{labels:?} moved by {moved}, not {expected}\n{}",
            after.text
        );
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(err) => err.api_error().map(|body| body.error_code),
    }
}

fn token_request(name: &str, scopes: &[Scope]) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.into(),
        scopes: scopes.to_vec(),
        ttl_s: None,
        sandbox: None,
    }
}

async fn scraping_takes_metrics_read(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let text = admin.metrics().await?;
    ensure!(
        text.contains("# TYPE sbx_sandboxes gauge"),
        "the admin scrapes: {text}"
    );

    let before = scrape(&admin).await?;
    let anonymous = server.client_with_token(None);
    assert_eq!(
        code(anonymous.metrics().await),
        Some(ErrorCode::Unauthorized)
    );
    let reader = admin
        .create_token(&token_request("reader", &[Scope::SandboxesRead]))
        .await?;
    let without = server.client_with_token(Some(&reader.secret));
    assert_eq!(code(without.metrics().await), Some(ErrorCode::Forbidden));
    let scraper = admin
        .create_token(&token_request("prometheus", &[Scope::MetricsRead]))
        .await?;
    assert_eq!(scraper.token.scopes, [Scope::MetricsRead]);
    let with = server.client_with_token(Some(&scraper.secret));
    let scraped = scrape(&with).await?;
    ensure!(
        scraped.text.contains("# TYPE sbx_errors_total counter"),
        "{}",
        scraped.text
    );
    // ...and it reaches nothing else.
    assert_eq!(
        code(with.list_sandboxes().await),
        Some(ErrorCode::Forbidden)
    );

    let after = scrape(&admin).await?;
    assert_moved(
        &before,
        &after,
        "refused scrapes",
        &[
            ("sbx_errors_total", &[("error_code", "unauthorized")], 1.0),
            ("sbx_errors_total", &[("error_code", "forbidden")], 2.0),
        ],
    );

    // Successful scrapes are not audited; refused ones are, naming who
    // tried.
    let records = admin.audit(&AuditQuery::default()).await?;
    let mut scrapes: Vec<(u16, &str)> = records
        .iter()
        .filter(|record| record.route == "/metrics")
        .map(|record| (record.status, record.identity.as_str()))
        .collect();
    scrapes.sort();
    assert_eq!(
        scrapes,
        [(401, "anonymous"), (403, "reader")],
        "{records:#?}"
    );
    ensure!(
        records.iter().any(|record| record.route == "/v1/tokens"),
        "{records:#?}"
    );
    Ok(())
}

/// A loopback HTTP server answering `ok` to every request, for the one
/// allowed egress connection.
async fn upstream() -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&chunk[..read]),
                    }
                }
                let answer =
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok((port, task))
}

/// `curl` inside the sandbox through its proxy; the HTTP status it got.
async fn curl_status(client: &Client, id: &str, url: &str) -> Result<String> {
    let script = format!("curl -s -o /dev/null --max-time 20 -w '%{{http_code}}' '{url}'");
    let result = client.exec(id, &ExecRequest::shell(script)).await?;
    Ok(result.stdout)
}

async fn every_family_moves_with_the_calls(engine: Engine) -> Result<()> {
    let (port, upstream) = upstream().await?;
    let server =
        Server::start_with(engine, &["--egress-resolve", "allowed.test=127.0.0.1"]).await?;
    let admin = server.client();
    let runtime = engine.name();

    let start = scrape(&admin).await?;
    for state in ["creating", "running", "deleting", "failed"] {
        assert_eq!(start.sum("sbx_sandboxes", &[("state", state)]), 0.0);
    }
    assert_eq!(start.sum("sbx_warm_pool_size", &[]), 0.0);

    // A create.
    let sandbox = admin
        .create_sandbox(&CreateSandboxRequest {
            network: Some(NetworkPolicy {
                egress: vec!["allowed.test".into()],
            }),
            ..CreateSandboxRequest::default()
        })
        .await?;
    let id = sandbox.id;
    let created = scrape(&admin).await?;
    assert_moved(
        &start,
        &created,
        "a create",
        &[
            (
                "sbx_create_duration_seconds_count",
                &[("runtime", runtime), ("source", "cold")],
                1.0,
            ),
            (
                "sbx_create_duration_seconds_bucket",
                &[("runtime", runtime), ("source", "cold"), ("le", "+Inf")],
                1.0,
            ),
            ("sbx_sandboxes", &[("state", "running")], 1.0),
            ("sbx_execs_total", &[], 0.0),
        ],
    );
    ensure!(created.sum("sbx_create_duration_seconds_sum", &[]) > 0.0);

    // An exec, buffered, then one streamed.
    let ran = admin.exec(&id, &ExecRequest::argv(["true"])).await?;
    assert_eq!(ran.exit_code, 0);
    let executed = scrape(&admin).await?;
    assert_moved(
        &created,
        &executed,
        "a buffered exec",
        &[
            ("sbx_execs_total", &[("mode", "buffered")], 1.0),
            ("sbx_execs_total", &[("mode", "stream")], 0.0),
            (
                "sbx_exec_duration_seconds_count",
                &[("mode", "buffered")],
                1.0,
            ),
            (
                "sbx_exec_duration_seconds_bucket",
                &[("mode", "buffered"), ("le", "+Inf")],
                1.0,
            ),
        ],
    );
    let events = admin
        .sandbox(&id)
        .exec_stream(&ExecRequest::argv(["echo", "streamed"]))
        .await?
        .collect()
        .await?;
    ensure!(
        events
            .iter()
            .any(|event| matches!(event, ExecEvent::Exit { exit_code: 0, .. })),
        "{events:?}"
    );
    let streamed = scrape(&admin).await?;
    assert_moved(
        &executed,
        &streamed,
        "a streamed exec",
        &[
            ("sbx_execs_total", &[("mode", "stream")], 1.0),
            ("sbx_execs_total", &[("mode", "buffered")], 0.0),
            (
                "sbx_exec_duration_seconds_count",
                &[("mode", "stream")],
                1.0,
            ),
        ],
    );

    // A file up and down, and an archive up and down: what streamed.
    let files = admin.sandbox(&id);
    let contents = Bytes::from(vec![b'x'; 100_000]);
    files
        .write_file("/workspace/blob", None, Full::new(contents.clone()))
        .await?;
    let read = files.read_file("/workspace/blob").await?.bytes().await?;
    assert_eq!(read, contents);
    let tar = tree_tar(20)?;
    files
        .upload_archive("/workspace/up", Full::new(Bytes::from(tar.clone())))
        .await?;
    let archive = files
        .download_archive("/workspace/up")
        .await?
        .bytes()
        .await?;
    let moved = scrape(&admin).await?;
    assert_moved(
        &streamed,
        &moved,
        "file transfers",
        &[
            (
                "sbx_file_upload_bytes_total",
                &[("route", "files")],
                100_000.0,
            ),
            (
                "sbx_file_download_bytes_total",
                &[("route", "files")],
                100_000.0,
            ),
            (
                "sbx_file_upload_bytes_total",
                &[("route", "archive")],
                tar.len() as f64,
            ),
            (
                "sbx_file_download_bytes_total",
                &[("route", "archive")],
                archive.len() as f64,
            ),
        ],
    );
    ensure!(!archive.is_empty());

    // Egress: one denied (not in the allowlist; nothing is resolved), one
    // allowed (to the loopback upstream). Each is an exec too.
    let denied = curl_status(&admin, &id, &format!("http://denied.test:{port}/")).await?;
    assert_eq!(denied, "403");
    let decided = scrape(&admin).await?;
    assert_moved(
        &moved,
        &decided,
        "a denied connection",
        &[
            ("sbx_egress_decisions_total", &[("decision", "denied")], 1.0),
            (
                "sbx_egress_decisions_total",
                &[("decision", "allowed")],
                0.0,
            ),
            ("sbx_execs_total", &[("mode", "buffered")], 1.0),
        ],
    );
    let allowed = curl_status(&admin, &id, &format!("http://allowed.test:{port}/")).await?;
    assert_eq!(allowed, "200");
    let passed = scrape(&admin).await?;
    assert_moved(
        &decided,
        &passed,
        "an allowed connection",
        &[
            (
                "sbx_egress_decisions_total",
                &[("decision", "allowed")],
                1.0,
            ),
            ("sbx_egress_decisions_total", &[("decision", "denied")], 0.0),
        ],
    );
    upstream.abort();

    // A 404 the server makes, then one an agent makes (passed on): both by
    // their code, and the agent's error body is no download.
    assert_eq!(
        code(admin.get_sandbox("0000000000000000").await),
        Some(ErrorCode::NotFound)
    );
    let missing = scrape(&admin).await?;
    assert_moved(
        &passed,
        &missing,
        "a 404 from the server",
        &[
            ("sbx_errors_total", &[("error_code", "not_found")], 1.0),
            ("sbx_errors_total", &[], 1.0),
        ],
    );
    match files.read_file("/workspace/nothing-here").await {
        Err(err) => assert_eq!(
            err.api_error().map(|body| body.error_code),
            Some(ErrorCode::NotFound),
            "{err}"
        ),
        Ok(_) => bail!("a missing file was read"),
    }
    let agent_missing = scrape(&admin).await?;
    assert_moved(
        &missing,
        &agent_missing,
        "a 404 from the agent",
        &[
            ("sbx_errors_total", &[("error_code", "not_found")], 1.0),
            ("sbx_file_download_bytes_total", &[], 0.0),
        ],
    );

    // A delete.
    admin.delete_sandbox(&id).await?;
    let deleted = scrape(&admin).await?;
    assert_moved(
        &agent_missing,
        &deleted,
        "a delete",
        &[
            (
                "sbx_delete_duration_seconds_count",
                &[("runtime", runtime)],
                1.0,
            ),
            ("sbx_sandboxes", &[("state", "running")], -1.0),
            ("sbx_create_duration_seconds_count", &[], 0.0),
        ],
    );
    assert_eq!(deleted.sum("sbx_sandboxes", &[]), 0.0, "{}", deleted.text);
    Ok(())
}

async fn a_pooled_create_is_told_apart_and_the_pool_level_shows(engine: Engine) -> Result<()> {
    let server = Server::start_with(engine, &["--warm-pool", "1"]).await?;
    let admin = server.client();
    let mut ready = false;
    for _ in 0..1500 {
        let now = scrape(&admin).await?;
        if now.sum("sbx_warm_pool_ready", &[]) == 1.0 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ensure!(ready, "the pool never filled");
    let before = scrape(&admin).await?;
    assert_eq!(before.sum("sbx_warm_pool_size", &[]), 1.0);
    assert_eq!(
        before.sum("sbx_sandboxes", &[]),
        0.0,
        "pooled ones are apart"
    );
    server.new_sandbox().await?;
    let after = scrape(&admin).await?;
    assert_moved(
        &before,
        &after,
        "a claim",
        &[
            (
                "sbx_create_duration_seconds_count",
                &[("source", "pool")],
                1.0,
            ),
            (
                "sbx_create_duration_seconds_count",
                &[("source", "cold")],
                0.0,
            ),
            ("sbx_sandboxes", &[("state", "running")], 1.0),
        ],
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    scraping_takes_metrics_read,
    a_pooled_create_is_told_apart_and_the_pool_level_shows,
    // hosts_only: it counts an egress decision, refused on the cluster.
    ; hosts_only:
    every_family_moves_with_the_calls,
);
