//! Getting sbx's images onto a node that has no registry to pull from.
//!
//! A cluster normally pulls images from a registry. sbx's images (each
//! image build's root filesystem, and the small image that carries the
//! agent) exist only on the orchestrator's machine, so where the cluster's
//! node is this machine (`--kube-node-containerd`, as on the test cluster)
//! sbx imports them into the node's containerd itself: each as a one-layer
//! image archive in `docker save`'s format, which `ctr images import`
//! takes. Elsewhere they must be pushed where the nodes pull from, and pods
//! name them the same way.

use crate::runtime::RuntimeError;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The containerd namespace the kubelet's CRI plugin uses.
const CRI_NAMESPACE: &str = "k8s.io";

/// A node's containerd, reached with `ctr`.
#[derive(Debug, Clone)]
pub struct NodeContainerd {
    pub socket: PathBuf,
    /// Where archives are written before import.
    pub scratch: PathBuf,
}

fn engine_error(context: String) -> impl FnOnce(String) -> RuntimeError {
    move |message| RuntimeError::Engine { context, message }
}

impl NodeContainerd {
    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", CRI_NAMESPACE]);
        command.kill_on_drop(true);
        command
    }

    /// Whether the node has `reference` (as containerd normalises it).
    pub async fn has(&self, reference: &str) -> Result<bool, RuntimeError> {
        let output = self
            .ctr()
            .args(["images", "ls", "-q"])
            .output()
            .await
            .map_err(RuntimeError::io("cannot run ctr"))?;
        if !output.status.success() {
            return Err(engine_error("cannot list the node's images".into())(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        let wanted = normalized(reference);
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|line| line.trim() == wanted))
    }

    /// Imports `rootfs` as the image `reference`, with `entrypoint`.
    pub async fn import_rootfs(
        &self,
        reference: &str,
        rootfs: &Path,
        entrypoint: &[&str],
    ) -> Result<(), RuntimeError> {
        std::fs::create_dir_all(&self.scratch).map_err(RuntimeError::io(format!(
            "cannot create {}",
            self.scratch.display()
        )))?;
        let work = tempfile::tempdir_in(&self.scratch).map_err(RuntimeError::io(
            "cannot make a scratch dir for an image import",
        ))?;
        let layer = work.path().join("layer.tar");
        // GNU tar handles every file type a rootfs holds, as for Docker.
        let status = Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg(".")
            .status()
            .await
            .map_err(RuntimeError::io("cannot run tar"))?;
        if !status.success() {
            return Err(engine_error(format!("cannot pack {}", rootfs.display()))(
                format!("tar exited with {status}"),
            ));
        }
        let archive = work.path().join("image.tar");
        let (layer_path, archive_path) = (layer.clone(), archive.clone());
        let reference_owned = reference.to_owned();
        let entrypoint: Vec<String> = entrypoint.iter().map(|part| part.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            write_archive(&archive_path, &layer_path, &reference_owned, &entrypoint)
        })
        .await
        .map_err(|err| engine_error("image archive".into())(err.to_string()))?
        .map_err(RuntimeError::io(format!(
            "cannot write the archive of {reference}"
        )))?;
        let output = self
            .ctr()
            .args(["images", "import"])
            .arg(&archive)
            .output()
            .await
            .map_err(RuntimeError::io("cannot run ctr"))?;
        if !output.status.success() {
            return Err(engine_error(format!(
                "cannot import {reference} into the node"
            ))(
                String::from_utf8_lossy(&output.stderr).into_owned()
            ));
        }
        tracing::info!(%reference, "imported an image into the node's containerd");
        Ok(())
    }

    /// Removes `reference` from the node. Best effort.
    pub async fn remove(&self, reference: &str) {
        let removed = self
            .ctr()
            .args(["images", "rm", &normalized(reference)])
            .output()
            .await;
        if let Err(err) = removed {
            tracing::warn!(%reference, error = %err, "cannot remove an image from the node");
        }
    }
}

/// containerd's full name of a short Docker-style reference.
fn normalized(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_registry, reference.contains('/')) {
        (true, _) => reference.to_owned(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Writes a `docker save` archive at `out`: one layer (`layer`), an image
/// config naming its digest and `entrypoint`, and the manifest tagging it
/// `reference`.
fn write_archive(
    out: &Path,
    layer: &Path,
    reference: &str,
    entrypoint: &[String],
) -> std::io::Result<()> {
    let diff_id = sha256_of(layer)?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let config = serde_json::to_vec(&config)?;
    let config_name = format!("{:x}.json", Sha256::digest(&config));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": ["layer.tar"],
    }]))?;
    let mut builder = tar::Builder::new(std::fs::File::create(out)?);
    builder.append_path_with_name(layer, "layer.tar")?;
    for (name, data) in [
        (config_name.as_str(), &config),
        ("manifest.json", &manifest),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data.as_slice())?;
    }
    builder.into_inner()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_containerd_does() {
        assert_eq!(normalized("sbx/base:abc"), "docker.io/sbx/base:abc");
        assert_eq!(normalized("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(normalized("sbx.local/pause:1"), "sbx.local/pause:1");
        assert_eq!(normalized("localhost/x:1"), "localhost/x:1");
    }

    #[test]
    fn an_archive_names_its_layer_by_digest() {
        let dir = tempfile::tempdir().expect("the fixture is well formed");
        let layer = dir.path().join("layer.tar");
        std::fs::write(&layer, b"not really a tar").expect("the fixture is well formed");
        let out = dir.path().join("image.tar");
        write_archive(&out, &layer, "sbx/x:1", &["/a".into()]).expect("the fixture is well formed");
        let mut archive =
            tar::Archive::new(std::fs::File::open(&out).expect("the fixture is well formed"));
        let mut names = Vec::new();
        let mut manifest = Vec::new();
        for entry in archive.entries().expect("the fixture is well formed") {
            let mut entry = entry.expect("the fixture is well formed");
            let name = entry
                .path()
                .expect("the fixture is well formed")
                .to_string_lossy()
                .into_owned();
            if name == "manifest.json" {
                entry
                    .read_to_end(&mut manifest)
                    .expect("the fixture is well formed");
            }
            names.push(name);
        }
        assert_eq!(names[0], "layer.tar");
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest).expect("the fixture is well formed");
        assert_eq!(manifest[0]["RepoTags"][0], "sbx/x:1");
        assert!(names.contains(
            &manifest[0]["Config"]
                .as_str()
                .expect("the fixture is well formed")
                .to_owned()
        ));
    }
}
