//! `sbx image …`: import, pull, list, inspect and remove images.

use super::{CliError, ConnArgs};
use bytes::Bytes;
use clap::Subcommand;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sbx_api::client::{Client, ClientError};
use sbx_api::{Image, PullEvent, PullImageRequest};
use std::collections::HashMap;
use std::path::PathBuf;
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

pub async fn run(command: ImageCommand) -> Result<(), CliError> {
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
        ImageCommand::Ls { conn } => {
            let images = conn.client()?.list_images().await?;
            println!(
                "{:<48} {:<20} {:<7} {:>10}  CREATED",
                "NAME", "ID", "SOURCE", "SIZE"
            );
            for image in images {
                let id = image
                    .id
                    .split_once(':')
                    .map_or(image.id.as_str(), |(_, hash)| hash);
                println!(
                    "{:<48} {:<20} {:<7} {:>10}  {}",
                    image.name,
                    id.get(..12).unwrap_or(id),
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
    Ok(())
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
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human_size(512), "512B");
        assert_eq!(super::human_size(1536), "1.5K");
        assert_eq!(super::human_size(230 << 20), "230.0M");
    }
}
