//! End to end: Dockerfile builds, made by sbx itself on each runtime. A
//! Dockerfile with every supported instruction builds an image whose
//! sandboxes see each step's files, owners, environment, working dir and
//! user; a rebuild comes whole from the cache, and an edited file rebuilds
//! only from its step on; an unsupported instruction and a failing `RUN`
//! fail the build with their line, leaving no image and no build sandbox;
//! `RUN` reaches the network only through the build's allowlist.
//!
//! The builds start from a small image imported first: the host's static
//! busybox, an account and a file for a `RUN` to delete.

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use sbx_api::client::{Client, SandboxClient};
use sbx_api::{
    BuildEvent, BuildImageQuery, CreateSandboxRequest, ErrorBody, ErrorCode, ExecRequest, Image,
    ImageSource,
};
use sbx_tests::oci::{docker_save, layer, Entry, BUSYBOX};
use sbx_tests::{Engine, Server};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The busybox applets the Dockerfiles here use.
const APPLETS: [&str; 9] = [
    "sh", "echo", "id", "cat", "rm", "pwd", "wget", "stat", "mkdir",
];

/// Every supported instruction, with variables, both command forms, a
/// `--chown`, an archive `ADD` unpacks and one it copies.
const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE}
ARG GREETING=hello
ENV APP_HOME=/srv/app \
    MODE=test
LABEL org.example.built="yes" stage=${MODE}
WORKDIR $APP_HOME
COPY hello.txt ./
COPY --chown=app:app src/ lib/
ADD bundle.tar.gz /opt/bundle/
ADD notes.txt /opt/notes.txt
RUN echo "$GREETING from RUN as $(id -u) in $(pwd)" > run.txt && rm /data/gone-in-build && echo visible-output
RUN ["/bin/sh", "-c", "echo exec form > exec.txt"]
USER app
RUN id -u > lib/whoami
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo cmd"]
"#;

/// How many instructions [`DOCKERFILE`] has, and which change files.
const STEPS: u32 = 16;
const FILE_STEPS: [&str; 4] = ["WORKDIR", "COPY", "ADD", "RUN"];

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// The image the builds start from, named `name`. Its config holds the
/// name, so each test's image (and build cache) is its own: the tests of
/// both runtimes share one images dir.
fn base_image(name: &str) -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).context("busybox-static (scripts/setup installs it)")?;
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", &busybox, 0o755),
    ];
    let links: Vec<String> = APPLETS
        .iter()
        .map(|applet| format!("bin/{applet}"))
        .collect();
    entries.extend(links.iter().map(|link| Entry::Symlink(link, "busybox")));
    entries.extend([
        Entry::Dir("etc/"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        Entry::Dir("data/"),
        Entry::File("data/gone-in-build", b"a RUN deletes this\n", 0o644),
    ]);
    let config = serde_json::json!({"config": {
        "Env": ["PATH=/bin"],
        "Labels": {"org.example.test-image": name},
    }});
    Ok(docker_save(name, &[layer(&entries)], config))
}

/// A tar of `files` (`path`, contents), as `sbx image build` sends a
/// context: sorted, parents implicit.
fn context(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut files: Vec<&(&str, Vec<u8>)> = files.iter().collect();
    files.sort_by_key(|(path, _)| *path);
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder
            .append_data(&mut header, path, data.as_slice())
            .expect("append");
    }
    builder.into_inner().expect("tar")
}

/// A gzipped tar holding `inside/x.txt`, for `ADD` to unpack.
fn bundle() -> Result<Vec<u8>> {
    let tar = context(&[("inside/x.txt", b"from the bundle\n".to_vec())]);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &tar)?;
    Ok(gzip.finish()?)
}

fn full_context(notes: &str) -> Result<Vec<u8>> {
    Ok(context(&[
        ("Dockerfile", DOCKERFILE.as_bytes().to_vec()),
        ("hello.txt", b"hello file\n".to_vec()),
        ("src/a.py", b"print('a')\n".to_vec()),
        ("src/pkg/b.py", b"print('b')\n".to_vec()),
        ("bundle.tar.gz", bundle()?),
        ("notes.txt", notes.as_bytes().to_vec()),
    ]))
}

