//! The kubernetes runtime: a sandbox is a Pod on a cluster, its record a
//! `Sandbox` resource, its agent reached through the API server.
//!
//! A start makes, in order: the `Sandbox` record ([`resource`]), the
//! Secret with the agent's key, and the Pod ([`objects::pod`]); the two
//! are owned by the record. The pod's init container copies the static
//! agent out of a one-file image into a volume; the sandbox container runs
//! it as PID 1 from there, listening on loopback inside the pod. The
//! orchestrator dials it through the API server's port-forward
//! ([`forward`]) and sends the key with every request.
//!
//! What a pod cannot do is refused by name ([`Runtime::refuses`]):
//! - pause: the Kubernetes API has no way to freeze a pod's processes
//!   (the kubelet owns its cgroups);
//! - stop and snapshots: they need a volume that outlives the pod
//!   (a PersistentVolumeClaim, and VolumeSnapshots for templates and
//!   forks), which needs a storage provisioner the test cluster lacks;
//! - egress: pods get no route out, and a NetworkPolicy denies all their
//!   traffic where the network plugin enforces one; sbx's proxy is not yet
//!   reachable from a pod, so a policy that allows hosts is refused.
//!
//! Death is seen by polling the pod, at most every [`DEATH_POLL`].

mod forward;
mod images;
mod objects;
mod resource;

use super::{
    AgentLink, Cluster, ContainerSpec, Feature, Isolation, Limits, Runtime, RuntimeError,
    SandboxDir,
};
use async_trait::async_trait;
use images::NodeContainerd;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use objects::{object_name, INSTANCE_LABEL, SANDBOX_CONTAINER, SANDBOX_LABEL};
use resource::Phase;
use sbx_api::client::Client;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a sandbox's pod is looked at to see whether it died.
const DEATH_POLL: Duration = Duration::from_secs(1);
/// How often a starting pod is looked at.
const START_POLL: Duration = Duration::from_millis(50);
/// How long a pod may take to run its sandbox container.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What `sbx serve --runtime kubernetes` is told.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The kubeconfig to use; `None`: the usual search (`KUBECONFIG`,
    /// `~/.kube/config`, then the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    /// A RuntimeClass for sandbox pods (gVisor, Kata), if any.
    pub runtime_class: Option<String>,
    /// The containerd socket of the cluster's one node, when it is this
    /// machine: sbx then imports its images there itself ([`images`]).
    pub node_containerd: Option<PathBuf>,
    /// The static agent binary, packed as the agent image.
    pub agent_binary: PathBuf,
    /// Stamped on every object, and the only set this runtime lists.
    pub instance: String,
    /// Where image archives are written before import.
    pub scratch: PathBuf,
}

pub struct KubernetesRuntime {
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    records: Api<DynamicObject>,
    options: KubeOptions,
    version: String,
    agent_image: String,
    node: Option<NodeContainerd>,
    /// Agent keys by sandbox id, read from the Secrets once.
    keys: Mutex<HashMap<String, String>>,
    /// One image import at a time: two starts on a new build import once.
    imports: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KubernetesRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesRuntime")
            .field("options", &self.options)
            .field("version", &self.version)
            .field("agent_image", &self.agent_image)
            .finish_non_exhaustive()
    }
}

fn kube_error(context: impl Into<String>) -> impl FnOnce(kube::Error) -> RuntimeError {
    let context = context.into();
    move |err| RuntimeError::Engine {
        context,
        message: err.to_string(),
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(response) if response.code == code)
}

/// Whether a call failed only because its object is already gone.
fn gone_is_fine<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(err) if is_status(&err, 404) => Ok(()),
        other => other.map(drop),
    }
}

