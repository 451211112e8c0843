//! Harness for the end-to-end tests: a real `sbx serve` on a temp data dir
//! and a free loopback port, creating real containers.
//!
//! The binaries and the image come from `scripts/test`, which builds them
//! and exports `SBX_BIN`, `SBX_AGENT_BIN` and `SBX_TEST_IMAGES_DIR`. When
//! they are missing the tests fail with a hint: an e2e suite that skips
//! itself would report green while testing nothing.

pub mod oci;
pub mod registry;

use anyhow::{bail, Context, Result};
use sbx_api::client::Client;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A path from the environment that `scripts/test` sets.
pub fn required_env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) => PathBuf::from(value),
        None => panic!("{name} is not set: run the e2e suite through ./scripts/test"),
    }
}

pub fn sbx_bin() -> PathBuf {
    required_env_path("SBX_BIN")
}

pub fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Peak resident memory (`VmHWM`) of a host process, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Host pid of a sandbox's agent: the process in its cgroup running
/// `/.sbx/sandbox-agent`.
pub fn agent_pid(engine: Engine, sandbox_id: &str) -> Option<u32> {
    let marker = engine.cgroup_marker(sandbox_id)?;
    processes_in_cgroup(&marker).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmdline| cmdline.starts_with(sbx_api::AGENT_BINARY_PATH.as_bytes()))
            .unwrap_or(false)
    })
}

/// The cgroups youki made for `sandbox_id`, in every hierarchy (v1
/// controllers and the unified one). Under Docker the engine owns its
/// containers' cgroups, named by container id, and this is empty.
pub fn youki_cgroups(sandbox_id: &str) -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    hierarchies
        .flatten()
        .map(|hierarchy| hierarchy.path().join("sbx").join(sandbox_id))
        .chain([PathBuf::from("/sys/fs/cgroup/sbx").join(sandbox_id)])
        .filter(|dir| dir.is_dir())
        .collect()
}

/// The host directory of a sandbox's tenant cgroup (where its commands
/// run) in the v1 `controller` hierarchy, found through its agent.
pub fn tenant_cgroup(engine: Engine, sandbox_id: &str, controller: &str) -> Option<PathBuf> {
    let agent = agent_pid(engine, sandbox_id)?;
    let groups = std::fs::read_to_string(format!("/proc/{agent}/cgroup")).ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|name| name == controller)
            .then(|| {
                PathBuf::from("/sys/fs/cgroup")
                    .join(controller)
                    .join(path.trim_start_matches('/'))
                    .join("tenant")
            })
    })
}

/// A tar of a tree of `files` small text files under `tree/` (100
/// directories), as a coding agent would upload a checkout.
pub fn tree_tar(files: usize) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..files {
        let content = format!("file {i}\n");
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(
            &mut header,
            format!("tree/d{}/f{i}.txt", i % 100),
            content.as_bytes(),
        )?;
    }
    Ok(builder.into_inner()?)
}

/// Polls `check` until it returns true or `limit` passes; for conditions
/// the system reaches asynchronously (a killed process disappearing).
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The container engines the suite runs every test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Youki,
    Docker,
    /// Pods on the test cluster `scripts/kube-up` starts (its kubeconfig in
    /// `SBX_TEST_KUBECONFIG`, its node's containerd in
    /// `SBX_TEST_KUBE_CONTAINERD`).
    Kubernetes,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Youki => "youki",
            Engine::Docker => "docker",
            Engine::Kubernetes => "kubernetes",
        }
    }

    /// What the cgroup paths of a sandbox's processes contain: the sbx id
    /// under youki, the container id under Docker (None once it is gone)
    /// and on the cluster, the pod's uid.
    pub fn cgroup_marker(self, sandbox_id: &str) -> Option<String> {
        match self {
            Engine::Youki => Some(format!(":/sbx/{sandbox_id}")),
            Engine::Docker => docker_container_id(sandbox_id),
            Engine::Kubernetes => {
                let uid = kubectl(&[
                    "get",
                    "pod",
                    &format!("sbx-{sandbox_id}"),
                    "-o",
                    "jsonpath={.metadata.uid}",
                ])?;
                // Requests below limits: the Burstable QoS class.
                (!uid.is_empty()).then(|| format!("/kubepods/burstable/pod{uid}"))
            }
        }
    }

    /// The `sbx serve` flags that point it at this engine.
    fn serve_args(self) -> Vec<std::ffi::OsString> {
        match self {
            Engine::Kubernetes => vec![
                "--kubeconfig".into(),
                required_env_path("SBX_TEST_KUBECONFIG").into(),
                "--kube-node-containerd".into(),
                required_env_path("SBX_TEST_KUBE_CONTAINERD").into(),
            ],
            Engine::Youki | Engine::Docker => Vec::new(),
        }
    }

    /// Whether this engine's sandboxes run without a user namespace and on
    /// a node rather than under this server (the cluster).
    pub fn is_cluster(self) -> bool {
        self == Engine::Kubernetes
    }
}

