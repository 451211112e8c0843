//! End to end: scoped tokens. Each rule is shown allowed and denied, on
//! both runtimes: a sandbox's own token, minted tokens and their scopes,
//! revocation, expiry, hashing at rest, and the `sbx token` CLI.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use sbx_api::client::ClientError;
use sbx_api::{
    CreateSandboxRequest, CreateTokenRequest, ErrorCode, ExecRequest, Scope, StartProcessRequest,
};
use sbx_tests::{eventually, sbx_bin, Engine, Server};
use std::process::{Command, Output};
use std::time::Duration;

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(err) => err.api_error().map(|body| body.error_code),
    }
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    code(result) == Some(ErrorCode::Forbidden)
}

fn unauthorized<T: std::fmt::Debug>(result: Result<T, ClientError>) -> bool {
    code(result) == Some(ErrorCode::Unauthorized)
}

fn token_request(name: &str, scopes: &[Scope]) -> CreateTokenRequest {
    CreateTokenRequest {
        name: name.into(),
        scopes: scopes.to_vec(),
        ttl_s: None,
        sandbox: None,
    }
}

async fn a_sandbox_token_reaches_its_sandbox_and_nothing_else(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let created = admin
        .create_sandbox_with_token(&CreateSandboxRequest::default())
        .await?;
    let (mine, secret) = (created.sandbox.id, created.token);
    assert!(secret.starts_with("sbx_"), "{secret}");
    let other = server.new_sandbox().await?;
    let own = server.client_with_token(Some(&secret));

    // Allowed: everything in and about its own sandbox.
    assert_eq!(own.get_sandbox(&mine).await?.id, mine);
    let echoed = own
        .exec(&mine, &ExecRequest::argv(["echo", "mine"]))
        .await?;
    assert_eq!(echoed.stdout, "mine\n");
    let sandbox = own.sandbox(&mine);
    sandbox
        .write_file(
            "/workspace/note",
            None,
            Full::new(Bytes::from_static(b"hello")),
        )
        .await?;
    let read = sandbox.read_file("/workspace/note").await?.bytes().await?;
    assert_eq!(&read[..], b"hello");
    let process = sandbox
        .start_process(&StartProcessRequest {
            cmd: Some(vec!["sleep".into(), "30".into()]),
            ..StartProcessRequest::default()
        })
        .await?;
    assert!(sandbox
        .processes()
        .await?
        .iter()
        .any(|p| p.pid == process.pid));
    own.info().await?;

    // Denied, with 403 forbidden: another sandbox, and every call that is
    // not about its own sandbox.
    assert!(forbidden(own.get_sandbox(&other).await));
    assert!(forbidden(
        own.exec(&other, &ExecRequest::argv(["true"])).await
    ));
    assert!(forbidden(
        own.sandbox(&other)
            .read_file("/etc/hostname")
            .await
            .map(drop)
    ));
    assert!(forbidden(
        own.create_sandbox(&CreateSandboxRequest::default()).await
    ));
    assert!(forbidden(own.list_sandboxes().await));
    assert!(forbidden(own.delete_sandbox(&other).await));
    assert!(forbidden(own.delete_sandbox(&mine).await));
    assert!(forbidden(own.list_tokens().await));
    assert!(forbidden(
        own.create_token(&token_request("escape", &[Scope::SandboxesExec]))
            .await
    ));
    assert!(forbidden(own.audit(&Default::default()).await));

    // Nothing was deleted or created by the refused calls.
    let listed = admin.list_sandboxes().await?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let tokens = admin.list_tokens().await?;
    let token = tokens
        .iter()
        .find(|token| token.sandbox.as_deref() == Some(&mine))
        .context("the sandbox token is listed")?;
    assert_eq!(token.name, format!("sandbox:{mine}"));
    assert_eq!(token.scopes, [Scope::SandboxesRead, Scope::SandboxesExec]);
    assert_eq!(token.created_by, "admin");
    Ok(())
}

async fn a_sandbox_token_dies_with_its_sandbox(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let created = admin
        .create_sandbox_with_token(&CreateSandboxRequest::default())
        .await?;
    let id = created.sandbox.id;
    let own = server.client_with_token(Some(&created.token));
    own.exec(&id, &ExecRequest::argv(["true"])).await?;

    admin.delete_sandbox(&id).await?;
    assert!(
        unauthorized(own.get_sandbox(&id).await),
        "revoked with its sandbox"
    );
    assert!(unauthorized(own.info().await));
    assert!(
        admin.list_tokens().await?.is_empty(),
        "no token outlives its sandbox"
    );
    Ok(())
}

