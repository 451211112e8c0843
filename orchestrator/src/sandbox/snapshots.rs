//! Snapshots, fork, restore, and sandboxes made from a snapshot.
//!
//! What a sandbox is, beyond its record, is its disk: an image file holding
//! its writable layer ([`crate::runtime::Disks`]), alone in a volume of its
//! own. So each of these is a copy of that volume, and on the btrfs pool a
//! snapshot of its subvolume: milliseconds, whatever the disk holds,
//! sharing blocks until either side writes them.
//!
//! A copy is consistent: a running sandbox is frozen for the instant of
//! the copy (its processes write nothing), and its filesystem synced first
//! (what they wrote reaches the image file). A stopped sandbox's disk is not
//! mounted, so it is copied as it is.
//!
//! - **snapshot**: the disk copied to `<data-dir>/snapshots/<name>/`,
//!   recorded once complete. It pins the image build the disk sits on.
//! - **create from a snapshot**, and **fork**: new sandboxes whose disks
//!   are copies, started with `keep_disk`. A fork of N freezes its source
//!   for one copy, into the first fork's directory; the other forks copy
//!   that disk (not in use yet, so consistent) and each starts as soon as
//!   its copy is there, the first last. The source is frozen for about
//!   10 ms however many forks, and copies overlap starts.
//! - **restore**: the sandbox stopped, its disk replaced by a copy of the
//!   snapshot's (copied aside, then renamed into place), and started again
//!   if it was running: the same id, token, limits and policy, on the
//!   snapshot's files.

use super::events::Detail;
use super::storage::{allocated, snapshot_image, snapshot_volume};
use super::{new_id, Manager, SandboxError};
use crate::runtime::Feature;
use crate::store::{SandboxRecord, SnapshotRecord};
use chrono::Utc;
use sbx_api::{EventKind, Sandbox, SandboxState, Snapshot};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

impl Manager {
    /// Snapshots a sandbox's filesystem as `name`.
    pub async fn snapshot(
        self: &Arc<Self>,
        id: &str,
        name: &str,
    ) -> Result<Snapshot, SandboxError> {
        sbx_api::validate_snapshot_name(name).map_err(SandboxError::InvalidRequest)?;
        let (manager, id, name) = (Arc::clone(self), id.to_owned(), name.to_owned());
        super::detached(async move {
            let _op = manager.ops.lock(&id).await;
            let snapshot = manager.snapshot_locked(&id, &name).await?;
            manager
                .events
                .emit(&id, EventKind::Snapshot, Detail::about(&name))
                .await;
            manager.snapshot_view(snapshot).await
        })
        .await
    }

    async fn snapshot_locked(&self, id: &str, name: &str) -> Result<SnapshotRecord, SandboxError> {
        let record = self.record(id).await?;
        let disk_mb = self.copyable(&record)?;
        let key = name.to_owned();
        if self
            .db(move |store| store.get_snapshot(&key))
            .await?
            .is_some()
        {
            return Err(SandboxError::Conflict(format!(
                "a snapshot named {name} exists"
            )));
        }
        let snapshot = SnapshotRecord {
            name: name.to_owned(),
            sandbox_id: id.to_owned(),
            image: record.sandbox.image.clone(),
            image_build: self.image_build(&record)?,
            disk_mb,
            created_at: Utc::now(),
        };
        let target = snapshot_volume(&self.config.snapshots_dir, &snapshot);
        let staging = staging_path(&target);
        let _admission = self.admissions.lock().await;
        let disk = self.dir(id).disk_image();
        self.admit("the snapshot", allocated(&disk)).await?;
        self.copy_consistent(&record, std::slice::from_ref(&staging))
            .await?;
        let stored = snapshot.clone();
        let finish = move |store: &crate::store::Store| {
            if !store.insert_snapshot(&stored)? {
                return Ok(false);
            }
            Ok(true)
        };
        if !self.db(finish).await? {
            remove_volume(&staging);
            return Err(SandboxError::Conflict(format!(
                "a snapshot named {name} exists"
            )));
        }
        std::fs::rename(&staging, &target).map_err(|source| SandboxError::Io {
            context: format!(
                "cannot rename {} to {}",
                staging.display(),
                target.display()
            ),
            source,
        })?;
        tracing::info!(%id, snapshot = %name, "snapshot taken");
        Ok(snapshot)
    }

    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, SandboxError> {
        let mut views = Vec::new();
        for snapshot in self.db(|store| store.list_snapshots()).await? {
            views.push(self.snapshot_view(snapshot).await?);
        }
        Ok(views)
    }

