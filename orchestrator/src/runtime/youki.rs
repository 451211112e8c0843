//! The embedded runtime: youki's libcontainer, in this process.
//!
//! No daemon and no shim per container: `start` is an overlay mount, a
//! `config.json`, and libcontainer's clone of the init (our agent), all in a
//! few milliseconds. libcontainer calls run in the server's one helper
//! process (see [`super::helper`] for why; what it runs is
//! [`super::in_helper`]). Container state lives in `<state-root>/<id>/` (libcontainer's
//! own `state.json`), so after an orchestrator restart `Container::load`
//! finds every container again: they keep running while we are gone.
//!
//! Every sandbox gets a user namespace ([`super::idmap`]) and a writable
//! layer of its own: with `disk_mb`, a disk of that size ([`super::disk`])
//! mounted at `<sandbox dir>/layer`, under the overlay's upper and work dirs.
//! Both mounts are made by the helper and exist only in the sandbox's mount
//! namespace, never in the host's (see [`super::helper`] for why).

use super::freezer::Freezer;
use super::helper::{Helper, Request};
use super::spec::IdMap;
use super::{
    disk, idmap, overlay, process, spec, tenant, ContainerSpec, Disks, Isolation, Limits, Runtime,
    RuntimeError, SandboxDir,
};
use async_trait::async_trait;
use libcontainer::container::Container;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The libcontainer release this runtime embeds (see Cargo.toml).
const LIBCONTAINER_VERSION: &str = "0.7";

/// How long the agent gets after SIGTERM to stop its children and exit.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// After SIGKILL the kernel needs only to tear the process down.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct YoukiRuntime {
    state_root: PathBuf,
    helper: Helper,
    disks: Arc<Disks>,
    /// `Ok`: image builds are mounted idmapped ([`super::idmapped`]);
    /// else why each is copied with shifted owners ([`idmap`]).
    idmapped_images: Result<(), String>,
}

/// Set to `off` to copy images with shifted owners even where idmapped
/// mounts work (to compare, or to test the fallback).
pub const IDMAPPED_IMAGES_ENV: &str = "SBX_IDMAPPED_IMAGES";

/// The user namespace of every youki sandbox.
const ID_MAP: IdMap = IdMap {
    host_base: idmap::HOST_BASE,
    size: idmap::RANGE,
};

impl YoukiRuntime {
    /// `state_root` holds libcontainer's per-container state; it must be an
    /// absolute path because libcontainer changes the process's cwd.
    /// `disks` makes the sandboxes' disks, where they work here.
    ///
    /// Waits for the helper of a server killed on this data dir to finish
    /// (see [`super::helper`]).
    pub async fn new(state_root: PathBuf, disks: Arc<Disks>) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&state_root).map_err(RuntimeError::io(format!(
            "cannot create {}",
            state_root.display()
        )))?;
        let lock = super::helper::lock(&state_root).await?;
        let helper = Helper::spawn(lock)?;
        let idmapped_images = if std::env::var(IDMAPPED_IMAGES_ENV).is_ok_and(|v| v == "off") {
            Err(format!("{IDMAPPED_IMAGES_ENV}=off"))
        } else {
            let scratch = state_root.join("idmap-probe");
            helper
                .call(&Request::ProbeIdmap { scratch })
                .await
                .map_err(|err| err.to_string())
        };
        if let Err(reason) = &idmapped_images {
            tracing::info!(%reason, "images are copied with shifted owners, not mounted idmapped");
        }
        Ok(Self {
            state_root,
            helper,
            disks,
            idmapped_images,
        })
    }

    fn container_root(&self, id: &str) -> PathBuf {
        self.state_root.join(id)
    }

    /// The init pid recorded by libcontainer, if the container exists.
    /// Reading the state is file I/O, so it runs off the async workers.
    async fn recorded_pid(&self, id: &str) -> Option<i32> {
        let root = self.container_root(id);
        tokio::task::spawn_blocking(move || {
            if !root.exists() {
                return None;
            }
            Container::load(root)
                .ok()
                .and_then(|container| container.pid())
                .map(|pid| pid.as_raw())
        })
        .await
        .ok()
        .flatten()
    }

    /// Freezes (or thaws) the sandbox's cgroup (see [`Freezer`] for why
    /// not through libcontainer).
    async fn freezer(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        let freezer = Freezer::of_sandbox(id);
        tokio::task::spawn_blocking(move || {
            if frozen {
                freezer.freeze()
            } else {
                freezer.thaw()
            }
        })
        .await
        .map_err(|err| RuntimeError::Engine {
            context: format!("the freezer of sandbox {id}"),
            message: err.to_string(),
        })?
    }

    async fn stop_init(&self, pid: i32) -> Result<(), RuntimeError> {
        let wait_error = RuntimeError::io(format!("cannot wait for pid {pid}"));
        if process::is_alive(pid) {
            process::signal(pid, libc::SIGTERM);
            if !process::wait_exit(pid, STOP_GRACE)
                .await
                .map_err(wait_error)?
            {
                // The init is PID 1 of the sandbox's pid namespace: its death
                // makes the kernel kill everything else inside.
                process::signal(pid, libc::SIGKILL);
                let wait_error = RuntimeError::io(format!("cannot wait for pid {pid}"));
                process::wait_exit(pid, KILL_WAIT)
                    .await
                    .map_err(wait_error)?;
            }
        }
        Ok(())
    }
}

