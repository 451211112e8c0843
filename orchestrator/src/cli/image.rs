//! `sbx image …`: import, list, inspect and remove images.

use super::{CliError, ConnArgs};
use bytes::Bytes;
use clap::Subcommand;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::StreamBody;
use hyper::body::Frame;
use sbx_api::client::ClientError;
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
        ImageCommand::Ls { conn } => {
            let images = conn.client()?.list_images().await?;
            println!(
                "{:<48} {:<20} {:<7} {:>10}  CREATED",
                "NAME", "ID", "SOURCE", "SIZE"
            );
            for image in images {
                let id = image.id.trim_start_matches("sha256:");
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
