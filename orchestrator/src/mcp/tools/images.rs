//! The image tools: list the images sandboxes can be made from, inspect
//! one, build one from a Dockerfile, delete one. Importing takes an
//! archive's bytes, which a model has no business relaying: it stays a
//! REST call (`POST /v1/images/import`). A build's context is the few text
//! files a model writes (the Dockerfile, a requirements file), sent as the
//! tar `POST /v1/images/build` takes.
//!
//! An image's name has slashes (`localhost:5000/team/app:v1`); in a path
//! it is one segment, percent-encoded (see [`image_path`]).

use super::{Answer, ToolError, MAX_JSON_BYTES};
use crate::images::reference::Reference;
use crate::mcp::rest::Rest;
use crate::mcp::text;
use axum::http::Method;
use sbx_api::{BuildImageQuery, Image, ImageList};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListImagesArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageArgs {
    /// The image's name as list_images shows it, e.g. "base" or "localhost:5000/team/app:v1" (a name without a tag means ":latest").
    name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImageArgs {
    /// The name to give the image, e.g. "my-app:v1" (":latest" when no tag is given).
    name: String,
    /// The Dockerfile's text. Supported: FROM, RUN, COPY, ADD, ENV, WORKDIR, USER, ARG, LABEL, CMD, ENTRYPOINT.
    dockerfile: String,
    /// Other files of the build context that COPY can take: path (relative, e.g. "requirements.txt") to text content.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// ARG values.
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    /// Hosts RUN steps may reach through the egress proxy (e.g. ["pypi.org", "files.pythonhosted.org"]); none by default.
    #[serde(default)]
    allow: Vec<String>,
}

/// The most a build's files may hold, together.
const MAX_CONTEXT_BYTES: usize = 4 << 20;

/// The path of the image `name`: the name checked against the reference
/// grammar, then percent-encoded into one segment, so no name reaches
/// another route (`/` is `%2F`; the router decodes it back). Its first
/// byte is always escaped: a static route beside `{name}`, which the
/// router prefers (`/v1/images/import`), never holds a `%`, so no name
/// (`import`) is taken for one.
fn image_path(name: &str) -> Result<String, ToolError> {
    Reference::parse(name).map_err(|err| {
        ToolError::Invalid(format!(
            "{} is not an image name ({err}); list_images shows the names",
            text::printable(name)
        ))
    })?;
    let mut segment = String::with_capacity(name.len() * 3);
    for (at, byte) in name.bytes().enumerate() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved && at > 0 {
            segment.push(char::from(byte));
        } else {
            let _ = write!(segment, "%{byte:02X}");
        }
    }
    Ok(format!("/v1/images/{segment}"))
}

/// Where `image` came from, as the API spells it (`recipe`, `import`).
fn source(image: &Image) -> String {
    match serde_json::to_value(image.source) {
        Ok(serde_json::Value::String(source)) => source,
        _ => "unknown".to_owned(),
    }
}

fn size(image: &Image) -> String {
    image.size_bytes.map_or_else(
        || "not known".to_owned(),
        |bytes| format!("{} MiB", bytes.div_ceil(1 << 20)),
    )
}

/// What a sandbox made from `image` gets by default: its env, working dir
/// and user; empty if the image sets none.
fn defaults(image: &Image) -> String {
    let config = &image.config;
    let mut parts = Vec::new();
    if !config.env.is_empty() {
        let env: Vec<_> = config
            .env
            .iter()
            .map(|entry| text::printable(entry))
            .collect();
        parts.push(format!("env {}", env.join(" ")));
    }
    if let Some(dir) = &config.working_dir {
        parts.push(format!("working dir {}", text::printable(dir)));
    }
    if let Some(user) = &config.user {
        parts.push(format!("user {}", text::printable(user)));
    }
    parts.join("; ")
}

