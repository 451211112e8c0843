//! End to end: the audit trail, on both runtimes. Every `/v1` call is
//! recorded with who, what, where and the outcome, refusals included; no
//! record holds contents or secrets; records can be filtered, and survive
//! a restart of the server; `sbx audit` prints them.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use sbx_api::client::Client;
use sbx_api::{
    AuditQuery, AuditRecord, CreateSandboxRequest, CreateTokenRequest, ErrorBody, ExecRequest,
    Scope, REQUEST_ID_HEADER,
};
use sbx_tests::{sbx_bin, Engine, Server};
use std::collections::BTreeMap;
use std::process::Command;

fn query(sandbox: Option<&str>, limit: Option<u32>) -> AuditQuery {
    AuditQuery {
        sandbox: sandbox.map(str::to_owned),
        since: None,
        limit,
    }
}

/// The newest record matching `route`, `status` and `identity`.
fn find<'a>(
    records: &'a [AuditRecord],
    route: &str,
    status: u16,
    identity: &str,
) -> Result<&'a AuditRecord> {
    records
        .iter()
        .find(|r| r.route == route && r.status == status && r.identity == identity)
        .with_context(|| format!("no {status} record of {identity} on {route} in {records:#?}"))
}

async fn every_call_is_recorded_with_who_what_and_outcome(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let created = admin
        .create_sandbox_with_token(&CreateSandboxRequest::default())
        .await?;
    let (id, secret) = (created.sandbox.id, created.token);
    let other = server.new_sandbox().await?;
    let own = server.client_with_token(Some(&secret));

    let mut exec = ExecRequest::argv(["echo", "audit-me", "two words"]);
    exec.stdin = Some("SECRET-STDIN".into());
    exec.env = BTreeMap::from([("KEY".into(), "SECRET-ENV".into())]);
    let ran = own.exec(&id, &exec).await?;
    assert_eq!(ran.stdout, "audit-me two words\n");
    own.sandbox(&id)
        .write_file(
            "/workspace/secret.txt",
            None,
            Full::new(Bytes::from_static(b"SECRET-CONTENT")),
        )
        .await?;
    own.exec(&other, &ExecRequest::argv(["echo", "elsewhere"]))
        .await
        .expect_err("another sandbox");
    own.list_sandboxes()
        .await
        .expect_err("not about its sandbox");
    server
        .client_with_token(None)
        .list_sandboxes()
        .await
        .expect_err("no token");
    server
        .client_with_token(Some("sbx_forged"))
        .exec(&id, &ExecRequest::argv(["true"]))
        .await
        .expect_err("bad token");
    let unknown = admin
        .send(Method::GET, "/v1/no-such-route", None, Bytes::new())
        .await?;
    assert_eq!(unknown.status(), 404);

    let records = admin.audit(&query(None, None)).await?;
    let exec_route = "/v1/sandboxes/{id}/exec";
    let identity = format!("sandbox:{id}");

    let create = find(&records, "/v1/sandboxes", 201, "admin")?;
    assert_eq!(create.method, "POST");
    assert_eq!(create.summary.as_deref(), Some("image base"));
    assert!(
        records
            .iter()
            .any(|r| r.route == "/v1/sandboxes" && r.sandbox.as_deref() == Some(id.as_str())),
        "a create records the new sandbox's id"
    );

    let allowed = find(&records, exec_route, 200, &identity)?;
    assert_eq!(allowed.method, "POST");
    assert_eq!(allowed.sandbox.as_deref(), Some(id.as_str()));
    assert_eq!(
        allowed.summary.as_deref(),
        Some("echo audit-me 'two words'")
    );
    assert!(
        allowed.token_id.is_some(),
        "minted tokens are recorded by id"
    );
    assert!(allowed.duration_us > 0);

    let file = find(&records, "/v1/sandboxes/{id}/files", 200, &identity)?;
    assert_eq!(file.method, "PUT");
    assert_eq!(file.summary.as_deref(), Some("/workspace/secret.txt"));

    let denied = find(&records, exec_route, 403, &identity)?;
    assert_eq!(denied.sandbox.as_deref(), Some(other.as_str()));
    find(&records, "/v1/sandboxes", 403, &identity)?;

    let anonymous = find(&records, "/v1/sandboxes", 401, "anonymous")?;
    assert_eq!(anonymous.method, "GET");
    assert!(anonymous.token_id.is_none());
    let forged = find(&records, exec_route, 401, "anonymous")?;
    assert_eq!(forged.sandbox.as_deref(), Some(id.as_str()));
    // Unknown routes are recorded as the path that was tried.
    find(&records, "/v1/no-such-route", 404, "anonymous")?;

    // Contents and secrets never reach the trail.
    let all = serde_json::to_string(&records)?;
    for secret in [
        "SECRET-STDIN",
        "SECRET-ENV",
        "SECRET-CONTENT",
        &secret,
        &server.token,
    ] {
        assert!(!all.contains(secret), "{secret} recorded: {all}");
    }
    Ok(())
}

