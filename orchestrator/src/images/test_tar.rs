//! Tars for the tests: layers and archives written byte by byte, since a
//! hostile one's names need not be ones the tar crate would write.

use sha2::{Digest, Sha256};
use std::io::Write;

pub(crate) enum Kind<'a> {
    Dir,
    File(&'a str),
    Symlink(&'a str),
    HardLink(&'a str),
    Fifo,
    CharDevice,
}

/// A tar of `entries` as (path, kind, uid, mode), written byte by byte
/// into the headers: a hostile layer's names need not be ones the tar
/// crate would write.
pub(crate) fn layer(entries: &[(&str, Kind<'_>, u64, u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, uid, mode) in entries {
        let mut header = tar::Header::new_old();
        let (entry_type, data, link) = match kind {
            Kind::Dir => (tar::EntryType::Directory, "", ""),
            Kind::File(data) => (tar::EntryType::Regular, *data, ""),
            Kind::Symlink(target) => (tar::EntryType::Symlink, "", *target),
            Kind::HardLink(target) => (tar::EntryType::Link, "", *target),
            Kind::Fifo => (tar::EntryType::Fifo, "", ""),
            Kind::CharDevice => (tar::EntryType::Char, "", ""),
        };
        let old = header.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_size(data.len() as u64);
        header.set_uid(*uid);
        header.set_gid(*uid);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data.as_bytes()).expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A tar of whole files: (name, bytes).
pub(crate) fn files(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    builder.into_inner().expect("tar")
}

pub(crate) fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

pub(crate) fn config(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|layer| sha256(layer)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["GREETING=hi"], "WorkingDir": "/app", "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json")
}

/// `docker save` output for an image of `layers` (uncompressed), named
/// `demo:saved`.
pub(crate) fn docker_save(layers: &[&[u8]]) -> Vec<u8> {
    let names: Vec<String> = (0..layers.len())
        .map(|n| format!("l{n}/layer.tar"))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": ["demo:saved"], "Layers": names}
    ]))
    .expect("json");
    let config = config(layers);
    let mut entries: Vec<(&str, &[u8])> =
        vec![("manifest.json", &manifest), ("config.json", &config)];
    for (name, data) in names.iter().zip(layers) {
        entries.push((name, data));
    }
    files(&entries)
}

/// An OCI layout for an image of `layers`, gzipped, named `demo:oci`.
pub(crate) fn oci_layout(layers: &[&[u8]]) -> Vec<u8> {
    let config = config(layers);
    let zipped: Vec<Vec<u8>> = layers.iter().map(|layer| gzip(layer)).collect();
    let descriptor = |media: &str, data: &[u8]| serde_json::json!({"mediaType": media, "digest": sha256(data), "size": data.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": zipped
            .iter()
            .map(|blob| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", blob))
            .collect::<Vec<_>>(),
    }))
    .expect("json");
    let mut index = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    index["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "demo:oci"});
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [index]}))
        .expect("json");
    let blob_name = |data: &[u8]| format!("blobs/sha256/{}", &sha256(data)[7..]);
    let mut named: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (blob_name(&manifest), manifest.clone()),
        (blob_name(&config), config.clone()),
    ];
    for blob in zipped {
        named.push((blob_name(&blob), blob));
    }
    let entries: Vec<(&str, &[u8])> = named
        .iter()
        .map(|(name, data)| (name.as_str(), data.as_slice()))
        .collect();
    files(&entries)
}

/// A scratch dir, and whether chains are subvolumes in it: on the
/// btrfs pool when the test scripts name it (`SBX_TEST_DATA_ROOT`),
/// so that both ways of copying a chain are run.
pub(crate) fn scratch() -> (tempfile::TempDir, bool) {
    let dir = match std::env::var_os("SBX_TEST_DATA_ROOT") {
        Some(root) => {
            std::fs::create_dir_all(&root).expect("test data root");
            tempfile::tempdir_in(root).expect("tempdir")
        }
        None => tempfile::tempdir().expect("tempdir"),
    };
    let probe = dir.path().join("probe");
    let subvolumes = crate::runtime::volume::create_subvolume(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    (dir, subvolumes)
}