    pub async fn get_snapshot(&self, name: &str) -> Result<Snapshot, SandboxError> {
        let snapshot = self.snapshot_record(name).await?;
        self.snapshot_view(snapshot).await
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<(), SandboxError> {
        let snapshot = self.snapshot_record(name).await?;
        let key = name.to_owned();
        if !self.db(move |store| store.remove_snapshot(&key)).await? {
            return Err(SandboxError::SnapshotNotFound(name.to_owned()));
        }
        remove_volume(&snapshot_volume(&self.config.snapshots_dir, &snapshot));
        tracing::info!(snapshot = %name, "snapshot deleted");
        Ok(())
    }

    async fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord, SandboxError> {
        if sbx_api::validate_snapshot_name(name).is_err() {
            return Err(SandboxError::SnapshotNotFound(name.to_owned()));
        }
        let key = name.to_owned();
        self.db(move |store| store.get_snapshot(&key))
            .await?
            .ok_or_else(|| SandboxError::SnapshotNotFound(name.to_owned()))
    }

    async fn snapshot_view(&self, snapshot: SnapshotRecord) -> Result<Snapshot, SandboxError> {
        let image = snapshot_image(&self.config.snapshots_dir, &snapshot);
        Ok(Snapshot {
            size_bytes: allocated(&image),
            name: snapshot.name,
            sandbox_id: snapshot.sandbox_id,
            image: snapshot.image,
            disk_mb: snapshot.disk_mb,
            created_at: snapshot.created_at,
        })
    }

    /// Makes `count` new running sandboxes, each with a copy of `id`'s
    /// filesystem as it is now, and the same image, limits, environment,
    /// policy, labels and lifecycle. One result per fork.
    pub async fn fork(
        self: &Arc<Self>,
        id: &str,
        count: u32,
    ) -> Result<Vec<Result<Sandbox, SandboxError>>, SandboxError> {
        let (manager, id) = (Arc::clone(self), id.to_owned());
        super::detached(async move {
            let (records, build) = {
                let _op = manager.ops.lock(&id).await;
                manager.prepare_forks(&id, count).await?
            };
            // The first fork's disk is the consistent copy; the others are
            // copied from it, each fork starting as soon as its disk is
            // there, and the first last (nothing copies from a disk in use).
            let first_disk = manager.dir(&records[0].sandbox.id).disk_volume();
            let mut launches = Vec::with_capacity(records.len());
            let mut records = records.into_iter();
            let first = records.next().expect("at least one fork");
            for record in records {
                let disk = manager.dir(&record.sandbox.id).disk_volume();
                let copied = manager.copy_volume(&first_disk, &disk).await;
                launches.push(tokio::spawn(Arc::clone(&manager).launch_fork(
                    record,
                    build.clone(),
                    copied,
                )));
            }
            launches.insert(
                0,
                tokio::spawn(Arc::clone(&manager).launch_fork(first, build, Ok(()))),
            );
            let mut outcomes = Vec::with_capacity(launches.len());
            for launch in launches {
                let outcome = launch.await.map_err(|err| SandboxError::Io {
                    context: "a fork's start".into(),
                    source: std::io::Error::other(err.to_string()),
                })?;
                if let Ok(fork) = &outcome {
                    manager
                        .events
                        .emit(&id, EventKind::Forked, Detail::about(&fork.id))
                        .await;
                }
                outcomes.push(outcome);
            }
            Ok(outcomes)
        })
        .await
    }

    /// Admits and records `count` forks of `id` (as `creating`, so that a
    /// server killed from here on leaves records that recovery cleans up)
    /// and copies the source's disk, consistently, into the first fork's
    /// directory. Returns the records and the image build they start on.
    async fn prepare_forks(
        &self,
        id: &str,
        count: u32,
    ) -> Result<(Vec<SandboxRecord>, PathBuf), SandboxError> {
        if count == 0 {
            return Err(SandboxError::InvalidRequest(
                "a fork of no sandboxes".into(),
            ));
        }
        let source = self.record(id).await?;
        let disk_mb = self.copyable(&source)?;
        let build = self.image_build(&source)?;
        let records: Vec<SandboxRecord> = (0..count)
            .map(|_| {
                let mut record = source.clone();
                record.sandbox.id = new_id();
                record.sandbox.state = SandboxState::Creating;
                record.sandbox.created_at = Utc::now();
                record.sandbox.ended_reason = None;
                record.sandbox.expires_at = super::expiry(&record.sandbox.lifecycle);
                record.image_build = Some(build.clone());
                record.ended_at = None;
                record.pooled = false;
                record
            })
            .collect();
        let inserted = {
            let _admission = self.admissions.lock().await;
            self.admit(
                &format!("{count} forks"),
                (disk_mb << 20).saturating_mul(u64::from(count)),
            )
            .await?;
            let inserted = records.clone();
            self.db(move |store| inserted.iter().try_for_each(|record| store.insert(record)))
                .await
        };
        let prepared = async {
            inserted?;
            for record in &records {
                let dir = self.dir(&record.sandbox.id);
                let dir = dir.path();
                std::fs::create_dir_all(dir).map_err(|source| SandboxError::Io {
                    context: format!("cannot create {}", dir.display()),
                    source,
                })?;
            }
            self.copy_consistent(&source, &[self.dir(&records[0].sandbox.id).disk_volume()])
                .await
        }
        .await;
        if let Err(err) = prepared {
            for record in &records {
                if let Err(cleanup) = self.bounded_teardown(&record.sandbox.id, false).await {
                    tracing::error!(id = %record.sandbox.id, error = %cleanup, "cannot clean up a fork");
                }
            }
            return Err(err);
        }
        Ok((records, build))
    }

    /// Starts a fork whose disk was `copied` (or cleans it up if it was
    /// not): each fork's outcome is its own.
    async fn launch_fork(
        self: Arc<Self>,
        record: SandboxRecord,
        build: PathBuf,
        copied: Result<(), SandboxError>,
    ) -> Result<Sandbox, SandboxError> {
        if let Err(err) = copied {
            let id = &record.sandbox.id;
            if let Err(cleanup) = self.bounded_teardown(id, false).await {
                tracing::error!(%id, error = %cleanup, "cannot clean up a fork");
                self.transition(id, super::Transition::TeardownFailed)
                    .await?;
            }
            return Err(err);
        }
        self.launch_inserted(record, build, true).await
    }

    /// Rolls `id` back to `snapshot` in place (see the module docs).
    pub async fn restore(
        self: &Arc<Self>,
        id: &str,
        snapshot: &str,
    ) -> Result<Sandbox, SandboxError> {
        let (manager, id, name) = (Arc::clone(self), id.to_owned(), snapshot.to_owned());
        super::detached(async move {
            let _op = manager.ops.lock(&id).await;
            let snapshot = manager.snapshot_record(&name).await?;
            let record = manager.record(&id).await?;
            manager.copyable(&record)?;
            let was = record.sandbox.state;
            if !matches!(
                was,
                SandboxState::Running | SandboxState::Paused | SandboxState::Stopped
            ) {
                return Err(manager.wrong_state(&id, was));
            }
            let why = format!("restoring snapshot {name}");
            manager.stop_locked(&id, why).await?;
            let disk = manager.dir(&id).disk_volume();
            let staging = staging_path(&disk);
            let from = snapshot_volume(&manager.config.snapshots_dir, &snapshot);
            manager.copy_volume(&from, &staging).await?;
            // The new source is recorded with the staged disk's name, then
            // the disk renamed into place: a server killed between the two
            // finishes the rename at recovery, so the record and the disk
            // never disagree (a restore may change the image).
            let (key, image, build, disk_mb) = (
                id.clone(),
                snapshot.image.clone(),
                snapshot.image_build.clone(),
                snapshot.disk_mb,
            );
            let staged = file_name(&staging);
            manager
                .db(move |store| store.set_disk_source(&key, &image, &build, disk_mb, &staged))
                .await?;
            manager.finish_restore(&id, &staging).await?;
            if was != SandboxState::Stopped {
                manager.start_locked(&id).await?;
            }
            tracing::info!(%id, snapshot = %name, "sandbox restored");
            manager
                .events
                .emit(&id, EventKind::Restored, Detail::about(&name))
                .await;
            manager.get(&id).await
        })
        .await
    }

    /// Moves a restore's staged disk into place, if it is not already,
    /// records that the restore is done, and removes the disk it replaced.
    /// Run by the restore, and again at recovery for one that a killed
    /// server left half-done.
    ///
    /// A volume cannot be renamed over another, so the old one is first
    /// renamed aside (to a staging name too): while the staged volume is
    /// there, the volume in place, if any, is the old one; once it is
    /// gone, the restore is in place. Each step is one rename, and every
    /// point between them leaves a state this finishes from.
    pub(super) async fn finish_restore(
        &self,
        id: &str,
        staging: &Path,
    ) -> Result<(), SandboxError> {
        let disk = self.dir(id).disk_volume();
        let replaced = replaced_path(staging);
        let rename = |from: &Path, to: &Path| {
            std::fs::rename(from, to).map_err(|source| SandboxError::Io {
                context: format!("cannot rename {} to {}", from.display(), to.display()),
                source,
            })
        };
        if staging.exists() {
            if disk.exists() {
                rename(&disk, &replaced)?;
            }
            rename(staging, &disk)?;
        }
        let key = id.to_owned();
        self.db(move |store| store.finish_restore(&key)).await?;
        let removed = tokio::task::spawn_blocking(move || remove_volume(&replaced));
        let _ = removed.await;
        Ok(())
    }

    /// The record and disk of a new sandbox made from `snapshot`, for
    /// create: its disk is copied into its directory.
    pub(crate) async fn copy_snapshot_into(
        &self,
        record: &mut SandboxRecord,
        snapshot: &str,
    ) -> Result<PathBuf, SandboxError> {
        let snapshot = self.snapshot_record(snapshot).await?;
        record.sandbox.image = snapshot.image.clone();
        record.sandbox.disk_mb = Some(snapshot.disk_mb);
        record.image_build = Some(snapshot.image_build.clone());
        let dir = self.dir(&record.sandbox.id);
        std::fs::create_dir_all(dir.path()).map_err(|source| SandboxError::Io {
            context: format!("cannot create {}", dir.path().display()),
            source,
        })?;
        let from = snapshot_volume(&self.config.snapshots_dir, &snapshot);
        self.copy_volume(&from, &dir.disk_volume()).await?;
        Ok(snapshot.image_build)
    }

    /// The sandbox's `disk_mb`, when its disk can be copied: it has a disk
    /// of its own and is in a state with a consistent one.
    fn copyable(&self, record: &SandboxRecord) -> Result<u64, SandboxError> {
        self.supported(Feature::Snapshot)?;
        let id = &record.sandbox.id;
        let Some(disk_mb) = record.sandbox.disk_mb else {
            let why = self
                .runtime
                .isolation()
                .disk_quota
                .err()
                .unwrap_or_else(|| "the sandbox has no disk of its own".into());
            return Err(SandboxError::Conflict(format!(
                "sandbox {id} cannot be copied: {why}"
            )));
        };
        match record.sandbox.state {
            SandboxState::Running | SandboxState::Paused | SandboxState::Stopped => Ok(disk_mb),
            state => Err(self.wrong_state(id, state)),
        }
    }

    /// Copies the sandbox's disk to each of `targets`, consistently: a
    /// running sandbox is frozen and its filesystem synced around the copy.
    async fn copy_consistent(
        &self,
        record: &SandboxRecord,
        targets: &[PathBuf],
    ) -> Result<(), SandboxError> {
        let id = &record.sandbox.id;
        let running = record.sandbox.state == SandboxState::Running;
        let mounted = record.sandbox.state != SandboxState::Stopped;
        if running {
            self.runtime
                .pause(id)
                .await
                .map_err(SandboxError::runtime(id))?;
        }
        let copied = async {
            if mounted {
                let pid = self
                    .runtime
                    .init_pid(id)
                    .await
                    .map_err(SandboxError::runtime(id))?;
                let pid = pid.ok_or_else(|| self.wrong_state(id, SandboxState::Failed))?;
                sync_root_filesystem(pid).await?;
            }
            let disk = self.dir(id).disk_volume();
            for target in targets {
                self.copy_volume(&disk, target).await?;
            }
            Ok::<_, SandboxError>(())
        }
        .await;
        if running {
            self.runtime
                .resume(id)
                .await
                .map_err(SandboxError::runtime(id))?;
        }
        if copied.is_err() {
            for target in targets {
                remove_volume(target);
            }
        }
        copied
    }

    /// Copies the disk volume `from` to `to`
    /// ([`crate::runtime::Disks::copy_volume`]), off
    /// the async workers.
    async fn copy_volume(&self, from: &Path, to: &Path) -> Result<(), SandboxError> {
        let disks = Arc::clone(&self.disks);
        let (from, to) = (from.to_owned(), to.to_owned());
        let context = format!("copying {}", from.display());
        tokio::task::spawn_blocking(move || disks.copy_volume(&from, &to))
            .await
            .map_err(|err| SandboxError::Io {
                context,
                source: std::io::Error::other(err.to_string()),
            })?
            .map_err(|source| SandboxError::Runtime {
                id: "(disk copy)".into(),
                source,
            })
    }
}

/// The last part of `path`.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A name beside `target` to copy into before renaming over it.
fn staging_path(target: &Path) -> PathBuf {
    let name = file_name(target);
    target.with_file_name(format!(".{name}.{:08x}.tmp", rand::random::<u32>()))
}

/// Where [`Manager::finish_restore`] moves the disk that `staging`
/// replaces: a staging name too, so that recovery removes it if the
/// restore cannot.
fn replaced_path(staging: &Path) -> PathBuf {
    let name = file_name(staging);
    let stem = name.strip_suffix(".tmp").unwrap_or(&name);
    staging.with_file_name(format!("{stem}.replaced.tmp"))
}

/// Removes a disk volume (a subvolume goes with `rmdir` once empty, which
/// `remove_dir_all` does last), or a file left where one was expected.
/// Best effort: what it cannot remove is only space, and logged.
pub(super) fn remove_volume(path: &Path) {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a disk volume");
        }
        _ => {}
    }
}

/// Whether `name` (beside `target`) is one of [`staging_path`]'s.
pub(super) fn is_staging_name(target: &Path, name: &str) -> bool {
    name.strip_prefix(&format!(".{}.", file_name(target)))
        .is_some_and(|rest| rest.ends_with(".tmp"))
}

/// Flushes what a sandbox wrote to its filesystem down to its disk image:
/// `syncfs` on the root of its init (an overlay, whose sync reaches the
/// upper layer on the disk). Opened through `/proc/<pid>/root`, the root
/// of the sandbox's own mount namespace, which no path inside can
/// redirect.
async fn sync_root_filesystem(pid: i32) -> Result<(), SandboxError> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    tokio::task::spawn_blocking(move || {
        let dir = std::fs::File::open(&root)?;
        // SAFETY: `dir` is an open descriptor for the call's duration.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
    .await
    .map_err(|err| std::io::Error::other(err.to_string()))
    .and_then(|synced| synced)
    .map_err(|source| SandboxError::Io {
        context: format!("cannot sync the filesystem of pid {pid}"),
        source,
    })
}