impl KubernetesRuntime {
    /// Connects to the cluster, and makes sure the namespace, the `Sandbox`
    /// resource, the isolating NetworkPolicy and (on a node sbx feeds
    /// itself) the agent image exist.
    pub async fn connect(options: KubeOptions) -> Result<Self, RuntimeError> {
        let config = match &options.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|err| RuntimeError::Engine {
                        context: format!("cannot read the kubeconfig {}", path.display()),
                        message: err.to_string(),
                    })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|err| RuntimeError::Engine {
                        context: format!("invalid kubeconfig {}", path.display()),
                        message: err.to_string(),
                    })?
            }
            None => kube::Config::infer()
                .await
                .map_err(|err| RuntimeError::Engine {
                    context: "cannot find a kubeconfig".into(),
                    message: err.to_string(),
                })?,
        };
        let client = kube::Client::try_from(config).map_err(kube_error("cannot make a client"))?;
        let version = client
            .apiserver_version()
            .await
            .map_err(kube_error("the API server does not answer"))?
            .git_version;
        let namespace = options.namespace.clone();
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(resource::GROUP, resource::VERSION, resource::KIND),
            resource::PLURAL,
        );
        let node = options
            .node_containerd
            .clone()
            .map(|socket| NodeContainerd {
                socket,
                scratch: options.scratch.clone(),
            });
        let agent_image = agent_image_of(&options.agent_binary)?;
        let runtime = Self {
            pods: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client.clone(), &namespace),
            records: Api::namespaced_with(client.clone(), &namespace, &resource),
            client,
            options,
            version,
            agent_image,
            node,
            keys: Mutex::default(),
            imports: tokio::sync::Mutex::new(()),
        };
        runtime.install().await?;
        Ok(runtime)
    }

    /// What every sandbox needs in the cluster, made when missing.
    async fn install(&self) -> Result<(), RuntimeError> {
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": self.options.namespace },
        }))
        .map_err(spec_error("namespace"))?;
        create_unless_exists(&Api::all(self.client.clone()), &namespace, "the namespace").await?;
        let definition: CustomResourceDefinition =
            serde_json::from_value(resource::definition()).map_err(spec_error("definition"))?;
        let definitions = Api::<CustomResourceDefinition>::all(self.client.clone());
        create_unless_exists(&definitions, &definition, "the Sandbox resource").await?;
        self.wait_established(&definitions).await?;
        let policy: NetworkPolicy =
            serde_json::from_value(objects::isolation_policy()).map_err(spec_error("policy"))?;
        let policies =
            Api::<NetworkPolicy>::namespaced(self.client.clone(), &self.options.namespace);
        create_unless_exists(&policies, &policy, "the sandboxes' NetworkPolicy").await?;
        if let Some(node) = &self.node {
            let _import = self.imports.lock().await;
            if !node.has(&self.agent_image).await? {
                let dir = tempfile::tempdir_in(self.scratch_dir()?)
                    .map_err(RuntimeError::io("cannot make a scratch dir"))?;
                std::fs::copy(&self.options.agent_binary, dir.path().join("sandbox-agent"))
                    .map_err(RuntimeError::io("cannot copy the agent binary"))?;
                node.import_rootfs(&self.agent_image, dir.path(), &["/sandbox-agent"])
                    .await?;
            }
        }
        Ok(())
    }

    fn scratch_dir(&self) -> Result<&Path, RuntimeError> {
        std::fs::create_dir_all(&self.options.scratch).map_err(RuntimeError::io(format!(
            "cannot create {}",
            self.options.scratch.display()
        )))?;
        Ok(&self.options.scratch)
    }

    async fn wait_established(
        &self,
        definitions: &Api<CustomResourceDefinition>,
    ) -> Result<(), RuntimeError> {
        let name = format!("{}.{}", resource::PLURAL, resource::GROUP);
        for _ in 0..100 {
            let definition = definitions
                .get(&name)
                .await
                .map_err(kube_error("cannot read the Sandbox resource"))?;
            let established = definition
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|condition| condition.type_ == "Established" && condition.status == "True");
            if established {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RuntimeError::Engine {
            context: name,
            message: "the resource was not established within 10 s".into(),
        })
    }

    /// Imports the image build at `rootfs` into the node, when sbx feeds
    /// the node itself and it lacks the build.
    async fn ensure_image(&self, reference: &str, rootfs: &Path) -> Result<(), RuntimeError> {
        let Some(node) = &self.node else {
            return Ok(());
        };
        let _import = self.imports.lock().await;
        if node.has(reference).await? {
            return Ok(());
        }
        node.import_rootfs(reference, rootfs, &[sbx_api::AGENT_BINARY_PATH])
            .await
    }

    fn pull_policy(&self) -> &'static str {
        match self.node {
            Some(_) => "Never",
            None => "IfNotPresent",
        }
    }

    async fn set_phase(&self, id: &str, phase: Phase, message: &str) {
        let patch = Patch::Merge(resource::status_patch(phase, message));
        let result = self
            .records
            .patch_status(&object_name(id), &PatchParams::default(), &patch)
            .await;
        match result {
            // Deleted meanwhile: nothing left to say it of.
            Err(err) if is_status(&err, 404) => {}
            Err(err) => tracing::warn!(%id, error = %err, "cannot update a Sandbox's status"),
            Ok(_) => {}
        }
    }

    async fn create_objects(&self, spec: &ContainerSpec, image: &str) -> Result<(), RuntimeError> {
        let id = &spec.id;
        let instance = &self.options.instance;
        let record = serde_json::from_value::<DynamicObject>(objects::sandbox_record(
            id,
            instance,
            image,
            &spec.limits,
        ))
        .map_err(spec_error(id))?;
        let record = self
            .records
            .create(&PostParams::default(), &record)
            .await
            .map_err(kube_error(format!("cannot record sandbox {id}")))?;
        let owner_uid = record.metadata.uid.unwrap_or_default();
        let key = new_key();
        let mut secret = objects::key_secret(id, instance, &key);
        objects::owned_by(&mut secret, &object_name(id), &owner_uid);
        let secret: Secret = serde_json::from_value(secret).map_err(spec_error(id))?;
        self.secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(kube_error(format!("cannot store the key of sandbox {id}")))?;
        self.keys.lock().expect("keys").insert(id.clone(), key);
        let mut env = spec.agent_env.clone();
        env.remove("SBX_AGENT_HANDOFF");
        let mut pod = objects::pod(&objects::PodPlan {
            id,
            instance,
            image,
            agent_image: &self.agent_image,
            agent_env: &env,
            limits: &spec.limits,
            runtime_class: self.options.runtime_class.as_deref(),
            pull_policy: self.pull_policy(),
        });
        objects::owned_by(&mut pod, &object_name(id), &owner_uid);
        let pod: Pod = serde_json::from_value(pod).map_err(spec_error(id))?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(kube_error(format!("cannot create the pod of sandbox {id}")))?;
        Ok(())
    }

    /// Waits for the sandbox container of `id`'s pod to run.
    async fn wait_running(&self, id: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let pod = self
                .pods
                .get_opt(&object_name(id))
                .await
                .map_err(kube_error(format!("cannot read the pod of sandbox {id}")))?;
            match pod.as_ref().map(PodView::of) {
                Some(PodView::Running) => return Ok(()),
                Some(PodView::Failed(reason)) => {
                    return Err(RuntimeError::Engine {
                        context: format!("the pod of sandbox {id}"),
                        message: reason,
                    })
                }
                None => {
                    return Err(RuntimeError::Engine {
                        context: format!("the pod of sandbox {id}"),
                        message: "deleted while starting".into(),
                    })
                }
                Some(PodView::Pending) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Engine {
                    context: format!("the pod of sandbox {id}"),
                    message: format!("not running after {START_TIMEOUT:?}"),
                });
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    async fn pod_view(&self, id: &str) -> Result<Option<PodView>, RuntimeError> {
        let pod = self
            .pods
            .get_opt(&object_name(id))
            .await
            .map_err(kube_error(format!("cannot read the pod of sandbox {id}")))?;
        Ok(pod.as_ref().map(PodView::of))
    }

    async fn key_of(&self, id: &str) -> Result<String, RuntimeError> {
        if let Some(key) = self.keys.lock().expect("keys").get(id) {
            return Ok(key.clone());
        }
        let secret = self
            .secrets
            .get(&object_name(id))
            .await
            .map_err(kube_error(format!("cannot read the key of sandbox {id}")))?;
        let key = secret
            .data
            .and_then(|data| data.get(objects::KEY_FIELD).cloned())
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .ok_or_else(|| RuntimeError::Engine {
                context: format!("the key of sandbox {id}"),
                message: "its Secret holds no key".into(),
            })?;
        self.keys
            .lock()
            .expect("keys")
            .insert(id.to_owned(), key.clone());
        Ok(key)
    }
}

