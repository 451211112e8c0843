//! The Docker runtime: the same sandboxes on a Docker Engine, through
//! bollard.
//!
//! Each sandbox is one container named `sbx-<id>` and labelled
//! `sbx.id=<id>`, `sbx.managed=true` and `sbx.instance=<instance>`, so the
//! orchestrator finds its own containers after a restart and removes the
//! ones it no longer knows. The instance label names the data dir that owns
//! the container: several `sbx serve` can share one engine without ever
//! adopting or removing each other's sandboxes. The
//! agent binary and the socket directory are bind mounts, exactly as with
//! youki, so everything above the [`Runtime`] trait is unchanged.
//!
//! Isolation is the engine's to give, so it is read from the engine, not
//! assumed: user namespaces when dockerd runs with `--userns-remap` (then the
//! socket directory is handed to the remapped root). Disk limits are sbx's
//! own: overlay2's `--storage-opt size=` needs XFS project quotas, which need
//! kernel quota support that VM kernels often lack, so instead the sandbox's
//! disk ([`super::disk`]) is mounted over the container's layer directory
//! (the parent of its overlay upper and work dirs) between create and start.
//! The container then writes into the disk exactly as a youki sandbox does;
//! removing the container unmounts it (Docker unmounts whatever is mounted
//! under a layer it deletes), and autoclear frees the loop device. That takes
//! an engine on this host with the overlay2 driver; on any other, `disk_mb`
//! is refused and `GET /v1/info` says why.
//!
//! Images: no registry is reachable, so an image's rootfs directory is
//! imported (`docker import`) as `sbx/<name>:<build-hash>`, once; the tag
//! names the image build, so a rebuilt image is imported again and a
//! present one never is.

use super::{
    disk, resolve_image, spec, tenant, ContainerSpec, Disks, Isolation, Limits, Runtime,
    RuntimeError, SandboxDir,
};
use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

const LABEL_ID: &str = "sbx.id";
const LABEL_MANAGED: &str = "sbx.managed";
const LABEL_INSTANCE: &str = "sbx.instance";
/// Largest log Docker keeps of a sandbox's agent.
const AGENT_LOG_MAX_SIZE: &str = "1m";
/// Seconds the agent gets between SIGTERM and SIGKILL on delete.
const STOP_GRACE_SECS: i32 = 2;
/// How long the engine may take to see a container's init exit after the
/// kernel has (it learns through containerd, a few milliseconds later).
const EXIT_NOTICE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    /// Serialises image imports, so two creates never import one image twice.
    imports: Mutex<()>,
    version: String,
    /// Identifies the orchestrator instance (its data dir) that owns a
    /// container.
    instance: String,
    isolation: Isolation,
    disks: Arc<Disks>,
}

