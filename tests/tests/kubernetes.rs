//! End to end, on the test cluster only: what is particular to the
//! kubernetes runtime. The agent's channel (its key, its loopback-only
//! listener), the shape of a sandbox's pod, its `Sandbox` record, what
//! `GET /v1/info` says of the cluster, and the features the runtime refuses
//! with a reason instead of half-doing.

use anyhow::{Context, Result};
use sbx_api::client::ClientError;
use sbx_api::{CreateSandboxRequest, ErrorCode, ExecRequest, NetworkPolicy};
use sbx_tests::{kubectl, Engine, Server};

const ENGINE: Engine = Engine::Kubernetes;

fn refusal<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (Option<ErrorCode>, String) {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(err) => (
            err.api_error().map(|body| body.error_code),
            err.api_error()
                .map(|body| body.message.clone())
                .unwrap_or_default(),
        ),
    }
}

async fn sh(server: &Server, id: &str, script: &str) -> Result<String> {
    let result = server
        .client()
        .exec(id, &ExecRequest::shell(script))
        .await?;
    Ok(format!("{}{}", result.stdout, result.stderr))
}

fn pod_field(id: &str, jsonpath: &str) -> String {
    kubectl(&[
        "get",
        "pod",
        &format!("sbx-{id}"),
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
    .unwrap_or_default()
}

/// Code in a sandbox finds its agent on loopback, but the agent answers it
/// only with 401: the key is not in its environment, and the agent's own is
/// unreadable. Another sandbox cannot reach it at all: the agent does not
/// listen on the pod's address.
#[tokio::test]
async fn the_agent_serves_only_its_orchestrator() -> Result<()> {
    let server = Server::start(ENGINE).await?;
    let id = server.new_sandbox().await?;
    let neighbour = server.new_sandbox().await?;
    let port = sbx_api::AGENT_TCP_LISTEN
        .rsplit_once(':')
        .context("a port")?
        .1;

    let inside = sh(
        &server,
        &id,
        &format!(
            "curl --noproxy '*' -s -o /dev/null -w '%{{http_code}}\\n' http://127.0.0.1:{port}/health; \
             curl --noproxy '*' -s -o /dev/null -w '%{{http_code}}\\n' -H '{}: guess' \
                 -X POST -d '{{\"argv\":[\"id\"]}}' http://127.0.0.1:{port}/exec; \
             env | grep -c {} ; \
             cat /proc/1/environ >/dev/null 2>&1 && echo readable || echo unreadable",
            sbx_api::AGENT_KEY_HEADER,
            sbx_api::AGENT_KEY_ENV,
        ),
    )
    .await?;
    assert_eq!(
        inside.lines().collect::<Vec<_>>(),
        ["401", "401", "0", "unreadable"],
        "{inside}"
    );

    let pod_ip = pod_field(&id, "{.status.podIP}");
    assert!(!pod_ip.is_empty(), "the pod has an address");
    let across = sh(
        &server,
        &neighbour,
        &format!(
            "curl --noproxy '*' -s -m 5 -o /dev/null -w '%{{http_code}}' http://{pod_ip}:{port}/health; \
             echo \" exit=$?\""
        ),
    )
    .await?;
    assert!(
        across.starts_with("000 exit=7"),
        "the neighbour's connection is refused: {across}"
    );
    Ok(())
}

/// A sandbox's pod: no service-account token, no host namespaces, its
/// containers unprivileged with the listed capabilities, its limits as pod
/// resources, and its agent from the init container.
#[tokio::test]
async fn a_sandbox_is_a_locked_down_pod() -> Result<()> {
    let server = Server::start(ENGINE).await?;
    let sandbox = server
        .client()
        .create_sandbox(&CreateSandboxRequest {
            memory_mb: Some(256),
            cpus: Some(0.5),
            disk_mb: Some(512),
            ..CreateSandboxRequest::default()
        })
        .await?;
    let id = &sandbox.id;
    assert_eq!(
        pod_field(id, "{.spec.automountServiceAccountToken}"),
        "false"
    );
    // The API server leaves out what is false.
    assert_eq!(
        pod_field(id, "{.spec.hostNetwork}{.spec.hostPID}{.spec.hostIPC}"),
        ""
    );
    let context = "{.spec.containers[0].securityContext}";
    let context: serde_json::Value = serde_json::from_str(&pod_field(id, context))?;
    assert_eq!(context["privileged"], false);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let limits: serde_json::Value =
        serde_json::from_str(&pod_field(id, "{.spec.containers[0].resources.limits}"))?;
    assert_eq!(limits["cpu"], "500m");
    assert_eq!(limits["ephemeral-storage"], (512u64 << 20).to_string());
    assert_eq!(
        pod_field(id, "{.spec.initContainers[0].name}"),
        "install-agent"
    );

    // What the sandbox sees of it: no token, no raw sockets, the agent's
    // directory read-only, no route out.
    let inside = sh(
        &server,
        id,
        "ls /var/run/secrets/kubernetes.io 2>&1 | head -c 0; test -e /var/run/secrets/kubernetes.io && echo token || echo no-token; \
         grep CapEff /proc/self/status | awk '{print $2}'; \
         touch /.sbx/x 2>/dev/null && echo writable || echo read-only; \
         ip route 2>/dev/null | grep -c default || true",
    )
    .await?;
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines[0], "no-token", "{inside}");
    let effective = u64::from_str_radix(lines[1], 16)?;
    const CAP_NET_RAW: u64 = 1 << 13;
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(effective & (CAP_NET_RAW | CAP_SYS_ADMIN), 0, "{inside}");
    assert_eq!(lines[2], "read-only", "{inside}");
    assert_eq!(lines[3], "0", "no default route: {inside}");
    Ok(())
}

/// Every sandbox has a `Sandbox` record in the cluster that says it runs;
/// its pod and Secret are owned by it.
#[tokio::test]
async fn the_cluster_holds_each_sandboxs_record() -> Result<()> {
    let server = Server::start(ENGINE).await?;
    let id = server.new_sandbox().await?;
    let name = format!("sbx-{id}");
    let phase = kubectl(&["get", "sandbox", &name, "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase.as_deref(), Some("Running"));
    let spec_id = kubectl(&["get", "sandbox", &name, "-o", "jsonpath={.spec.id}"]);
    assert_eq!(spec_id.as_deref(), Some(id.as_str()));
    for kind in ["pod", "secret"] {
        let owner = kubectl(&[
            "get",
            kind,
            &name,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        ]);
        assert_eq!(owner, Some(format!("Sandbox/{name}")), "{kind}");
    }
    Ok(())
}

/// `GET /v1/info` names the cluster, counts its node, and lists what the
/// runtime refuses; each refusal is a 409 with that reason.
#[tokio::test]
async fn what_a_pod_cannot_do_is_refused_with_the_reason() -> Result<()> {
    let server = Server::start(ENGINE).await?;
    let client = server.client();
    let info = client.info().await?;
    let cluster = info.runtime.cluster.context("the cluster is reported")?;
    assert!(cluster.server_version.starts_with("v1.20"), "{cluster:?}");
    assert_eq!(cluster.nodes, 1);
    assert_eq!(cluster.namespace, "sbx");
    let unsupported = &info.runtime.unsupported;
    for feature in [
        "pause",
        "stop",
        "snapshot",
        "egress_proxy",
        "host_ca_bundle",
    ] {
        assert!(
            unsupported.contains_key(feature),
            "{feature}: {unsupported:?}"
        );
    }

    let id = server.new_sandbox().await?;
    let expect = |(code, message): (Option<ErrorCode>, String), feature: &str| {
        assert_eq!(code, Some(ErrorCode::Conflict), "{feature}: {message}");
        assert!(
            message.contains(&unsupported[feature]),
            "{feature}: {message}"
        );
    };
    expect(refusal(client.pause_sandbox(&id).await), "pause");
    expect(refusal(client.stop_sandbox(&id).await), "stop");
    expect(refusal(client.create_snapshot(&id, "s1").await), "snapshot");
    expect(refusal(client.fork_sandbox(&id, 2).await), "snapshot");
    let allowing = CreateSandboxRequest {
        network: Some(NetworkPolicy {
            egress: vec!["example.test".into()],
        }),
        ..CreateSandboxRequest::default()
    };
    expect(
        refusal(client.create_sandbox(&allowing).await),
        "egress_proxy",
    );
    // The sandbox is unharmed by the refusals.
    assert_eq!(sh(&server, &id, "echo ok").await?, "ok\n");
    Ok(())
}

/// A pod removed behind sbx's back is a dead sandbox, said without anyone
/// asking; its record is marked.
#[tokio::test]
async fn a_pod_deleted_behind_sbxs_back_is_a_death() -> Result<()> {
    let server = Server::start(ENGINE).await?;
    let client = server.client();
    let id = server.new_sandbox().await?;
    kubectl(&[
        "delete",
        "pod",
        &format!("sbx-{id}"),
        "--grace-period=0",
        "--force",
    ])
    .context("kubectl deletes the pod")?;
    let failed = sbx_tests::eventually(std::time::Duration::from_secs(20), || async {
        client
            .get_sandbox(&id)
            .await
            .is_ok_and(|sandbox| sandbox.state == sbx_api::SandboxState::Failed)
    })
    .await;
    assert!(
        failed,
        "the sandbox is failed: {:?}",
        client.get_sandbox(&id).await
    );
    // The runtime's own watch marks the record within its poll.
    let name = format!("sbx-{id}");
    let phase = || kubectl(&["get", "sandbox", &name, "-o", "jsonpath={.status.phase}"]);
    let marked = sbx_tests::eventually(std::time::Duration::from_secs(10), || async {
        phase().as_deref() == Some("Dead")
    })
    .await;
    assert!(marked, "the record says so: {:?}", phase());
    Ok(())
}

/// The warm pool is pods waiting to be claimed: a create takes one (its id
/// was a pooled pod's) and the pool refills with a new pod.
#[tokio::test]
async fn the_warm_pool_is_pods_waiting_to_be_claimed() -> Result<()> {
    let server = Server::start_with(ENGINE, &["--warm-pool", "1"]).await?;
    let client = server.client();
    let pooled_pods = || {
        let instance =
            std::fs::read_to_string(server.data_dir().join("instance-id")).unwrap_or_default();
        kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("sbx.dev/instance={}", instance.trim()),
            "-o",
            "jsonpath={range .items[*]}{.metadata.labels.sbx\\.dev/sandbox}{\"\\n\"}{end}",
        ])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    // Waiting once its agent answers: the server's own gauge says so.
    let ready = || async {
        let Ok(response) = client
            .send(http::Method::GET, "/metrics", None, bytes::Bytes::new())
            .await
        else {
            return false;
        };
        let Ok(body) = http_body_util::BodyExt::collect(response.into_body()).await else {
            return false;
        };
        String::from_utf8_lossy(&body.to_bytes())
            .lines()
            .any(|line| line == "sbx_warm_pool_ready 1")
    };
    let filled = sbx_tests::eventually(std::time::Duration::from_secs(60), ready).await;
    assert!(filled, "one pod waits: {:?}", pooled_pods());
    let waiting = pooled_pods();
    let claimed = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?;
    assert_eq!(
        waiting,
        std::slice::from_ref(&claimed.id),
        "the create took the waiting pod"
    );
    assert_eq!(sh(&server, &claimed.id, "echo claimed").await?, "claimed\n");
    let refilled = sbx_tests::eventually(std::time::Duration::from_secs(60), || async {
        pooled_pods().len() == 2
    })
    .await;
    assert!(
        refilled,
        "a new pod waits beside the claimed one: {:?}",
        pooled_pods()
    );
    Ok(())
}