/// Runs the test cluster's `kubectl` (`SBX_TEST_KUBECTL`) on its
/// kubeconfig and returns its stdout, when it succeeds.
pub fn kubectl(args: &[&str]) -> Option<String> {
    let output = Command::new(required_env_path("SBX_TEST_KUBECTL"))
        .arg("--kubeconfig")
        .arg(required_env_path("SBX_TEST_KUBECONFIG"))
        .args(["-n", "sbx"])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Host pids of the processes whose cgroup path contains `marker` (see
/// [`Engine::cgroup_marker`]): a sandbox's processes, wherever their mount
/// namespace puts them.
pub fn processes_in_cgroup(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|groups| groups.lines().any(|line| line.contains(marker)))
                .unwrap_or(false)
        })
        .collect()
}

/// The full Docker id of a sandbox's container, if it exists.
pub fn docker_container_id(sandbox_id: &str) -> Option<String> {
    let output = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("sbx-{sandbox_id}"),
        ])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !id.is_empty()).then_some(id)
}

/// Defines one `#[tokio::test]` per engine for each named test function
/// (`async fn name(engine: Engine) -> anyhow::Result<()>`), in modules
/// `youki`, `docker` and `kubernetes`: the same suite runs on every
/// runtime, and a runtime that cannot start fails its tests instead of
/// skipping them.
///
/// Tests named after `hosts_only:` run on youki and Docker only: they
/// check what a sandbox leaves on the server's own host (its run dir,
/// disk, cgroups, sockets) or a feature the kubernetes runtime refuses
/// (stop, snapshots, egress through the proxy). Each file says why for
/// its own; `tests/kubernetes.rs` asserts the refusals.
#[macro_export]
macro_rules! on_every_runtime {
    ($($name:ident),* $(,)? $(; hosts_only: $($host:ident),* $(,)?)?) => {
        mod youki {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Engine::Youki).await
                }
            )*
            $($(
                #[tokio::test]
                async fn $host() -> anyhow::Result<()> {
                    super::$host($crate::Engine::Youki).await
                }
            )*)?
        }
        mod docker {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Engine::Docker).await
                }
            )*
            $($(
                #[tokio::test]
                async fn $host() -> anyhow::Result<()> {
                    super::$host($crate::Engine::Docker).await
                }
            )*)?
        }
        mod kubernetes {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::Engine::Kubernetes).await
                }
            )*
        }
    };
}

/// The ids of `data_dir`'s sandboxes whose disk is attached to a loop
/// device now.
///
/// The kernel names a loop device's file by path, as seen from the mount
/// it was opened through: a youki disk is attached in the server's helper,
/// in its own mount namespace, so once that namespace is gone (the server
/// stopped) the path is relative to the pool's root (`/tests/<dir>/…`
/// rather than `/var/lib/sbx/tests/<dir>/…`), and a deleted file has
/// " (deleted)" appended. So the data dir is recognised by its own name,
/// followed by `sandboxes/<id>/disk/disk.img`.
pub fn attached_disks(data_dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let name = data_dir.file_name().context("a data dir has a name")?;
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let Ok(file) = std::fs::read_to_string(entry?.path().join("loop/backing_file")) else {
            continue;
        };
        let file = file.trim_end_matches('\n').trim_end_matches(" (deleted)");
        let parts: Vec<&std::ffi::OsStr> = Path::new(file).iter().collect();
        for window in parts.windows(5) {
            if window[0] == name
                && window[1] == "sandboxes"
                && window[3] == "disk"
                && window[4] == "disk.img"
            {
                ids.insert(window[2].to_string_lossy().into_owned());
            }
        }
    }
    Ok(ids)
}