/// A finished build: its events, and the image or the error.
struct Built {
    events: Vec<BuildEvent>,
    outcome: std::result::Result<Image, ErrorBody>,
}

impl Built {
    /// `(instruction, cached)` of each step.
    fn steps(&self) -> Vec<(String, bool)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                BuildEvent::Step {
                    instruction,
                    cached,
                    ..
                } => Some((instruction.clone(), *cached)),
                _ => None,
            })
            .collect()
    }

    fn output(&self) -> String {
        self.events
            .iter()
            .filter_map(|event| match event {
                BuildEvent::Stdout { data } | BuildEvent::Stderr { data } => Some(data.as_str()),
                _ => None,
            })
            .collect()
    }

    fn image(&self) -> Result<&Image> {
        match &self.outcome {
            Ok(image) => Ok(image),
            Err(error) => bail!("the build failed: {error:?}\n{}", self.output()),
        }
    }

    fn error(&self) -> Result<&ErrorBody> {
        match &self.outcome {
            Err(error) => Ok(error),
            Ok(image) => bail!("the build should have failed, made {image:?}"),
        }
    }
}

async fn build(client: &Client, query: &BuildImageQuery, context: Vec<u8>) -> Result<Built> {
    let mut stream = client
        .build_image(query, Full::new(Bytes::from(context)))
        .await?;
    let mut events = Vec::new();
    while let Some(event) = stream.next().await? {
        events.push(event);
    }
    let outcome = match events.last() {
        Some(BuildEvent::Done { image }) => Ok(image.clone()),
        Some(BuildEvent::Error { error }) => Err(error.clone()),
        other => bail!("the build stream ended with {other:?}"),
    };
    Ok(Built { events, outcome })
}

fn query(name: &str, base: &str) -> BuildImageQuery {
    BuildImageQuery {
        name: name.to_owned(),
        build_args: Some(serde_json::json!({"BASE": base, "GREETING": "hi"}).to_string()),
        ..BuildImageQuery::default()
    }
}

async fn sh(sandbox: &SandboxClient<'_>, script: &str) -> Result<String> {
    let result = sandbox.exec(&ExecRequest::shell(script)).await?;
    ensure!(
        result.exit_code == 0,
        "{script:?} exited {}: {}{}",
        result.exit_code,
        result.stdout,
        result.stderr
    );
    Ok(result.stdout)
}

/// The sandboxes a build left behind.
async fn build_sandboxes(client: &Client) -> Result<Vec<String>> {
    Ok(client
        .list_sandboxes()
        .await?
        .into_iter()
        .filter(|sandbox| sandbox.labels.contains_key("sbx.build"))
        .map(|sandbox| sandbox.id)
        .collect())
}

async fn import_base(client: &Client) -> Result<String> {
    let base = unique("localhost/sbx-tests/build-base-");
    let image = client
        .import_image(Full::new(Bytes::from(base_image(&base)?)), None)
        .await?;
    Ok(image.name)
}