async fn minted_tokens_hold_only_their_scopes(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let id = server.new_sandbox().await?;

    // sandboxes:read lists and reads, and does nothing else.
    let reader = admin
        .create_token(&CreateTokenRequest {
            ttl_s: Some(3600),
            ..token_request("reader", &[Scope::SandboxesRead])
        })
        .await?;
    assert!(reader.secret.starts_with("sbx_"));
    assert_eq!(reader.token.created_by, "admin");
    assert!(reader.token.expires_at.is_some());
    let read_only = server.client_with_token(Some(&reader.secret));
    assert_eq!(read_only.list_sandboxes().await?.len(), 1);
    assert_eq!(read_only.get_sandbox(&id).await?.id, id);
    assert!(forbidden(
        read_only
            .create_sandbox(&CreateSandboxRequest::default())
            .await
    ));
    assert!(forbidden(
        read_only.exec(&id, &ExecRequest::argv(["true"])).await
    ));
    assert!(forbidden(read_only.delete_sandbox(&id).await));
    // Without tokens:admin it cannot mint, even what it holds.
    assert!(forbidden(
        read_only
            .create_token(&token_request("copy", &[Scope::SandboxesRead]))
            .await
    ));

    // With tokens:admin it mints within its own scopes, never wider.
    let minter = admin
        .create_token(&token_request(
            "ci-bot",
            &[
                Scope::TokensAdmin,
                Scope::SandboxesCreate,
                Scope::SandboxesRead,
            ],
        ))
        .await?;
    let minter = server.client_with_token(Some(&minter.secret));
    let narrower = minter
        .create_token(&token_request("ci-reader", &[Scope::SandboxesRead]))
        .await?;
    assert_eq!(narrower.token.created_by, "ci-bot");
    assert!(forbidden(
        minter
            .create_token(&token_request(
                "ci-wider",
                &[Scope::SandboxesRead, Scope::SandboxesDelete]
            ))
            .await
    ));
    assert!(forbidden(
        minter
            .create_token(&token_request("ci-auditor", &[Scope::AuditRead]))
            .await
    ));
    // sandboxes:create works, and hands out the new sandbox's own token,
    // which can work inside that sandbox only.
    let created = minter
        .create_sandbox_with_token(&CreateSandboxRequest::default())
        .await?;
    let own = server.client_with_token(Some(&created.token));
    own.exec(&created.sandbox.id, &ExecRequest::argv(["true"]))
        .await?;
    assert!(forbidden(own.exec(&id, &ExecRequest::argv(["true"])).await));

    // Bad requests: unknown scopes and absurd values are 400s.
    let unknown = admin
        .send(
            http::Method::POST,
            "/v1/tokens",
            Some("application/json"),
            r#"{"name":"x","scopes":["sandboxes:everything"]}"#.into(),
        )
        .await?;
    assert_eq!(unknown.status(), 400);
    for bad in [
        token_request("", &[Scope::SandboxesRead]),
        token_request("no-scopes", &[]),
        token_request("admin", &[Scope::SandboxesRead]),
        CreateTokenRequest {
            ttl_s: Some(0),
            ..token_request("zero-ttl", &[Scope::SandboxesRead])
        },
    ] {
        assert_eq!(
            code(admin.create_token(&bad).await),
            Some(ErrorCode::InvalidRequest),
            "{bad:?}"
        );
    }
    // A token bound to a sandbox that does not exist cannot be minted.
    assert_eq!(
        code(
            admin
                .create_token(&CreateTokenRequest {
                    sandbox: Some("0000000000000000".into()),
                    ..token_request("ghost", &[Scope::SandboxesExec])
                })
                .await
        ),
        Some(ErrorCode::NotFound)
    );

    let names: Vec<String> = admin
        .list_tokens()
        .await?
        .into_iter()
        .map(|token| token.name)
        .collect();
    for name in ["reader", "ci-bot", "ci-reader"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    Ok(())
}

async fn revoked_and_expired_tokens_get_401(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();

    let revoked = admin
        .create_token(&token_request("short-lived", &[Scope::SandboxesRead]))
        .await?;
    let client = server.client_with_token(Some(&revoked.secret));
    client.list_sandboxes().await?;
    admin.revoke_token(&revoked.token.id).await?;
    assert!(unauthorized(client.list_sandboxes().await));
    assert_eq!(
        code(admin.revoke_token(&revoked.token.id).await),
        Some(ErrorCode::NotFound),
        "revoked once"
    );

    let expiring = admin
        .create_token(&CreateTokenRequest {
            ttl_s: Some(1),
            ..token_request("one-second", &[Scope::SandboxesRead])
        })
        .await?;
    let client = server.client_with_token(Some(&expiring.secret));
    let expired = eventually(Duration::from_secs(5), || async {
        matches!(
            client.list_sandboxes().await,
            Err(ref err) if err.api_error().map(|b| b.error_code) == Some(ErrorCode::Unauthorized)
        )
    })
    .await;
    assert!(expired, "a 1 s token is refused once expired");

    // No token, a made-up one, and a well-formed unknown one.
    assert!(unauthorized(
        server.client_with_token(None).list_sandboxes().await
    ));
    for bogus in [
        "nope",
        "sbx_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        assert!(unauthorized(
            server.client_with_token(Some(bogus)).list_sandboxes().await
        ));
    }
    Ok(())
}