async fn audit_filters_by_sandbox_since_and_limit(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let (first, second) = (server.new_sandbox().await?, server.new_sandbox().await?);
    for n in 0..3 {
        admin
            .exec(&first, &ExecRequest::argv(["echo", &format!("first-{n}")]))
            .await?;
    }
    admin
        .exec(&second, &ExecRequest::argv(["echo", "second"]))
        .await?;

    let of_first = admin.audit(&query(Some(&first), None)).await?;
    assert!(of_first
        .iter()
        .all(|r| r.sandbox.as_deref() == Some(first.as_str())));
    let summaries: Vec<&str> = of_first
        .iter()
        .filter_map(|r| r.summary.as_deref())
        .collect();
    assert_eq!(
        summaries,
        ["echo first-2", "echo first-1", "echo first-0", "image base"],
        "newest first, the create included"
    );
    assert!(of_first.windows(2).all(|pair| pair[0].seq > pair[1].seq));

    let newest = admin.audit(&query(Some(&first), Some(2))).await?;
    let summaries: Vec<&str> = newest.iter().filter_map(|r| r.summary.as_deref()).collect();
    assert_eq!(summaries, ["echo first-2", "echo first-1"]);

    let since = chrono::Utc::now();
    admin
        .exec(&first, &ExecRequest::argv(["echo", "later"]))
        .await?;
    let later = admin
        .audit(&AuditQuery {
            since: Some(since),
            ..query(None, None)
        })
        .await?;
    assert!(later.iter().all(|r| r.time >= since), "{later:?}");
    assert!(later
        .iter()
        .any(|r| r.summary.as_deref() == Some("echo later")));
    assert!(!later
        .iter()
        .any(|r| r.summary.as_deref() == Some("echo first-2")));

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "since=yesterday",
        "sandboxes=x",
    ] {
        let response = admin
            .send(Method::GET, &format!("/v1/audit?{bad}"), None, Bytes::new())
            .await?;
        assert_eq!(response.status(), 400, "{bad}");
    }
    let thousand = admin.audit(&query(None, Some(1000))).await?;
    assert!(!thousand.is_empty());

    // Reading the trail takes audit:read.
    let mint = |name: &str, scopes: &[Scope]| CreateTokenRequest {
        name: name.into(),
        scopes: scopes.to_vec(),
        ttl_s: None,
        sandbox: None,
    };
    let reader = admin
        .create_token(&mint("reader", &[Scope::SandboxesRead]))
        .await?;
    let auditor = admin
        .create_token(&mint("auditor", &[Scope::AuditRead]))
        .await?;
    let refused = server
        .client_with_token(Some(&reader.secret))
        .audit(&query(None, None))
        .await
        .expect_err("no audit:read");
    assert_eq!(
        refused.api_error().map(|body| body.error_code),
        Some(sbx_api::ErrorCode::Forbidden)
    );
    let seen = server
        .client_with_token(Some(&auditor.secret))
        .audit(&query(None, None))
        .await?;
    assert!(seen
        .iter()
        .any(|r| r.route == "/v1/audit" && r.status == 403 && r.identity == "reader"));
    Ok(())
}

async fn records_of(client: &Client, id: &str) -> Result<Vec<String>> {
    Ok(client
        .audit(&query(Some(id), None))
        .await?
        .into_iter()
        .filter_map(|r| r.summary)
        .collect())
}

