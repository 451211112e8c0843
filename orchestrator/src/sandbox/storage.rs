//! Disk space accounting: what the storage pool has promised, so that no
//! create, start, fork or snapshot can promise more than it holds.
//!
//! Disks are thin (see `runtime::disk`): a sandbox's `disk_mb` is a limit,
//! not an allocation. Were the promises to add up past the pool, sandboxes
//! filling their disks would fill the pool, and then every sandbox's writes
//! would fail with EIO: one tenant would take down its neighbours. So the
//! manager keeps the promises within `pool × overcommit`:
//!
//! - a sandbox that can write (creating, running, paused, starting,
//!   stopping) is promised its whole `disk_mb`;
//! - a stopped or failed sandbox, and a snapshot, cannot grow: each is
//!   promised what its image file holds now (shared blocks counted in
//!   full, which can only overstate).
//!
//! With the default overcommit of 1.0 the pool cannot fill. A host that
//! wants more sandboxes than its pool can back in full raises it
//! (`sbx serve --disk-overcommit`), knowing what it trades. The pool is the
//! data dir's filesystem, which this server is assumed to have to itself.

use super::{Manager, SandboxError};
use crate::runtime::{SandboxDir, DISK_IMAGE as IMAGE};
use crate::store::SnapshotRecord;
use sbx_api::SandboxState;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The pool's size and use, and what is promised out of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Storage {
    pub pool_bytes: u64,
    pub used_bytes: u64,
    pub promised_bytes: u64,
    pub overcommit: f64,
}

impl Storage {
    /// The most that may be promised.
    pub fn capacity(&self) -> u64 {
        (self.pool_bytes as f64 * self.overcommit) as u64
    }
}

/// Bytes a file holds on disk (0 when it is missing).
pub(crate) fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.blocks() * 512)
}

/// Whether a sandbox in `state` can write to its disk.
fn can_grow(state: SandboxState) -> bool {
    use SandboxState::*;
    matches!(state, Creating | Running | Paused | Starting | Stopping)
}

impl Manager {
    /// Reads the pool and adds up the promises, off the async workers.
    pub async fn storage(&self) -> Result<Storage, SandboxError> {
        let disks = self.db(|store| store.disks()).await?;
        let snapshots = self.db(|store| store.list_snapshots()).await?;
        let sandboxes_dir = self.config.sandboxes_dir.clone();
        let snapshots_dir = self.config.snapshots_dir.clone();
        let overcommit = self.config.disk_overcommit;
        let measured = tokio::task::spawn_blocking(move || {
            let pool =
                nix::sys::statvfs::statvfs(&sandboxes_dir).map_err(|errno| SandboxError::Io {
                    context: format!("cannot statvfs {}", sandboxes_dir.display()),
                    source: errno.into(),
                })?;
            let block = pool.fragment_size();
            let pool_bytes = pool.blocks() * block;
            let used_bytes = pool_bytes.saturating_sub(pool.blocks_free() * block);
            let sandboxes: u64 = disks
                .iter()
                .map(|(id, state, disk_mb)| {
                    if can_grow(*state) {
                        disk_mb << 20
                    } else {
                        allocated(&SandboxDir::new(sandboxes_dir.join(id)).disk_image())
                    }
                })
                .sum();
            let held: u64 = snapshots
                .iter()
                .map(|snapshot| allocated(&snapshot_image(&snapshots_dir, snapshot)))
                .sum();
            Ok::<_, SandboxError>(Storage {
                pool_bytes,
                used_bytes,
                promised_bytes: sandboxes + held,
                overcommit,
            })
        });
        measured.await.map_err(|err| SandboxError::Io {
            context: "measuring the storage pool".into(),
            source: std::io::Error::other(err.to_string()),
        })?
    }

    /// Refuses (507) when promising `more` bytes would take the promises
    /// past the pool's capacity. The caller holds `admissions` until what
    /// it admitted is recorded, so two admissions cannot both take the
    /// last of the room.
    pub(crate) async fn admit(&self, what: &str, more: u64) -> Result<(), SandboxError> {
        if more == 0 {
            return Ok(());
        }
        let storage = self.storage().await?;
        let wanted = storage.promised_bytes.saturating_add(more);
        if wanted > storage.capacity() {
            return Err(SandboxError::InsufficientStorage(format!(
                "{what} needs {} MiB of the storage pool, and {} MiB of its {} MiB (× {} \
                 overcommit) are promised already",
                more >> 20,
                storage.promised_bytes >> 20,
                storage.pool_bytes >> 20,
                storage.overcommit,
            )));
        }
        Ok(())
    }
}

/// The disk volume ([`crate::runtime::Disks::new_volume`]) a snapshot is:
/// `<data-dir>/snapshots/<name>/`.
pub(crate) fn snapshot_volume(snapshots_dir: &Path, snapshot: &SnapshotRecord) -> PathBuf {
    snapshots_dir.join(&snapshot.name)
}

/// A snapshot's disk image, in its volume.
pub(crate) fn snapshot_image(snapshots_dir: &Path, snapshot: &SnapshotRecord) -> PathBuf {
    snapshot_volume(snapshots_dir, snapshot).join(IMAGE)
}