/// The database holds the hash of each secret, never the secret.
async fn secrets_are_stored_hashed(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let admin = server.client();
    let minted = admin
        .create_token(&token_request("hashed", &[Scope::SandboxesRead]))
        .await?;
    let created = admin
        .create_sandbox_with_token(&CreateSandboxRequest::default())
        .await?;
    // Use both, so that any lookup path has run.
    server
        .client_with_token(Some(&minted.secret))
        .list_sandboxes()
        .await?;
    server
        .client_with_token(Some(&created.token))
        .get_sandbox(&created.sandbox.id)
        .await?;

    let mut stored = Vec::new();
    for name in ["sbx.db", "sbx.db-wal"] {
        if let Ok(bytes) = std::fs::read(server.data_dir().join(name)) {
            stored.extend(bytes);
        }
    }
    ensure!(!stored.is_empty(), "no database files found");
    let contains = |needle: &str| {
        stored
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    assert!(
        contains("hashed"),
        "the token's name is stored in plain text"
    );
    for secret in [&minted.secret, &created.token] {
        assert!(!contains(secret), "a secret is stored in plain text");
        // Nor its random part, which is what makes it a secret.
        assert!(!contains(&secret["sbx_".len()..]));
    }
    let listed = serde_json::to_string(&admin.list_tokens().await?)?;
    assert!(!listed.contains(&minted.secret) && !listed.contains(&created.token));
    Ok(())
}

fn sbx(server: &Server, token: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(sbx_bin())
        .args(args)
        .env("SBX_URL", &server.url)
        .env("SBX_TOKEN", token)
        .output()?)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn token_cli_creates_lists_and_revokes(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let created = sbx(
        &server,
        &server.token,
        &[
            "token",
            "create",
            "--name",
            "cli-bot",
            "--scope",
            "sandboxes:create",
            "--scope",
            "sandboxes:read",
            "--ttl",
            "3600",
        ],
    )?;
    ensure!(created.status.success(), "create failed: {created:?}");
    let secret = stdout(&created).trim().to_owned();
    assert!(
        secret.starts_with("sbx_"),
        "only the secret on stdout: {secret:?}"
    );

    // The new token works as itself: it creates and lists, not mints.
    let made = sbx(&server, &secret, &["create", "--print-token"])?;
    ensure!(made.status.success(), "create with the token: {made:?}");
    let line = stdout(&made);
    let (id, sandbox_token) = line
        .trim()
        .split_once(' ')
        .context("create --print-token prints the id and the token")?;
    assert!(sandbox_token.starts_with("sbx_"));
    let exec = sbx(
        &server,
        sandbox_token,
        &["exec", id, "--", "echo", "from-cli"],
    )?;
    assert_eq!(stdout(&exec), "from-cli\n", "{exec:?}");
    let listed = sbx(&server, &secret, &["ls"])?;
    assert!(stdout(&listed).contains(id));
    let refused = sbx(
        &server,
        &secret,
        &[
            "token",
            "create",
            "--name",
            "x",
            "--scope",
            "sandboxes:read",
        ],
    )?;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));

    let unknown = sbx(
        &server,
        &server.token,
        &["token", "create", "--name", "x", "--scope", "root"],
    )?;
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown scope"));

    let ls = sbx(&server, &server.token, &["token", "ls"])?;
    ensure!(ls.status.success(), "{ls:?}");
    let table = stdout(&ls);
    assert!(!table.contains(&secret), "ls never shows a secret");
    let row = table
        .lines()
        .find(|line| line.contains("cli-bot"))
        .context("ls lists the token")?
        .to_owned();
    assert!(row.contains("sandboxes:create,sandboxes:read"), "{row}");
    let token_id = row.split_whitespace().next().context("id column")?;
    assert!(
        table.contains(&format!("sandbox:{id}")),
        "the sandbox token is listed: {table}"
    );

    let revoked = sbx(&server, &server.token, &["token", "revoke", token_id])?;
    ensure!(revoked.status.success(), "{revoked:?}");
    let after = sbx(&server, &secret, &["ls"])?;
    assert_eq!(after.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&after.stderr).contains("unauthorized"));
    Ok(())
}

sbx_tests::on_every_runtime!(
    a_sandbox_token_reaches_its_sandbox_and_nothing_else,
    a_sandbox_token_dies_with_its_sandbox,
    minted_tokens_hold_only_their_scopes,
    revoked_and_expired_tokens_get_401,
    secrets_are_stored_hashed,
    token_cli_creates_lists_and_revokes,
);
