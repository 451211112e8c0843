//! OCI archives the tests build byte by byte: layer tars (hostile names
//! go in as they are) and `docker save` output, on the host's static
//! busybox.

use sha2::{Digest, Sha256};

/// The host's static busybox (`scripts/setup` installs busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// One entry of a [`layer`].
#[derive(Debug)]
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

/// A layer tar of `entries`, owned by root, written header by header (so
/// that hostile names go in as they are).
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, data, link, mode): (&str, tar::EntryType, &[u8], &str, u32) = match entry {
            Entry::Dir(name) => (name, tar::EntryType::Directory, b"", "", 0o755),
            Entry::File(name, data, mode) => (name, tar::EntryType::Regular, data, "", *mode),
            Entry::Symlink(name, target) => (name, tar::EntryType::Symlink, b"", target, 0o777),
            Entry::HardLink(name, target) => (name, tar::EntryType::Link, b"", target, 0o644),
            Entry::CharDevice(name) => (name, tar::EntryType::Char, b"", "", 0o666),
        };
        header.as_gnu_mut().expect("gnu").name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_gnu_mut().expect("gnu").linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// `docker save` output: `manifest.json`, the config, one `layer.tar` per
/// layer, the image named `name`.
pub fn docker_save(name: &str, layers: &[Vec<u8>], config: serde_json::Value) -> Vec<u8> {
    let mut config = config;
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": layers.iter().map(|layer| sha256(layer)).collect::<Vec<_>>(),
    });
    config["architecture"] = "amd64".into();
    config["os"] = "linux".into();
    let config = serde_json::to_vec(&config).expect("json");
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let layer_names: Vec<String> = layers
        .iter()
        .map(|layer| format!("{}/layer.tar", &sha256(layer)[7..]))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [name], "Layers": layer_names}
    ]))
    .expect("json");
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data)
            .expect("append");
    };
    add("manifest.json", &manifest);
    add(&config_name, &config);
    for (name, data) in layer_names.iter().zip(layers) {
        add(name, data);
    }
    builder.into_inner().expect("tar")
}
