//! The images dir as a catalog: which names exist, what each one's build
//! holds, importing into it and collecting what nothing uses.
//!
//! Layout, beside what `scripts/build-image` makes (`.store/<name>-<hash>`
//! builds and a `<name>` link to each):
//! - `.layers/<hex>/rootfs`: the layer store ([`LayerStore`]), one chain
//!   per layer stack any image has, shared between images;
//! - `.store/<dir name, ':' as '_'>-<id12>/{rootfs,image.json}`: an
//!   imported image's
//!   build, a snapshot of its top chain (its own, so that collecting
//!   chains never touches a sandbox's lower layer), and its record;
//! - `<dir name>`: a link to the build the name means now
//!   ([`Reference::dir_name`]); re-importing a name repoints it, and
//!   sandboxes made before keep the build they were made on;
//! - `.staging/<random>/`: an import under way (its body, the unpacked
//!   archive, the build before it is renamed in).
//!
//! What an image holds is untrusted (set-uid binaries, anything): `.layers`,
//! `.staging` and imported builds are `0700`, so no host user but root
//! reaches into them. Sandboxes see a build only as their overlay's lower
//! layer (or the engine's copy, on Docker).
//!
//! Imports hold a shared lock on `.lock` while they build and link (not
//! while their body arrives, which may take minutes); collecting holds it
//! exclusively, waiting for those to finish. So a collection never sees an
//! import half done, and a build that no name links and no sandbox of this
//! server uses is garbage. Each import also holds a lock of its own,
//! `.staging/<id>.lock` (taken before its dir is made), for as long as it
//! lives: a staging dir whose lock is free is a dead import's. Servers sharing one images dir do not see each
//! other's sandboxes: a build one of them still runs on but no name links
//! any more can be collected by another.

use super::archive;
use super::reference::Reference;
use super::store::LayerStore;
use super::ImageError;
use chrono::{DateTime, Utc};
use sbx_api::{Image, ImageConfig, ImageSource};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const LAYERS: &str = ".layers";
const STORE: &str = ".store";
const STAGING: &str = ".staging";
const IDMAPPED: &str = ".idmapped";
const LOCK: &str = ".lock";
const RECORD: &str = "image.json";
/// In a live import's staging dir: chains and builds it relies on that no
/// record names yet, one per line, which a collection keeps.
const PINS: &str = "pins";

/// The images dir.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    layers: LayerStore,
}

/// What an imported build records about itself, in `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BuildRecord {
    name: String,
    id: String,
    created_at: DateTime<Utc>,
    size_bytes: u64,
    /// The layers' diff ids, bottom first: which chains it was built of.
    diff_ids: Vec<String>,
    config: ImageConfig,
    #[serde(default)]
    skipped_devices: Vec<String>,
    /// Imported, pulled from a registry, or built.
    #[serde(default = "imported")]
    source: ImageSource,
    /// A built image's bottom chain ([`LayerStore::seed`]): its `FROM`
    /// image's files, under `diff_ids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
}

fn imported() -> ImageSource {
    ImageSource::Import
}

/// What a sandbox made from an image starts with, unless it says
/// otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// What a collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub builds: Vec<String>,
    pub chains: usize,
    pub shifted_copies: Vec<String>,
}

/// An import under way: its staging dir and the lock that says it lives,
/// both removed when it is dropped, finished or not.
#[derive(Debug)]
pub struct Import {
    images: Arc<Images>,
    staging: PathBuf,
    _alive: File,
}

