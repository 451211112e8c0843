//! End to end: images users bring. An archive built here (`docker save`
//! output, and the OCI layout `skopeo` converts it to) is imported over the
//! API, a sandbox made from it sees its layers merged with OCI semantics
//! and starts with its config's env, working dir and user; the image
//! cannot be deleted while a sandbox uses it, and its files go after.
//! Hostile archives write nothing outside the images dir. Pulls come from
//! a real registry on loopback (Debian's docker-registry), fed by skopeo:
//! anonymous and with basic auth, by tag and by digest, a missing tag and
//! a corrupt blob.
//!
//! The images are small: busybox (static, from the host) and a few files.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use sbx_api::client::{ClientError, SandboxClient};
use sbx_api::{
    CreateSandboxRequest, ErrorCode, ExecRequest, Image, ImageSource, PullEvent, PullImageRequest,
};
use sbx_tests::oci::{docker_save, layer, Entry, BUSYBOX};
use sbx_tests::registry::Registry;
use sbx_tests::{Engine, Server};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The two layers of the test image. The lower one holds busybox and its
/// applets, an account, files to delete, hide and link; the upper one
/// deletes one file (a whiteout), replaces a directory's contents (an
/// opaque dir) and a device node, which is skipped.
fn test_layers() -> Result<Vec<Vec<u8>>> {
    let busybox = std::fs::read(BUSYBOX).context("busybox-static (scripts/setup installs it)")?;
    let lower = layer(&[
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Dir("etc/"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        Entry::Dir("data/"),
        Entry::File("data/keep", b"kept\n", 0o644),
        Entry::File("data/gone", b"deleted above\n", 0o644),
        Entry::HardLink("data/hard", "data/keep"),
        Entry::Symlink("data/first", "second"),
        Entry::Symlink("data/second", "/data/keep"),
        Entry::Dir("data/dir/"),
        Entry::File("data/dir/hidden", b"hidden by the opaque dir\n", 0o644),
    ]);
    let upper = layer(&[
        Entry::File("data/.wh.gone", b"", 0o644),
        Entry::Dir("data/dir/"),
        Entry::File("data/dir/.wh..wh..opq", b"", 0o644),
        Entry::File("data/dir/new", b"from the upper layer\n", 0o644),
        Entry::CharDevice("dev-null"),
    ]);
    Ok(vec![lower, upper])
}

fn test_config() -> serde_json::Value {
    serde_json::json!({"config": {
        "Env": ["PATH=/bin", "GREETING=hello from the image"],
        "WorkingDir": "/srv/app",
        "User": "app",
        "Cmd": ["/bin/sh"],
        "Labels": {"org.example.test": "yes"},
    }})
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Converts the `docker save` archive at `from` to an OCI layout archive
/// with skopeo, which names it `name`.
fn skopeo_to_oci(from: &Path, to: &Path, name: &str) -> Result<()> {
    let output = Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("docker-archive:{}", from.display()))
        .arg(format!("oci-archive:{}:{name}", to.display()))
        .output()
        .context("skopeo (scripts/setup installs it)")?;
    if !output.status.success() {
        bail!("skopeo: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

async fn import(
    server: &Server,
    archive: Vec<u8>,
    name: Option<&str>,
) -> Result<Image, ClientError> {
    server
        .client()
        .import_image(Full::new(Bytes::from(archive)), name)
        .await
}

async fn sh(sandbox: &SandboxClient<'_>, script: &str) -> Result<String> {
    let result = sandbox.exec(&ExecRequest::shell(script)).await?;
    if result.exit_code != 0 {
        bail!(
            "{script:?} exited {}: {}{}",
            result.exit_code,
            result.stdout,
            result.stderr
        );
    }
    Ok(result.stdout)
}

fn error_code(result: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    match result {
        Err(err) => err.api_error().map(|body| body.error_code),
        Ok(value) => panic!("expected an error, got {value:?}"),
    }
}

fn images_dir() -> PathBuf {
    sbx_tests::required_env_path("SBX_TEST_IMAGES_DIR")
}

async fn an_imported_image_is_what_its_sandboxes_run(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let layers = test_layers()?;
    let name = unique("localhost:5000/sbx-tests/import-");
    let saved = docker_save(&format!("{name}:saved"), &layers, test_config());

    let image = import(&server, saved.clone(), None).await?;
    assert_eq!(
        image.name,
        format!("{name}:saved"),
        "the archive's own name"
    );
    assert_eq!(image.source, ImageSource::Import);
    assert_eq!(image.layers, Some(2));
    assert_eq!(image.skipped_devices, ["dev-null"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(image.config.cmd, Some(vec!["/bin/sh".to_owned()]));
    assert_eq!(client.get_image(&image.name).await?, image);
    let listed = client.list_images().await?;
    assert!(listed.iter().any(|listed| listed == &image), "{listed:#?}");
    assert!(listed.iter().any(
        |listed| listed.name == sbx_api::DEFAULT_IMAGE && listed.source == ImageSource::Recipe
    ));

    // The same layers as an OCI layout skopeo wrote, under a given name.
    let scratch = tempfile::tempdir()?;
    let saved_path = scratch.path().join("saved.tar");
    std::fs::write(&saved_path, &saved)?;
    let oci_path = scratch.path().join("oci.tar");
    skopeo_to_oci(&saved_path, &oci_path, "v1")?;
    let oci = import(
        &server,
        std::fs::read(&oci_path)?,
        Some(&format!("{name}-oci")),
    )
    .await?;
    assert_eq!(
        oci.name,
        format!("{name}-oci:latest"),
        "a bare name means :latest"
    );
    assert_eq!(oci.layers, Some(2));

    for image in [&image, &oci] {
        let created = client
            .create_sandbox(&CreateSandboxRequest {
                image: Some(image.name.clone()),
                env: [("FROM_REQUEST".to_owned(), "yes".to_owned())].into(),
                ..Default::default()
            })
            .await?;
        let id = created.id;
        let sandbox = client.sandbox(&id);
        let facts = sh(
            &sandbox,
            "cat /data/keep; test ! -e /data/gone && echo gone; ls /data/dir; \
             cat /data/first; stat -c %i /data/keep /data/hard | uniq | wc -l; \
             echo \"$GREETING/$FROM_REQUEST\"; pwd; id -u",
        )
        .await
        .with_context(|| server.log())?;
        assert_eq!(
            facts, "kept\ngone\nnew\nkept\n1\nhello from the image/yes\n/srv/app\n1000\n",
            "{}: layers merged (whiteout, opaque dir, links), config defaults",
            image.name
        );
        let as_root = sandbox
            .exec(&ExecRequest {
                user: Some("root".into()),
                ..ExecRequest::shell("id -u")
            })
            .await?;
        assert_eq!(as_root.stdout, "0\n", "a request's user beats the image's");

        assert_eq!(
            error_code(client.delete_image(&image.name).await),
            Some(ErrorCode::Conflict),
            "in use by a sandbox"
        );
        client.delete_sandbox(&id).await?;
    }

    let build = |image: &Image| -> Result<Option<PathBuf>> {
        let link = images_dir().join(image.name.replace('/', "+"));
        Ok(std::fs::canonicalize(link).ok())
    };
    let saved_build = build(&image)?.context("the image's build")?;
    client.delete_image(&image.name).await?;
    assert_eq!(
        error_code(client.get_image(&image.name).await),
        Some(ErrorCode::NotFound)
    );
    assert!(
        !saved_build.exists(),
        "its build is collected: {}",
        saved_build.display()
    );
    client.delete_image(&oci.name).await?;
    if engine == Engine::Docker {
        // Tagged `sbx/localhost_5000-sbx-tests-import-<hex>…:<id12>`.
        let unique_part = name.rsplit('/').next().context("a repository")?;
        let output = Command::new("docker")
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()?;
        let tags = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "docker image ls");
        assert!(
            !tags.contains(unique_part),
            "the engine let go of the deleted images: {tags}"
        );
    }
    assert_eq!(
        error_code(client.delete_image(sbx_api::DEFAULT_IMAGE).await),
        Some(ErrorCode::Conflict),
        "the default image stays"
    );
    Ok(())
}

/// youki mounts images idmapped where the kernel allows it (this one
/// does), and copies them with shifted owners where told not to; both run
/// an imported image the same. Docker's engine shifts its own.
async fn images_are_idmapped_or_copied_and_say_which(engine: Engine) -> Result<()> {
    let servers = match engine {
        Engine::Youki => vec![
            (Server::start(engine).await?, Some("idmapped_mount")),
            (
                Server::start_with_env(engine, &[("SBX_IDMAPPED_IMAGES", Path::new("off"))])
                    .await?,
                Some("shifted_copy"),
            ),
        ],
        Engine::Docker | Engine::Kubernetes => vec![(Server::start(engine).await?, None)],
    };
    let layers = test_layers()?;
    for (server, expected) in servers {
        let info = server.client().info().await?;
        assert_eq!(info.runtime.isolation.image_mapping.as_deref(), expected);
        if expected == Some("shifted_copy") {
            assert!(
                info.runtime
                    .isolation
                    .notes
                    .iter()
                    .any(|note| note.contains("SBX_IDMAPPED_IMAGES=off")),
                "{:?}",
                info.runtime.isolation.notes
            );
        }
        let name = unique("sbx-tests/mapping-");
        let image = import(
            &server,
            docker_save(&format!("{name}:v1"), &layers, test_config()),
            None,
        )
        .await?;
        let client = server.client();
        let created = client
            .create_sandbox(&CreateSandboxRequest {
                image: Some(image.name.clone()),
                ..Default::default()
            })
            .await?;
        let sandbox = client.sandbox(&created.id);
        let as_root = sandbox
            .exec(&ExecRequest {
                user: Some("root".into()),
                ..ExecRequest::shell(
                    "stat -c %u /data/keep; echo changed >> /data/keep && cat /data/keep; \
                     touch /etc/new && stat -c %u /etc/new",
                )
            })
            .await?;
        assert_eq!(
            (as_root.stdout.as_str(), as_root.exit_code),
            ("0\nkept\nchanged\n0\n", 0),
            "{expected:?}: root owns the image's files and can change them: {}",
            as_root.stderr
        );
        client.delete_sandbox(&created.id).await?;
        client.delete_image(&image.name).await?;
    }
    Ok(())
}

async fn hostile_archives_write_nothing_outside_the_images_dir(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    // Not under /tmp, which a sandbox may mount over.
    let outside = sbx_tests::temp_data_dir()?;
    let outside_text = outside.path().to_str().context("utf-8")?.to_owned();
    let busybox = std::fs::read(BUSYBOX)?;
    // The image holds a dir at the same path as the host's `outside`, so
    // both links below lead somewhere inside it.
    let mut dirs = Vec::new();
    let mut prefix = String::new();
    for component in outside_text.trim_start_matches('/').split('/') {
        prefix.push_str(component);
        prefix.push('/');
        dirs.push(prefix.clone());
    }
    let mut entries: Vec<Entry<'_>> = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        // Absolute, and relative past the root: both resolve inside it.
        Entry::Symlink("abs", &outside_text),
        Entry::Symlink("up", "../../../../../../../.."),
    ];
    entries.extend(dirs.iter().map(|dir| Entry::Dir(dir)));
    let base = layer(&entries);
    let through_abs = "abs/written-abs".to_owned();
    let through_up = format!("up{outside_text}/written-up");
    let through_links = layer(&[
        Entry::File(&through_abs, b"through an absolute link\n", 0o644),
        Entry::File(&through_up, b"through a relative link\n", 0o644),
    ]);
    let name = unique("sbx-tests/links-");
    let image = import(
        &server,
        docker_save(
            &format!("{name}:v1"),
            &[base.clone(), through_links],
            serde_json::json!({}),
        ),
        None,
    )
    .await?;
    let written: Vec<String> = std::fs::read_dir(outside.path())?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.is_empty(),
        "a layer wrote through a link to the host: {written:?}"
    );
    // What it wrote landed inside the image, where the links point there.
    let created = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some(image.name.clone()),
            ..Default::default()
        })
        .await?;
    let sandbox = client.sandbox(&created.id);
    assert_eq!(
        sh(
            &sandbox,
            &format!("cat {outside_text}/written-abs {outside_text}/written-up")
        )
        .await?,
        "through an absolute link\nthrough a relative link\n"
    );
    client.delete_sandbox(&created.id).await?;
    client.delete_image(&image.name).await?;

    for (what, layer) in [
        (
            "a name with ..",
            layer(&[Entry::File("../escaped", b"x", 0o644)]),
        ),
        (
            "a hard link out of the root",
            layer(&[Entry::HardLink("passwd", "/etc/passwd")]),
        ),
        (
            "a hard link up and out",
            layer(&[Entry::HardLink("passwd", "../../../../etc/passwd")]),
        ),
        (
            "a write through a link to nothing",
            layer(&[
                Entry::Symlink("nowhere", "/no/such/dir"),
                Entry::File("nowhere/file", b"x", 0o644),
            ]),
        ),
    ] {
        let name = unique("sbx-tests/hostile-");
        let refused = import(
            &server,
            docker_save(
                &format!("{name}:v1"),
                &[base.clone(), layer],
                serde_json::json!({}),
            ),
            None,
        )
        .await;
        assert_eq!(
            error_code(refused),
            Some(ErrorCode::InvalidRequest),
            "{what}"
        );
        assert_eq!(
            error_code(client.get_image(&format!("{name}:v1")).await),
            Some(ErrorCode::NotFound),
            "{what}: no image left behind"
        );
    }
    for (what, archive) in [
        ("not a tar", b"not an archive at all".to_vec()),
        (
            "a tar of neither format",
            layer(&[Entry::File("hello", b"hi", 0o644)]),
        ),
    ] {
        let refused = import(&server, archive, Some("sbx-tests/garbage")).await;
        assert_eq!(
            error_code(refused),
            Some(ErrorCode::InvalidRequest),
            "{what}"
        );
    }
    let images_parent = images_dir().parent().context("parent")?.to_owned();
    assert!(!images_parent.join("escaped").exists());
    assert!(!Path::new("/escaped").exists());
    Ok(())
}

/// Every event of a pull, and its outcome.
async fn pull(
    server: &Server,
    request: &PullImageRequest,
) -> Result<(Vec<PullEvent>, Result<Image, ErrorCode>)> {
    let mut events = server.client().pull_image(request).await?;
    let mut seen = Vec::new();
    while let Some(event) = events.next().await? {
        match event {
            PullEvent::Done { image } => return Ok((seen, Ok(image))),
            PullEvent::Error { error } => return Ok((seen, Err(error.error_code))),
            blob => seen.push(blob),
        }
    }
    bail!("the pull ended without an outcome")
}

fn pull_request(reference: &str) -> PullImageRequest {
    PullImageRequest {
        reference: reference.to_owned(),
        ..PullImageRequest::default()
    }
}

async fn images_pull_from_a_real_registry(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let scratch = sbx_tests::temp_data_dir()?;
    let archive = scratch.path().join("saved.tar");
    let mut layers = test_layers()?;
    // A layer of this test's own, so no other test's blobs are shared.
    let own = unique("own-");
    layers.push(layer(&[Entry::File(
        &format!("data/{own}"),
        own.as_bytes(),
        0o644,
    )]));
    std::fs::write(
        &archive,
        docker_save("sbx-tests/pulled:v1", &layers, test_config()),
    )?;

    // Anonymous.
    let open = Registry::start(None)?;
    open.push(&archive, "sbx-tests/app:v1")?;
    let reference = format!("{}/sbx-tests/app:v1", open.addr);
    let (progress, outcome) = pull(&server, &pull_request(&reference)).await?;
    let image =
        outcome.map_err(|code| anyhow::anyhow!("pull failed: {code:?}; {}", server.log()))?;
    assert_eq!(image.name, reference, "named by its reference");
    assert_eq!(image.source, ImageSource::Pull);
    assert_eq!(image.layers, Some(3));
    let finished: std::collections::BTreeSet<String> = progress
        .iter()
        .filter_map(|event| match event {
            PullEvent::Blob {
                digest,
                received,
                size,
            } if received == size => Some(digest.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished.len(),
        4,
        "the config and three layers, each reported whole: {progress:#?}"
    );
    let created = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some(image.name.clone()),
            ..Default::default()
        })
        .await?;
    let sandbox = client.sandbox(&created.id);
    assert_eq!(
        sh(
            &sandbox,
            &format!("ls /data/dir; cat /data/{own}; echo \"$GREETING\"")
        )
        .await?,
        format!("new\n{own}hello from the image\n")
    );
    client.delete_sandbox(&created.id).await?;

    // Missing tag, missing repository, a digest the registry does not have.
    for missing in [
        format!("{}/sbx-tests/app:v2", open.addr),
        format!("{}/sbx-tests/nothing:v1", open.addr),
        format!("{}/sbx-tests/app@sha256:{}", open.addr, "0".repeat(64)),
    ] {
        let (_, outcome) = pull(&server, &pull_request(&missing)).await?;
        assert_eq!(outcome.err(), Some(ErrorCode::NotFound), "{missing}");
    }
    // By digest, under a name of its own.
    let digest = skopeo_digest(&reference)?;
    let by_digest = PullImageRequest {
        name: Some(unique("sbx-tests/by-digest-")),
        ..pull_request(&format!("{}/sbx-tests/app@{digest}", open.addr))
    };
    let (_, outcome) = pull(&server, &by_digest).await?;
    let pinned = outcome.map_err(|code| anyhow::anyhow!("by digest: {code:?}"))?;
    assert_eq!(pinned.id, image.id, "the same image");
    client.delete_image(&pinned.name).await?;

    // A blob the registry holds that is not what its digest says.
    let corrupt_layer = layer(&[Entry::File("data/corrupt", unique("c-").as_bytes(), 0o644)]);
    let corrupt_archive = scratch.path().join("corrupt.tar");
    std::fs::write(
        &corrupt_archive,
        docker_save(
            "sbx-tests/corrupt:v1",
            &[layers[0].clone(), corrupt_layer.clone()],
            test_config(),
        ),
    )?;
    open.push(&corrupt_archive, "sbx-tests/corrupt:v1")?;
    let stored = open.blob_path(&blob_digest(&open, "sbx-tests/corrupt:v1", 1)?);
    let mut bytes = std::fs::read(&stored)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, bytes)?;
    let (_, outcome) = pull(
        &server,
        &pull_request(&format!("{}/sbx-tests/corrupt:v1", open.addr)),
    )
    .await?;
    assert_eq!(
        outcome.err(),
        Some(ErrorCode::InvalidRequest),
        "a corrupt blob"
    );
    assert_eq!(
        error_code(
            client
                .get_image(&format!("{}/sbx-tests/corrupt:v1", open.addr))
                .await
        ),
        Some(ErrorCode::NotFound),
        "nothing of a failed pull is left"
    );
    client.delete_image(&image.name).await?;

    // Basic auth.
    let guarded = Registry::start(Some(("agent", "s3cret")))?;
    guarded.push(&archive, "sbx-tests/private:v1")?;
    let private = format!("{}/sbx-tests/private:v1", guarded.addr);
    for (username, password) in [(None, None), (Some("agent"), Some("wrong"))] {
        let request = PullImageRequest {
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
            ..pull_request(&private)
        };
        let (_, outcome) = pull(&server, &request).await?;
        assert_eq!(
            outcome.err(),
            Some(ErrorCode::InvalidRequest),
            "{username:?}/{password:?}"
        );
    }
    let request = PullImageRequest {
        username: Some("agent".into()),
        password: Some("s3cret".into()),
        ..pull_request(&private)
    };
    let (_, outcome) = pull(&server, &request).await?;
    let image =
        outcome.map_err(|code| anyhow::anyhow!("with credentials: {code:?}; {}", server.log()))?;
    assert!(
        !server.log().contains("s3cret"),
        "the password is never logged"
    );
    client.delete_image(&image.name).await?;
    Ok(())
}

/// The digest of the manifest `reference` names, as skopeo reads it.
fn skopeo_digest(reference: &str) -> Result<String> {
    let output = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()?;
    if !output.status.success() {
        bail!(
            "skopeo inspect: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// The digest of layer `index` of `repository_tag` in `registry`, from
/// its manifest as skopeo reads it.
fn blob_digest(registry: &Registry, repository_tag: &str, index: usize) -> Result<String> {
    let output = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{}/{repository_tag}", registry.addr))
        .output()?;
    if !output.status.success() {
        bail!(
            "skopeo inspect: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    manifest["layers"][index]["digest"]
        .as_str()
        .map(str::to_owned)
        .context("no such layer")
}

sbx_tests::on_every_runtime!(
    an_imported_image_is_what_its_sandboxes_run,
    hostile_archives_write_nothing_outside_the_images_dir,
    images_pull_from_a_real_registry,
    images_are_idmapped_or_copied_and_say_which,
);
