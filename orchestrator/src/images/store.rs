//! The layer store: every layer chain an image is built of, applied once
//! and shared between the images that have it.
//!
//! A chain is a layer with everything below it, named as OCI names it: the
//! chain id of the bottom layer is its diff id, and of each layer above,
//! `sha256("<chain id below> <diff id>")`. The store keeps, per chain, the
//! merged root filesystem: `<store>/<hex>/rootfs`. A chain is made from the
//! one below it: on the btrfs pool a snapshot of its subvolume (shared
//! blocks, milliseconds) with the layer applied on top, so an image that
//! adds one layer to another costs one layer; elsewhere a copy
//! (`cp --reflink=auto`). Each is made at a staging name and renamed into
//! place once complete, so a chain that exists is whole; and its layer is
//! checked against its diff id as it is applied.

use super::archive::{Compression, LayerBlob};
use super::layer::{self, Applied};
use super::ImageError;
use crate::runtime::volume;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Beside a chain's `rootfs`: the devices its layer held, one per line,
/// so that an image built on a chain already stored still reports them.
const SKIPPED_DEVICES: &str = "skipped-devices";

/// The chain id of `diff_id` on top of the chain `below`.
pub fn chain_id(below: Option<&str>, diff_id: &str) -> String {
    match below {
        None => diff_id.to_owned(),
        Some(below) => format!(
            "sha256:{:x}",
            Sha256::digest(format!("{below} {diff_id}").as_bytes())
        ),
    }
}

/// Where chains are kept, and how they are copied there.
#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
    /// Chains are btrfs subvolumes, snapshotted one from another.
    subvolumes: bool,
}

/// Reads through to `inner` while hashing what it read.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

impl LayerStore {
    /// The store at `dir`; `subvolumes` when `dir` is on btrfs and
    /// subvolumes can be made there ([`crate::runtime::Disks::copy_method`]).
    pub fn new(dir: PathBuf, subvolumes: bool) -> Self {
        Self { dir, subvolumes }
    }

    /// The root filesystem of the chain `chain_id`, if it is stored.
    pub fn rootfs(&self, chain_id: &str) -> Option<PathBuf> {
        let rootfs = self.chain_dir(chain_id).join("rootfs");
        rootfs.is_dir().then_some(rootfs)
    }

    fn chain_dir(&self, chain_id: &str) -> PathBuf {
        self.dir
            .join(chain_id.strip_prefix("sha256:").unwrap_or(chain_id))
    }

    /// Makes every chain of `layers` (bottom first) that is not stored yet,
    /// and returns the top chain's id. Returns the devices the layers held
    /// and that were skipped.
    pub fn build(&self, layers: &[LayerBlob]) -> Result<(String, Vec<String>), ImageError> {
        self.build_on(None, layers)
    }

    /// Like [`LayerStore::build`], with the chains on top of the chain
    /// `seed` (a built image's [`LayerStore::seed`]) instead of an empty
    /// root.
    pub fn build_on(
        &self,
        seed: Option<&str>,
        layers: &[LayerBlob],
    ) -> Result<(String, Vec<String>), ImageError> {
        std::fs::create_dir_all(&self.dir).map_err(ImageError::io(format!(
            "cannot make {}",
            self.dir.display()
        )))?;
        let mut below: Option<String> = seed.map(str::to_owned);
        let mut skipped = Vec::new();
        for blob in layers {
            let chain = chain_id(below.as_deref(), &blob.diff_id);
            if self.rootfs(&chain).is_none() {
                self.make_chain(below.as_deref(), &chain, blob)?;
            }
            let noted = std::fs::read_to_string(self.chain_dir(&chain).join(SKIPPED_DEVICES));
            skipped.extend(noted.unwrap_or_default().lines().map(str::to_owned));
            below = Some(chain);
        }
        let top = below.ok_or_else(|| ImageError::Invalid("an image of no layers".into()))?;
        Ok((top, skipped))
    }