/// Sandbox ids the runtime and the host hold for a data dir: directories,
/// and containers (youki state dirs or labelled Docker containers).
pub fn traces_on_the_host(engine: Engine, data_dir: &Path) -> Result<BTreeSet<String>> {
    let mut ids: BTreeSet<String> = std::fs::read_dir(data_dir.join("sandboxes"))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    match engine {
        Engine::Youki => {
            // A directory per container; beside them, the helper's lock.
            if let Ok(entries) = std::fs::read_dir(data_dir.join("youki")) {
                ids.extend(
                    entries
                        .flatten()
                        .filter(|entry| entry.path().is_dir())
                        .map(|entry| entry.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        Engine::Kubernetes => {
            let instance = std::fs::read_to_string(data_dir.join("instance-id"))?;
            let listed = kubectl(&[
                "get",
                "sandboxes,pods,secrets",
                "-l",
                &format!("sbx.dev/instance={}", instance.trim()),
                "-o",
                "jsonpath={range .items[*]}{.metadata.labels.sbx\\.dev/sandbox}{\"\\n\"}{end}",
            ])
            .context("kubectl cannot list the cluster's sandboxes")?;
            ids.extend(
                listed
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned),
            );
        }
        Engine::Docker => {
            let instance = std::fs::read_to_string(data_dir.join("instance-id"))?;
            let output = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--filter",
                    &format!("label=sbx.instance={}", instance.trim()),
                    "--format",
                    "{{.Label \"sbx.id\"}}",
                ])
                .output()?;
            ids.extend(
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    Ok(ids)
}

/// The disk overcommit of a test server, unless `args` set one: suites
/// make many sandboxes of the default 10 GiB disk on one pool (and several
/// servers share it), which the safe default of 1.0 would refuse after a
/// few. The accounting itself is tested with the default and small ratios.
fn overcommit(args: &[&str]) -> Vec<&'static str> {
    if args.contains(&"--disk-overcommit") {
        Vec::new()
    } else {
        vec!["--disk-overcommit", "1000"]
    }
}

/// A running `sbx serve`. Dropping it deletes the sandboxes it still holds
/// (so a failed test leaks no container) and then kills the server.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pub engine: Engine,
    pub url: String,
    pub token: String,
}

/// A new data dir for one test's server. It lives under
/// `SBX_TEST_DATA_ROOT` when that is set (scripts/test points it into the
/// storage pool, where disk limits are enforced), else in the system temp
/// dir, where they are not.
pub fn temp_data_dir() -> Result<tempfile::TempDir> {
    let builder = {
        let mut builder = tempfile::Builder::new();
        builder.prefix("sbx-e2e-");
        builder
    };
    Ok(match std::env::var_os("SBX_TEST_DATA_ROOT") {
        Some(root) => {
            std::fs::create_dir_all(&root)?;
            builder.tempdir_in(root)?
        }
        None => builder.tempdir()?,
    })
}

impl Server {
    /// Starts a server on a new temp data dir.
    pub async fn start(engine: Engine) -> Result<Self> {
        Self::start_with(engine, &[]).await
    }

    /// Starts a server on a new temp data dir with extra `sbx serve` flags.
    pub async fn start_with(engine: Engine, args: &[&str]) -> Result<Self> {
        let temp = temp_data_dir()?;
        let mut server = Self::start_on_with(engine, temp.path(), args).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server on an existing data dir (to test restarts).
    pub async fn start_on(engine: Engine, data_dir: &Path) -> Result<Self> {
        Self::start_on_with(engine, data_dir, &[]).await
    }

    /// Starts a server on an existing data dir with extra `sbx serve` flags.
    pub async fn start_on_with(engine: Engine, data_dir: &Path, args: &[&str]) -> Result<Self> {
        Self::launch(engine, data_dir, args, &[]).await
    }

    /// Starts a server on a new temp data dir with extra environment
    /// variables (to take a tool away from it, say).
    pub async fn start_with_env(engine: Engine, env: &[(&str, &Path)]) -> Result<Self> {
        let temp = temp_data_dir()?;
        let mut server = Self::launch(engine, temp.path(), &[], env).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    async fn launch(
        engine: Engine,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let port = free_loopback_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("serve.log"))?;
        let child = Command::new(sbx_bin())
            .arg("serve")
            .arg("--runtime")
            .arg(engine.name())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--images-dir")
            .arg(required_env_path("SBX_TEST_IMAGES_DIR"))
            .arg("--agent-bin")
            .arg(required_env_path("SBX_AGENT_BIN"))
            .args(engine.serve_args())
            .args(overcommit(args))
            .args(args)
            .env("SBX_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start sbx serve")?;
        let mut server = Self {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            _temp: None,
            engine,
            url,
            token: String::new(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let token_path = self.data_dir.join("admin.token");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("sbx serve exited with {status}; log: {}", self.log());
                }
            }
            if let Ok(token) = std::fs::read_to_string(&token_path) {
                let probe = Client::new(&self.url, Some(token.trim().to_owned()))?;
                if let Ok(info) = probe.info().await {
                    if info.runtime.name != self.engine.name() {
                        bail!(
                            "asked for {}, got {}",
                            self.engine.name(),
                            info.runtime.name
                        );
                    }
                    self.token = token.trim().to_owned();
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("sbx serve not ready after 30 s; log: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pid of the `sbx serve` process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("serve.log")).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(self.token.clone())).expect("the harness url is valid")
    }

    pub fn client_with_token(&self, token: Option<&str>) -> Client {
        Client::new(&self.url, token.map(str::to_owned)).expect("the harness url is valid")
    }

    /// Creates a sandbox with the defaults and returns its id.
    pub async fn new_sandbox(&self) -> Result<String> {
        let sandbox = self
            .client()
            .create_sandbox(&sbx_api::CreateSandboxRequest::default())
            .await?;
        if sandbox.state != sbx_api::SandboxState::Running {
            bail!("a new sandbox is {:?}, not running", sandbox.state);
        }
        Ok(sandbox.id)
    }

    /// SIGKILLs the server, leaving its sandboxes running (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM) and waits for it to
    /// exit, leaving its sandboxes running.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("the server is not running")?;
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of the child this harness spawned and
        // has not reaped yet, so the pid cannot have been reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot signal sbx serve: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(child.wait()?)
    }

    /// Keeps the data dir alive beyond this server, for a restart.
    pub fn take_data_dir(&mut self) -> Option<tempfile::TempDir> {
        self._temp.take()
    }

    /// Deletes every sandbox through the API, then stops the server.
    fn clean_up(&mut self) {
        if self.child.is_none() {
            return;
        }
        let client = self.client();
        // Drop runs inside the test's runtime, which cannot be blocked on;
        // a thread with its own runtime can.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime");
            runtime.block_on(async {
                if let Ok(sandboxes) = client.list_sandboxes().await {
                    for sandbox in sandboxes {
                        let _ = client.delete_sandbox(&sandbox.id).await;
                    }
                }
            });
        });
        let _ = cleaner.join();
        self.terminate();
    }

    /// SIGTERM, so that the server deletes what only it knows of (its warm
    /// pool), then SIGKILL if it has not exited within 30 s.
    fn terminate(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.clean_up();
        // A test that fails by returning an error drops its server before
        // the harness prints anything: its warnings and errors go to the
        // test's captured output, which cargo shows only for a failure.
        for line in self
            .log()
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            // libcontainer's note of each cgroup v1 controller this kernel
            // lacks, at every start: noise in a benchmark's output.
            .filter(|line| !line.contains("not supported on this system"))
        {
            eprintln!("serve.log: {line}");
        }
        // The server's log (`serve.log` in the data dir) goes with the data
        // dir, unless a failing test wants to be looked into.
        if std::thread::panicking() {
            if let Some(temp) = self._temp.take() {
                eprintln!("kept for inspection: {}", temp.keep().display());
            }
        }
    }
}
