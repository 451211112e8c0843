//! End to end: clients that hang up, on both runtimes.
//!
//! Requests are written over a raw TCP connection that is closed at
//! several points: right after the request head, right after the body, and
//! while the server works on it. Then, once the server has settled: no
//! sandbox is left `creating` or `deleting`; every sandbox is either fully
//! running (and deletable) or fully gone; the audit trail holds exactly one
//! record per request sent, status 499 for a call whose client left before
//! its answer (or the real status, if the answer came first); a create
//! whose client left is recorded with its new sandbox's id; and once what
//! remains is deleted, nothing is left on the host.

use anyhow::{ensure, Context, Result};
use sbx_api::client::Client;
use sbx_api::{AuditQuery, AuditRecord, SandboxState, CLIENT_CLOSED_REQUEST};
use sbx_tests::{attached_disks, eventually, traces_on_the_host, Engine, Server};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long the server may take to finish what hung-up clients started.
const SETTLE: Duration = Duration::from_secs(60);

/// Where the client hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HangUp {
    /// The head (which announces a body) is written, the body is not.
    AfterHead,
    /// The whole request is written.
    AfterBody,
    /// The whole request is written, then the connection stays open until
    /// the server is seen working on it.
    WhileWorking,
}

/// Writes `method path` with `body` as far as `hang_up` says, waits for
/// `working` (true once the server is at work on the request) if it says
/// so, and closes the connection without reading.
async fn send_and_hang_up<F: Future<Output = bool>>(
    server: &Server,
    method: &str,
    path: &str,
    body: &[u8],
    hang_up: HangUp,
    working: F,
) -> Result<()> {
    let authority = server.url.strip_prefix("http://").context("an http url")?;
    let mut stream = TcpStream::connect(authority).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        server.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if hang_up != HangUp::AfterHead {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    if hang_up == HangUp::WhileWorking {
        ensure!(working.await, "the server never started on {method} {path}");
    }
    drop(stream);
    Ok(())
}

/// Every record after `after` (a sequence number), but those of the test's
/// own reads of the trail and of sandboxes and files.
async fn calls_since(client: &Client, after: u64) -> Result<Vec<AuditRecord>> {
    let records = client
        .audit(&AuditQuery {
            limit: Some(1000),
            ..AuditQuery::default()
        })
        .await?;
    Ok(records
        .into_iter()
        .filter(|r| r.seq > after && r.method != "GET")
        .collect())
}

/// A record's route as a template. A call dropped before it was routed
/// (its client hung up before the server first looked at it) is recorded
/// with the path as sent, `/v1/sandboxes/<id>/exec`, and its sandbox.
fn template(record: &AuditRecord) -> String {
    let Some(rest) = record.route.strip_prefix("/v1/sandboxes/") else {
        return record.route.clone();
    };
    if rest.starts_with("{id}") {
        return record.route.clone();
    }
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    assert_eq!(record.sandbox.as_deref(), Some(id), "{record:?}");
    match tail {
        "" => "/v1/sandboxes/{id}".to_owned(),
        tail => format!("/v1/sandboxes/{{id}}/{tail}"),
    }
}

async fn newest_seq(client: &Client) -> Result<u64> {
    let records = client
        .audit(&AuditQuery {
            limit: Some(1),
            ..AuditQuery::default()
        })
        .await?;
    Ok(records.first().map_or(0, |r| r.seq))
}

async fn settled(client: &Client) -> bool {
    client.list_sandboxes().await.is_ok_and(|sandboxes| {
        sandboxes
            .iter()
            .all(|s| !matches!(s.state, SandboxState::Creating | SandboxState::Deleting))
    })
}

async fn clients_that_hang_up_strand_nothing_and_are_audited_once(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let sandboxes_dir = server.data_dir().join("sandboxes");
    let dirs = || std::fs::read_dir(&sandboxes_dir).map_or(0, |dir| dir.count());

    // Sandboxes to delete and to exec in, made before the trail is read.
    let mut doomed = Vec::new();
    for _ in 0..4 {
        doomed.push(server.new_sandbox().await?);
    }
    let worker = server.new_sandbox().await?;
    let before = newest_seq(&client).await?;

    // (method, route, hang-up) of every request sent, in order.
    let mut sent: Vec<(&str, &str, HangUp)> = Vec::new();
    let create = br#"{"labels":{"test":"hang-up"}}"#;
    for hang_up in [HangUp::AfterHead, HangUp::AfterBody, HangUp::WhileWorking] {
        for _ in 0..2 {
            let existing = dirs();
            // The server has started on this create: its directory is there.
            let working = eventually(SETTLE, || async { dirs() > existing });
            send_and_hang_up(&server, "POST", "/v1/sandboxes", create, hang_up, working).await?;
            sent.push(("POST", "/v1/sandboxes", hang_up));
        }
    }

    for (n, id) in doomed.iter().enumerate() {
        let hang_up = if n % 2 == 0 {
            HangUp::AfterBody
        } else {
            HangUp::WhileWorking
        };
        // The server is at work on the delete: the sandbox is no longer
        // running (deleting, or already gone).
        let working = eventually(SETTLE, || async {
            !matches!(client.get_sandbox(id).await, Ok(s) if s.state == SandboxState::Running)
        });
        let path = format!("/v1/sandboxes/{id}");
        send_and_hang_up(&server, "DELETE", &path, b"", hang_up, working).await?;
        sent.push(("DELETE", "/v1/sandboxes/{id}", hang_up));
    }

    let own = client.sandbox(&worker);
    let exec_path = format!("/v1/sandboxes/{worker}/exec");
    for (n, hang_up) in [HangUp::AfterHead, HangUp::AfterBody, HangUp::WhileWorking]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let marker = format!("/workspace/started-{n}");
        let body = serde_json::to_vec(&sbx_api::ExecRequest::shell(format!(
            "touch {marker}; sleep 5"
        )))?;
        // The command runs: the call is in the agent's hands.
        let working = eventually(SETTLE, || async { own.stat(&marker).await.is_ok() });
        send_and_hang_up(&server, "POST", &exec_path, &body, hang_up, working).await?;
        sent.push(("POST", "/v1/sandboxes/{id}/exec", hang_up));
    }

    // The server settles: nothing in a passing state, and a record for
    // every call (a detached create is recorded once it is done).
    let complete = eventually(SETTLE, || async {
        settled(&client).await
            && calls_since(&client, before)
                .await
                .is_ok_and(|records| records.len() >= sent.len())
    })
    .await;
    let records = calls_since(&client, before).await?;
    ensure!(
        complete,
        "not settled: {:#?}; records: {records:#?}; log: {}",
        client.list_sandboxes().await?,
        server.log()
    );

    // Exactly one record per request, in the order they were sent (each
    // request was in before the next connection opened, but a detached
    // create is recorded when it ends, so compare as multisets).
    let count = |records: &[(String, String)]| {
        let mut counts = BTreeMap::new();
        for key in records {
            *counts.entry(key.clone()).or_insert(0) += 1;
        }
        counts
    };
    let expected: Vec<(String, String)> = sent
        .iter()
        .map(|(method, route, _)| (method.to_string(), route.to_string()))
        .collect();
    let recorded: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.method.clone(), template(r)))
        .collect();
    assert_eq!(
        count(&recorded),
        count(&expected),
        "one record per request: {records:#?}"
    );
    for record in &records {
        let answered = match (record.method.as_str(), template(record).as_str()) {
            ("POST", "/v1/sandboxes") => [201, 400],
            ("DELETE", _) => [204, 204],
            (_, _) => [200, 400],
        };
        assert!(
            record.status == CLIENT_CLOSED_REQUEST || answered.contains(&record.status),
            "{record:?}"
        );
        assert!(record.request_id.is_some(), "{record:?}");
    }
    let hung_up = records
        .iter()
        .filter(|r| r.status == CLIENT_CLOSED_REQUEST)
        .count();
    assert!(
        hung_up > 0,
        "no call noticed its client leave: {records:#?}"
    );

    // Every create the server went on with is recorded with its sandbox,
    // and is running. Every delete the server started is done; one whose
    // client hung up before the server first looked at it (recorded with
    // the path as sent, never routed) never started, and its sandbox runs.
    let listed = client.list_sandboxes().await?;
    let live: BTreeSet<String> = listed.iter().map(|s| s.id.clone()).collect();
    let created: BTreeSet<String> = records
        .iter()
        .filter(|r| r.route == "/v1/sandboxes")
        .filter_map(|r| r.sandbox.clone())
        .collect();
    let never_deleted: BTreeSet<String> = records
        .iter()
        .filter(|r| r.method == "DELETE" && !r.route.contains("{id}"))
        .filter_map(|r| r.sandbox.clone())
        .collect();
    assert!(never_deleted.iter().all(|id| doomed.contains(id)));
    let expected_live: BTreeSet<String> = created
        .iter()
        .chain(&never_deleted)
        .cloned()
        .chain([worker.clone()])
        .collect();
    assert_eq!(live, expected_live, "records: {records:#?}");
    let creates_with = |hang_ups: &[HangUp]| {
        sent.iter()
            .filter(|(method, route, hang_up)| {
                (*method, *route) == ("POST", "/v1/sandboxes") && hang_ups.contains(hang_up)
            })
            .count()
    };
    // A create the server was seen working on goes on to the end; one that
    // was whole when its client left may or may not have been started.
    assert!(
        (creates_with(&[HangUp::WhileWorking])
            ..=creates_with(&[HangUp::AfterBody, HangUp::WhileWorking]))
            .contains(&created.len()),
        "creates go on without their client: {records:#?}"
    );
    for sandbox in &listed {
        assert_eq!(sandbox.state, SandboxState::Running, "{sandbox:?}");
        let echo = client
            .exec(&sandbox.id, &sbx_api::ExecRequest::argv(["echo", "usable"]))
            .await?;
        assert_eq!(echo.stdout, "usable\n");
    }
    for (n, id) in doomed.iter().enumerate() {
        if n % 2 == 1 {
            assert!(
                !live.contains(id),
                "a delete seen at work goes on without its client: {records:#?}"
            );
        }
    }

    // What remains deletes cleanly, and nothing is left behind.
    for id in &live {
        client.delete_sandbox(id).await?;
    }
    assert!(client.list_sandboxes().await?.is_empty());
    assert_eq!(
        traces_on_the_host(engine, server.data_dir())?,
        BTreeSet::new(),
        "no orphan container or directory"
    );
    let disks_gone = eventually(Duration::from_secs(10), || async {
        attached_disks(server.data_dir()).is_ok_and(|ids| ids.is_empty())
    })
    .await;
    assert!(disks_gone, "deleting frees every disk's loop device");
    Ok(())
}