fn spec_error(what: &str) -> impl FnOnce(serde_json::Error) -> RuntimeError + '_ {
    move |err| RuntimeError::Spec {
        id: what.to_owned(),
        reason: err.to_string(),
    }
}

async fn create_unless_exists<K>(api: &Api<K>, object: &K, what: &str) -> Result<(), RuntimeError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), object).await {
        Err(err) if is_status(&err, 409) => Ok(()),
        result => result
            .map(drop)
            .map_err(kube_error(format!("cannot create {what}"))),
    }
}

/// A fresh agent key: 256 random bits, hex.
fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The agent image's reference: named by the binary's digest, so a new
/// build of the agent is a new image and pods never run a stale one.
fn agent_image_of(binary: &Path) -> Result<String, RuntimeError> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(binary).map_err(RuntimeError::io(format!(
        "cannot read the agent binary {}",
        binary.display()
    )))?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    Ok(format!("sbx/sandbox-agent:{}", &digest[..16]))
}

/// What a pod says of its sandbox container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodView {
    Pending,
    Running,
    /// It ran and ended, or cannot start; why.
    Failed(String),
}

impl PodView {
    fn of(pod: &Pod) -> PodView {
        if pod.metadata.deletion_timestamp.is_some() {
            return PodView::Failed("the pod is being deleted".into());
        }
        let status = pod.status.clone().unwrap_or_default();
        let sandbox = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find(|container| container.name == SANDBOX_CONTAINER);
        let state = sandbox.and_then(|container| container.state);
        if let Some(state) = &state {
            if state.running.is_some() {
                return PodView::Running;
            }
            if let Some(ended) = &state.terminated {
                return PodView::Failed(format!(
                    "the sandbox container ended ({}, exit {})",
                    ended.reason.clone().unwrap_or_default(),
                    ended.exit_code
                ));
            }
            if let Some(waiting) = &state.waiting {
                let reason = waiting.reason.clone().unwrap_or_default();
                if matches!(
                    reason.as_str(),
                    "ErrImagePull"
                        | "ImagePullBackOff"
                        | "ErrImageNeverPull"
                        | "CreateContainerError"
                        | "CreateContainerConfigError"
                        | "InvalidImageName"
                        | "RunContainerError"
                ) {
                    return PodView::Failed(format!(
                        "{reason}: {}",
                        waiting.message.clone().unwrap_or_default()
                    ));
                }
            }
        }
        match status.phase.as_deref() {
            Some("Failed") | Some("Succeeded") => PodView::Failed(format!(
                "the pod is {}: {}",
                status.phase.unwrap_or_default(),
                status.message.unwrap_or_default()
            )),
            _ => PodView::Pending,
        }
    }
}

