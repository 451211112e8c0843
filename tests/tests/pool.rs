//! End to end: the warm pool (`sbx serve --warm-pool N`) answers default
//! creates with sandboxes started ahead of demand, refills itself, keeps
//! its sandboxes out of every client's sight, and does not outlive the
//! server.

use anyhow::{Context, Result};
use sbx_api::{CreateSandboxRequest, ErrorCode, ExecRequest, NetworkPolicy, SandboxState};
use sbx_tests::{eventually, Engine, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn api_code(err: &sbx_api::client::ClientError) -> Option<ErrorCode> {
    err.api_error().map(|body| body.error_code)
}

/// Every sandbox of the server, pooled ones included: each has a directory.
fn sandbox_dirs(server: &Server) -> BTreeSet<String> {
    std::fs::read_dir(server.data_dir().join("sandboxes"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn pool_holds(server: &Server, count: usize) -> bool {
    eventually(Duration::from_secs(60), || async {
        let listed = server
            .client()
            .list_sandboxes()
            .await
            .map_or(0, |l| l.len());
        sandbox_dirs(server).len() == listed + count
    })
    .await
}

async fn default_creates_are_served_from_the_pool(engine: Engine) -> Result<()> {
    let mut server = Server::start_with(engine, &["--warm-pool", "2"]).await?;
    let client = server.client();
    assert!(pool_holds(&server, 2).await, "the pool fills");
    assert!(
        client.list_sandboxes().await?.is_empty(),
        "pooled are hidden"
    );
    let pooled = sandbox_dirs(&server);
    for id in &pooled {
        let hidden = client.get_sandbox(id).await.expect_err("hidden");
        assert_eq!(api_code(&hidden), Some(ErrorCode::NotFound));
        let untouchable = client.delete_sandbox(id).await.expect_err("hidden");
        assert_eq!(api_code(&untouchable), Some(ErrorCode::NotFound));
    }

    // Labels and a network policy are the claim's own.
    let labels = BTreeMap::from([("task".to_owned(), "fix-1234".to_owned())]);
    let claimed = client
        .create_sandbox(&CreateSandboxRequest {
            labels: labels.clone(),
            network: Some(NetworkPolicy {
                egress: vec!["pypi.org".into()],
            }),
            ..CreateSandboxRequest::default()
        })
        .await?;
    assert!(
        pooled.contains(&claimed.id),
        "{} came from the pool",
        claimed.id
    );
    assert_eq!(claimed.state, SandboxState::Running);
    assert_eq!(claimed.labels, labels);
    assert_eq!(claimed.network.egress, ["pypi.org"]);
    let age = chrono::Utc::now() - claimed.created_at;
    assert!(
        age < chrono::Duration::seconds(30),
        "created_at is the claim's"
    );
    let fetched = client.get_sandbox(&claimed.id).await?;
    assert_eq!(fetched.labels, labels);
    assert_eq!(fetched.network.egress, ["pypi.org"]);
    let echo = client
        .exec(
            &claimed.id,
            &ExecRequest::shell("echo $HTTPS_PROXY; hostname"),
        )
        .await?;
    assert_eq!(echo.exit_code, 0, "{}", echo.stderr);
    assert!(
        echo.stdout.starts_with("http://127.0.0.1:3128\n"),
        "{}",
        echo.stdout
    );

    // Anything but labels and a policy is started fresh.
    let custom = client
        .create_sandbox(&CreateSandboxRequest {
            memory_mb: Some(256),
            env: BTreeMap::from([("MODE".to_owned(), "custom".to_owned())]),
            ..CreateSandboxRequest::default()
        })
        .await?;
    assert!(!pooled.contains(&custom.id));
    let mode = client
        .exec(&custom.id, &ExecRequest::shell("echo $MODE"))
        .await?;
    assert_eq!(mode.stdout, "custom\n");

    // The claim made room: the pool is back at 2, beside the two claimed.
    assert!(pool_holds(&server, 2).await, "the pool refills");
    assert_eq!(client.list_sandboxes().await?.len(), 2);
    client.delete_sandbox(&claimed.id).await?;

    // A graceful stop deletes the pooled ones and keeps the client's.
    let kept = server.client().list_sandboxes().await?;
    assert_eq!(kept.len(), 1);
    server.stop().context("stop")?;
    let left: BTreeSet<String> = sandbox_dirs(&server);
    assert_eq!(
        left,
        kept.iter().map(|sandbox| sandbox.id.clone()).collect(),
        "only the client's sandbox outlives the server"
    );
    let restarted = Server::start_on(engine, server.data_dir()).await?;
    restarted.client().delete_sandbox(&kept[0].id).await?;
    Ok(())
}

/// A server killed with a full pool: the next one deletes the old pooled
/// sandboxes (nobody holds them) and fills a new pool.
async fn a_restart_replaces_the_pool(engine: Engine) -> Result<()> {
    let mut first = Server::start_with(engine, &["--warm-pool", "2"]).await?;
    assert!(pool_holds(&first, 2).await, "the pool fills");
    let old = sandbox_dirs(&first);
    let data_dir = first.take_data_dir().context("a temp data dir")?;
    first.kill();

    let second = Server::start_on_with(engine, data_dir.path(), &["--warm-pool", "2"]).await?;
    assert!(pool_holds(&second, 2).await, "a new pool fills");
    let new = sandbox_dirs(&second);
    assert!(old.is_disjoint(&new), "old pool {old:?}, new pool {new:?}");
    assert!(second.client().list_sandboxes().await?.is_empty());
    let mut second = second;
    second.stop().context("stop")?;
    assert!(sandbox_dirs(&second).is_empty(), "the pool went with it");
    Ok(())
}

sbx_tests::on_every_runtime!(
    a_restart_replaces_the_pool,
    // hosts_only: its claim carries an egress policy, refused on the
    // cluster; tests/kubernetes.rs claims a pooled pod.
    ; hosts_only:
    default_creates_are_served_from_the_pool,
);
