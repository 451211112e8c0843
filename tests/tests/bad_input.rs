//! End to end: hostile or careless clients. Every bad request gets a 4xx
//! with a stable `error_code`; the server stays up and loses nothing.

use anyhow::Result;
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use sbx_api::client::Client;
use sbx_api::{ErrorBody, ErrorCode, ExecRequest};
use sbx_tests::{Engine, Server};

/// Sends a raw request and returns the status and the error body.
async fn raw(
    client: &Client,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<(u16, Option<ErrorBody>)> {
    let response = client
        .send(method, path, Some("application/json"), body.into())
        .await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).ok()))
}

async fn bad_requests_get_4xx_and_stable_codes(engine: Engine) -> Result<()> {
    // A small configured body limit, so that "over the limit" is cheap.
    let server = Server::start_with(engine, &["--max-body", "1M"]).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let exec_path = format!("/v1/sandboxes/{id}/exec");
    let huge = format!(r#"{{"shell":"true","stdin":"{}"}}"#, "x".repeat(2 << 20));
    let huge_create = format!(r#"{{"labels":{{"big":"{}"}}}}"#, "x".repeat(2 << 20));
    let cases: Vec<(Method, String, Bytes, u16, ErrorCode)> = vec![
        // Malformed JSON and wrong types.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            Bytes::from_static(b"{"),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            "/v1/sandboxes".into(),
            Bytes::from_static(br#"{"cpus":"two"}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from_static(br#"{"cmd":"echo"}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from_static(b"[]"),
            400,
            ErrorCode::InvalidRequest,
        ),
        // Absurd values.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            Bytes::from_static(br#"{"memory_mb":-512}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            "/v1/sandboxes".into(),
            Bytes::from_static(br#"{"memory_mb":99999999999}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from_static(br#"{"shell":"true","timeout_ms":1000000000000}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from_static(br#"{"cmd":["ec\u0000ho"]}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from_static(br#"{"shell":"true","cwd":"relative"}"#),
            400,
            ErrorCode::InvalidRequest,
        ),
        // Bodies over the configured limit.
        (
            Method::POST,
            exec_path.clone(),
            Bytes::from(huge),
            413,
            ErrorCode::PayloadTooLarge,
        ),
        (
            Method::POST,
            "/v1/sandboxes".into(),
            Bytes::from(huge_create),
            413,
            ErrorCode::PayloadTooLarge,
        ),
        // Ids that are not ids.
        (
            Method::GET,
            "/v1/sandboxes/..".into(),
            Bytes::new(),
            404,
            ErrorCode::NotFound,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a%2Fb".into(),
            Bytes::new(),
            404,
            ErrorCode::NotFound,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a%00b".into(),
            Bytes::new(),
            404,
            ErrorCode::NotFound,
        ),
        (
            Method::DELETE,
            "/v1/sandboxes/%2E%2E".into(),
            Bytes::new(),
            404,
            ErrorCode::NotFound,
        ),
        // Paths that are relative or hold NUL.
        (
            Method::GET,
            format!("/v1/sandboxes/{id}/files?path=etc/passwd"),
            Bytes::new(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::GET,
            format!("/v1/sandboxes/{id}/files?path=/etc%00/passwd"),
            Bytes::new(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            Method::GET,
            format!("/v1/sandboxes/{id}/files"),
            Bytes::new(),
            400,
            ErrorCode::InvalidRequest,
        ),
        // Routes and methods that do not exist.
        (
            Method::GET,
            "/v1/nothing".into(),
            Bytes::new(),
            404,
            ErrorCode::NotFound,
        ),
        (
            Method::PUT,
            "/v1/sandboxes".into(),
            Bytes::new(),
            405,
            ErrorCode::MethodNotAllowed,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let shown = format!("{method} {}", &path[..path.len().min(80)]);
        let (got, error) = raw(&client, method, &path, body).await?;
        assert_eq!(got, status, "{shown}");
        assert_eq!(error.map(|e| e.error_code), Some(code), "{shown}");
    }
    // Nothing was lost: the sandbox is still there and works.
    let listed = client.list_sandboxes().await?;
    assert_eq!(listed.len(), 1);
    let echo = client.exec(&id, &ExecRequest::argv(["echo", "ok"])).await?;
    assert_eq!(echo.stdout, "ok\n");
    // Under the limit is fine: the limit is the configured one.
    let under = client
        .exec(
            &id,
            &ExecRequest {
                stdin: Some("x".repeat(512 << 10)),
                ..ExecRequest::shell("wc -c")
            },
        )
        .await?;
    assert_eq!(under.stdout.trim(), (512 << 10).to_string());
    Ok(())
}

async fn requests_racing_a_delete_never_fail_with_5xx(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        let id = id.clone();
        racers.spawn(async move { client.exec(&id, &ExecRequest::argv(["true"])).await });
    }
    let deleter = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.delete_sandbox(&id).await })
    };
    let deleted = deleter.await?;
    assert!(deleted.is_ok(), "{deleted:?}");
    while let Some(result) = racers.join_next().await {
        match result? {
            // Finished, or killed by the sandbox's shutdown.
            Ok(done) => assert!(done.exit_code == 0 || done.exit_code > 128, "{done:?}"),
            Err(err) => {
                let code = err.api_error().map(|body| body.error_code);
                assert!(
                    matches!(code, Some(ErrorCode::NotFound | ErrorCode::Conflict)),
                    "a request racing the delete got {err}"
                );
            }
        }
    }
    let again = client.delete_sandbox(&id).await.expect_err("already gone");
    assert_eq!(
        again.api_error().map(|b| b.error_code),
        Some(ErrorCode::NotFound)
    );
    assert!(client.list_sandboxes().await?.is_empty());
    Ok(())
}

sbx_tests::on_every_runtime!(
    bad_requests_get_4xx_and_stable_codes,
    requests_racing_a_delete_never_fail_with_5xx,
);
