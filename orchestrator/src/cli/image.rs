//! `sbx image …`: import, pull, build, list, inspect and remove images.

use super::context::{Context, Ignore, Upload};
use super::{CliError, ConnArgs};
use bytes::Bytes;
use clap::Subcommand;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sbx_api::client::{Client, ClientError};
use sbx_api::{BuildEvent, BuildImageQuery, Image, PullEvent, PullImageRequest};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::AsyncRead;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import `docker save` output or an OCI image layout tar (FILE, or -
    /// for stdin)
    Import {
        #[command(flatten)]
        conn: ConnArgs,
        file: PathBuf,
        /// Name of the image (default: the name the archive gives it)
        #[arg(long, short = 't')]
        name: Option<String>,
    },
    /// Pull an image from an OCI registry, with a progress bar per blob
    Pull {
        #[command(flatten)]
        conn: ConnArgs,
        /// registry[:port]/repository[:tag][@digest]
        reference: String,
        /// Name of the image here (default: the reference)
        #[arg(long, short = 't')]
        name: Option<String>,
        /// Registry user (the password comes from SBX_REGISTRY_PASSWORD
        /// or, with --password-stdin, from stdin)
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the registry password from stdin
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// A bearer token for the registry (SBX_REGISTRY_TOKEN)
        #[arg(
            long,
            env = "SBX_REGISTRY_TOKEN",
            hide_env_values = true,
            conflicts_with = "username"
        )]
        registry_token: Option<String>,
        /// Plain HTTP to a registry that is not on loopback
        #[arg(long)]
        insecure: bool,
    },
    /// Build an image from a Dockerfile in CONTEXT_DIR, on the server;
    /// prints each step and its output as it runs
    Build {
        #[command(flatten)]
        conn: ConnArgs,
        /// Name of the image (`:latest` is added without a tag)
        #[arg(long, short = 't', visible_alias = "tag")]
        name: String,
        /// The Dockerfile, inside CONTEXT_DIR (default: CONTEXT_DIR/Dockerfile)
        #[arg(long = "file", short = 'f', value_name = "DOCKERFILE")]
        file: Option<PathBuf>,
        /// An ARG's value: KEY=VALUE, or KEY for this environment's
        /// value (left out when unset); repeatable
        #[arg(long = "build-arg", value_name = "KEY[=VALUE]", value_parser = parse_build_arg)]
        build_args: Vec<(String, Option<String>)>,
        /// Let RUN steps reach HOST through the egress proxy (as `sbx create
        /// --allow`); repeatable. Without any, they have no network.
        #[arg(long = "allow", value_name = "HOST")]
        allow: Vec<String>,
        /// Run every step, even those the build cache holds
        #[arg(long)]
        no_cache: bool,
        /// The build context, sent as it is but for what .dockerignore
        /// leaves out
        #[arg(value_name = "CONTEXT_DIR")]
        context: PathBuf,
    },
    /// List images
    Ls {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show an image as JSON
    Inspect {
        #[command(flatten)]
        conn: ConnArgs,
        name: String,
    },
    /// Delete images (refused while a sandbox or snapshot uses one)
    Rm {
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(command: ImageCommand) -> Result<ExitCode, CliError> {
    match command {
        ImageCommand::Import { conn, file, name } => {
            let client = conn.client()?;
            let reader: Box<dyn AsyncRead + Send + Unpin> = if file.as_os_str() == "-" {
                Box::new(tokio::io::stdin())
            } else {
                let opened = tokio::fs::File::open(&file)
                    .await
                    .map_err(|source| CliError::Io {
                        path: file.clone(),
                        source,
                    })?;
                Box::new(opened)
            };
            let frames = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)
                .map_ok(Frame::<Bytes>::data)
                .boxed();
            let image = client
                .import_image(StreamBody::new(frames), name.as_deref())
                .await?;
            for device in &image.skipped_devices {
                eprintln!("skipped device node {device}");
            }
            println!("{}", image.name);
        }
        ImageCommand::Pull {
            conn,
            reference,
            name,
            username,
            password_stdin,
            registry_token,
            insecure,
        } => {
            let password = match (&username, password_stdin) {
                (None, _) => None,
                (Some(_), true) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|source| CliError::Io {
                            path: PathBuf::from("-"),
                            source,
                        })?;
                    Some(line.trim_end_matches(['\r', '\n']).to_owned())
                }
                (Some(_), false) => Some(std::env::var("SBX_REGISTRY_PASSWORD").map_err(|_| {
                    CliError::Usage(
                        "--username needs a password: SBX_REGISTRY_PASSWORD or --password-stdin"
                            .into(),
                    )
                })?),
            };
            let request = PullImageRequest {
                reference,
                name,
                username,
                password,
                token: registry_token,
                insecure,
            };
            let image = pull(&conn.client()?, &request).await?;
            for device in &image.skipped_devices {
                eprintln!("skipped device node {device}");
            }
            println!("{}", image.name);
        }
        ImageCommand::Build {
            conn,
            name,
            file,
            build_args,
            allow,
            no_cache,
            context,
        } => {
            let (context, dockerfile) = match build_context(&context, file.as_deref()) {
                Ok(resolved) => resolved,
                Err(message) => {
                    eprintln!("sbx: {message}");
                    return Ok(ExitCode::from(2));
                }
            };
            let build_args: BTreeMap<String, String> = build_args
                .into_iter()
                .filter_map(|(key, value)| {
                    let value = value.or_else(|| std::env::var(&key).ok())?;
                    Some((key, value))
                })
                .collect();
            let query = BuildImageQuery {
                name,
                dockerfile,
                build_args: (!build_args.is_empty()).then(|| {
                    serde_json::to_string(&build_args).expect("a map of strings serializes")
                }),
                allow: (!allow.is_empty()).then(|| allow.join(",")),
                no_cache,
            };
            let image = build(&conn.client()?, &query, context).await?;
            println!("Built {} ({})", image.name, short_id(&image.id));
        }
        ImageCommand::Ls { conn } => {
            let images = conn.client()?.list_images().await?;
            println!(
                "{:<48} {:<20} {:<7} {:>10}  CREATED",
                "NAME", "ID", "SOURCE", "SIZE"
            );
            for image in images {
                println!(
                    "{:<48} {:<20} {:<7} {:>10}  {}",
                    image.name,
                    short_id(&image.id),
                    serde_json::to_value(image.source)
                        .ok()
                        .and_then(|value| value.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    image.size_bytes.map_or("-".into(), human_size),
                    image
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
        ImageCommand::Inspect { conn, name } => {
            let image = conn.client()?.get_image(&name).await?;
            let text = serde_json::to_string_pretty(&image).map_err(ClientError::Decode)?;
            println!("{text}");
        }
        ImageCommand::Rm { conn, names } => {
            let client = conn.client()?;
            for name in names {
                client.delete_image(&name).await?;
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `KEY=VALUE`, or `KEY` alone.
fn parse_build_arg(text: &str) -> Result<(String, Option<String>), String> {
    let (key, value) = match text.split_once('=') {
        Some((key, value)) => (key, Some(value.to_owned())),
        None => (text, None),
    };
    if key.is_empty() {
        return Err(format!("{text:?} is not KEY=VALUE or KEY"));
    }
    Ok((key.to_owned(), value))
}

/// The first 12 digits of an image id, as `image ls` and `build` show it.
fn short_id(id: &str) -> &str {
    let hash = id.split_once(':').map_or(id, |(_, hash)| hash);
    hash.get(..12).unwrap_or(hash)
}

/// The context of a build in `dir` and the `dockerfile` to name (none for
/// the default `Dockerfile`); a message for the user when they do not fit.
fn build_context(dir: &Path, file: Option<&Path>) -> Result<(Context, Option<String>), String> {
    let root =
        std::fs::canonicalize(dir).map_err(|err| format!("context {}: {err}", dir.display()))?;
    if !root.is_dir() {
        return Err(format!("context {} is not a directory", dir.display()));
    }
    let relative = match file {
        None => PathBuf::from("Dockerfile"),
        Some(file) => {
            let outside = || {
                format!(
                    "the Dockerfile {} is outside the context {}: move it into the context",
                    file.display(),
                    dir.display()
                )
            };
            let name = file
                .file_name()
                .ok_or_else(|| format!("{} names no file", file.display()))?;
            let parent = match file.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let parent = std::fs::canonicalize(parent)
                .map_err(|err| format!("Dockerfile {}: {err}", file.display()))?;
            parent
                .join(name)
                .strip_prefix(&root)
                .map_err(|_| outside())?
                .to_owned()
        }
    };
    let shown = dir.join(&relative);
    match std::fs::symlink_metadata(root.join(&relative)) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Err(format!("{} is not a regular file", shown.display())),
        Err(err) => return Err(format!("Dockerfile {}: {err}", shown.display())),
    }
    let named = match file {
        None => None,
        Some(_) => Some(
            relative
                .to_str()
                .ok_or_else(|| format!("{} is not UTF-8", relative.display()))?
                .to_owned(),
        ),
    };
    let ignore = Ignore::read(&root).map_err(|err| {
        format!(
            "{}: {err}",
            dir.join(super::context::DOCKERIGNORE).display()
        )
    })?;
    Ok((Context::new(root, ignore, &relative), named))
}

/// Builds, printing as docker's classic builder does: each step, the
/// output of its command on the matching stream, then the image.
async fn build(
    client: &Client,
    query: &BuildImageQuery,
    context: Context,
) -> Result<Image, CliError> {
    let (body, upload) = Upload::start(context);
    let outcome = follow_build(client, query, body).await;
    // A context that could not be read explains a failed build better than
    // the build's own error.
    if let Some(source) = upload.failure() {
        return Err(CliError::Io {
            path: PathBuf::from("(build context)"),
            source,
        });
    }
    outcome
}

async fn follow_build(
    client: &Client,
    query: &BuildImageQuery,
    body: super::context::UploadBody,
) -> Result<Image, CliError> {
    let mut events = client.build_image(query, body).await?;
    let mut line_open = false;
    // A closed stdout (e.g. `| head`) must not fail the build.
    while let Some(event) = events.next().await? {
        match event {
            BuildEvent::Step {
                index,
                total,
                instruction,
                cached,
                ..
            } => {
                let mut stdout = std::io::stdout().lock();
                if std::mem::take(&mut line_open) {
                    let _ = writeln!(stdout);
                }
                let _ = writeln!(stdout, "Step {index}/{total} : {instruction}");
                if cached {
                    let _ = writeln!(stdout, " ---> Using cache");
                }
                let _ = stdout.flush();
            }
            BuildEvent::Stdout { data } => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(data.as_bytes());
                let _ = stdout.flush();
                if !data.is_empty() {
                    line_open = !data.ends_with('\n');
                }
            }
            BuildEvent::Stderr { data } => {
                let _ = std::io::stderr().write_all(data.as_bytes());
            }
            BuildEvent::Done { image } => {
                if line_open {
                    println!();
                }
                return Ok(image);
            }
            BuildEvent::Error { error } => {
                return Err(ClientError::Api {
                    status: error.error_code.http_status(),
                    body: error,
                }
                .into())
            }
        }
    }
    Err(CliError::Usage(
        "the server ended the build without an outcome".into(),
    ))
}

/// Pulls, drawing a bar per blob on stderr as its bytes arrive.
async fn pull(client: &Client, request: &PullImageRequest) -> Result<Image, CliError> {
    let mut events = client.pull_image(request).await?;
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut blobs: HashMap<String, ProgressBar> = HashMap::new();
    while let Some(event) = events.next().await? {
        match event {
            PullEvent::Blob {
                digest,
                received,
                size,
            } => {
                let bar = blobs.entry(digest.clone()).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(size));
                    bar.set_style(style.clone());
                    let hex = digest.trim_start_matches("sha256:");
                    bar.set_prefix(hex.get(..12).unwrap_or(hex).to_owned());
                    bar
                });
                bar.set_position(received);
                if received >= size {
                    bar.finish();
                }
            }
            PullEvent::Done { image } => return Ok(image),
            PullEvent::Error { error } => {
                return Err(ClientError::Api {
                    status: error.error_code.http_status(),
                    body: error,
                }
                .into())
            }
        }
    }
    Err(CliError::Usage(
        "the server ended the pull without an outcome".into(),
    ))
}

/// `1.5G`, `230M`, `12K`, `512B`.
fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_take_a_value_or_the_environment() {
        assert_eq!(
            parse_build_arg("A=b=c"),
            Ok(("A".to_owned(), Some("b=c".to_owned())))
        );
        assert_eq!(
            parse_build_arg("A="),
            Ok(("A".to_owned(), Some(String::new())))
        );
        assert_eq!(parse_build_arg("HOME"), Ok(("HOME".to_owned(), None)));
        assert!(parse_build_arg("=x").is_err());
        assert!(parse_build_arg("").is_err());
    }

    #[test]
    fn ids_are_shown_short() {
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("recipe:abc"), "abc");
    }

    #[test]
    fn the_dockerfile_must_be_inside_the_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(context.join("docker")).expect("mkdir");
        std::fs::write(context.join("Dockerfile"), "FROM base\n").expect("write");
        std::fs::write(context.join("docker/app.Dockerfile"), "FROM base\n").expect("write");
        std::fs::write(dir.path().join("Outside"), "FROM base\n").expect("write");

        let (_, named) = build_context(&context, None).expect("the default");
        assert_eq!(named, None);
        let inside = context.join("docker/../docker/app.Dockerfile");
        let (_, named) = build_context(&context, Some(&inside)).expect("inside");
        assert_eq!(named.as_deref(), Some("docker/app.Dockerfile"));
        let outside =
            build_context(&context, Some(&dir.path().join("Outside"))).expect_err("outside");
        assert!(outside.contains("outside the context"), "{outside}");
        let missing = build_context(&context, Some(&context.join("Nope"))).expect_err("missing");
        assert!(missing.contains("Nope"), "{missing}");
        let not_a_dir = build_context(&context.join("Dockerfile"), None).expect_err("a file");
        assert!(not_a_dir.contains("not a directory"), "{not_a_dir}");
        std::fs::remove_file(context.join("Dockerfile")).expect("rm");
        assert!(build_context(&context, None).is_err());
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(230 << 20), "230.0M");
    }
}