impl Images {
    /// The catalog of `dir`. Its chains are btrfs subvolumes when `dir`
    /// can hold them.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(dir)
            .map_err(ImageError::io(format!("cannot make {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(ImageError::io(format!("cannot resolve {}", dir.display())))?;
        for private in [LAYERS, STAGING] {
            make_private_dir(&dir.join(private))?;
        }
        fs::create_dir_all(dir.join(STORE)).map_err(ImageError::io(format!(
            "cannot make {}/{STORE}",
            dir.display()
        )))?;
        let probe = dir
            .join(LAYERS)
            .join(format!(".probe.{}", std::process::id()));
        let subvolumes = crate::runtime::volume::create_subvolume(&probe).is_ok();
        let _ = fs::remove_dir(&probe);
        Ok(Self {
            layers: LayerStore::new(dir.join(LAYERS), subvolumes),
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root filesystem image `name` means now, resolved (it pins the
    /// build): `name` itself, else `name:latest`. `None` when no image has
    /// the name.
    pub fn rootfs(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        Ok(match self.link_of(name)? {
            Some(link) => link.join("rootfs").canonicalize().ok(),
            None => None,
        })
    }

    /// The link `name` (or `name:latest`) is under, if one exists.
    fn link_of(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        let reference = Reference::parse(name).map_err(ImageError::Invalid)?;
        let exact = self.dir.join(reference.dir_name());
        let tagged = self.dir.join(reference.with_default_tag().dir_name());
        Ok([exact, tagged]
            .into_iter()
            .find(|link| link.join("rootfs").is_dir()))
    }

    /// Every image with a name, by name.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = Vec::new();
        for (link, _) in self.links()? {
            if let Some(image) = self.describe(&link) {
                images.push(image);
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image `name` means now.
    pub fn get(&self, name: &str) -> Result<Option<Image>, ImageError> {
        Ok(self.link_of(name)?.and_then(|link| self.describe(&link)))
    }

    /// The image behind the link at `link`.
    fn describe(&self, link: &Path) -> Option<Image> {
        let build = link.canonicalize().ok()?;
        if !build.join("rootfs").is_dir() {
            return None;
        }
        let link_name = link.file_name()?.to_string_lossy().replace('+', "/");
        Some(match read_record(&build) {
            Some(record) => Image {
                name: link_name,
                id: record.id,
                source: record.source,
                created_at: record.created_at,
                size_bytes: Some(record.size_bytes),
                layers: u32::try_from(record.diff_ids.len()).ok(),
                config: record.config,
                skipped_devices: record.skipped_devices,
            },
            None => {
                let build_name = build.file_name()?.to_string_lossy().into_owned();
                let hash = build_name.rsplit_once('-').map_or("", |(_, hash)| hash);
                let modified = fs::metadata(&build).and_then(|meta| meta.modified()).ok()?;
                Image {
                    name: link_name,
                    id: format!("recipe:{hash}"),
                    source: ImageSource::Recipe,
                    created_at: modified.into(),
                    size_bytes: None,
                    layers: None,
                    config: ImageConfig::default(),
                    skipped_devices: Vec::new(),
                }
            }
        })
    }

    /// Every name link in the dir, with the build it points at.
    fn links(&self) -> Result<Vec<(PathBuf, PathBuf)>, ImageError> {
        let entries = fs::read_dir(&self.dir).map_err(ImageError::io(format!(
            "cannot list {}",
            self.dir.display()
        )))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_symlink()))
            .filter_map(|entry| {
                let target = fs::read_link(entry.path()).ok()?;
                Some((entry.path(), self.dir.join(target)))
            })
            .collect())
    }

    /// Starts an import: a staging dir, and its lock.
    pub fn begin_import(self: &Arc<Self>) -> Result<Import, ImageError> {
        let staging = self
            .dir
            .join(STAGING)
            .join(format!("{:016x}", rand::random::<u64>()));
        let lock_path = staging.with_extension("lock");
        let alive = try_lock(&lock_path).ok_or_else(|| ImageError::Io {
            context: format!("cannot lock {}", lock_path.display()),
            source: io::Error::last_os_error(),
        })?;
        make_private_dir(&staging)?;
        Ok(Import {
            images: Arc::clone(self),
            staging,
            _alive: alive,
        })
    }

    /// Removes the name `name` (or `name:latest`); its build stays until
    /// [`Images::collect`] finds nothing uses it. Returns the resolved
    /// root filesystem it named, or `None` when no image has the name.
    pub fn remove(&self, name: &str) -> Result<Option<PathBuf>, ImageError> {
        let Some(link) = self.link_of(name)? else {
            return Ok(None);
        };
        let rootfs = link.join("rootfs").canonicalize().ok();
        fs::remove_file(&link)
            .map_err(ImageError::io(format!("cannot remove {}", link.display())))?;
        Ok(rootfs)
    }

    /// Removes builds no name links and whose root filesystem is not in
    /// `in_use` (resolved paths, as sandboxes and snapshots pin them), the
    /// chains no build left is made of, the user-namespace copies of
    /// builds that are gone, and leftovers of imports that died. Waits
    /// for the imports that are building.
    pub fn collect(&self, in_use: &HashSet<PathBuf>) -> Result<Collected, ImageError> {
        let _lock = self.lock(libc::LOCK_EX)?;
        let mut collected = Collected::default();
        let pinned = remove_dead_imports(&self.dir.join(STAGING));
        let linked: HashSet<PathBuf> = self
            .links()?
            .into_iter()
            .filter_map(|(_, build)| build.canonicalize().ok())
            .collect();
        let store = self.dir.join(STORE);
        let mut kept_chains: HashSet<String> = pinned.clone();
        for build in child_dirs(&store) {
            let name = build
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let record = read_record(&build);
            let used = linked.contains(&build)
                || in_use.contains(&build.join("rootfs"))
                || pinned.contains(&name);
            // A recipe build is collected only under its recipe's lock,
            // which `scripts/build-image` holds while it makes one.
            let recipe_lock = match (&record, name.rsplit_once('-')) {
                (None, Some((recipe, _))) if !used => {
                    match try_lock(&store.join(format!(".lock-{recipe}"))) {
                        Some(lock) => Some(lock),
                        None => continue,
                    }
                }
                (None, _) if !used => continue,
                _ => None,
            };
            if used {
                if let Some(record) = record {
                    kept_chains.extend(LayerStore::chain_ids_on(
                        record.seed.as_deref(),
                        &record.diff_ids,
                    ));
                }
                continue;
            }
            match fs::remove_dir_all(&build) {
                Ok(()) => collected.builds.push(name),
                Err(err) => {
                    tracing::warn!(build = %build.display(), error = %err, "cannot remove an image build");
                }
            }
            drop(recipe_lock);
        }
        for chain in self.layers.chains()? {
            if !kept_chains.contains(&chain) {
                self.layers.remove_chain(&chain)?;
                collected.chains += 1;
            }
        }
        // `<build>.<host base>`: the copy of `.store/<build>` (or of the
        // old layout's `<images>/<build>`) with owners shifted.
        for copy in child_dirs(&self.dir.join(IDMAPPED)) {
            let name = copy
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some((build, _)) = name.rsplit_once('.') else {
                continue;
            };
            if store.join(build).is_dir() || self.dir.join(build).is_dir() {
                continue;
            }
            if fs::remove_dir_all(&copy).is_ok() {
                collected.shifted_copies.push(name);
            }
        }
        Ok(collected)
    }

    /// Locks `.lock` with `operation` (`flock`'s).
    fn lock(&self, operation: i32) -> Result<File, ImageError> {
        let path = self.dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io(format!("cannot open {}", path.display())))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
            return Err(ImageError::Io {
                context: format!("cannot lock {}", path.display()),
                source: io::Error::last_os_error(),
            });
        }
        Ok(file)
    }
}

impl Import {
    /// Where the archive's bytes go before [`Import::finish`] reads them.
    pub fn body_path(&self) -> PathBuf {
        self.staging.join("body.tar")
    }

    /// Where a pull writes the OCI layout it fetched, instead of a body.
    pub fn layout_dir(&self) -> PathBuf {
        self.staging.join("archive")
    }

    /// Checks the image (the archive at [`Import::body_path`], unpacked,
    /// or else the layout at [`Import::layout_dir`]), builds every chain
    /// it needs, and publishes it under `name` (or the archive's own
    /// name).
    pub fn finish(self, name: Option<&str>) -> Result<Image, ImageError> {
        let images = Arc::clone(&self.images);
        let _building = images.lock(libc::LOCK_SH)?;
        let given = name
            .map(|name| Reference::parse(name).map(Reference::with_default_tag))
            .transpose()
            .map_err(ImageError::Invalid)?;
        let (unpacked, source) = match File::open(self.body_path()) {
            Ok(body) => (
                archive::unpack(io::BufReader::new(body), &self.layout_dir())?,
                ImageSource::Import,
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                (archive::read(&self.layout_dir())?, ImageSource::Pull)
            }
            Err(err) => {
                return Err(ImageError::Io {
                    context: "cannot read the uploaded archive".into(),
                    source: err,
                })
            }
        };
        let reference = match given {
            Some(reference) => reference,
            None => archive_name(&unpacked.names)?,
        };
        let (top, skipped_devices) = images.layers.build(&unpacked.layers)?;
        let config = unpacked.config.config().clone().unwrap_or_default();
        self.publish(NewBuild {
            reference,
            id: unpacked.config_digest.clone(),
            top,
            seed: None,
            diff_ids: unpacked.layers.iter().map(|l| l.diff_id.clone()).collect(),
            config: ImageConfig {
                env: config.env().clone().unwrap_or_default(),
                working_dir: config.working_dir().clone().filter(|dir| !dir.is_empty()),
                user: config.user().clone().filter(|user| !user.is_empty()),
                entrypoint: config.entrypoint().clone(),
                cmd: config.cmd().clone(),
                labels: config
                    .labels()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            },
            skipped_devices,
            source,
        })
    }

    /// The layer store, for a Dockerfile build that makes chains itself.
    pub fn layers(&self) -> &LayerStore {
        &self.images.layers
    }

    /// The import's own private dir, for a build's scratch files.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Holds off collections while a build makes or checks chains: they
    /// would take a chain no record names yet.
    pub fn hold_collections(&self) -> Result<File, ImageError> {
        self.images.lock(libc::LOCK_SH)
    }

    /// Keeps the chain or build `what` from collections for as long as
    /// this import lives. Pin under [`Import::hold_collections`].
    pub fn pin(&self, what: &str) -> Result<(), ImageError> {
        use std::io::Write as _;
        let mut pins = File::options()
            .create(true)
            .append(true)
            .open(self.staging.join(PINS))
            .map_err(ImageError::io("cannot pin a chain"))?;
        writeln!(pins, "{what}").map_err(ImageError::io("cannot pin a chain"))
    }

    /// Publishes a Dockerfile build as `name`: the chain `top`, the layers
    /// `diff_ids` on `seed`, with `config`.
    pub fn publish_built(
        &self,
        name: &str,
        top: &str,
        seed: &str,
        diff_ids: Vec<String>,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        let _building = self.images.lock(libc::LOCK_SH)?;
        let reference = Reference::parse(name)
            .map(Reference::with_default_tag)
            .map_err(ImageError::Invalid)?;
        let identity = serde_json::json!({ "seed": seed, "diff_ids": diff_ids, "config": config });
        let id = format!(
            "sha256:{:x}",
            Sha256::digest(identity.to_string().as_bytes())
        );
        let skipped_devices = self.images.layers.skipped_devices(seed, &diff_ids);
        self.publish(NewBuild {
            reference,
            id,
            top: top.to_owned(),
            seed: Some(seed.to_owned()),
            diff_ids,
            config,
            skipped_devices,
            source: ImageSource::Build,
        })
    }

    /// An unnamed build of the chain `top`, for the sandbox that runs a
    /// Dockerfile build's steps from there (`step` names it); pinned, so
    /// it is collected once this import is gone and no sandbox uses it.
    /// Returns its root filesystem.
    pub fn stage_step(&self, top: &str, step: &str) -> Result<PathBuf, ImageError> {
        let _building = self.images.lock(libc::LOCK_SH)?;
        let hex = step.trim_start_matches("sha256:");
        let build_name = format!("sbx-build-step-{}", hex.get(..16).unwrap_or(hex));
        let target = self.images.dir.join(STORE).join(&build_name);
        self.pin(&build_name)?;
        if read_record(&target).is_none() {
            let record = BuildRecord {
                name: "(a build step)".into(),
                id: step.to_owned(),
                created_at: Utc::now(),
                size_bytes: 0,
                diff_ids: Vec::new(),
                config: ImageConfig::default(),
                skipped_devices: Vec::new(),
                source: ImageSource::Build,
                seed: None,
            };
            self.write_build(top, &record, &target, false)?;
        }
        Ok(target.join("rootfs"))
    }

    /// Makes the build `new` describes under `.store` (unless the same
    /// image is there already) and points its name at it.
    fn publish(&self, new: NewBuild) -> Result<Image, ImageError> {
        let dir_name = new.reference.dir_name();
        let id12 = new
            .id
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or("0")
            .to_owned();
        // No ':' in a path that may become an overlay's lowerdir, where it
        // separates layers.
        let build_name = format!("{}-{id12}", dir_name.replace(':', "_"));
        let target = self.images.dir.join(STORE).join(&build_name);
        let record = match read_record(&target) {
            Some(record) => record,
            None => {
                let record = BuildRecord {
                    name: new.reference.to_string(),
                    id: new.id,
                    created_at: Utc::now(),
                    size_bytes: 0,
                    diff_ids: new.diff_ids,
                    config: new.config,
                    skipped_devices: new.skipped_devices,
                    source: new.source,
                    seed: new.seed,
                };
                self.write_build(&new.top, &record, &target, true)?
            }
        };
        let link = self.staging.join("link");
        std::os::unix::fs::symlink(Path::new(STORE).join(&build_name), &link)
            .map_err(ImageError::io("cannot make the image's link"))?;
        fs::rename(&link, self.images.dir.join(&dir_name)).map_err(ImageError::io(format!(
            "cannot name the image {}",
            new.reference
        )))?;
        Ok(Image {
            name: new.reference.to_string(),
            id: record.id,
            source: record.source,
            created_at: record.created_at,
            size_bytes: Some(record.size_bytes),
            layers: u32::try_from(record.diff_ids.len()).ok(),
            config: record.config,
            skipped_devices: record.skipped_devices,
        })
    }

    /// Copies the chain `top` to `target` with `record` (its size filled
    /// in when `measured`: a walk of the whole tree, which a build step's
    /// unnamed build skips), made in the staging dir and renamed in whole.
    /// Returns the record `target` holds.
    fn write_build(
        &self,
        top: &str,
        record: &BuildRecord,
        target: &Path,
        measured: bool,
    ) -> Result<BuildRecord, ImageError> {
        let build = self
            .staging
            .join(format!("build-{:08x}", rand::random::<u32>()));
        self.images.layers.copy_chain(top, &build)?;
        let record = BuildRecord {
            size_bytes: if measured {
                tree_size(&build.join("rootfs"))
            } else {
                0
            },
            ..record.clone()
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|err| ImageError::Invalid(format!("cannot record the image: {err}")))?;
        fs::write(build.join(RECORD), json)
            .map_err(ImageError::io("cannot write the image record"))?;
        fs::set_permissions(&build, fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io("cannot make the build private"))?;
        match fs::rename(&build, target) {
            Ok(()) => Ok(record),
            // The same image published under the same name at once.
            Err(_) if target.join(RECORD).is_file() => {
                let _ = fs::remove_dir_all(&build);
                Ok(read_record(target).unwrap_or(record))
            }
            Err(err) => Err(ImageError::Io {
                context: format!("cannot rename the build to {}", target.display()),
                source: err,
            }),
        }
    }
}

/// What [`Import::publish`] makes a build of.
struct NewBuild {
    reference: Reference,
    id: String,
    /// The chain whose root filesystem the build copies.
    top: String,
    seed: Option<String>,
    diff_ids: Vec<String>,
    config: ImageConfig,
    skipped_devices: Vec<String>,
    source: ImageSource,
}

impl Drop for Import {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.staging) {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(staging = %self.staging.display(), error = %err, "cannot remove an import's staging dir");
            }
        }
        // Still held: no collection takes it for a dead import's meanwhile.
        let _ = fs::remove_file(self.staging.with_extension("lock"));
    }
}

