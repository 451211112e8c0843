//! Pulling an image from an OCI registry over the distribution API, with
//! `oci-client` (auth challenges, tokens, redirects, digest headers).
//!
//! What a pull fetches is written as an OCI image layout (the manifest, the
//! config and every layer under `blobs/sha256/`, an `index.json` naming the
//! manifest) into an import's staging dir, and imported from there like an
//! uploaded layout ([`super::archive::read`]): every blob is checked
//! against its digest there, whatever the registry said, and a manifest
//! pulled by digest against that digest.
//!
//! Plain HTTP is used only for a registry on loopback, or one the request
//! marks insecure; any other is reached over TLS, trusting the host's
//! roots.

use super::ImageError;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use oci_spec::image::ImageManifest;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// How to reach the registry.
#[derive(Clone)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

/// Names the kind and the user, never a secret.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Bytes of one blob received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProgress {
    pub digest: String,
    pub received: u64,
    pub size: u64,
}

/// Fetches `reference` into `layout` (an empty dir of ours) as an OCI
/// layout, reporting each blob's progress to `progress`. Returns the
/// reference as fetched.
pub async fn fetch(
    reference: &str,
    credentials: Credentials,
    insecure: bool,
    layout: &Path,
    progress: impl Fn(BlobProgress),
) -> Result<String, ImageError> {
    let reference: Reference = reference
        .parse()
        .map_err(|err| ImageError::Invalid(format!("image reference {reference:?}: {err}")))?;
    let registry = reference.resolve_registry().to_owned();
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol_for(&registry, insecure),
        platform_resolver: None,
        ..ClientConfig::default()
    });
    let auth = match credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        Credentials::Bearer(token) => RegistryAuth::Bearer(token),
    };
    let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
    let (mut raw, mut digest) = client
        .pull_manifest_raw(&reference, &auth, &accepted)
        .await
        .map_err(|err| registry_error(&reference, err))?;
    let mut manifest_reference = reference.clone();
    if let Some(platform_digest) = platform_manifest(&raw)? {
        manifest_reference = reference.clone_with_digest(platform_digest);
        (raw, digest) = client
            .pull_manifest_raw(&manifest_reference, &auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
            .await
            .map_err(|err| registry_error(&reference, err))?;
    }
    let actual = format!("sha256:{:x}", Sha256::digest(&raw));
    let expected = manifest_reference.digest().unwrap_or(&digest);
    if actual != expected {
        return Err(ImageError::Invalid(format!(
            "the registry sent a manifest of digest {actual} for {expected}"
        )));
    }
    let manifest = ImageManifest::from_reader(&raw[..])
        .map_err(|err| ImageError::Invalid(format!("the registry's manifest: {err}")))?;
    let blobs = layout.join("blobs").join("sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(ImageError::io(format!("cannot make {}", blobs.display())))?;
    write(&blobs.join(&actual[7..]), &raw).await?;
    for descriptor in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let wanted = OciDescriptor {
            digest: descriptor.digest().to_string(),
            media_type: descriptor.media_type().to_string(),
            size: descriptor.size() as i64,
            ..OciDescriptor::default()
        };
        let Some(hex) = wanted.digest.strip_prefix("sha256:") else {
            return Err(ImageError::Invalid(format!(
                "blob {} is not named by a sha256 digest",
                wanted.digest
            )));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Invalid(format!(
                "blob digest {}",
                wanted.digest
            )));
        }
        let path = blobs.join(hex);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io(format!("cannot make {}", path.display())))?;
        let mut stream = client
            .pull_blob_stream(&manifest_reference, &wanted)
            .await
            .map_err(|err| registry_error(&reference, err))?;
        let size = descriptor.size();
        let mut received = 0;
        let mut reported = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| blob_error(&reference, err))?;
            received += chunk.len() as u64;
            if received > size {
                return Err(ImageError::Invalid(format!(
                    "blob {} is larger than its manifest says ({size} bytes)",
                    wanted.digest
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(ImageError::io(format!("cannot write {}", path.display())))?;
            if received - reported >= 1 << 20 || received == size {
                reported = received;
                progress(BlobProgress {
                    digest: wanted.digest.clone(),
                    received,
                    size,
                });
            }
        }
        file.flush()
            .await
            .map_err(ImageError::io(format!("cannot write {}", path.display())))?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": actual,
            "size": raw.len(),
            "annotations": {"org.opencontainers.image.ref.name": reference.whole()},
        }],
    });
    write(&layout.join("index.json"), index.to_string().as_bytes()).await?;
    write(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .await?;
    Ok(reference.whole())
}