    /// The chain a Dockerfile build starts from: a copy of the build dir
    /// `build` (a `rootfs/` inside) of the `FROM` image whose id is
    /// `image_id`, made once and shared by every build from that image.
    /// Its id is not an OCI chain id: no layer list makes it.
    pub fn seed(&self, image_id: &str, build: &Path) -> Result<String, ImageError> {
        let seed = format!(
            "sha256:{:x}",
            Sha256::digest(format!("sbx-seed {image_id}").as_bytes())
        );
        if self.rootfs(&seed).is_some() {
            return Ok(seed);
        }
        std::fs::create_dir_all(&self.dir).map_err(ImageError::io(format!(
            "cannot make {}",
            self.dir.display()
        )))?;
        let target = self.chain_dir(&seed);
        let staging = staging_name(&target);
        let made = self.copy_build(build, &staging).and_then(|()| {
            std::fs::write(staging.join(SKIPPED_DEVICES), "")
                .map_err(ImageError::io("cannot note the skipped devices"))?;
            std::fs::rename(&staging, &target).map_err(ImageError::io(format!(
                "cannot rename {} to {}",
                staging.display(),
                target.display()
            )))
        });
        self.settle(&seed, &staging, made)?;
        Ok(seed)
    }

    /// Ends the making of `chain` at `staging`: what `made` says, unless
    /// it failed because another import or build (of this server or
    /// another sharing the store) made the same chain meanwhile, which
    /// is as good. A failure leaves no staging dir behind.
    fn settle(
        &self,
        chain: &str,
        staging: &Path,
        made: Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        match made {
            Ok(()) => Ok(()),
            Err(err) => {
                let _ = std::fs::remove_dir_all(staging);
                match self.rootfs(chain) {
                    Some(_) => Ok(()),
                    None => Err(err),
                }
            }
        }
    }

    /// Makes `to` hold a copy of `build/rootfs`: a snapshot when `build`
    /// is a subvolume, else a (reflink) copy.
    fn copy_build(&self, build: &Path, to: &Path) -> Result<(), ImageError> {
        if self.subvolumes {
            if volume::snapshot_subvolume(build, to).is_ok() {
                return Ok(());
            }
            // A recipe build is a plain directory: its copy is still a
            // subvolume, since the chains above are snapshots of it.
            volume::create_subvolume(to)
                .map_err(ImageError::io(format!("cannot make {}", to.display())))?;
        } else {
            std::fs::create_dir(to)
                .map_err(ImageError::io(format!("cannot make {}", to.display())))?;
        }
        copy_tree(&build.join("rootfs"), &to.join("rootfs"))
    }

    /// The devices skipped in every chain of `diff_ids` on `seed`.
    pub fn skipped_devices(&self, seed: &str, diff_ids: &[String]) -> Vec<String> {
        Self::chain_ids_on(Some(seed), diff_ids)
            .iter()
            .flat_map(|chain| {
                let noted = std::fs::read_to_string(self.chain_dir(chain).join(SKIPPED_DEVICES));
                noted
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Makes the chain `chain`: a copy of `below` (or an empty root) with
    /// `blob` applied, at a staging name, renamed into place when whole.
    fn make_chain(
        &self,
        below: Option<&str>,
        chain: &str,
        blob: &LayerBlob,
    ) -> Result<(), ImageError> {
        let target = self.chain_dir(chain);
        let staging = staging_name(&target);
        let made = self
            .copy_below(below, &staging)
            .and_then(|()| apply_checked(blob, &staging.join("rootfs")))
            .and_then(|applied: Applied| {
                let noted: String = applied
                    .skipped_devices
                    .iter()
                    .map(|device| format!("{device}\n"))
                    .collect();
                std::fs::write(staging.join(SKIPPED_DEVICES), noted)
                    .map_err(ImageError::io("cannot note the skipped devices"))?;
                std::fs::rename(&staging, &target).map_err(ImageError::io(format!(
                    "cannot rename {} to {}",
                    staging.display(),
                    target.display()
                )))
            });
        self.settle(chain, &staging, made)
    }

    /// Makes `staging` hold a `rootfs/` that is a copy of the chain
    /// `below`'s, or empty.
    fn copy_below(&self, below: Option<&str>, staging: &Path) -> Result<(), ImageError> {
        let io = |what: &str| ImageError::io(format!("cannot {what} {}", staging.display()));
        match below {
            Some(below) => self.copy_chain(below, staging),
            None => {
                if self.subvolumes {
                    volume::create_subvolume(staging).map_err(io("make the subvolume"))?;
                } else {
                    std::fs::create_dir(staging).map_err(io("make"))?;
                }
                std::fs::create_dir(staging.join("rootfs")).map_err(io("make the root in"))
            }
        }
    }

    /// Makes `to` (which must not exist) hold a `rootfs/` that is a copy of
    /// the chain `chain`'s: a snapshot on btrfs, else a reflink copy where
    /// the filesystem has them, else a copy.
    pub fn copy_chain(&self, chain: &str, to: &Path) -> Result<(), ImageError> {
        let io = |what: &str| ImageError::io(format!("cannot {what} {}", to.display()));
        if self.subvolumes {
            if volume::snapshot_subvolume(&self.chain_dir(chain), to).is_ok() {
                return Ok(());
            }
            // A chain that is a plain directory (made before the store
            // could hold subvolumes) is copied into one.
            volume::create_subvolume(to).map_err(io("make the subvolume"))?;
        } else {
            std::fs::create_dir(to).map_err(io("make"))?;
        }
        copy_tree(&self.chain_dir(chain).join("rootfs"), &to.join("rootfs"))
    }

    /// The ids of every chain stored (`sha256:<hex>`).
    pub fn chains(&self) -> Result<Vec<String>, ImageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(ImageError::Io {
                    context: format!("cannot list {}", self.dir.display()),
                    source: err,
                })
            }
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|hex| format!("sha256:{hex}"))
            .collect())
    }

    /// Removes the chain `chain`; images built on it keep their own copies.
    pub fn remove_chain(&self, chain: &str) -> Result<(), ImageError> {
        let dir = self.chain_dir(chain);
        std::fs::remove_dir_all(&dir)
            .map_err(ImageError::io(format!("cannot remove {}", dir.display())))
    }

    /// Ids of the chains of `diff_ids`, bottom first: the last is the
    /// image's.
    pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
        Self::chain_ids_on(None, diff_ids)
    }

    /// Ids of `seed` (when there is one) and of the chains of `diff_ids`
    /// on top of it, bottom first.
    pub fn chain_ids_on(seed: Option<&str>, diff_ids: &[String]) -> Vec<String> {
        let mut below: Option<String> = seed.map(str::to_owned);
        let layers = diff_ids.iter().map(|diff_id| {
            let chain = chain_id(below.as_deref(), diff_id);
            below = Some(chain.clone());
            chain
        });
        seed.map(str::to_owned).into_iter().chain(layers).collect()
    }
}