fn docker_error(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    let context = context.into();
    move |err| RuntimeError::Engine {
        context,
        message: err.to_string(),
    }
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn container_name(id: &str) -> String {
    format!("sbx-{id}")
}

/// `sbx/<name>:<hash>` from an image build directory named `<name>-<hash>`
/// (what `scripts/build-image` makes); other layouts are named after the
/// directory as a whole.
pub(crate) fn image_tag(image_rootfs: &Path) -> Result<String, RuntimeError> {
    let resolved = resolve_image(image_rootfs)?;
    let build = resolved
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(build_tag(&build))
}

/// The engine's tag of the image build named `build`.
pub(crate) fn build_tag(build: &str) -> String {
    let build = build.to_lowercase();
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    match build.rsplit_once('-') {
        Some((name, hash)) if !name.is_empty() && !hash.is_empty() => {
            format!("sbx/{}:{}", clean(name), clean(hash))
        }
        _ => format!("sbx/{}:latest", clean(&build)),
    }
}

impl DockerRuntime {
    /// Connects over `DOCKER_HOST` or `/var/run/docker.sock` and checks the
    /// engine answers. `instance` is stamped on every container it creates
    /// and is the only set of containers it lists. `disks` makes the
    /// sandboxes' disks, where they work with this engine.
    pub async fn connect(instance: String, disks: Arc<Disks>) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(docker_error("cannot connect to the docker engine"))?
            .negotiate_version()
            .await
            .map_err(docker_error("the docker engine does not answer"))?;
        let version = docker
            .version()
            .await
            .map_err(docker_error("the docker engine does not answer"))?
            .version
            .unwrap_or_default();
        let info = docker
            .info()
            .await
            .map_err(docker_error("the docker engine does not answer"))?;
        let isolation = isolation_of(&info, disks.usable());
        Ok(Self {
            docker,
            imports: Mutex::new(()),
            version,
            instance,
            isolation,
            disks,
        })
    }

    /// Imports the rootfs as `tag` unless the engine already has it.
    async fn ensure_image(&self, tag: &str, rootfs: &Path) -> Result<(), RuntimeError> {
        let _import = self.imports.lock().await;
        if self.docker.inspect_image(tag).await.is_ok() {
            return Ok(());
        }
        tracing::info!(%tag, rootfs = %rootfs.display(), "importing image into docker");
        let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        // GNU tar handles every file type a rootfs holds (devices, sockets,
        // hard links, xattrs); its output streams straight into the engine.
        let mut tar = tokio::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(rootfs)
            .args(["-cf", "-", "."])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(RuntimeError::io("cannot run tar to import an image"))?;
        let stdout = tar.stdout.take().ok_or_else(|| RuntimeError::Engine {
            context: "image import".into(),
            message: "tar has no stdout".into(),
        })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(stdout));
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(version)
            .build();
        let mut progress = self.docker.create_image(Some(options), Some(body), None);
        while let Some(step) = progress.next().await {
            step.map_err(docker_error(format!("cannot import {tag}")))?;
        }
        let status = tar
            .wait()
            .await
            .map_err(RuntimeError::io("cannot wait for tar"))?;
        if !status.success() {
            return Err(RuntimeError::Engine {
                context: format!("cannot import {tag}"),
                message: format!("tar exited with {status}"),
            });
        }
        Ok(())
    }

    /// The directory holding a created container's overlay upper and work
    /// dirs: where its disk goes.
    async fn layer_dir(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(name, None)
            .await
            .map_err(docker_error(format!("cannot inspect container {name}")))?;
        let driver = inspect.graph_driver.unwrap_or_default();
        let parent = |key: &str| {
            driver
                .data
                .get(key)
                .and_then(|dir| Path::new(dir).parent())
                .map(Path::to_path_buf)
        };
        match (parent("UpperDir"), parent("WorkDir")) {
            (Some(upper), Some(work)) if upper == work && driver.name == "overlay2" => Ok(upper),
            _ => Err(RuntimeError::Engine {
                context: format!("cannot give container {name} a disk"),
                message: format!(
                    "its storage ({:?}: {:?}) has no overlay2 layer directory",
                    driver.name, driver.data
                ),
            }),
        }
    }

    fn container_body(&self, container: &ContainerSpec, image: String) -> ContainerCreateBody {
        let limits = container.limits.container();
        let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let open_files = i64::try_from(spec::open_files_limit()).unwrap_or(1024);
        let mut binds = vec![
            format!(
                "{}:{}:ro",
                container.agent_binary.display(),
                sbx_api::AGENT_BINARY_PATH
            ),
            // Read-only: see `SandboxDir::run_dir`.
            format!(
                "{}:{}:ro",
                container.dir.run_dir().display(),
                sbx_api::RUN_DIR
            ),
        ];
        if let Some(bundle) = &container.ca_bundle {
            binds.push(format!(
                "{}:{}:ro",
                bundle.display(),
                sbx_api::CA_BUNDLE_PATH
            ));
        }
        let host_config = HostConfig {
            binds: Some(binds),
            network_mode: Some("none".into()),
            memory: Some(memory),
            // Equal to the memory limit: no swap on top of it.
            memory_swap: Some(memory),
            nano_cpus: Some((limits.cpus * 1e9).round() as i64),
            pids_limit: Some(i64::try_from(limits.pids).unwrap_or(i64::MAX)),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(spec::capability_names()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(open_files),
                hard: Some(open_files),
            }]),
            init: Some(false),
            // The agent's own output: bounded, whatever happens inside.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), AGENT_LOG_MAX_SIZE.to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            ..HostConfig::default()
        };
        ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec![sbx_api::AGENT_BINARY_PATH.to_owned()]),
            cmd: Some(Vec::new()),
            env: Some(spec::agent_env(container)),
            working_dir: Some("/".into()),
            hostname: Some(spec::hostname(&container.id)),
            labels: Some(HashMap::from([
                (LABEL_ID.to_owned(), container.id.clone()),
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_INSTANCE.to_owned(), self.instance.clone()),
            ])),
            network_disabled: Some(true),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn prepare_image(&self, image_rootfs: &Path) -> Result<(), RuntimeError> {
        self.ensure_image(&image_tag(image_rootfs)?, image_rootfs)
            .await
    }

    async fn release_image(&self, build: &str) {
        let tag = build_tag(build);
        match self
            .docker
            .remove_image(&tag, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => tracing::info!(%tag, "removed an image from the engine"),
            Err(err) if is_not_found(&err) => {}
            Err(err) => {
                tracing::warn!(%tag, error = %err, "cannot remove an image from the engine")
            }
        }
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn isolation(&self) -> Isolation {
        self.isolation.clone()
    }

    async fn start(&self, container: &ContainerSpec) -> Result<(), RuntimeError> {
        let tag = image_tag(&container.image_rootfs)?;
        self.ensure_image(&tag, &container.image_rootfs).await?;
        let name = container_name(&container.id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.container_body(container, tag);
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_error(format!("cannot create container {name}")))?;
        if let Some(bytes) = container.limits.disk_bytes {
            let layer = self.layer_dir(&name).await?;
            let disks = Arc::clone(&self.disks);
            let image = container.dir.disk_image();
            let keep = container.keep_disk;
            tokio::task::spawn_blocking(move || match keep {
                true => disk::mount_image(&image, &layer),
                false => disks.mount_new(&image, bytes, &layer),
            })
            .await
            .map_err(|err| RuntimeError::Engine {
                context: format!("giving container {name} a disk"),
                message: err.to_string(),
            })??;
        }
        self.docker
            .start_container(&name, None)
            .await
            .map_err(docker_error(format!("cannot start container {name}")))
    }

    async fn tenant_cgroups(
        &self,
        id: &str,
        limits: &Limits,
    ) -> Result<Vec<std::fs::File>, RuntimeError> {
        let name = container_name(id);
        let pid = self
            .docker
            .inspect_container(&name, None)
            .await
            .map_err(docker_error(format!("cannot inspect container {name}")))?
            .state
            .and_then(|state| state.pid)
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid > 0)
            .ok_or_else(|| RuntimeError::Engine {
                context: format!("container {name}"),
                message: "has no running init".into(),
            })?;
        let limits = *limits;
        tokio::task::spawn_blocking(move || match tenant::container_cgroups_of(pid)? {
            // runc removes child cgroups with the container's.
            Some(containers) => tenant::make(&containers, &limits),
            None => Ok(Vec::new()),
        })
        .await
        .map_err(|err| RuntimeError::Engine {
            context: format!("making the tenant cgroups of {name}"),
            message: err.to_string(),
        })?
    }

    async fn remove(&self, id: &str, _dir: &SandboxDir) -> Result<(), RuntimeError> {
        let name = container_name(id);
        // A frozen container cannot act on the stop's SIGTERM.
        if let Err(err) = self.resume(id).await {
            tracing::debug!(%id, error = %err, "nothing to thaw before the stop");
        }
        let stop = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECS)
            .build();
        match self.docker.stop_container(&name, Some(stop)).await {
            Err(err) if is_not_found(&err) => return Ok(()),
            // Stopping an already stopped container answers 304: fine.
            _ => {}
        }
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&name, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(docker_error(format!("cannot remove container {name}"))(err)),
        }
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(inspect) => Ok(inspect
                .state
                .and_then(|state| state.running)
                .unwrap_or(false)),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(docker_error(format!("cannot inspect sandbox {id}"))(err)),
        }
    }

    /// The init's pidfd, then the engine's own view: until the engine has
    /// seen the exit, it still calls the container running.
    async fn exited(&self, id: &str) -> Result<(), RuntimeError> {
        super::init_exited(self.init_pid(id).await?).await?;
        let noticed = std::time::Instant::now() + EXIT_NOTICE;
        let mut pause = std::time::Duration::from_millis(5);
        while self.is_running(id).await? && std::time::Instant::now() < noticed {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
        Ok(())
    }

    async fn oom_killed(&self, id: &str) -> bool {
        self.docker
            .inspect_container(&container_name(id), None)
            .await
            .ok()
            .and_then(|inspect| inspect.state)
            .and_then(|state| state.oom_killed)
            .unwrap_or(false)
    }

    async fn init_pid(&self, id: &str) -> Result<Option<i32>, RuntimeError> {
        match self
            .docker
            .inspect_container(&container_name(id), None)
            .await
        {
            Ok(inspect) => Ok(inspect
                .state
                .filter(|state| state.running == Some(true))
                .and_then(|state| state.pid)
                .and_then(|pid| i32::try_from(pid).ok())
                .filter(|&pid| pid > 0)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(docker_error(format!("cannot inspect sandbox {id}"))(err)),
        }
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        let name = container_name(id);
        self.docker
            .pause_container(&name)
            .await
            .map_err(docker_error(format!("cannot pause container {name}")))
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        let name = container_name(id);
        match self.docker.unpause_container(&name).await {
            Ok(()) => Ok(()),
            // 409: not paused; nothing to thaw.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(err) => Err(docker_error(format!("cannot resume container {name}"))(err)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("{LABEL_MANAGED}=true"),
                    format!("{LABEL_INSTANCE}={}", self.instance),
                ],
            )]))
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_error("cannot list containers"))?;
        Ok(containers
            .into_iter()
            .filter_map(|container| container.labels?.get(LABEL_ID).cloned())
            .collect())
    }
}