/// Plain HTTP for a registry on loopback or one marked insecure, TLS for
/// any other.
fn protocol_for(registry: &str, insecure: bool) -> ClientProtocol {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if insecure || loopback {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    }
}

/// The digest of the manifest for this machine's platform when `raw` is
/// an index (a multi-platform image); `None` when it is a manifest.
fn platform_manifest(raw: &[u8]) -> Result<Option<String>, ImageError> {
    let parsed: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|err| ImageError::Invalid(format!("the registry's manifest: {err}")))?;
    let Some(manifests) = parsed.get("manifests").and_then(|list| list.as_array()) else {
        return Ok(None);
    };
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    manifests
        .iter()
        .find(|entry| {
            entry["platform"]["os"] == "linux" && entry["platform"]["architecture"] == architecture
        })
        .and_then(|entry| entry["digest"].as_str())
        .map(|digest| Some(digest.to_owned()))
        .ok_or_else(|| {
            ImageError::Invalid(format!("the image has no linux/{architecture} manifest"))
        })
}

async fn write(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    tokio::fs::write(path, data)
        .await
        .map_err(ImageError::io(format!("cannot write {}", path.display())))
}

/// A blob that broke off, or that `oci-client` found is not its digest.
fn blob_error(reference: &Reference, err: std::io::Error) -> ImageError {
    let whole = reference.whole();
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
    {
        Some(digest) => ImageError::Invalid(format!(
            "{whole}: a blob does not match its digest: {digest}"
        )),
        None => ImageError::Unreachable(format!("{whole}: the download broke off: {err}")),
    }
}

/// What the registry answered, as the image layer's error.
fn registry_error(reference: &Reference, err: OciDistributionError) -> ImageError {
    let whole = reference.whole();
    match err {
        OciDistributionError::ImageManifestNotFoundError(_) => {
            ImageError::NotInRegistry(format!("{whole}: no such image in the registry"))
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    format!("{:?}", e.code).as_str(),
                    "ManifestUnknown" | "NameUnknown" | "BlobUnknown"
                )
            }) =>
        {
            ImageError::NotInRegistry(format!("{whole}: no such image in the registry"))
        }
        OciDistributionError::AuthenticationFailure(message)
        | OciDistributionError::UnauthorizedError { url: message } => ImageError::Registry(
            format!("{whole}: the registry refused the credentials ({message})"),
        ),
        OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
            ImageError::Unreachable(format!("cannot reach the registry of {whole}: {err}"))
        }
        OciDistributionError::DigestError(err) => {
            ImageError::Invalid(format!("{whole}: a blob does not match its digest: {err}"))
        }
        other => ImageError::Registry(format!("{whole}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_or_when_asked() {
        for registry in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(
                matches!(protocol_for(registry, false), ClientProtocol::HttpsExcept(ref list) if list == &[registry.to_owned()]),
                "{registry}"
            );
        }
        for registry in ["registry.example.com", "10.0.0.1:5000", "ghcr.io"] {
            assert!(
                matches!(protocol_for(registry, false), ClientProtocol::Https),
                "{registry}"
            );
        }
        assert!(matches!(
            protocol_for("registry.internal:5000", true),
            ClientProtocol::HttpsExcept(_)
        ));
    }

    #[test]
    fn an_index_resolves_to_this_platforms_manifest() {
        let arch = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            "arm64"
        };
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"digest": "sha256:aa", "platform": {"os": "windows", "architecture": arch}},
            {"digest": "sha256:bb", "platform": {"os": "linux", "architecture": arch}},
        ]});
        assert_eq!(
            platform_manifest(index.to_string().as_bytes()).expect("index"),
            Some("sha256:bb".into())
        );
        let manifest = serde_json::json!({"schemaVersion": 2, "layers": []});
        assert_eq!(
            platform_manifest(manifest.to_string().as_bytes()).expect("manifest"),
            None
        );
        let other = serde_json::json!({"manifests": [
            {"digest": "sha256:cc", "platform": {"os": "linux", "architecture": "s390x"}},
        ]});
        assert!(platform_manifest(other.to_string().as_bytes()).is_err());
    }
}
