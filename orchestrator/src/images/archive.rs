//! Reading an image archive: what `docker save` writes, or an OCI image
//! layout, as one tar.
//!
//! The archive is unpacked into a staging directory first (its blobs are
//! addressed by name, in any order, so a stream cannot be applied as it
//! arrives), then its manifest read, and every blob checked against its
//! digest before anything is built from it. Names in the archive are
//! untrusted: only regular files and directories with plain relative names
//! are taken, and made under the staging directory with `create_new`, so
//! no entry can land outside it or write through a link.

use super::ImageError;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// How deep an archive's names go: `blobs/sha256/<hex>` is the deepest a
/// well-formed one needs.
const MAX_DEPTH: usize = 3;

fn invalid(message: impl Into<String>) -> ImageError {
    ImageError::Invalid(message.into())
}

/// How a layer blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer of an unpacked archive, bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// The blob in the staging directory.
    pub path: PathBuf,
    pub compression: Compression,
    /// `sha256:<hex>` of the uncompressed tar (the config's `diff_ids`),
    /// which names the layer whatever its compression.
    pub diff_id: String,
}

/// An unpacked, verified image archive.
#[derive(Debug)]
pub struct Archive {
    pub layers: Vec<LayerBlob>,
    pub config: ImageConfiguration,
    /// `sha256:<hex>` of the config blob: the image's id.
    pub config_digest: String,
    /// The names the archive gives the image (`RepoTags`, or the OCI
    /// `org.opencontainers.image.ref.name` annotation).
    pub names: Vec<String>,
}

/// Unpacks the archive `tar` into `staging` (an empty directory of ours)
/// and reads it.
pub fn unpack(tar: impl Read, staging: &Path) -> Result<Archive, ImageError> {
    extract(tar, staging)?;
    read(staging)
}

/// Reads and checks the image laid out in `staging`: an unpacked archive,
/// or an OCI layout a registry pull wrote.
pub fn read(staging: &Path) -> Result<Archive, ImageError> {
    if staging.join("index.json").is_file() && staging.join("oci-layout").is_file() {
        read_oci_layout(staging)
    } else if staging.join("manifest.json").is_file() {
        read_docker_save(staging)
    } else {
        Err(invalid(
            "neither an OCI image layout (oci-layout, index.json) nor docker save output (manifest.json)",
        ))
    }
}

/// Writes the archive's files under `staging`, refusing any name that is
/// not plain and relative, and anything but files and directories.
fn extract(tar: impl Read, staging: &Path) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(tar);
    // The archive is a file of ours by now: what cannot be read of it is
    // malformed.
    let malformed = |err: std::io::Error| invalid(format!("not a tar archive: {err}"));
    let entries = archive.entries().map_err(malformed)?;
    for entry in entries {
        let mut entry = entry.map_err(malformed)?;
        let raw = entry
            .path()
            .map_err(ImageError::io("an archive entry's name"))?
            .into_owned();
        let mut relative = PathBuf::new();
        for component in raw.components() {
            match component {
                Component::Normal(name) => relative.push(name),
                Component::CurDir => {}
                _ => {
                    return Err(invalid(format!(
                        "archive entry {raw:?} is not a plain relative name"
                    )))
                }
            }
        }
        if relative.components().count() > MAX_DEPTH {
            return Err(invalid(format!(
                "archive entry {raw:?} is deeper than an image archive's"
            )));
        }
        let target = staging.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(ImageError::io(format!("cannot make {}", target.display())))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(ImageError::io(format!("cannot make {}", parent.display())))?;
            }
            let mut file = File::options()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(ImageError::io(format!("cannot write {}", target.display())))?;
            std::io::copy(&mut entry, &mut file)
                .map_err(ImageError::io(format!("cannot write {}", target.display())))?;
        }
        // Symlinks (docker save links repeated layers) and the rest are not
        // needed: every blob is read by its own name.
    }
    Ok(())
}