/// Kills what is left in the container's cgroups without a recorded init:
/// a server killed while its helper was building the container leaves the
/// half-made init there (waiting on a channel to the dead helper), which
/// keeps libcontainer from removing the cgroups. Bounded: it waits at most
/// `KILL_WAIT` for them to go.
/// The OOM kills the kernel counted in the memory cgroup at `cgroup` (a
/// path like `/sbx/<id>`): `memory.oom_control` under v1, where the count
/// is the cgroup's own (a kill in its tenant child is the child's), or
/// `memory.events` under v2. 0 where neither can be read.
fn oom_kills(cgroup: &Path) -> u64 {
    let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
    let root = Path::new(tenant::CGROUP_ROOT);
    [
        root.join("memory")
            .join(relative)
            .join("memory.oom_control"),
        root.join(relative).join("memory.events"),
    ]
    .iter()
    .find_map(|file| std::fs::read_to_string(file).ok())
    .map_or(0, |text| oom_kill_count(&text))
}

/// The `oom_kill N` line of a memory cgroup's counters.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

async fn kill_stragglers(id: &str) {
    let procs: Vec<PathBuf> = tenant::youki_container_cgroups(id)
        .into_iter()
        .map(|cgroup| cgroup.join("cgroup.procs"))
        .collect();
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids: Vec<i32> = procs
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        tracing::info!(%id, ?pids, "killing what a half-made container left");
        for pid in pids {
            process::signal(pid, libc::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[async_trait]
impl Runtime for YoukiRuntime {
    fn name(&self) -> &'static str {
        "youki"
    }

    fn version(&self) -> String {
        format!("libcontainer {LIBCONTAINER_VERSION}")
    }

    fn isolation(&self) -> Isolation {
        Isolation {
            image_mapping: Some(match &self.idmapped_images {
                Ok(()) => Ok(super::IMAGES_IDMAPPED),
                Err(reason) => Err(reason.clone()),
            }),
            host_root_uid: Some(idmap::to_host(0)),
            disk_quota: self.disks.usable(),
            user_namespace_note: None,
        }
    }

    async fn prepare_image(&self, image_rootfs: &Path) -> Result<(), RuntimeError> {
        if self.idmapped_images.is_ok() {
            return Ok(());
        }
        let image_rootfs = image_rootfs.to_owned();
        tokio::task::spawn_blocking(move || idmap::shifted_image(&image_rootfs).map(drop))
            .await
            .map_err(|err| RuntimeError::Engine {
                context: "preparing an image".into(),
                message: err.to_string(),
            })?
    }

    async fn start(&self, container: &ContainerSpec) -> Result<(), RuntimeError> {
        let oci = spec::build(container, Some(ID_MAP))?;
        let dir = container.dir.clone();
        let image_rootfs = container.image_rootfs.clone();
        let id = container.id.clone();
        let disks = Arc::clone(&self.disks);
        let disk_bytes = container.limits.disk_bytes;
        let keep_disk = container.keep_disk;
        let idmap_lower = self.idmapped_images.is_ok();
        let lower = tokio::task::spawn_blocking(move || {
            let lower = if idmap_lower {
                image_rootfs
            } else {
                idmap::shifted_image(&image_rootfs)?
            };
            let layer = dir.layer();
            std::fs::create_dir_all(&layer).map_err(RuntimeError::io(format!(
                "cannot create {}",
                layer.display()
            )))?;
            match disk_bytes {
                Some(bytes) if !keep_disk => disks.create_image(&dir.disk_image(), bytes)?,
                _ => {}
            }
            let config = dir.path().join("config.json");
            oci.save(&config).map_err(|err| RuntimeError::Spec {
                id,
                reason: format!("cannot write {}: {err}", config.display()),
            })?;
            Ok::<_, RuntimeError>(lower)
        })
        .await
        .map_err(|err| RuntimeError::Engine {
            context: format!("preparing the rootfs of sandbox {}", container.id),
            message: err.to_string(),
        })??;
        self.helper
            .call(&Request::Start {
                id: container.id.clone(),
                state_root: self.state_root.clone(),
                bundle: container.dir.path().to_owned(),
                log: container.dir.agent_log(),
                lower,
                idmap_lower,
                disk: disk_bytes.is_some(),
                root_uid: Some(idmap::to_host(0)),
            })
            .await
    }

    async fn tenant_cgroups(&self, id: &str, limits: &Limits) -> Result<Vec<File>, RuntimeError> {
        let containers = tenant::youki_container_cgroups(id);
        let limits = *limits;
        tokio::task::spawn_blocking(move || {
            if containers.iter().all(|path| path.is_dir()) {
                tenant::make(&containers, &limits)
            } else {
                Ok(Vec::new())
            }
        })
        .await
        .map_err(|err| RuntimeError::Engine {
            context: format!("making the tenant cgroups of sandbox {id}"),
            message: err.to_string(),
        })?
    }

    async fn remove(&self, id: &str, dir: &SandboxDir) -> Result<(), RuntimeError> {
        let started = Instant::now();
        if let Some(pid) = self.recorded_pid(id).await {
            // A frozen init cannot act on SIGTERM, nor die of SIGKILL
            // (cgroup v1's freezer holds even that).
            if let Err(err) = self.resume(id).await {
                tracing::debug!(%id, error = %err, "nothing to thaw before the stop");
            }
            self.stop_init(pid).await?;
        }
        kill_stragglers(id).await;
        // Empty once the init is gone (its pid namespace went with it), and
        // in the way of libcontainer's removal of the container's cgroups.
        tenant::remove(&tenant::youki_container_cgroups(id))?;
        let stopped = started.elapsed();
        let root = self.container_root(id);
        if root.exists() {
            self.helper
                .call(&Request::Delete {
                    id: id.to_owned(),
                    state_root: self.state_root.clone(),
                })
                .await?;
        }
        let deleted = started.elapsed() - stopped;
        // The sandbox's mounts went with its mount namespace; these find
        // nothing unless a start failed half-way or predates the helper
        // owning them.
        overlay::unmount_rootfs(dir)?;
        disk::unmount(&dir.layer())?;
        tracing::debug!(
            %id,
            stop_us = stopped.as_micros() as u64,
            delete_us = deleted.as_micros() as u64,
            unmount_us = (started.elapsed() - stopped - deleted).as_micros() as u64,
            "container removed"
        );
        Ok(())
    }

    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self.recorded_pid(id).await.is_some_and(process::is_alive))
    }

    async fn init_pid(&self, id: &str) -> Result<Option<i32>, RuntimeError> {
        Ok(self
            .recorded_pid(id)
            .await
            .filter(|&pid| process::is_alive(pid)))
    }

    async fn oom_killed(&self, id: &str) -> bool {
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || oom_kills(&spec::cgroup_path(&id)) > 0)
            .await
            .unwrap_or(false)
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.freezer(id, true).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.freezer(id, false).await
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let entries = std::fs::read_dir(&self.state_root).map_err(RuntimeError::io(format!(
            "cannot list {}",
            self.state_root.display()
        )))?;
        Ok(entries
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_count_of_either_hierarchy() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(v1), 2);
        assert_eq!(oom_kill_count(v2), 1);
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
        assert_eq!(oom_kills(Path::new("/sbx/no-such-sandbox")), 0);
    }
}