/// A name beside `target` to make it at before it is renamed in whole.
fn staging_name(target: &Path) -> PathBuf {
    target.with_file_name(format!(
        ".{}.{:08x}.tmp",
        target.file_name().unwrap_or_default().to_string_lossy(),
        rand::random::<u32>()
    ))
}

/// `cp -a --reflink=auto FROM TO`: owners, modes, links and times kept,
/// blocks shared where the filesystem can.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ImageError> {
    let output = Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(ImageError::io("cannot run cp"))?;
    if !output.status.success() {
        return Err(ImageError::Invalid(format!(
            "cannot copy {}: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Applies `blob` onto `rootfs`, checking that the uncompressed tar is the
/// one its diff id names.
fn apply_checked(blob: &LayerBlob, rootfs: &Path) -> Result<Applied, ImageError> {
    let file = BufReader::new(File::open(&blob.path).map_err(ImageError::io(format!(
        "cannot read {}",
        blob.path.display()
    )))?);
    let decompressed: Box<dyn Read> = match blob.compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        Compression::Zstd => {
            return Err(ImageError::Invalid(format!(
                "layer {} is zstd-compressed, which sbx does not read yet",
                blob.diff_id
            )))
        }
    };
    let mut reader = Hashing {
        inner: decompressed,
        hasher: Sha256::new(),
    };
    let applied = layer::apply(&mut reader, rootfs)?;
    // What follows the tar's end marker is part of the blob too.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(ImageError::io(format!(
        "cannot read {}",
        blob.path.display()
    )))?;
    let actual = format!("sha256:{:x}", reader.hasher.finalize());
    if actual != blob.diff_id {
        return Err(ImageError::Invalid(format!(
            "layer {} holds {actual}: the image is corrupt",
            blob.diff_id
        )));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::archive;
    use crate::images::test_tar::{
        config, docker_save, files, gzip, layer, oci_layout, scratch, sha256, Kind,
    };

    fn base_layer() -> Vec<u8> {
        layer(&[
            ("app/", Kind::Dir, 0, 0o755),
            ("app/old", Kind::File("old"), 0, 0o644),
            ("etc/motd", Kind::File("hi"), 0, 0o644),
        ])
    }

    fn upper_layer(file: &str) -> Vec<u8> {
        layer(&[
            ("app/.wh.old", Kind::File(""), 0, 0o644),
            (file, Kind::File("new"), 1000, 0o644),
        ])
    }

    fn chains(store: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store)
            .expect("store")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn docker_save_and_an_oci_layout_build_one_shared_chain() {
        let (dir, subvolumes) = scratch();
        let store = LayerStore::new(dir.path().join("layers"), subvolumes);
        let (base, upper) = (base_layer(), upper_layer("app/new"));

        let staging = dir.path().join("saved");
        std::fs::create_dir(&staging).expect("staging");
        let saved =
            archive::unpack(docker_save(&[&base, &upper]).as_slice(), &staging).expect("unpacked");
        assert_eq!(saved.names, ["demo:saved"]);
        let env = saved
            .config
            .config()
            .as_ref()
            .and_then(|config| config.env().clone());
        assert_eq!(env, Some(vec!["GREETING=hi".to_owned()]));
        let (top, skipped) = store.build(&saved.layers).expect("built");
        assert!(skipped.is_empty());
        let rootfs = store.rootfs(&top).expect("stored");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("app/new")).expect("new"),
            "new"
        );
        assert!(!rootfs.join("app/old").exists(), "whited out");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/motd")).expect("motd"),
            "hi"
        );
        assert_eq!(chains(&dir.path().join("layers")).len(), 2);

        // The same layers, gzipped in an OCI layout: the same chains.
        let staging = dir.path().join("oci");
        std::fs::create_dir(&staging).expect("staging");
        let oci =
            archive::unpack(oci_layout(&[&base, &upper]).as_slice(), &staging).expect("unpacked");
        assert_eq!(oci.names, ["demo:oci"]);
        assert_eq!(oci.layers[0].compression, archive::Compression::Gzip);
        assert_eq!(store.build(&oci.layers).expect("built").0, top);
        assert_eq!(
            chains(&dir.path().join("layers")).len(),
            2,
            "nothing made twice"
        );

        // Another image on the same base adds one chain.
        let other = upper_layer("app/other");
        let staging = dir.path().join("other");
        std::fs::create_dir(&staging).expect("staging");
        let image =
            archive::unpack(docker_save(&[&base, &other]).as_slice(), &staging).expect("unpacked");
        let (other_top, _) = store.build(&image.layers).expect("built");
        assert_eq!(chains(&dir.path().join("layers")).len(), 3);
        let other_root = store.rootfs(&other_top).expect("stored");
        assert!(other_root.join("app/other").exists());
        assert!(
            !other_root.join("app/new").exists(),
            "chains do not share writes"
        );
        for chain in chains(&dir.path().join("layers")) {
            let chain = dir.path().join("layers").join(chain);
            assert_eq!(
                volume::is_subvolume(&chain),
                subvolumes,
                "{}",
                chain.display()
            );
        }
    }

    /// Two imports of images that share a layer, at once (two servers may
    /// share one store): each makes the chain at its own staging name;
    /// the one whose rename comes second finds the chain made and uses it.
    #[test]
    fn imports_racing_for_one_chain_both_succeed() {
        let (dir, subvolumes) = scratch();
        let store = LayerStore::new(dir.path().join("layers"), subvolumes);
        let staging = dir.path().join("saved");
        std::fs::create_dir(&staging).expect("staging");
        let saved =
            archive::unpack(docker_save(&[&base_layer()]).as_slice(), &staging).expect("unpacked");
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let (store, layers) = (store.clone(), saved.layers.clone());
                std::thread::spawn(move || store.build(&layers).map(|(top, _)| top))
            })
            .collect();
        let tops: Vec<String> = racers
            .into_iter()
            .map(|racer| racer.join().expect("joined").expect("built"))
            .collect();
        assert!(tops.iter().all(|top| top == &tops[0]));
        assert_eq!(chains(&dir.path().join("layers")).len(), 1, "no leftovers");

        // The loser's case, made certain: its rename fails on the chain
        // the winner placed.
        let loser = staging_name(&store.chain_dir(&tops[0]));
        std::fs::create_dir_all(loser.join("rootfs")).expect("loser's staging");
        let lost = Err(ImageError::Invalid("rename failed".into()));
        store
            .settle(&tops[0], &loser, lost)
            .expect("the chain is there");
        assert!(!loser.exists(), "the loser's staging is removed");
        let missing = Err(ImageError::Invalid("rename failed".into()));
        assert!(store.settle("sha256:00", &loser, missing).is_err());
    }

    /// A build seeds from a recipe build, a plain directory, and from an
    /// imported build, a snapshot: either way the seed and the chains on
    /// it are subvolumes on the pool, and a layer lands on a copy.
    #[test]
    fn builds_seed_from_plain_and_snapshot_builds() {
        let (dir, subvolumes) = scratch();
        let store = LayerStore::new(dir.path().join("layers"), subvolumes);
        let recipe = dir.path().join("recipe-build");
        std::fs::create_dir_all(recipe.join("rootfs/etc")).expect("recipe");
        std::fs::write(recipe.join("rootfs/etc/motd"), "recipe").expect("motd");

        let seed = store.seed("recipe:abc", &recipe).expect("seeded");
        assert_eq!(store.seed("recipe:abc", &recipe).expect("again"), seed);
        let staging = dir.path().join("layer");
        std::fs::create_dir(&staging).expect("staging");
        let upper = upper_layer("app/new");
        std::fs::write(staging.join("layer.tar"), &upper).expect("layer");
        let blob = LayerBlob {
            path: staging.join("layer.tar"),
            compression: Compression::None,
            diff_id: sha256(&upper),
        };
        let (top, _) = store.build_on(Some(&seed), &[blob]).expect("built");
        let rootfs = store.rootfs(&top).expect("stored");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("app/new")).expect("new"),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(rootfs.join("etc/motd")).expect("motd"),
            "recipe"
        );
        assert!(
            !recipe.join("rootfs/app").exists(),
            "the recipe build is untouched"
        );
        for chain in [&seed, &top] {
            assert_eq!(volume::is_subvolume(&store.chain_dir(chain)), subvolumes);
        }
        assert_eq!(
            LayerStore::chain_ids_on(Some(&seed), &[sha256(&upper)]),
            [seed.clone(), top.clone()]
        );

        // A build that is itself a chain's copy seeds by snapshot.
        let imported = dir.path().join("imported-build");
        store.copy_chain(&top, &imported).expect("copied");
        let second = store.seed("sha256:imported", &imported).expect("seeded");
        let second_root = store.rootfs(&second).expect("stored");
        assert!(second_root.join("app/new").exists());
        assert_eq!(volume::is_subvolume(&store.chain_dir(&second)), subvolumes);
    }

    #[test]
    fn corrupt_and_hostile_archives_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (base, upper) = (base_layer(), upper_layer("app/new"));
        let mut n = 0;
        let mut unpack = |tar: Vec<u8>| {
            n += 1;
            let staging = dir.path().join(format!("staging-{n}"));
            std::fs::create_dir(&staging).expect("staging");
            archive::unpack(tar.as_slice(), &staging)
        };
        // A layer that is not the one its config names.
        let mut tampered = upper.clone();
        tampered[600] ^= 1;
        let saved = docker_save(&[&base, &upper]);
        let swapped = {
            let manifest = serde_json::to_vec(&serde_json::json!([
                {"Config": "config.json", "Layers": ["l0/layer.tar", "l1/layer.tar"]}
            ]))
            .expect("json");
            files(&[
                ("manifest.json", &manifest),
                ("config.json", &config(&[&base, &upper])),
                ("l0/layer.tar", &base),
                ("l1/layer.tar", &tampered),
            ])
        };
        assert!(unpack(saved).is_ok());
        let refusals = [
            unpack(swapped),
            // A blob whose bytes are not its digest's.
            unpack({
                let mut layout = oci_layout(&[&base]);
                let blob = gzip(&base);
                let at = layout
                    .windows(blob.len())
                    .position(|window| window == blob.as_slice())
                    .expect("the blob is in the layout");
                layout[at + blob.len() / 2] ^= 1;
                layout
            }),
            // Names out of the staging dir, in the tar or in the manifest.
            unpack(files(&[("../escaped", b"x")])),
            unpack(files(&[(
                "manifest.json",
                br#"[{"Config": "../../etc/passwd", "Layers": []}]"#,
            )])),
            unpack(files(&[("nothing.txt", b"x")])),
        ];
        for refused in refusals {
            assert!(
                matches!(refused, Err(ImageError::Invalid(_))),
                "{refused:?}"
            );
        }
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("staging-"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
        // A gzipped layer that is not what its diff id says fails the build.
        let store = LayerStore::new(dir.path().join("layers"), false);
        let staging = dir.path().join("staging-built");
        std::fs::create_dir(&staging).expect("staging");
        let mut image =
            archive::unpack(oci_layout(&[&base]).as_slice(), &staging).expect("unpacked");
        image.layers[0].diff_id = sha256(b"another layer");
        assert!(matches!(
            store.build(&image.layers),
            Err(ImageError::Invalid(_))
        ));
        assert!(
            chains(&dir.path().join("layers")).is_empty(),
            "no half-made chain"
        );
    }
}
