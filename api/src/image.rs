//! Images: what `GET /v1/images` lists and `POST /v1/images/import` makes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Built on the server from a recipe in the repository
    /// (`scripts/build-image`), like `base`.
    Recipe,
    /// Imported from an OCI image layout or `docker save` archive.
    Import,
    /// Pulled from a registry.
    Pull,
    /// Built on the server from a Dockerfile (`POST /v1/images/build`).
    Build,
}

/// What an image's config says a container runs with. `env`,
/// `working_dir` and `user` become the defaults of every sandbox made from
/// the image (a sandbox's own `env` wins); `entrypoint` and `cmd` are kept
/// for reference, since the sandbox agent is always PID 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageConfig {
    /// `NAME=value` entries, in the image's order.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// A user name or `uid[:gid]` from the image's `/etc/passwd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One image sandboxes can be made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    /// `[registry/]repository[:tag][@digest]`, what `image` in a create
    /// request names. `base` is the default image.
    pub name: String,
    /// `sha256:<hex>` of the image config for imported images;
    /// `recipe:<hash>` (the recipe's hash) for recipe images.
    pub id: String,
    pub source: ImageSource,
    pub created_at: DateTime<Utc>,
    /// Bytes of the files in its root filesystem (hard links counted
    /// once), when known: recipe images do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// How many layers it was built from (imported images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
    #[serde(default)]
    pub config: ImageConfig,
    /// Device nodes the layers held, which are never made (a sandbox has
    /// its own `/dev`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_devices: Vec<String>,
}

/// The agent's `POST /layer/baseline`: how many entries of the sandbox's
/// root filesystem it recorded, against which `GET /layer/changes` later
/// tells what a build step changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBaseline {
    pub entries: u64,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// The path parameter of `/v1/images/{name}`: the image's name with its
/// slashes percent-encoded (`localhost:5000%2Fapp:v1`); a name that is a
/// sibling route's (`import`, `pull`) has its first letter encoded too
/// (`%70ull`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ImagePath {
    /// The image's name.
    pub name: String,
}

/// The query of `POST /v1/images/import`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportImageQuery {
    /// The name to give the image; by default the one the archive gives
    /// it (`RepoTags`, or the index's `org.opencontainers.image.ref.name`
    /// when that is a whole reference). `:latest` is added to a name
    /// without a tag or digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The query of `POST /v1/images/build`; the body is the build context
/// as a tar. Like Docker's own build API, a list travels comma-separated
/// and the build arguments as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BuildImageQuery {
    /// The name to give the image (`:latest` added without a tag).
    #[param(max_length = 512)]
    pub name: String,
    /// The Dockerfile's path inside the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(default = "Dockerfile")]
    pub dockerfile: Option<String>,
    /// `ARG` values, a JSON object of strings (`{"VERSION":"1.2"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<String>,
    /// What `RUN` steps may reach through the egress proxy, as a
    /// sandbox's `network.egress` entries, comma-separated. Absent:
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<String>,
    /// Run every step even where the build cache holds its result.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
}

impl BuildImageQuery {
    /// The build arguments, parsed.
    pub fn build_args(&self) -> Result<BTreeMap<String, String>, String> {
        match &self.build_args {
            None => Ok(BTreeMap::new()),
            Some(json) => serde_json::from_str(json)
                .map_err(|err| format!("build_args is not a JSON object of strings: {err}")),
        }
    }

    /// The egress allowlist `RUN` steps get.
    pub fn egress(&self) -> Vec<String> {
        self.allow
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// One line of a streamed build (`Accept: application/x-ndjson`).
///
/// Order: a `step` as each instruction starts (`cached` when its result
/// came from the build cache), the output of its command as it happens,
/// then `done` with the image or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    Step {
        /// 1-based, of `total`.
        index: u32,
        total: u32,
        /// The Dockerfile line the instruction starts on.
        line: u32,
        instruction: String,
        cached: bool,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The image is built and ready.
    Done {
        image: Image,
    },
    /// The build failed; no image was named.
    Error {
        error: crate::ErrorBody,
    },
}

/// The most an import's body may hold: 16 GiB.
pub const MAX_IMAGE_ARCHIVE_BYTES: u64 = 16 << 30;

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// `registry[:port]/repository[:tag][@digest]`; `:latest` when it
    /// has neither tag nor digest.
    pub reference: String,
    /// The name to give the image here; the reference by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Basic auth, which a registry with a token service also takes to
    /// hand out its bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A bearer token the registry takes as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Plain HTTP to a registry that is not on loopback (loopback
    /// registries are reached over plain HTTP anyway).
    #[serde(default)]
    pub insecure: bool,
}

impl PullImageRequest {
    /// Credentials come as a username with a password, or a token.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.username, &self.password, &self.token) {
            (None, None, _) | (Some(_), Some(_), None) => Ok(()),
            (Some(_), None, _) | (None, Some(_), _) => {
                Err("give username and password together".into())
            }
            (Some(_), Some(_), Some(_)) => Err("give a username and password, or a token".into()),
        }
    }
}

/// One line of `POST /v1/images/pull` with `Accept: application/x-ndjson`:
/// progress as blobs arrive, then the image or the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    /// Bytes of one blob (a layer, or the config) received so far.
    Blob {
        digest: String,
        received: u64,
        /// Its size, from the manifest.
        size: u64,
    },
    /// The image is pulled and ready.
    Done { image: Image },
    /// The pull failed; nothing of it is left.
    Error { error: crate::ErrorBody },
}