async fn a_dockerfile_builds_and_rebuilds_from_its_cache(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let base = import_base(&client).await?;
    let name = unique("localhost/sbx-tests/built-");
    let query = query(&name, &base);

    let first = build(&client, &query, full_context("first notes\n")?).await?;
    let image = first.image()?.clone();
    let steps = first.steps();
    assert_eq!(steps.len(), STEPS as usize, "{steps:#?}");
    for (instruction, cached) in &steps {
        if FILE_STEPS.iter().any(|step| instruction.starts_with(step)) {
            assert!(!cached, "{instruction} ran on the first build");
        }
    }
    assert!(
        first.output().contains("visible-output"),
        "{}",
        first.output()
    );
    assert_eq!(image.name, format!("{name}:latest"));
    assert_eq!(image.source, ImageSource::Build);
    assert_eq!(image.layers, Some(8), "{image:#?}");
    let config = &image.config;
    assert_eq!(config.working_dir.as_deref(), Some("/srv/app"));
    assert_eq!(config.user.as_deref(), Some("app"));
    assert!(config.env.contains(&"MODE=test".to_owned()), "{config:?}");
    assert!(config.env.contains(&"PATH=/bin".to_owned()), "{config:?}");
    assert!(!config
        .env
        .iter()
        .any(|entry| entry.starts_with("GREETING=")));
    assert_eq!(
        config.labels,
        BTreeMap::from([
            ("org.example.built".to_owned(), "yes".to_owned()),
            (
                "org.example.test-image".to_owned(),
                base.trim_end_matches(":latest").to_owned()
            ),
            ("stage".to_owned(), "test".to_owned()),
        ])
    );
    assert_eq!(
        config.entrypoint.as_deref(),
        Some(&["/bin/sh".to_owned(), "-c".to_owned()][..])
    );
    assert_eq!(config.cmd.as_deref(), Some(&["echo cmd".to_owned()][..]));
    assert!(build_sandboxes(&client).await?.is_empty());

    // What each step made, in a sandbox of the image.
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some(name.clone()),
            ..CreateSandboxRequest::default()
        })
        .await?;
    let inside = client.sandbox(&sandbox.id);
    assert_eq!(sh(&inside, "pwd; id -u").await?, "/srv/app\n1000\n");
    assert_eq!(
        sh(&inside, "echo \"$MODE $APP_HOME [$GREETING]\"").await?,
        "test /srv/app []\n"
    );
    assert_eq!(sh(&inside, "cat hello.txt").await?, "hello file\n");
    assert_eq!(
        sh(
            &inside,
            "stat -c '%u:%g %n' lib lib/a.py lib/pkg lib/pkg/b.py"
        )
        .await?,
        "1000:1000 lib\n1000:1000 lib/a.py\n1000:1000 lib/pkg\n1000:1000 lib/pkg/b.py\n"
    );
    assert_eq!(sh(&inside, "stat -c '%u' hello.txt").await?, "0\n");
    assert_eq!(
        sh(&inside, "cat /opt/bundle/inside/x.txt").await?,
        "from the bundle\n"
    );
    assert_eq!(sh(&inside, "cat /opt/notes.txt").await?, "first notes\n");
    assert_eq!(
        sh(&inside, "cat run.txt").await?,
        "hi from RUN as 0 in /srv/app\n"
    );
    assert_eq!(sh(&inside, "cat exec.txt").await?, "exec form\n");
    assert_eq!(sh(&inside, "cat lib/whoami").await?, "1000\n");
    assert_eq!(
        sh(
            &inside,
            "if [ -e /data/gone-in-build ]; then echo there; else echo gone; fi"
        )
        .await?,
        "gone\n"
    );
    client.delete_sandbox(&sandbox.id).await?;

    // Nothing changed: every step from the cache, the same image.
    let again = build(&client, &query, full_context("first notes\n")?).await?;
    assert_eq!(again.image()?.id, image.id);
    let uncached: Vec<_> = again.steps().into_iter().filter(|(_, c)| !c).collect();
    assert!(uncached.is_empty(), "{uncached:#?}");
    assert!(!again.output().contains("visible-output"));

    // An edited file: its step and every one after run again.
    let edited = build(&client, &query, full_context("second notes\n")?).await?;
    let edited_image = edited.image()?.clone();
    assert_ne!(edited_image.id, image.id);
    let steps = edited.steps();
    let notes_at = steps
        .iter()
        .position(|(instruction, _)| instruction.starts_with("ADD notes.txt"))
        .context("the ADD step")?;
    for (at, (instruction, cached)) in steps.iter().enumerate() {
        let file_step = FILE_STEPS.iter().any(|step| instruction.starts_with(step));
        if at < notes_at {
            assert!(cached, "{instruction} is before the edit");
        } else if file_step {
            assert!(!cached, "{instruction} is after the edit");
        }
    }
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some(name.clone()),
            ..CreateSandboxRequest::default()
        })
        .await?;
    let inside = client.sandbox(&sandbox.id);
    assert_eq!(sh(&inside, "cat /opt/notes.txt").await?, "second notes\n");
    assert_eq!(
        sh(&inside, "cat run.txt").await?,
        "hi from RUN as 0 in /srv/app\n"
    );
    client.delete_sandbox(&sandbox.id).await?;
    assert!(build_sandboxes(&client).await?.is_empty());

    client.delete_image(&name).await?;
    client.delete_image(&base).await?;
    Ok(())
}