/// Whether the pod's sandbox container was killed for memory.
fn oom_killed(pod: &Pod) -> bool {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.clone())
        .unwrap_or_default();
    statuses.iter().any(|container| {
        let ended = container
            .state
            .as_ref()
            .and_then(|state| state.terminated.as_ref())
            .or_else(|| {
                container
                    .last_state
                    .as_ref()
                    .and_then(|state| state.terminated.as_ref())
            });
        ended.and_then(|ended| ended.reason.as_deref()) == Some("OOMKilled")
    })
}

#[async_trait]
impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            // The kubelet 1.20 has no user namespaces for pods; root in a
            // sandbox is root on its node, held in by the dropped
            // capabilities, seccomp and the RuntimeClass, if any.
            host_root_uid: None,
            disk_quota: Ok(()),
            user_namespace_note: Some(
                "pods run without a user namespace (Kubernetes 1.20 has none): root in a \
                 sandbox keeps only the capabilities sbx lists, under the runtime's default \
                 seccomp profile; a RuntimeClass (--kube-runtime-class) adds gVisor or Kata"
                    .into(),
            ),
            image_mapping: None,
        }
    }

    async fn prepare_image(&self, image_rootfs: &Path) -> Result<(), RuntimeError> {
        let reference = super::docker::image_tag(image_rootfs)?;
        self.ensure_image(&reference, image_rootfs).await
    }

    async fn release_image(&self, build: &str) {
        if let Some(node) = &self.node {
            node.remove(&super::docker::build_tag(build)).await;
        }
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let image = super::docker::image_tag(&spec.image_rootfs)?;
        self.ensure_image(&image, &spec.image_rootfs).await?;
        self.create_objects(spec, &image).await?;
        self.set_phase(&spec.id, Phase::Starting, "").await;
        self.wait_running(&spec.id).await?;
        self.set_phase(&spec.id, Phase::Running, "").await;
        Ok(())
    }

    async fn tenant_cgroups(
        &self,
        _id: &str,
        _limits: &Limits,
    ) -> Result<Vec<std::fs::File>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn remove(&self, id: &str, _dir: &SandboxDir) -> Result<(), RuntimeError> {
        let name = object_name(id);
        // Zero grace: the pod object goes at once and the kubelet kills its
        // containers (in under a second); a graceful delete takes the
        // kubelet 10 to 70 s to finish, and sbx has already told the agent
        // nothing more.
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        gone_is_fine(self.pods.delete(&name, &now).await)
            .map_err(kube_error(format!("cannot delete the pod of sandbox {id}")))?;
        gone_is_fine(self.secrets.delete(&name, &DeleteParams::default()).await)
            .map_err(kube_error(format!("cannot delete the key of sandbox {id}")))?;
        gone_is_fine(
            self.records
                .delete(&name, &DeleteParams::background())
                .await,
        )
        .map_err(kube_error(format!(
            "cannot delete the record of sandbox {id}"
        )))?;
        self.keys.lock().expect("keys").remove(id);
        Ok(())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self.pod_view(id).await? == Some(PodView::Running))
    }

    async fn init_pid(&self, _id: &str) -> Result<Option<i32>, RuntimeError> {
        // The agent runs on a node, not necessarily this host.
        Ok(None)
    }

    async fn exited(&self, id: &str) -> Result<(), RuntimeError> {
        loop {
            let why = match self.pod_view(id).await? {
                Some(PodView::Running) => {
                    tokio::time::sleep(DEATH_POLL).await;
                    continue;
                }
                Some(PodView::Pending) => "the pod is not running".to_owned(),
                Some(PodView::Failed(reason)) => reason,
                None => "the pod is gone".to_owned(),
            };
            self.set_phase(id, Phase::Dead, &why).await;
            return Ok(());
        }
    }

    async fn oom_killed(&self, id: &str) -> bool {
        match self.pods.get_opt(&object_name(id)).await {
            Ok(Some(pod)) => oom_killed(&pod),
            _ => false,
        }
    }

    async fn pause(&self, _id: &str) -> Result<(), RuntimeError> {
        Err(refused(Feature::Pause))
    }

    async fn resume(&self, _id: &str) -> Result<(), RuntimeError> {
        // Nothing is ever paused here.
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let mine =
            ListParams::default().labels(&format!("{INSTANCE_LABEL}={}", self.options.instance));
        let records = self
            .records
            .list(&mine)
            .await
            .map_err(kube_error("cannot list the Sandbox records"))?;
        let pods = self
            .pods
            .list(&mine)
            .await
            .map_err(kube_error("cannot list the sandbox pods"))?;
        let label = |labels: Option<&std::collections::BTreeMap<String, String>>| {
            labels.and_then(|labels| labels.get(SANDBOX_LABEL).cloned())
        };
        let mut ids: Vec<String> = records
            .items
            .iter()
            .filter_map(|record| label(record.metadata.labels.as_ref()))
            .chain(
                pods.items
                    .iter()
                    .filter_map(|pod| label(pod.metadata.labels.as_ref())),
            )
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    fn agent_link(&self) -> AgentLink {
        AgentLink::Dialed
    }

    async fn agent_client(&self, id: &str) -> Result<Client, RuntimeError> {
        let key = self.key_of(id).await?;
        let dialer = forward::PortForward {
            pods: self.pods.clone(),
            pod: object_name(id),
        };
        Ok(Client::dialed(Arc::new(dialer), key))
    }

    fn refuses(&self, feature: Feature) -> Option<&'static str> {
        match feature {
            Feature::Pause => Some(
                "the Kubernetes API cannot freeze a pod's processes (the kubelet owns its \
                 cgroups); stop or delete the sandbox instead",
            ),
            Feature::Stop => Some(
                "a stopped sandbox keeps its disk, which on a cluster needs a volume that \
                 outlives the pod (a PersistentVolumeClaim); sbx does not make those yet",
            ),
            Feature::Snapshot => Some(
                "snapshots, forks and templates copy a sandbox's disk, which on a cluster \
                 needs VolumeSnapshots of a persistent volume; sbx does not make those yet",
            ),
            Feature::EgressProxy => Some(
                "sandbox pods have no network route out and sbx's egress proxy is not yet \
                 reachable from a pod, so no host can be allowed",
            ),
            Feature::HostCaBundle => Some(
                "the host's CA bundle is a file on the orchestrator's machine, not on the \
                 cluster's nodes",
            ),
        }
    }

    async fn cluster(&self) -> Option<Cluster> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map(|list| list.items.len() as u64)
            .unwrap_or(0);
        Some(Cluster {
            server_version: self.version.clone(),
            nodes,
            namespace: self.options.namespace.clone(),
        })
    }
}

fn refused(feature: Feature) -> RuntimeError {
    RuntimeError::Engine {
        context: format!("the kubernetes runtime cannot {}", feature.name()),
        message: "refused".into(),
    }
}
