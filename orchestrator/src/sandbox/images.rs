//! The manager's side of images: importing or pulling one (and readying
//! it on the runtime), listing, and deleting one that nothing uses.
//!
//! An import is prepared on the runtime before it answers (the youki
//! runtime's user-namespace copy, the Docker engine's own image), so the
//! first sandbox made from it starts as fast as any later one, and a Docker
//! start never spends its timeout importing.

use super::{detached, Manager, SandboxError};
use crate::images::catalog::{Images, Import};
use crate::images::pull::{self, BlobProgress, Credentials};
use crate::store::SandboxRecord;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sbx_api::{Image, PullImageRequest, SandboxState, MAX_IMAGE_ARCHIVE_BYTES};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

impl Manager {
    pub fn images(&self) -> &Arc<Images> {
        &self.images
    }

    /// Imports the archive `body` streams (`docker save` output or an OCI
    /// layout) as `name`, or as the name the archive gives. Once the body
    /// is in, the import finishes whether or not the caller waits.
    pub async fn import_image<S, E>(
        self: &Arc<Self>,
        body: S,
        name: Option<String>,
    ) -> Result<Image, SandboxError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let images = Arc::clone(&self.images);
        let import = blocking(move || images.begin_import().map_err(SandboxError::from)).await?;
        receive(body, &import.body_path()).await?;
        let manager = Arc::clone(self);
        detached(async move { manager.publish(import, name).await }).await
    }

    /// Pulls `request.reference` from its registry, reporting each blob's
    /// progress to `progress`. Runs to its end (or undoes itself) whether
    /// or not the caller waits.
    pub async fn pull_image(
        self: &Arc<Self>,
        request: PullImageRequest,
        progress: tokio::sync::mpsc::UnboundedSender<BlobProgress>,
    ) -> Result<Image, SandboxError> {
        request.validate().map_err(SandboxError::InvalidRequest)?;
        let credentials = match (request.username, request.password, request.token) {
            (Some(username), Some(password), _) => Credentials::Basic { username, password },
            (_, _, Some(token)) => Credentials::Bearer(token),
            _ => Credentials::Anonymous,
        };
        let manager = Arc::clone(self);
        detached(async move {
            let images = Arc::clone(&manager.images);
            let import =
                blocking(move || images.begin_import().map_err(SandboxError::from)).await?;
            let fetched = pull::fetch(
                &request.reference,
                credentials,
                request.insecure,
                &import.layout_dir(),
                |blob| {
                    let _ = progress.send(blob);
                },
            )
            .await?;
            let name = request.name.unwrap_or(fetched);
            manager.publish(import, Some(name)).await
        })
        .await
    }

    /// Finishes `import` as `name` and readies it on the runtime.
    async fn publish(
        self: &Arc<Self>,
        import: Import,
        name: Option<String>,
    ) -> Result<Image, SandboxError> {
        let image = blocking(move || import.finish(name.as_deref()).map_err(Into::into)).await?;
        self.ready_image(image).await
    }

    /// Readies the image just named on the runtime (or removes its name
    /// again), then collects what it replaced, in the background: removing
    /// a replaced build walks its whole tree, seconds for a large image,
    /// which the caller need not wait for.
    pub(super) async fn ready_image(self: &Arc<Self>, image: Image) -> Result<Image, SandboxError> {
        let rootfs = self.images.rootfs(&image.name)?.ok_or_else(|| {
            SandboxError::ImageNotFound(format!("{} (removed as it was imported)", image.name))
        })?;
        if let Err(err) = self.runtime.prepare_image(&rootfs).await {
            let images = Arc::clone(&self.images);
            let name = image.name.clone();
            let _ = blocking(move || images.remove(&name).map_err(Into::into)).await;
            return Err(SandboxError::Runtime {
                id: "(image import)".into(),
                source: err,
            });
        }
        tracing::info!(image = %image.name, id = %image.id, source = ?image.source, "published an image");
        let manager = Arc::clone(self);
        tokio::spawn(async move { manager.collect_images().await }.in_current_span());
        Ok(image)
    }

    pub async fn list_images(&self) -> Result<Vec<Image>, SandboxError> {
        let images = Arc::clone(&self.images);
        blocking(move || images.list().map_err(Into::into)).await
    }

    pub async fn image(&self, name: &str) -> Result<Image, SandboxError> {
        let (images, key) = (Arc::clone(&self.images), name.to_owned());
        blocking(move || images.get(&key).map_err(Into::into))
            .await?
            .ok_or_else(|| SandboxError::ImageNotFound(name.to_owned()))
    }

    /// Deletes the image `name`, unless it is the default image or a
    /// sandbox or snapshot of this server is made from it (409); its files
    /// go once nothing else needs them.
    pub async fn delete_image(self: &Arc<Self>, name: &str) -> Result<(), SandboxError> {
        let manager = Arc::clone(self);
        let name = name.to_owned();
        detached(async move {
            let rootfs = manager
                .images
                .rootfs(&name)?
                .ok_or_else(|| SandboxError::ImageNotFound(name.clone()))?;
            let default = manager.images.rootfs(sbx_api::DEFAULT_IMAGE)?;
            if default.as_ref() == Some(&rootfs) {
                return Err(SandboxError::Conflict(format!(
                    "image {name} is the default image ({})",
                    sbx_api::DEFAULT_IMAGE
                )));
            }
            if let Some(user) = manager.image_user(&rootfs).await? {
                return Err(SandboxError::Conflict(format!(
                    "image {name} is in use by {user}"
                )));
            }
            let images = Arc::clone(&manager.images);
            blocking(move || images.remove(&name).map_err(Into::into)).await?;
            manager.collect_images().await;
            Ok(())
        })
        .await
    }

    /// A sandbox or snapshot made from the build at `rootfs`, named.
    async fn image_user(&self, rootfs: &PathBuf) -> Result<Option<String>, SandboxError> {
        let (records, snapshots) = self.image_users().await?;
        if let Some(record) = records
            .iter()
            .find(|record| record.image_build.as_ref() == Some(rootfs))
        {
            return Ok(Some(format!("sandbox {}", record.sandbox.id)));
        }
        Ok(snapshots
            .into_iter()
            .find(|(_, build)| build == rootfs)
            .map(|(name, _)| format!("snapshot {name}")))
    }

    /// The sandboxes that have a filesystem, and every snapshot with the
    /// build it sits on.
    async fn image_users(
        &self,
    ) -> Result<(Vec<SandboxRecord>, Vec<(String, PathBuf)>), SandboxError> {
        let records = self
            .db(|store| store.list())
            .await?
            .into_iter()
            .filter(|record| record.sandbox.state != SandboxState::Deleted)
            .collect();
        let snapshots = self
            .db(|store| store.list_snapshots())
            .await?
            .into_iter()
            .map(|snapshot| (snapshot.name, snapshot.image_build))
            .collect();
        Ok((records, snapshots))
    }

    /// Removes image builds, chains and copies nothing uses any more (see
    /// [`Images::collect`]). Logged, never failed: garbage can wait.
    pub(crate) async fn collect_images(&self) {
        let in_use: HashSet<PathBuf> = match self.image_users().await {
            Ok((records, snapshots)) => records
                .into_iter()
                .filter_map(|record| record.image_build)
                .chain(snapshots.into_iter().map(|(_, build)| build))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot tell which images are in use");
                return;
            }
        };
        let images = Arc::clone(&self.images);
        match blocking(move || images.collect(&in_use).map_err(Into::into)).await {
            Ok(collected) if collected != Default::default() => {
                tracing::info!(
                    builds = ?collected.builds,
                    chains = collected.chains,
                    shifted_copies = ?collected.shifted_copies,
                    "collected unused images"
                );
                for build in &collected.builds {
                    self.runtime.release_image(build).await;
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot collect unused images"),
        }
    }
}