async fn a_bad_dockerfile_or_a_failing_run_makes_no_image(engine: Engine) -> Result<()> {
    let server = Server::start(engine).await?;
    let client = server.client();
    let base = import_base(&client).await?;
    let name = unique("localhost/sbx-tests/broken-");
    let with_dockerfile = |text: &str| context(&[("Dockerfile", text.as_bytes().to_vec())]);

    let unsupported = format!("FROM {base}\nRUN true\n\nHEALTHCHECK CMD true\n");
    let built = build(&client, &query(&name, &base), with_dockerfile(&unsupported)).await?;
    let error = built.error()?;
    assert_eq!(error.error_code, ErrorCode::InvalidRequest);
    assert!(
        error.message.contains("line 4") && error.message.contains("HEALTHCHECK"),
        "{error:?}"
    );

    let failing = format!("FROM {base}\nRUN echo before-the-failure && exit 3\nRUN echo never\n");
    let built = build(&client, &query(&name, &base), with_dockerfile(&failing)).await?;
    let error = built.error()?;
    assert_eq!(error.error_code, ErrorCode::InvalidRequest);
    assert!(
        error.message.contains("line 2") && error.message.contains("exit code 3"),
        "{error:?}"
    );
    assert!(built.output().contains("before-the-failure"));
    assert!(!built.output().contains("never"));

    let missing = build(
        &client,
        &query(&name, &base),
        with_dockerfile(&format!("FROM {base}\nCOPY missing.txt /\n")),
    )
    .await?;
    assert!(
        missing.error()?.message.contains("missing.txt"),
        "{:?}",
        missing.error()?
    );

    let no_dockerfile = build(&client, &query(&name, &base), context(&[])).await?;
    assert!(no_dockerfile.error()?.message.contains("Dockerfile"));

    let missing_image = client.get_image(&name).await;
    assert_eq!(
        missing_image
            .err()
            .and_then(|err| err.api_error().map(|body| body.error_code)),
        Some(ErrorCode::NotFound)
    );
    assert!(build_sandboxes(&client).await?.is_empty());
    client.delete_image(&base).await?;
    Ok(())
}

/// An HTTP server on loopback that answers every request with `body`.
async fn serve_on_loopback(body: &'static str) -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    Ok((port, task))
}

async fn run_reaches_only_what_the_build_allows(engine: Engine) -> Result<()> {
    let server =
        Server::start_with(engine, &["--egress-resolve", "allowed.test=127.0.0.1"]).await?;
    let client = server.client();
    let base = import_base(&client).await?;
    let (port, upstream) = serve_on_loopback("fetched through the proxy\n").await?;
    let name = unique("localhost/sbx-tests/fetching-");
    let dockerfile =
        format!("FROM {base}\nRUN wget -q -O /fetched http://allowed.test:{port}/file\n");
    let with_dockerfile = || context(&[("Dockerfile", dockerfile.as_bytes().to_vec())]);

    let closed = build(&client, &query(&name, &base), with_dockerfile()).await?;
    assert!(
        closed.error()?.message.contains("line 2"),
        "{:?}",
        closed.error()?
    );

    let allowed = BuildImageQuery {
        allow: Some(format!("allowed.test:{port}")),
        ..query(&name, &base)
    };
    let open = build(&client, &allowed, with_dockerfile()).await?;
    open.image()?;
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest {
            image: Some(name.clone()),
            ..CreateSandboxRequest::default()
        })
        .await?;
    assert_eq!(
        sh(&client.sandbox(&sandbox.id), "cat /fetched").await?,
        "fetched through the proxy\n"
    );
    client.delete_sandbox(&sandbox.id).await?;
    upstream.abort();
    client.delete_image(&name).await?;
    client.delete_image(&base).await?;
    Ok(())
}

sbx_tests::on_every_runtime!(
    a_dockerfile_builds_and_rebuilds_from_its_cache,
    a_bad_dockerfile_or_a_failing_run_makes_no_image,
    // hosts_only: a build step's network reaches the egress proxy, which
    // the kubernetes runtime refuses (tests/kubernetes.rs).
    ; hosts_only:
    run_reaches_only_what_the_build_allows,
);