fn describe_image(image: &Image) -> String {
    let mut line = format!(
        "{}  id {}  source {}  size {}  created {}",
        image.name,
        image.id,
        source(image),
        size(image),
        image
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let defaults = defaults(image);
    if !defaults.is_empty() {
        let _ = write!(line, "  defaults: {defaults}");
    }
    line
}

pub async fn list_images(rest: &Rest) -> Result<Answer, ToolError> {
    let list: ImageList = rest
        .json(Method::GET, "/v1/images", None::<&()>, MAX_JSON_BYTES)
        .await?;
    let text = if list.images.is_empty() {
        "no images".to_owned()
    } else {
        let mut text = list
            .images
            .iter()
            .map(describe_image)
            .collect::<Vec<_>>()
            .join("\n");
        text.push_str(
            "\nPass a name as create_sandbox's image to start a sandbox from it (default: base).",
        );
        text
    };
    Ok(Answer::text(text).with(&list))
}

/// Builds an image from a Dockerfile and the files the model gives.
pub async fn build_image(rest: &Rest, args: BuildImageArgs) -> Result<Answer, ToolError> {
    let context = context_tar(&args)?;
    let query = BuildImageQuery {
        name: args.name,
        build_args: Some(
            serde_json::to_string(&args.build_args)
                .map_err(|err| ToolError::Internal(format!("cannot encode build_args: {err}")))?,
        ),
        allow: (!args.allow.is_empty()).then(|| args.allow.join(",")),
        ..BuildImageQuery::default()
    };
    let query = serde_urlencoded::to_string(&query)
        .map_err(|err| ToolError::Invalid(format!("cannot encode the build: {err}")))?;
    let response = rest
        .send(
            Method::POST,
            &format!("{IMAGES_ROUTE}/build?{query}"),
            Some(axum::body::Body::from(context)),
            false,
        )
        .await?;
    let bytes = crate::mcp::rest::read_bounded(response.into_body(), MAX_JSON_BYTES).await?;
    let image: Image = serde_json::from_slice(&bytes)
        .map_err(|err| ToolError::Internal(format!("unexpected answer from the build: {err}")))?;
    let text = format!(
        "built {}\n{}\nPass its name as create_sandbox's image to start a sandbox from it.",
        image.name,
        describe_image(&image)
    );
    Ok(Answer::text(text).with(&image))
}

const IMAGES_ROUTE: &str = "/v1/images";

/// The build context: the Dockerfile and `files`, as a tar.
fn context_tar(args: &BuildImageArgs) -> Result<Vec<u8>, ToolError> {
    let total: usize = args.dockerfile.len() + args.files.values().map(String::len).sum::<usize>();
    if total > MAX_CONTEXT_BYTES {
        return Err(ToolError::Invalid(format!(
            "the Dockerfile and files hold {total} bytes; at most {MAX_CONTEXT_BYTES} \
             (import large contexts over REST: POST /v1/images/build)"
        )));
    }
    let mut builder = tar::Builder::new(Vec::new());
    let entries = std::iter::once(("Dockerfile", &args.dockerfile))
        .chain(args.files.iter().map(|(path, text)| (path.as_str(), text)));
    for (path, text) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, text.as_bytes())
            .map_err(|err| ToolError::Invalid(format!("file {}: {err}", text::printable(path))))?;
    }
    builder
        .into_inner()
        .map_err(|err| ToolError::Internal(format!("cannot make the build context: {err}")))
}

