//! The Kubernetes objects of one sandbox, as plain data: its `Sandbox`
//! record (sbx's own resource), the Secret that holds its agent's key, and
//! its Pod. Building them is pure, so the security-relevant parts of the
//! pod (no service-account token, no host namespaces, the capabilities it
//! keeps, the agent on loopback) are unit tested here.
//!
//! The Secret and the Pod are owned by the `Sandbox` record, so removing
//! the record lets the cluster's garbage collector remove the rest even if
//! sbx never comes back.

use super::resource::{API_VERSION, KIND};
use crate::runtime::Limits;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Labels on everything sbx makes: which sandbox, and which sbx installation
/// (one per `--kube-instance`, so two installations sharing a namespace
/// never adopt each other's sandboxes).
pub const SANDBOX_LABEL: &str = "sbx.dev/sandbox";
pub const INSTANCE_LABEL: &str = "sbx.dev/instance";

/// The sandbox container's name in its pod.
pub const SANDBOX_CONTAINER: &str = "sandbox";
/// The key in a sandbox's Secret that holds its agent key.
pub const KEY_FIELD: &str = "agent-key";
/// The volume the init container fills with the agent binary.
const AGENT_VOLUME: &str = "sbx-agent";
/// Where that volume is mounted in both containers: the agent binary is
/// `sbx_api::AGENT_BINARY_PATH` in it.
const AGENT_DIR: &str = "/.sbx";

/// Linux capabilities a sandbox keeps: what root needs to be root in its
/// own files and processes (install packages, chown, switch users, kill
/// its own processes, bind low ports). Everything else, NET_RAW and
/// SYS_ADMIN above all, is dropped.
pub const KEPT_CAPABILITIES: [&str; 10] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
];

/// Names of a sandbox's objects, all the same.
pub fn object_name(id: &str) -> String {
    format!("sbx-{id}")
}

/// What a sandbox's pod is made of.
#[derive(Debug, Clone)]
pub struct PodPlan<'a> {
    pub id: &'a str,
    pub instance: &'a str,
    /// The sandbox image's reference in the cluster.
    pub image: &'a str,
    /// The image holding the static agent, copied out by the init container.
    pub agent_image: &'a str,
    pub agent_env: &'a BTreeMap<String, String>,
    pub limits: &'a Limits,
    pub runtime_class: Option<&'a str>,
    /// Pull images or only use what the nodes have (`Never`: imported).
    pub pull_policy: &'a str,
}

fn labels(id: &str, instance: &str) -> Value {
    json!({ SANDBOX_LABEL: id, INSTANCE_LABEL: instance })
}

/// The `Sandbox` record of sandbox `id`.
pub fn sandbox_record(id: &str, instance: &str, image: &str, limits: &Limits) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": { "name": object_name(id), "labels": labels(id, instance) },
        "spec": {
            "id": id,
            "image": image,
            "memoryBytes": limits.memory_bytes,
            "cpus": limits.cpus,
            "diskBytes": limits.disk_bytes,
        },
    })
}

/// Makes `owner` (a `Sandbox` record's name and uid) the owner of `object`.
pub fn owned_by(object: &mut Value, owner_name: &str, owner_uid: &str) {
    object["metadata"]["ownerReferences"] = json!([{
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner_name,
        "uid": owner_uid,
        "controller": true,
        "blockOwnerDeletion": false,
    }]);
}

/// The Secret holding sandbox `id`'s agent key.
pub fn key_secret(id: &str, instance: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": object_name(id), "labels": labels(id, instance) },
        "type": "Opaque",
        "stringData": { KEY_FIELD: key },
    })
}

/// Kubernetes quantities of `limits`: the container's (the sandbox's plus
/// the agent's headroom), and the disk as ephemeral storage.
fn resources(limits: &Limits) -> Value {
    let container = limits.container();
    let millicores = ((container.cpus * 1000.0).round() as u64).max(1);
    let mut capped = json!({
        "memory": container.memory_bytes.to_string(),
        "cpu": format!("{millicores}m"),
    });
    if let Some(bytes) = container.disk_bytes {
        capped["ephemeral-storage"] = json!(bytes.to_string());
    }
    // Requests stay small: an idle sandbox uses little, and the scheduler
    // places by requests, so a node holds many idle sandboxes.
    json!({
        "limits": capped,
        "requests": { "memory": "16Mi", "cpu": "10m" },
    })
}

/// The pod of a sandbox: the init container copies the static agent into a
/// volume, and the sandbox container runs it as PID 1 from there.
pub fn pod(plan: &PodPlan<'_>) -> Value {
    let mut env: Vec<Value> = plan
        .agent_env
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
    env.push(json!({ "name": "SBX_AGENT_LISTEN_TCP", "value": sbx_api::AGENT_TCP_LISTEN }));
    env.push(json!({
        "name": sbx_api::AGENT_KEY_ENV,
        "valueFrom": { "secretKeyRef": { "name": object_name(plan.id), "key": KEY_FIELD } },
    }));
    let agent_mount = |read_only: bool| json!([{ "name": AGENT_VOLUME, "mountPath": AGENT_DIR, "readOnly": read_only }]);
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "hostNetwork": false,
        "hostPID": false,
        "hostIPC": false,
        "terminationGracePeriodSeconds": 2,
        "volumes": [{ "name": AGENT_VOLUME, "emptyDir": { "sizeLimit": "128Mi" } }],
        "initContainers": [{
            "name": "install-agent",
            "image": plan.agent_image,
            "imagePullPolicy": plan.pull_policy,
            "command": [
                "/sandbox-agent", "--install", sbx_api::AGENT_BINARY_PATH,
            ],
            "volumeMounts": agent_mount(false),
            "securityContext": restricted(&[]),
            "resources": {
                "limits": { "memory": "64Mi", "cpu": "500m" },
                "requests": { "memory": "16Mi", "cpu": "10m" },
            },
        }],
        "containers": [{
            "name": SANDBOX_CONTAINER,
            "image": plan.image,
            "imagePullPolicy": plan.pull_policy,
            "command": [sbx_api::AGENT_BINARY_PATH],
            "env": env,
            "volumeMounts": agent_mount(true),
            "securityContext": restricted(&KEPT_CAPABILITIES),
            "resources": resources(plan.limits),
        }],
    });
    if let Some(class) = plan.runtime_class {
        spec["runtimeClassName"] = json!(class);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": object_name(plan.id), "labels": labels(plan.id, plan.instance) },
        "spec": spec,
    })
}