async fn the_trail_survives_restarts(engine: Engine) -> Result<()> {
    let json_log = tempfile::NamedTempFile::new()?;
    let log_path = json_log.path().to_str().context("utf-8 path")?.to_owned();
    let mut first = Server::start_with(engine, &["--audit-log", &log_path]).await?;
    let id = first.new_sandbox().await?;
    first
        .client()
        .exec(&id, &ExecRequest::argv(["echo", "before-stop"]))
        .await?;
    // Stopped right after the call, with no read in between: the queued
    // record must be written on the way out.
    let data_dir = first
        .take_data_dir()
        .context("the harness owns a temp dir")?;
    let status = first.stop()?;
    ensure!(status.success(), "sbx serve exited with {status}");

    let mut second =
        Server::start_on_with(engine, data_dir.path(), &["--audit-log", &log_path]).await?;
    let client = second.client();
    assert!(
        records_of(&client, &id)
            .await?
            .contains(&"echo before-stop".to_owned()),
        "graceful stop; log: {}",
        second.log()
    );
    client
        .exec(&id, &ExecRequest::argv(["echo", "before-kill"]))
        .await?;
    // A read commits what is queued; a SIGKILL after it loses nothing.
    records_of(&client, &id).await?;
    second.kill();

    let third = Server::start_on(engine, data_dir.path()).await?;
    let summaries = records_of(&third.client(), &id).await?;
    for expected in ["echo before-stop", "echo before-kill"] {
        assert!(
            summaries.iter().any(|s| s == expected),
            "{expected} in {summaries:?}"
        );
    }

    // The JSON lines log got the same records, one per line.
    let lines = std::fs::read_to_string(json_log.path())?;
    let logged: Vec<AuditRecord> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for expected in ["echo before-stop", "echo before-kill"] {
        assert!(
            logged.iter().any(|r| r.summary.as_deref() == Some(expected)
                && r.sandbox.as_deref() == Some(id.as_str())),
            "{expected} in the json log"
        );
    }
    Ok(())
}

async fn sbx_audit_prints_a_table(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let id = server.new_sandbox().await?;
    for word in ["one", "two", "three"] {
        server
            .client()
            .exec(&id, &ExecRequest::argv(["echo", word]))
            .await?;
    }
    let output = Command::new(sbx_bin())
        .args(["audit", &id, "--since", "10m", "--limit", "2"])
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .output()?;
    ensure!(output.status.success(), "sbx audit failed: {output:?}");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows: {table}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("IDENTITY"));
    assert!(
        lines[1].contains("echo two") && lines[2].contains("echo three"),
        "the newest two, oldest first: {table}"
    );
    for row in &lines[1..] {
        assert!(row.contains("admin") && row.contains("200") && row.contains(&id));
        assert!(row.contains("/v1/sandboxes/{id}/exec"), "{row}");
    }

    let bad = Command::new(sbx_bin())
        .args(["audit", "--limit", "0"])
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", &server.token)
        .output()?;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_request"));
    Ok(())
}

/// The `x-request-id` of a response, checked for shape.
fn request_id<B>(response: &http::Response<B>) -> Result<String> {
    let id = response
        .headers()
        .get(REQUEST_ID_HEADER)
        .with_context(|| format!("no {REQUEST_ID_HEADER} on a {}", response.status()))?
        .to_str()?
        .to_owned();
    ensure!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?}"
    );
    Ok(id)
}

/// Sends a call, returns its status, request id and body.
async fn call(
    client: &Client,
    method: Method,
    path: &str,
    body: &'static str,
) -> Result<(u16, String, Bytes)> {
    let response = client
        .send(method, path, Some("application/json"), Bytes::from(body))
        .await?;
    let status = response.status().as_u16();
    let id = request_id(&response)?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    Ok((status, id, body))
}