/// The defaults a sandbox on the build whose root filesystem is
/// `rootfs` starts with: from its record, when it was imported.
pub fn defaults_of(rootfs: &Path) -> ImageDefaults {
    let Some(record) = rootfs.parent().and_then(read_record) else {
        return ImageDefaults::default();
    };
    let config = record.config;
    ImageDefaults {
        env: config
            .env
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        working_dir: config.working_dir.filter(|dir| dir.starts_with('/')),
        user: config.user.and_then(|user| exec_user(&user)),
    }
}

/// The image's `User` as exec's `user` takes it: a name or `uid[:gid]`;
/// `name:group`, which exec does not take, becomes its user name.
pub fn exec_user(user: &str) -> Option<String> {
    let valid = |text: &str| sbx_api::validate_user(text).is_ok();
    if valid(user) {
        return Some(user.to_owned());
    }
    let (name, _) = user.split_once(':')?;
    valid(name).then(|| name.to_owned())
}

/// The name an archive gives its image: the first that is a whole
/// reference (an OCI index's name annotation is often just a tag).
fn archive_name(names: &[String]) -> Result<Reference, ImageError> {
    names
        .iter()
        .filter(|name| name.contains(':') || name.contains('/'))
        .find_map(|name| Reference::parse(name).ok())
        .map(Reference::with_default_tag)
        .ok_or_else(|| {
            ImageError::Invalid(
                "the archive does not name its image: give it a name (?name=…, --name)".into(),
            )
        })
}