/// A container's security context: unprivileged, no privilege escalation
/// through setuid binaries, the runtime's default seccomp profile, and
/// only the capabilities in `keep`.
fn restricted(keep: &[&str]) -> Value {
    json!({
        "privileged": false,
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"], "add": keep },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The NetworkPolicy that isolates every sandbox pod of the namespace, on
/// clusters whose network plugin enforces one: no traffic in, none out.
/// The orchestrator reaches agents through the API server's port-forward,
/// which enters the pod's network namespace on its node and needs no pod
/// traffic at all.
pub fn isolation_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": "sbx-sandboxes-isolated" },
        "spec": {
            "podSelector": { "matchExpressions": [{ "key": SANDBOX_LABEL, "operator": "Exists" }] },
            "policyTypes": ["Ingress", "Egress"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 512 << 20,
            cpus: 1.5,
            pids: 256,
            disk_bytes: Some(1 << 30),
        }
    }

    fn plan_pod(runtime_class: Option<&str>) -> Value {
        let env = BTreeMap::from([("SBX_ENV_A".to_owned(), "b".to_owned())]);
        let limits = limits();
        pod(&PodPlan {
            id: "0123abcd",
            instance: "inst",
            image: "sbx/base:abc",
            agent_image: "sbx/sandbox-agent:def",
            agent_env: &env,
            limits: &limits,
            runtime_class,
            pull_policy: "Never",
        })
    }

    #[test]
    fn a_sandbox_pod_has_no_credentials_and_no_host_namespaces() {
        let pod = plan_pod(None);
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], json!(false));
        assert_eq!(spec["hostNetwork"], json!(false));
        assert_eq!(spec["hostPID"], json!(false));
        assert_eq!(spec["hostIPC"], json!(false));
        assert!(spec.get("runtimeClassName").is_none());
        for container in spec["containers"]
            .as_array()
            .expect("the fixture is well formed")
            .iter()
            .chain(
                spec["initContainers"]
                    .as_array()
                    .expect("the fixture is well formed"),
            )
        {
            let context = &container["securityContext"];
            assert_eq!(context["privileged"], json!(false));
            assert_eq!(context["allowPrivilegeEscalation"], json!(false));
            assert_eq!(context["capabilities"]["drop"], json!(["ALL"]));
            let kept = context["capabilities"]["add"]
                .as_array()
                .expect("the fixture is well formed");
            assert!(!kept.contains(&json!("SYS_ADMIN")) && !kept.contains(&json!("NET_RAW")));
        }
    }

    #[test]
    fn the_agent_listens_on_loopback_with_its_key_from_the_secret() {
        let pod = plan_pod(Some("gvisor"));
        assert_eq!(pod["spec"]["runtimeClassName"], json!("gvisor"));
        let sandbox = &pod["spec"]["containers"][0];
        assert_eq!(sandbox["command"], json!([sbx_api::AGENT_BINARY_PATH]));
        let env = sandbox["env"]
            .as_array()
            .expect("the fixture is well formed");
        assert!(env.contains(&json!({ "name": "SBX_ENV_A", "value": "b" })));
        assert!(env.contains(
            &json!({ "name": "SBX_AGENT_LISTEN_TCP", "value": sbx_api::AGENT_TCP_LISTEN })
        ));
        assert!(sbx_api::AGENT_TCP_LISTEN.starts_with("127.0.0.1:"));
        let key = env
            .iter()
            .find(|var| var["name"] == json!(sbx_api::AGENT_KEY_ENV))
            .expect("the fixture is well formed");
        assert_eq!(
            key["valueFrom"]["secretKeyRef"]["name"],
            json!("sbx-0123abcd")
        );
        assert!(
            key.get("value").is_none(),
            "the key is never in the pod spec"
        );
        // The sandbox sees the agent's volume read-only.
        assert_eq!(sandbox["volumeMounts"][0]["readOnly"], json!(true));
    }

    #[test]
    fn limits_become_pod_resources() {
        let pod = plan_pod(None);
        let container = limits().container();
        let limits = &pod["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["memory"], json!(container.memory_bytes.to_string()));
        assert_eq!(limits["cpu"], json!("1500m"));
        assert_eq!(limits["ephemeral-storage"], json!((1u64 << 30).to_string()));
    }

    #[test]
    fn everything_is_labelled_and_owned_by_the_record() {
        let mut secret = key_secret("0123abcd", "inst", "k");
        owned_by(&mut secret, "sbx-0123abcd", "uid-1");
        assert_eq!(
            secret["metadata"]["labels"][SANDBOX_LABEL],
            json!("0123abcd")
        );
        assert_eq!(secret["metadata"]["labels"][INSTANCE_LABEL], json!("inst"));
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["uid"],
            json!("uid-1")
        );
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["kind"],
            json!(KIND)
        );
    }
}