/// `sha256:<hex>` of the file at `path`.
fn sha256_of(path: &Path) -> Result<String, ImageError> {
    let mut file = BufReader::new(
        File::open(path).map_err(ImageError::io(format!("cannot read {}", path.display())))?,
    );
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(ImageError::io(format!("cannot read {}", path.display())))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// The compression of the blob at `path`, from its magic bytes.
fn compression_of(path: &Path) -> Result<Compression, ImageError> {
    let mut magic = [0u8; 4];
    let mut file =
        File::open(path).map_err(ImageError::io(format!("cannot read {}", path.display())))?;
    let read = file
        .read(&mut magic)
        .map_err(ImageError::io(format!("cannot read {}", path.display())))?;
    Ok(match &magic[..read] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

/// The blob `digest` (`sha256:<hex>`) of an OCI layout, checked.
fn oci_blob(staging: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("unsupported digest {digest:?} (sha256 only)")))?;
    let path = staging.join("blobs").join("sha256").join(hex);
    let actual = sha256_of(&path)?;
    if actual != digest {
        return Err(invalid(format!(
            "blob {digest} holds {actual}: the archive is corrupt"
        )));
    }
    Ok(path)
}

fn read_oci_layout(staging: &Path) -> Result<Archive, ImageError> {
    let index = ImageIndex::from_file(staging.join("index.json"))
        .map_err(|err| invalid(format!("index.json: {err}")))?;
    let Some(descriptor) = index.manifests().first() else {
        return Err(invalid("index.json lists no manifest"));
    };
    let names = descriptor
        .annotations()
        .as_ref()
        .and_then(|annotations| annotations.get("org.opencontainers.image.ref.name"))
        .cloned()
        .into_iter()
        .collect();
    let manifest_path = oci_blob(staging, descriptor.digest().as_ref())?;
    let manifest = ImageManifest::from_file(&manifest_path)
        .map_err(|err| invalid(format!("the manifest: {err}")))?;
    let config_digest = manifest.config().digest().to_string();
    let config_path = oci_blob(staging, &config_digest)?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|err| invalid(format!("the image config: {err}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(format!(
            "the manifest lists {} layers and the config {}",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let path = oci_blob(staging, layer.digest().as_ref())?;
        layers.push(LayerBlob {
            compression: compression_of(&path)?,
            path,
            diff_id: diff_id.clone(),
        });
    }
    Ok(Archive {
        layers,
        config,
        config_digest,
        names,
    })
}

/// One image in `docker save`'s `manifest.json`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file `docker save` names, which must be inside the staging dir.
fn saved_file(staging: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let plain = Path::new(name)
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if !plain {
        return Err(invalid(format!("manifest.json names {name:?}")));
    }
    Ok(staging.join(name))
}

fn read_docker_save(staging: &Path) -> Result<Archive, ImageError> {
    let manifest = File::open(staging.join("manifest.json"))
        .map_err(ImageError::io("cannot read manifest.json"))?;
    let images: Vec<SavedImage> = serde_json::from_reader(BufReader::new(manifest))
        .map_err(|err| invalid(format!("manifest.json: {err}")))?;
    let [image] = images.as_slice() else {
        return Err(invalid(format!(
            "the archive holds {} images; import one at a time",
            images.len()
        )));
    };
    let config_path = saved_file(staging, &image.config)?;
    let config_digest = sha256_of(&config_path)?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|err| invalid(format!("the image config: {err}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.layers.len() {
        return Err(invalid(format!(
            "manifest.json lists {} layers and the config {}",
            image.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (name, diff_id) in image.layers.iter().zip(diff_ids) {
        let path = saved_file(staging, name)?;
        let compression = compression_of(&path)?;
        // docker save writes layers uncompressed: their digest is the
        // diff id. (A compressed one is checked as it is applied.)
        if compression == Compression::None {
            let actual = sha256_of(&path)?;
            if &actual != diff_id {
                return Err(invalid(format!(
                    "layer {name} holds {actual}, the config says {diff_id}: the archive is corrupt"
                )));
            }
        }
        layers.push(LayerBlob {
            path,
            compression,
            diff_id: diff_id.clone(),
        });
    }
    Ok(Archive {
        layers,
        config,
        config_digest,
        names: image.repo_tags.clone().unwrap_or_default(),
    })
}