fn read_record(build: &Path) -> Option<BuildRecord> {
    let bytes = fs::read(build.join(RECORD)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn make_private_dir(path: &Path) -> Result<(), ImageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(ImageError::io(format!("cannot make {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(ImageError::io(format!(
        "cannot make {} private",
        path.display()
    )))
}

/// The dirs in `dir` whose names do not start with `.`.
fn child_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect()
}

/// Removes the staging dirs in `dir` whose import's lock is free (or
/// gone): those imports died without cleaning up. Returns what the live
/// ones pinned ([`Import::pin`]).
fn remove_dead_imports(dir: &Path) -> HashSet<String> {
    let mut pinned = HashSet::new();
    for staging in child_dirs(dir) {
        let lock_path = staging.with_extension("lock");
        let dead = match try_lock(&lock_path) {
            Some(lock) => Some(lock),
            // Never made (the lock comes first): a leftover.
            None if !lock_path.exists() => None,
            None => {
                let pins = fs::read_to_string(staging.join(PINS)).unwrap_or_default();
                pinned.extend(pins.lines().map(str::to_owned));
                continue;
            }
        };
        let _ = fs::remove_dir_all(&staging);
        let _ = fs::remove_file(&lock_path);
        drop(dead);
    }
    pinned
}

/// An exclusive lock on `path` if it can be had at once.
fn try_lock(path: &Path) -> Option<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock on a descriptor we own; LOCK_NB never blocks.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