/// What the engine enforces, from `docker info`; `disks` is whether sbx's
/// disks work on this host.
fn isolation_of(info: &bollard::models::SystemInfo, disks: Result<(), String>) -> Isolation {
    let userns = info
        .security_options
        .iter()
        .flatten()
        .any(|option| option.split(',').any(|part| part == "name=userns"));
    // With --userns-remap the data root is `<root>/<uid>.<gid>`.
    let root_dir = info.docker_root_dir.as_deref().map(Path::new);
    let host_root_uid = root_dir
        .and_then(|dir| dir.file_name()?.to_str())
        .and_then(|name| name.split_once('.')?.0.parse::<u32>().ok())
        .filter(|_| userns);
    let driver = info.driver.clone().unwrap_or_default();
    let disk_quota = if driver != "overlay2" {
        Err(format!(
            "sbx caps a Docker sandbox's disk by mounting it over the container's overlay2 \
             layer; this engine's storage driver is {driver:?}"
        ))
    } else if !root_dir.is_some_and(Path::is_dir) {
        Err(format!(
            "the docker engine's data root {root_dir:?} is not on this host, so sbx cannot \
             mount disks over its layers"
        ))
    } else {
        disks
    };
    Isolation {
        // The engine shifts its own images (--userns-remap).
        image_mapping: None,
        host_root_uid,
        user_namespace_note: host_root_uid.is_none().then(|| {
            "the docker engine runs without --userns-remap: root in a sandbox is root on \
             the host (scripts/docker-up starts an engine with it)"
                .to_owned()
        }),
        disk_quota,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_isolation_from_docker_info() {
        let here = tempfile::tempdir().expect("tempdir");
        let root = here.path().join("100000.100000");
        std::fs::create_dir(&root).expect("mkdir");
        let remapped = bollard::models::SystemInfo {
            security_options: Some(vec![
                "name=seccomp,profile=default".into(),
                "name=userns".into(),
            ]),
            docker_root_dir: Some(root.to_string_lossy().into_owned()),
            driver: Some("overlay2".into()),
            ..Default::default()
        };
        let isolation = isolation_of(&remapped, Ok(()));
        assert_eq!(isolation.host_root_uid, Some(100_000));
        assert_eq!(isolation.user_namespace_note, None);
        assert_eq!(isolation.disk_quota, Ok(()));
        let no_loop = isolation_of(&remapped, Err("no loop devices".into()));
        assert_eq!(no_loop.disk_quota, Err("no loop devices".into()));

        let plain = bollard::models::SystemInfo {
            security_options: Some(vec!["name=seccomp,profile=default".into()]),
            docker_root_dir: Some("/var/lib/docker-on-another-host".into()),
            driver: Some("overlay2".into()),
            ..Default::default()
        };
        let isolation = isolation_of(&plain, Ok(()));
        assert_eq!(isolation.host_root_uid, None);
        assert!(isolation.user_namespace_note.is_some());
        assert!(isolation
            .disk_quota
            .expect_err("refused")
            .contains("not on this host"));

        let btrfs = bollard::models::SystemInfo {
            driver: Some("btrfs".into()),
            ..remapped
        };
        let isolation = isolation_of(&btrfs, Ok(()));
        assert!(isolation
            .disk_quota
            .expect_err("refused")
            .contains("\"btrfs\""));
    }

    #[test]
    fn image_tags_name_the_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join(".store/base-2db5b67ebfff/rootfs");
        std::fs::create_dir_all(&rootfs).expect("mkdir");
        std::os::unix::fs::symlink(".store/base-2db5b67ebfff", dir.path().join("base"))
            .expect("symlink");
        assert_eq!(
            image_tag(&dir.path().join("base/rootfs")).expect("tag"),
            "sbx/base:2db5b67ebfff"
        );
        let plain = dir.path().join("Plain/rootfs");
        std::fs::create_dir_all(&plain).expect("mkdir");
        assert_eq!(image_tag(&plain).expect("tag"), "sbx/plain:latest");
    }
}
