//! Data dirs that older versions of sbx wrote: their disks are moved into
//! the current layout at recovery, so that sandboxes and snapshots survive
//! an upgrade.
//!
//! Before disk volumes ([`crate::runtime::Disks::new_volume`]), a sandbox's
//! disk was `sandboxes/<id>/disk.img` and a snapshot's
//! `snapshots/<name>.img`. Each such file is renamed into a plain
//! directory in its place: a volume too, though not a subvolume, so its
//! copies are reflinks of the file rather than snapshots until a restore
//! replaces it. A rename, not a copy: the disk of a running sandbox,
//! attached to its loop device, keeps its inode and so every write. A
//! server killed between making the directory and the rename leaves the
//! file beside it, and the next start renames it then.

use super::{Manager, SandboxError};
use crate::runtime::DISK_IMAGE;
use std::path::Path;

impl Manager {
    /// Moves every disk in the old layout into a volume (see the module
    /// docs). Runs before recovery reads the disks.
    pub(super) fn adopt_legacy_disks(&self) -> Result<(), SandboxError> {
        let io = |dir: &Path| {
            let context = format!("cannot list {}", dir.display());
            move |source| SandboxError::Io { context, source }
        };
        let sandboxes = &self.config.sandboxes_dir;
        for entry in std::fs::read_dir(sandboxes)
            .map_err(io(sandboxes))?
            .flatten()
        {
            let dir = entry.path();
            adopt(&dir.join(DISK_IMAGE), &dir.join("disk"))?;
        }
        let snapshots = &self.config.snapshots_dir;
        for entry in std::fs::read_dir(snapshots)
            .map_err(io(snapshots))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(snapshot) = name.strip_suffix(".img").filter(|n| !n.starts_with('.')) {
                adopt(&entry.path(), &snapshots.join(snapshot))?;
            }
        }
        Ok(())
    }
}

/// Renames the disk image `legacy`, if it is a file, into the directory
/// `volume` (see the module docs).
fn adopt(legacy: &Path, volume: &Path) -> Result<(), SandboxError> {
    if !std::fs::symlink_metadata(legacy).is_ok_and(|meta| meta.is_file()) {
        return Ok(());
    }
    tracing::info!(disk = %legacy.display(), "moving a disk into a volume");
    let image = volume.join(DISK_IMAGE);
    std::fs::create_dir_all(volume)
        .and_then(|()| std::fs::rename(legacy, &image))
        .map_err(|source| SandboxError::Io {
            context: format!("cannot move {} to {}", legacy.display(), image.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_legacy_disk_moves_into_its_volume_with_its_inode() {
        let data = tempfile::tempdir().expect("tempdir");
        let (legacy, volume) = (data.path().join(DISK_IMAGE), data.path().join("disk"));
        std::fs::write(&legacy, "the files").expect("write");
        let inode = std::fs::metadata(&legacy).expect("stat").ino();
        // Killed once after making the directory: the next start finishes.
        std::fs::create_dir(&volume).expect("mkdir");
        adopt(&legacy, &volume).expect("adopted");
        let image = volume.join(DISK_IMAGE);
        assert_eq!(std::fs::read_to_string(&image).expect("moved"), "the files");
        assert_eq!(std::fs::metadata(&image).expect("stat").ino(), inode);
        assert!(!legacy.exists());
        adopt(&legacy, &volume).expect("nothing to do");
        assert_eq!(std::fs::read_to_string(&image).expect("kept"), "the files");
    }
}