async fn every_response_names_its_call_in_the_log_trail_and_error(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let anonymous = server.client_with_token(None);
    let id = server.new_sandbox().await?;

    let (status, health, _) = call(&anonymous, Method::GET, "/health", "").await?;
    assert_eq!(status, 200);
    let missing_file = format!("/v1/sandboxes/{id}/files?path=/workspace/nothing-here");
    let errors = [
        (&anonymous, Method::GET, "/v1/sandboxes".to_owned(), "", 401),
        (&admin, Method::GET, "/v1/no-such-route".to_owned(), "", 404),
        (
            &anonymous,
            Method::GET,
            "/no-such-route".to_owned(),
            "",
            404,
        ),
        (&admin, Method::PUT, "/v1/sandboxes".to_owned(), "", 405),
        (&admin, Method::POST, "/v1/sandboxes".to_owned(), "{", 400),
        (
            &admin,
            Method::GET,
            "/v1/sandboxes/0000000000000000".to_owned(),
            "",
            404,
        ),
        // Answered by the sandbox's agent, passed on by the server.
        (&admin, Method::GET, missing_file, "", 404),
    ];
    let mut ids = vec![health];
    for (client, method, path, body, expected) in errors {
        let (status, request_id, body) = call(client, method.clone(), &path, body).await?;
        assert_eq!(status, expected, "{method} {path}");
        let error: ErrorBody = serde_json::from_slice(&body)
            .with_context(|| format!("{method} {path}: {}", String::from_utf8_lossy(&body)))?;
        assert_eq!(
            error.request_id.as_deref(),
            Some(request_id.as_str()),
            "{method} {path}"
        );
        ids.push(request_id);
    }

    // A client cannot choose its id.
    let mut request = http::Request::get("/v1/info")
        .header(REQUEST_ID_HEADER, "chosen-by-the-client")
        .body(Full::new(Bytes::new()))?;
    request
        .headers_mut()
        .append(REQUEST_ID_HEADER, "0123456789abcdef".parse()?);
    let response = admin.send_request(request).await?;
    assert_eq!(response.status(), 200);
    let info = request_id(&response)?;
    assert!(!["chosen-by-the-client", "0123456789abcdef"].contains(&info.as_str()));
    ids.push(info.clone());

    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "a fresh id per call: {ids:?}");

    // The trail repeats the id of each /v1 call.
    let (status, exec_id, _) = call(
        &admin,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        r#"{"cmd":["true"]}"#,
    )
    .await?;
    assert_eq!(status, 200);
    let records = admin.audit(&query(None, Some(1000))).await?;
    let by_id = |request_id: &str| {
        records
            .iter()
            .filter(|r| r.request_id.as_deref() == Some(request_id))
            .collect::<Vec<_>>()
    };
    let exec = by_id(&exec_id);
    assert_eq!(exec.len(), 1, "{records:#?}");
    assert_eq!(exec[0].route, "/v1/sandboxes/{id}/exec");
    assert_eq!(exec[0].status, 200);
    let unauthorized = by_id(&ids[1]);
    assert_eq!(unauthorized.len(), 1, "{records:#?}");
    assert_eq!(
        (unauthorized[0].route.as_str(), unauthorized[0].status),
        ("/v1/sandboxes", 401)
    );
    let info_record = by_id(&info);
    assert_eq!(info_record.len(), 1);
    assert_eq!(info_record[0].route, "/v1/info");
    // Outside /v1 nothing is audited, but the id is still given.
    assert!(by_id(&ids[0]).is_empty() && by_id(&ids[3]).is_empty());

    // The log lines of a call carry its id, those of its detached work
    // included.
    let (status, create_id, _) = call(&admin, Method::POST, "/v1/sandboxes", "{}").await?;
    assert_eq!(status, 201);
    let logged = sbx_tests::eventually(std::time::Duration::from_secs(10), || async {
        server
            .log()
            .lines()
            .any(|line| line.contains(&create_id) && line.contains("sandbox running"))
    })
    .await;
    assert!(logged, "no log line of {create_id}: {}", server.log());
    Ok(())
}

sbx_tests::on_every_runtime!(
    every_call_is_recorded_with_who_what_and_outcome,
    every_response_names_its_call_in_the_log_trail_and_error,
    audit_filters_by_sandbox_since_and_limit,
    the_trail_survives_restarts,
    sbx_audit_prints_a_table,
);