pub async fn get_image(rest: &Rest, args: ImageArgs) -> Result<Answer, ToolError> {
    let uri = image_path(&args.name)?;
    let image: Image = rest
        .json(Method::GET, &uri, None::<&()>, MAX_JSON_BYTES)
        .await?;
    let config = &image.config;
    let mut text = format!(
        "image {}\nid: {}\nsource: {}",
        image.name,
        image.id,
        source(&image)
    );
    if let Some(layers) = image.layers {
        let _ = write!(text, " ({layers} layers)");
    }
    let _ = write!(
        text,
        "\nsize: {}\ncreated: {}",
        size(&image),
        image
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for entry in &config.env {
        let _ = write!(text, "\nenv: {}", text::printable(entry));
    }
    if let Some(dir) = &config.working_dir {
        let _ = write!(
            text,
            "\nworking dir: {} (where commands run unless they say otherwise)",
            text::printable(dir)
        );
    }
    if let Some(user) = &config.user {
        let _ = write!(
            text,
            "\nuser: {} (who commands run as)",
            text::printable(user)
        );
    }
    let words = |words: &[String]| {
        words
            .iter()
            .map(|word| format!("{:?}", word))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(entrypoint) = &config.entrypoint {
        let _ = write!(text, "\nentrypoint: {} (not run)", words(entrypoint));
    }
    if let Some(cmd) = &config.cmd {
        let _ = write!(text, "\ncmd: {} (not run)", words(cmd));
    }
    for (key, value) in &config.labels {
        let _ = write!(
            text,
            "\nlabel: {}={}",
            text::printable(key),
            text::printable(value)
        );
    }
    if !image.skipped_devices.is_empty() {
        let _ = write!(
            text,
            "\ndevice nodes left out: {}",
            image
                .skipped_devices
                .iter()
                .map(|device| text::printable(device))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let _ = write!(
        text,
        "\ncreate_sandbox with image \"{}\" starts a sandbox from it.",
        image.name
    );
    Ok(Answer::text(text).with(&image))
}

pub async fn delete_image(rest: &Rest, args: ImageArgs) -> Result<Answer, ToolError> {
    let uri = image_path(&args.name)?;
    rest.call(Method::DELETE, &uri, None, false).await?;
    Ok(Answer::text(format!("deleted image {}", args.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{Request, StatusCode};
    use axum::routing::{get, post};
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[test]
    fn image_names_are_one_path_segment() {
        assert_eq!(image_path("base").expect("valid"), "/v1/images/%62ase");
        assert_eq!(
            image_path("localhost:5000/team/app:v1.2").expect("valid"),
            "/v1/images/%6Cocalhost%3A5000%2Fteam%2Fapp%3Av1.2"
        );
        assert_eq!(image_path("import").expect("valid"), "/v1/images/%69mport");
        for bad in [
            "",
            "..",
            "../tokens",
            "a/../b",
            "a?b",
            "a b",
            "a#b",
            "UPPER",
            "a/",
        ] {
            assert!(
                matches!(image_path(bad), Err(ToolError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    /// The router the API is served by decodes the segment back to the
    /// name, on the `{name}` route even for names a static route has.
    #[tokio::test]
    async fn the_router_decodes_the_name_back() {
        let router = Router::new()
            .route(
                "/v1/images/{name}",
                get(|Path(name): Path<String>| async move { name }),
            )
            .route("/v1/images/import", post(|| async { "import route" }))
            .route("/v1/images/pull", post(|| async { "pull route" }))
            .route("/v1/images/build", post(|| async { "build route" }));
        for name in [
            "base",
            "localhost:5000/team/app:v1",
            "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "import",
            "pull",
            "build",
        ] {
            let request = Request::builder()
                .uri(image_path(name).expect("valid"))
                .body(Body::empty())
                .expect("a request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let body = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            assert_eq!(body, name.as_bytes(), "{name}");
        }
    }

    #[test]
    fn a_listed_image_shows_its_defaults() {
        let image: Image = serde_json::from_value(serde_json::json!({
            "name": "localhost:5000/team/app:v1", "id": "sha256:ab", "source": "import",
            "created_at": "2026-01-01T00:00:00Z", "size_bytes": 3_000_000, "layers": 2,
            "config": {"env": ["PATH=/usr/bin", "A=b\nc"], "working_dir": "/app", "user": "app"}
        }))
        .expect("an image");
        let line = describe_image(&image);
        assert_eq!(
            line,
            "localhost:5000/team/app:v1  id sha256:ab  source import  size 3 MiB  created \
             2026-01-01T00:00:00Z  defaults: env PATH=/usr/bin \"A=b\\nc\"; working dir /app; \
             user app"
        );
    }
}