/// Writes `body` to `path`, refusing more than
/// [`MAX_IMAGE_ARCHIVE_BYTES`].
pub(super) async fn receive<S, E>(mut body: S, path: &std::path::Path) -> Result<(), SandboxError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let io = |context: &str| {
        let context = context.to_owned();
        move |source| SandboxError::Io { context, source }
    };
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(io("cannot store the uploaded archive"))?;
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| {
            SandboxError::InvalidRequest(format!("the archive did not arrive whole: {err}"))
        })?;
        received += chunk.len() as u64;
        if received > MAX_IMAGE_ARCHIVE_BYTES {
            return Err(SandboxError::TooLarge(format!(
                "an image archive holds at most {MAX_IMAGE_ARCHIVE_BYTES} bytes"
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(io("cannot store the uploaded archive"))?;
    }
    if received == 0 {
        return Err(SandboxError::InvalidRequest("the archive is empty".into()));
    }
    file.flush()
        .await
        .map_err(io("cannot store the uploaded archive"))
}

/// Runs blocking filesystem work off the async workers.
pub(super) async fn blocking<T, F>(work: F) -> Result<T, SandboxError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SandboxError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| SandboxError::Io {
            context: "an image operation panicked".into(),
            source: std::io::Error::other(err.to_string()),
        })?
}