/// The stdout of `script` in `id`; an error if it cannot run. A failing
/// command's stdout is still returned (`cat` of a missing file prints the
/// others).
async fn sh(client: &Client, id: &str, script: &str) -> Result<String> {
    let result = client
        .exec(id, &sbx_api::ExecRequest::shell(script.to_owned()))
        .await?;
    Ok(result.stdout)
}

/// The records, oldest first, of the calls since `after` but the test's
/// own execs (its probes).
async fn lifecycle_calls_since(client: &Client, after: u64) -> Result<Vec<AuditRecord>> {
    let mut records: Vec<AuditRecord> = calls_since(client, after)
        .await?
        .into_iter()
        .filter(|r| !r.route.ends_with("/exec"))
        .collect();
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// The state of `id`, if it can be read.
async fn state_of(client: &Client, id: &str) -> Option<SandboxState> {
    client.get_sandbox(id).await.ok().map(|s| s.state)
}

/// Stop, start, snapshot, fork and restore whose clients hang up once the
/// server is seen at work on them: each goes on to the end, is recorded
/// once, and leaves nothing half-done on the host.
async fn lifecycle_calls_whose_client_hangs_up_finish(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    sh(&client, &id, "echo kept > /workspace/kept").await?;
    let snapshots_dir = server.data_dir().join("snapshots");
    let before = newest_seq(&client).await?;
    let path = |op: &str| format!("/v1/sandboxes/{id}/{op}");
    let in_state = |wanted: fn(Option<SandboxState>) -> bool| {
        let (client, id) = (client.clone(), id.clone());
        async move { eventually(SETTLE, || async { wanted(state_of(&client, &id).await) }).await }
    };

    // Each wait is for something that, once true, stays true: the server
    // started (and may have finished) the call.
    let stop_working = in_state(|state| state != Some(SandboxState::Running));
    send_and_hang_up(
        &server,
        "POST",
        &path("stop"),
        b"",
        HangUp::WhileWorking,
        stop_working,
    )
    .await?;
    ensure!(
        in_state(|state| state == Some(SandboxState::Stopped)).await,
        "the stop goes on"
    );
    let start_working = in_state(|state| state != Some(SandboxState::Stopped));
    send_and_hang_up(
        &server,
        "POST",
        &path("start"),
        b"",
        HangUp::WhileWorking,
        start_working,
    )
    .await?;
    ensure!(
        in_state(|state| state == Some(SandboxState::Running)).await,
        "the start goes on"
    );
    let snapshot_working = eventually(SETTLE, || async {
        std::fs::read_dir(&snapshots_dir).is_ok_and(|mut entries| {
            entries
                .any(|entry| entry.is_ok_and(|e| e.file_name().to_string_lossy().contains("hung")))
        })
    });
    let body = br#"{"name":"hung"}"#;
    send_and_hang_up(
        &server,
        "POST",
        &path("snapshots"),
        body,
        HangUp::WhileWorking,
        snapshot_working,
    )
    .await?;
    ensure!(
        eventually(SETTLE, || async {
            client
                .list_snapshots()
                .await
                .is_ok_and(|list| list.iter().any(|s| s.name == "hung"))
        })
        .await,
        "the snapshot is made"
    );
    let forks_working = eventually(SETTLE, || async {
        client
            .list_sandboxes()
            .await
            .is_ok_and(|list| list.len() > 1)
    });
    send_and_hang_up(
        &server,
        "POST",
        &path("fork"),
        br#"{"count":2}"#,
        HangUp::WhileWorking,
        forks_working,
    )
    .await?;
    ensure!(
        eventually(SETTLE, || async {
            client.list_sandboxes().await.is_ok_and(|list| {
                list.len() == 3 && list.iter().all(|s| s.state == SandboxState::Running)
            })
        })
        .await,
        "the forks start"
    );
    sh(&client, &id, "echo after > /workspace/after").await?;
    let restore_working = eventually(SETTLE, || async {
        sh(&client, &id, "cat /workspace/after")
            .await
            .is_ok_and(|out| out.is_empty())
    });
    send_and_hang_up(
        &server,
        "POST",
        &path("restore"),
        br#"{"snapshot":"hung"}"#,
        HangUp::WhileWorking,
        restore_working,
    )
    .await?;

    // Settled: three sandboxes running, the source restored, every fork a
    // copy, and one record per call.
    let settled_all = eventually(SETTLE, || async {
        client.list_sandboxes().await.is_ok_and(|list| {
            list.len() == 3 && list.iter().all(|s| s.state == SandboxState::Running)
        }) && lifecycle_calls_since(&client, before)
            .await
            .is_ok_and(|records| records.len() >= 5)
    })
    .await;
    let records = lifecycle_calls_since(&client, before).await?;
    ensure!(
        settled_all,
        "not settled: {:#?}; records: {records:#?}",
        client.list_sandboxes().await?
    );
    let routes: Vec<String> = records.iter().map(template).collect();
    assert_eq!(
        routes,
        [
            "/v1/sandboxes/{id}/stop",
            "/v1/sandboxes/{id}/start",
            "/v1/sandboxes/{id}/snapshots",
            "/v1/sandboxes/{id}/fork",
            "/v1/sandboxes/{id}/restore",
        ],
        "one record per call: {records:#?}"
    );
    for record in &records {
        assert!(
            record.status == CLIENT_CLOSED_REQUEST || [200, 201].contains(&record.status),
            "{record:?}"
        );
        assert!(record.request_id.is_some(), "{record:?}");
    }
    // A fork outlasts the server's noticing its client left.
    assert!(
        records.iter().any(|r| r.status == CLIENT_CLOSED_REQUEST),
        "no call noticed its client leave: {records:#?}"
    );
    for listed in client.list_sandboxes().await? {
        let files = sh(&client, &listed.id, "cat /workspace/kept /workspace/after").await;
        assert_eq!(files.ok().as_deref(), Some("kept\n"), "{listed:?}");
    }

    for listed in client.list_sandboxes().await? {
        client.delete_sandbox(&listed.id).await?;
    }
    client.delete_snapshot("hung").await?;
    assert_eq!(
        traces_on_the_host(engine, server.data_dir())?,
        BTreeSet::new(),
        "no orphan container or directory"
    );
    Ok(())
}

sbx_tests::on_every_runtime!(
    clients_that_hang_up_strand_nothing_and_are_audited_once,
    // hosts_only: stop and start, refused on the cluster.
    ; hosts_only:
    lifecycle_calls_whose_client_hangs_up_finish,
);
