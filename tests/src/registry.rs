//! A real OCI registry on loopback for the pull tests: Debian's
//! `docker-registry` (the CNCF distribution registry), one per test, on a
//! free port, storing under a temp dir, optionally behind htpasswd basic
//! auth. Images get into it with `skopeo`, which nobody here wrote.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`
    pub addr: String,
    credentials: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry; with `credentials`, every call needs them.
    pub fn start(credentials: Option<(&str, &str)>) -> Result<Self> {
        let dir = crate::temp_data_dir()?;
        let port = crate::free_loopback_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = credentials {
            let htpasswd = dir.path().join("htpasswd");
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("htpasswd (apache2-utils; scripts/setup installs it)")?;
            if !output.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&output.stderr));
            }
            std::fs::write(&htpasswd, output.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: sbx-tests\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("docker-registry (scripts/setup installs it)")?;
        let registry = Self {
            child,
            dir,
            addr,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            if Instant::now() > deadline {
                bail!("the registry never listened; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the `docker save` archive at `archive` as `repository:tag`.
    pub fn push(&self, archive: &Path, repository_tag: &str) -> Result<()> {
        let mut command = Command::new("skopeo");
        command
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repository_tag}", self.addr));
        if let Some((user, password)) = &self.credentials {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        let output = command.output().context("skopeo")?;
        if !output.status.success() {
            bail!(
                "skopeo push of {repository_tag}: {}; registry log: {}",
                String::from_utf8_lossy(&output.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// Where the registry keeps the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