/// Bytes of the regular files under `root`, each inode once.
fn tree_size(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_tar::{docker_save, layer, oci_layout, scratch, Kind};

    fn base_layer() -> Vec<u8> {
        layer(&[
            ("bin/", Kind::Dir, 0, 0o755),
            ("bin/tool", Kind::File("#!/bin/sh"), 0, 0o755),
        ])
    }

    fn import(
        images: &Arc<Images>,
        archive: &[u8],
        name: Option<&str>,
    ) -> Result<Image, ImageError> {
        let import = images.begin_import()?;
        fs::write(import.body_path(), archive).expect("body");
        import.finish(name)
    }

    fn staging_is_empty(images: &Images) -> bool {
        fs::read_dir(images.dir().join(STAGING))
            .expect("staging")
            .count()
            == 0
    }

    #[test]
    fn imports_are_named_listed_resolved_and_give_sandboxes_their_defaults() {
        let (scratch, _) = scratch();
        let images = Arc::new(Images::open(&scratch.path().join("images")).expect("open"));
        let base = base_layer();
        let saved = import(&images, &docker_save(&[&base]), None).expect("import");
        assert_eq!(saved.name, "demo:saved");
        assert_eq!(saved.source, ImageSource::Import);
        assert_eq!(saved.layers, Some(1));
        assert_eq!(saved.size_bytes, Some(9));
        assert_eq!(saved.config.env, ["GREETING=hi"]);
        assert_eq!(saved.config.working_dir.as_deref(), Some("/app"));
        assert!(staging_is_empty(&images), "an import leaves no staging dir");

        let named = import(
            &images,
            &oci_layout(&[&base]),
            Some("localhost:5000/team/app"),
        )
        .expect("import");
        assert_eq!(named.name, "localhost:5000/team/app:latest");
        let listed: Vec<String> = images
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(listed, ["demo:saved", "localhost:5000/team/app:latest"]);
        assert_eq!(
            images.get("localhost:5000/team/app").expect("get"),
            Some(named.clone()),
            "a bare name means :latest"
        );
        assert_eq!(images.get("demo:other").expect("get"), None);

        let rootfs = images
            .rootfs("demo:saved")
            .expect("rootfs")
            .expect("exists");
        assert!(rootfs.join("bin/tool").is_file());
        assert!(
            rootfs.starts_with(images.dir().join(STORE)),
            "{}",
            rootfs.display()
        );
        let build = rootfs.parent().expect("a build holds the rootfs");
        let mode = fs::metadata(build).expect("build").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "an imported build is root's alone");
        let defaults = defaults_of(&rootfs);
        assert_eq!(defaults.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(defaults.working_dir.as_deref(), Some("/app"));
        assert_eq!(defaults.user.as_deref(), Some("1000"));
        assert!(
            images.rootfs("../etc").is_err(),
            "a name that is no reference"
        );
    }

    #[test]
    fn an_archive_that_names_no_image_needs_a_name_and_leaves_nothing() {
        let (scratch, _) = scratch();
        let images = Arc::new(Images::open(&scratch.path().join("images")).expect("open"));
        let mut archive = oci_layout(&[&base_layer()]);
        // The test layout's index names `demo:oci`; make it name a bare tag.
        let at = archive
            .windows(8)
            .position(|window| window == b"demo:oci")
            .expect("name in the index");
        archive[at..at + 8].copy_from_slice(b"latest__");
        let err = import(&images, &archive, None);
        assert!(matches!(err, Err(ImageError::Invalid(_))), "{err:?}");
        assert!(staging_is_empty(&images));
        assert!(images.list().expect("list").is_empty());
    }

    #[test]
    fn collecting_removes_what_no_name_or_sandbox_uses() {
        let (scratch, _) = scratch();
        let images = Arc::new(Images::open(&scratch.path().join("images")).expect("open"));
        let base = base_layer();
        let upper = layer(&[("etc/motd", Kind::File("two"), 0, 0o644)]);
        import(&images, &docker_save(&[&base]), Some("one")).expect("one");
        import(&images, &docker_save(&[&base, &upper]), Some("two")).expect("two");
        assert_eq!(
            images.layers.chains().expect("chains").len(),
            2,
            "one shared base"
        );
        let two = images.rootfs("two").expect("rootfs").expect("two");
        let two_build = two
            .parent()
            .and_then(Path::file_name)
            .expect("a build holds the rootfs")
            .to_string_lossy()
            .into_owned();
        let shifted = images
            .dir()
            .join(IDMAPPED)
            .join(format!("{two_build}.1000000000"));
        fs::create_dir_all(shifted.join("rootfs")).expect("shifted copy");

        // A recipe build no name links, made by scripts/build-image.
        let recipe = images.dir().join(STORE).join("old-0123456789ab");
        fs::create_dir_all(recipe.join("rootfs")).expect("recipe build");
        let recipe_lock = try_lock(&images.dir().join(STORE).join(".lock-old")).expect("lock");

        assert_eq!(images.remove("two").expect("remove"), Some(two.clone()));
        assert_eq!(images.remove("two").expect("again"), None);
        let in_use = HashSet::from([two.clone()]);
        let collected = images.collect(&in_use).expect("collect");
        assert_eq!(
            collected,
            Collected::default(),
            "a sandbox still runs on it"
        );
        assert!(two.is_dir());

        // An import under way keeps its staging dir; a dead one's goes.
        let import_under_way = images.begin_import().expect("begin");
        fs::write(import_under_way.body_path(), b"arriving").expect("body");
        let dead = images.dir().join(STAGING).join("0123456789abcdef");
        fs::create_dir_all(&dead).expect("dead import");
        fs::write(dead.with_extension("lock"), b"").expect("its lock");
        images.collect(&in_use).expect("collect");
        assert!(import_under_way.body_path().is_file());
        assert!(!dead.exists() && !dead.with_extension("lock").exists());
        drop(import_under_way);

        let collected = images.collect(&HashSet::new()).expect("collect");
        assert_eq!(collected.builds, std::slice::from_ref(&two_build));
        assert_eq!(
            collected.chains, 1,
            "the upper chain goes, the shared base stays"
        );
        assert_eq!(
            collected.shifted_copies,
            [format!("{two_build}.1000000000")]
        );
        assert!(!two.exists() && !shifted.exists());
        assert!(recipe.is_dir(), "build-image holds its recipe's lock");
        assert!(images.rootfs("one").expect("rootfs").is_some());

        drop(recipe_lock);
        let collected = images.collect(&HashSet::new()).expect("collect");
        assert_eq!(collected.builds, ["old-0123456789ab"]);
        assert!(images.rootfs("one").expect("rootfs").is_some());
    }

    #[test]
    fn image_users_become_exec_users() {
        assert_eq!(exec_user("1000:1000").as_deref(), Some("1000:1000"));
        assert_eq!(exec_user("node").as_deref(), Some("node"));
        assert_eq!(exec_user("app:staff").as_deref(), Some("app"));
        assert_eq!(exec_user("Bad User"), None);
    }
}
