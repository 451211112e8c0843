//! Dockerfile builds (`POST /v1/images/build`): images made by sbx itself,
//! without Docker, on whichever runtime the server uses.
//!
//! How a build runs, and why:
//! - **One sandbox per build**, started only when a step misses the
//!   cache, on the image as built so far: the `FROM` image itself, or an
//!   unnamed build of the chain so far ([`Import::stage_step`]). Steps
//!   run in it one after another, as they would in `docker build`.
//! - **A layer is what a step changed.** Before the first step the agent
//!   records the sandbox's root filesystem (`POST /layer/baseline`); after
//!   each step it reports what changed since as an OCI layer (`GET
//!   /layer/changes`). That tar is untrusted, as everything a sandbox says
//!   is: it is applied to the layer store by the same confined applier as
//!   an imported layer, hashed here, and capped in size. The agent side
//!   works the same on every runtime; nothing here reads a sandbox's disk.
//! - **Layers are chains.** The build starts from a seed chain (a copy of
//!   the `FROM` image's files, made once per image) and each layer is a
//!   chain on the one below, so two builds from one image share the seed
//!   and every step they have in common.
//! - **The cache**: a step's key hashes the key before it, the instruction
//!   as resolved (variables expanded), and what else decides its result:
//!   the build arguments and egress allowlist a `RUN` sees, the content
//!   `COPY` takes. A key maps to the layer it made (or to none, for a step
//!   that changed nothing) under `<images>/.build-cache/`; a hit needs the
//!   chain still stored. Keys never depend on a sandbox's state, so a
//!   rebuild with nothing changed starts no sandbox at all.
//! - **`RUN` has no network** unless the build names an allowlist; then it
//!   reaches exactly those hosts through the egress proxy, audited like any
//!   sandbox's traffic (the build sandbox is labelled `sbx.build`).
//! - **Detached**: once the context has arrived, the build runs to its end
//!   and removes its sandbox whether or not the caller still listens.
//! - While it runs, every chain and unnamed build it relies on is pinned in
//!   its staging dir ([`Import::pin`]), so a collection cannot take them.

use super::images::{blocking, receive};
use super::{detached, EndReason, Manager, SandboxError};
use crate::images::archive::{Compression, LayerBlob};
use crate::images::catalog::{exec_user, Import};
use crate::images::context::{self, CopyPlan, Dest};
use crate::images::dockerfile::{self, Command, CopyFiles, Instruction, RawStep};
use crate::images::reference::Reference;
use crate::images::store::chain_id;
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::StreamBody;
use hyper::body::Frame;
use sbx_api::client::Client;
use sbx_api::{
    BuildEvent, BuildImageQuery, CreateSandboxRequest, ExecEvent, ExecRequest, Image, ImageConfig,
    NetworkPolicy, PullImageRequest,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;

/// Where step results are remembered, under the images dir.
const CACHE_DIR: &str = ".build-cache";
/// The longest a Dockerfile may be.
const MAX_DOCKERFILE_BYTES: u64 = 1 << 20;
/// How long one `RUN` may take.
const STEP_TIMEOUT_MS: u64 = 2 * 60 * 60 * 1000;
/// How much output of a failed `RUN` its error repeats.
const FAILED_OUTPUT_TAIL: usize = 2048;
/// The label that marks a build's sandbox, naming the image it builds.
const BUILD_LABEL: &str = "sbx.build";

/// A build as asked for, checked.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub name: String,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub egress: Vec<String>,
    pub no_cache: bool,
}

impl BuildRequest {
    pub fn from_query(query: BuildImageQuery) -> Result<Self, SandboxError> {
        let invalid = SandboxError::InvalidRequest;
        Reference::parse(&query.name).map_err(invalid)?;
        let build_args = query.build_args().map_err(invalid)?;
        let egress = NetworkPolicy {
            egress: query.egress(),
        }
        .normalized()
        .map_err(invalid)?
        .egress;
        let dockerfile = query.dockerfile.unwrap_or_else(|| "Dockerfile".into());
        let relative = context_name(&dockerfile)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "dockerfile {dockerfile:?} must be a path inside the context"
                ))
            })?;
        Ok(Self {
            name: query.name,
            dockerfile: relative,
            build_args,
            egress,
            no_cache: query.no_cache,
        })
    }
}

impl Manager {
    /// Builds the image `request` describes from the context tar `body`
    /// streams, reporting steps and output to `events`. Once the context
    /// is in, the build finishes (or undoes itself) whether or not the
    /// caller waits.
    pub async fn build_image<S, E>(
        self: &Arc<Self>,
        body: S,
        request: BuildRequest,
        events: UnboundedSender<BuildEvent>,
    ) -> Result<Image, SandboxError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let images = Arc::clone(&self.images);
        let import = blocking(move || images.begin_import().map_err(SandboxError::from)).await?;
        receive(body, &import.body_path()).await?;
        let manager = Arc::clone(self);
        detached(async move {
            let mut build = Build::new(Arc::clone(&manager), import, request, events);
            let built = build.run().await;
            build.discard_sandbox().await;
            // Its pins go with it, so the collection after the image is
            // ready takes the step builds and chains no image kept.
            drop(build);
            let image = built?;
            manager.ready_image(image).await
        })
        .await
    }
}

/// A build under way: the image so far, and the sandbox at that point if
/// one runs.
struct Build {
    manager: Arc<Manager>,
    import: Arc<Import>,
    request: BuildRequest,
    events: UnboundedSender<BuildEvent>,
    /// The `FROM` image, and its root filesystem.
    from: Option<(String, PathBuf)>,
    seed: String,
    /// The chain the image so far is (the seed before any layer).
    top: String,
    diff_ids: Vec<String>,
    config: ImageConfig,
    /// `ARG` values in scope.
    args: BTreeMap<String, String>,
    /// `ARG` values declared before `FROM`: in scope only for `FROM`, and
    /// the defaults of the same names declared again after it.
    args_before_from: BTreeMap<String, String>,
    /// The cache key of the image so far.
    key: String,
    /// The sandbox at `top`, while one runs.
    sandbox: Option<String>,
    /// Files made in the staging dir so far, for unique names.
    scratch_files: u32,
}

/// What a step that changes files does in the build sandbox.
enum Action {
    Run(Vec<String>),
    MakeDir(String),
    /// Extract the tar at `tar` (made from the context) at `dir`.
    Copy {
        tar: PathBuf,
        dir: String,
        owner: Option<String>,
    },
}

/// One remembered step result.
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    /// The layer the step made; none when it changed nothing.
    diff_id: Option<String>,
}

impl Build {
    fn new(
        manager: Arc<Manager>,
        import: Import,
        request: BuildRequest,
        events: UnboundedSender<BuildEvent>,
    ) -> Self {
        Self {
            manager,
            import: Arc::new(import),
            request,
            events,
            from: None,
            seed: String::new(),
            top: String::new(),
            diff_ids: Vec::new(),
            config: ImageConfig::default(),
            args: BTreeMap::new(),
            args_before_from: BTreeMap::new(),
            key: String::new(),
            sandbox: None,
            scratch_files: 0,
        }
    }

    async fn run(&mut self) -> Result<Image, SandboxError> {
        let text = self.dockerfile().await?;
        let steps = dockerfile::parse(&text).map_err(invalid)?;
        let total = u32::try_from(steps.len()).unwrap_or(u32::MAX);
        for (index, step) in (1..).zip(&steps) {
            self.step(index, total, step).await?;
        }
        if self.from.is_none() {
            return Err(invalid("the Dockerfile has no FROM"));
        }
        self.discard_sandbox().await;
        let import = Arc::clone(&self.import);
        let (name, top, seed) = (
            self.request.name.clone(),
            self.top.clone(),
            self.seed.clone(),
        );
        let (diff_ids, config) = (self.diff_ids.clone(), self.config.clone());
        blocking(move || {
            import
                .publish_built(&name, &top, &seed, diff_ids, config)
                .map_err(Into::into)
        })
        .await
    }

    /// The Dockerfile's text, from the context.
    async fn dockerfile(&self) -> Result<String, SandboxError> {
        let (context, wanted) = (self.import.body_path(), self.request.dockerfile.clone());
        blocking(move || read_from_context(&context, &wanted)).await
    }

    async fn step(&mut self, index: u32, total: u32, step: &RawStep) -> Result<(), SandboxError> {
        let scope = self.scope();
        let instruction = step.resolve(&scope).map_err(invalid)?;
        let resolved = format!("{instruction:?}");
        if self.from.is_none() {
            return match instruction {
                Instruction::Arg(args) => {
                    self.announce(index, total, step, true);
                    self.declare(args);
                    Ok(())
                }
                Instruction::From { image, .. } => {
                    self.start_from(index, total, step, &image).await
                }
                _ => Err(invalid(format!(
                    "Dockerfile line {}: the first instruction must be FROM",
                    step.line
                ))),
            };
        }
        let action = match instruction {
            Instruction::From { .. } => {
                return Err(invalid(format!(
                    "Dockerfile line {}: multi-stage builds (a second FROM) are not supported",
                    step.line
                )))
            }
            Instruction::Arg(args) => {
                self.declare(args);
                None
            }
            Instruction::Env(pairs) => {
                for (name, value) in pairs {
                    set_env(&mut self.config.env, &name, &value);
                }
                None
            }
            Instruction::Label(pairs) => {
                self.config.labels.extend(pairs);
                None
            }
            Instruction::User(user) => {
                self.config.user = Some(user);
                None
            }
            Instruction::Cmd(command) => {
                self.config.cmd = Some(argv(command)).filter(|argv| !argv.is_empty());
                None
            }
            Instruction::Entrypoint(command) => {
                self.config.entrypoint = Some(argv(command)).filter(|argv| !argv.is_empty());
                // As Docker does: a CMD from below meant another entrypoint.
                self.config.cmd = None;
                None
            }
            Instruction::Workdir(dir) => {
                let dir = absolute(self.working_dir(), &dir);
                self.config.working_dir = Some(dir.clone());
                Some((Action::MakeDir(dir), String::new()))
            }
            Instruction::Run(command) => {
                // What else decides what the command does.
                let seen = serde_json::json!({ "args": self.args, "egress": self.request.egress });
                Some((Action::Run(argv(command)), seen.to_string()))
            }
            Instruction::Copy(files) => Some(self.plan_copy(files, false).await?),
            Instruction::Add(files) => Some(self.plan_copy(files, true).await?),
        };
        match action {
            None => {
                self.key = next_key(&self.key, &resolved);
                self.announce(index, total, step, true);
                Ok(())
            }
            Some((action, seen)) => {
                let key = next_key(&self.key, &format!("{resolved}\n{seen}"));
                self.key = key;
                self.change_files(index, total, step, action).await
            }
        }
    }

    /// `FROM image`: the image is looked up here, or pulled, and the build
    /// starts from its seed chain.
    async fn start_from(
        &mut self,
        index: u32,
        total: u32,
        step: &RawStep,
        name: &str,
    ) -> Result<(), SandboxError> {
        if name == "scratch" {
            return Err(invalid(format!(
                "Dockerfile line {}: FROM scratch is not supported: start from an image",
                step.line
            )));
        }
        let local = self.manager.images.get(name)?;
        self.announce(index, total, step, local.is_some());
        let image = match local {
            Some(image) => image,
            None => self.pull(name).await?,
        };
        let rootfs = self
            .manager
            .images
            .rootfs(&image.name)?
            .ok_or_else(|| SandboxError::ImageNotFound(image.name.clone()))?;
        let build = rootfs
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| SandboxError::ImageNotFound(image.name.clone()))?;
        let (import, id) = (Arc::clone(&self.import), image.id.clone());
        let build_name = build
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.seed = blocking(move || {
            let _held = import.hold_collections()?;
            import.pin(&build_name)?;
            let seed = import.layers().seed(&id, &build)?;
            import.pin(&seed)?;
            Ok(seed)
        })
        .await?;
        self.top = self.seed.clone();
        self.config = image.config.clone();
        self.key = next_key("", &format!("FROM {}", image.id));
        self.from = Some((image.name, rootfs));
        self.args_before_from = std::mem::take(&mut self.args);
        Ok(())
    }

    /// Pulls `name`, which is not here, from its registry.
    async fn pull(&self, name: &str) -> Result<Image, SandboxError> {
        self.say(format!(
            "{name} is not here: pulling it from its registry\n"
        ));
        let (progress, _dropped) = tokio::sync::mpsc::unbounded_channel();
        let request = PullImageRequest {
            reference: name.to_owned(),
            ..PullImageRequest::default()
        };
        self.manager.pull_image(request, progress).await
    }

    fn declare(&mut self, args: Vec<(String, Option<String>)>) {
        for (name, default) in args {
            let value = self
                .request
                .build_args
                .get(&name)
                .cloned()
                .or(default)
                .or_else(|| self.args_before_from.get(&name).cloned());
            match value {
                Some(value) => self.args.insert(name, value),
                None => self.args.remove(&name),
            };
        }
    }

    /// The variables an instruction's words expand from: the build
    /// arguments, then the image's environment over them.
    fn scope(&self) -> BTreeMap<String, String> {
        let mut scope = self.args.clone();
        scope.extend(
            self.config
                .env
                .iter()
                .filter_map(|entry| entry.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        scope
    }

    fn working_dir(&self) -> &str {
        self.config.working_dir.as_deref().unwrap_or("/")
    }

    /// The tar `COPY`/`ADD` extracts, made from the context, and where.
    async fn plan_copy(
        &mut self,
        files: CopyFiles,
        extract_archives: bool,
    ) -> Result<(Action, String), SandboxError> {
        let target = absolute(self.working_dir(), &files.dest);
        let into_dir = files.dest.ends_with('/')
            || files.dest.ends_with("/.")
            || files.sources.len() > 1
            || self.is_dir_in_image(&target)
            || self.names_dir_in_context(&files.sources).await?;
        let (dest, dir) = match (into_dir, target.rsplit_once('/')) {
            (false, Some((parent, base))) if !base.is_empty() => (
                Dest::File(base.to_owned()),
                if parent.is_empty() { "/" } else { parent }.to_owned(),
            ),
            _ => (Dest::Dir, target.clone()),
        };
        self.scratch_files += 1;
        let staging = self.import.staging_dir().to_path_buf();
        let tar = staging.join(format!("copy-{}.tar", self.scratch_files));
        let scratch = staging.join(format!("scratch-{}", self.scratch_files));
        let context = self.import.body_path();
        let (out, sources) = (tar.clone(), files.sources.clone());
        let copied = blocking(move || {
            std::fs::create_dir(&scratch).map_err(io("cannot make a scratch dir"))?;
            let input = std::fs::File::open(&context).map_err(io("cannot read the context"))?;
            let output = std::fs::File::create(&out).map_err(io("cannot write a copy"))?;
            let plan = CopyPlan {
                sources: &sources,
                dest,
                extract_archives,
            };
            let copied = context::copy_entries(BufReader::new(input), &plan, output, &scratch);
            let _ = std::fs::remove_dir_all(&scratch);
            copied.map_err(SandboxError::from)
        })
        .await?;
        let seen = format!("{} {dir}", copied.digest);
        let action = Action::Copy {
            tar,
            dir,
            owner: files.chown,
        };
        Ok((action, seen))
    }

    /// Whether `path` is a directory in the image so far (resolved inside
    /// its root: the image's links are its own business).
    fn is_dir_in_image(&self, path: &str) -> bool {
        let Some(root) = self.import.layers().rootfs(&self.top) else {
            return false;
        };
        crate::images::layer::is_dir_in(&root, Path::new(path.trim_start_matches('/')))
    }

    /// Whether one of `sources` names a directory of the context.
    async fn names_dir_in_context(&self, sources: &[String]) -> Result<bool, SandboxError> {
        let context = self.import.body_path();
        let wanted: Vec<String> = sources.iter().filter_map(|s| context_name(s)).collect();
        blocking(move || {
            let file = std::fs::File::open(&context).map_err(io("cannot read the context"))?;
            let mut archive = tar::Archive::new(BufReader::new(file));
            let entries = archive
                .entries()
                .map_err(|err| invalid(format!("the context is not a tar: {err}")))?;
            for entry in entries {
                let entry =
                    entry.map_err(|err| invalid(format!("the context is corrupt: {err}")))?;
                let name = entry.path_bytes();
                let Some(name) = context_name(&String::from_utf8_lossy(&name)) else {
                    continue;
                };
                let is_dir = entry.header().entry_type().is_dir();
                if wanted.iter().any(|source| {
                    source.is_empty()
                        || (is_dir && &name == source)
                        || name.starts_with(&format!("{source}/"))
                }) {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }

    /// A step that changes files: from the cache, or run in the build
    /// sandbox with its changes taken as a layer.
    async fn change_files(
        &mut self,
        index: u32,
        total: u32,
        step: &RawStep,
        action: Action,
    ) -> Result<(), SandboxError> {
        if !self.request.no_cache {
            if let Some(entry) = self.cached(&self.key.clone()).await? {
                self.announce(index, total, step, true);
                if let Some(diff_id) = entry.diff_id {
                    // The sandbox, if any, has not got this layer.
                    self.discard_sandbox().await;
                    self.top = chain_id(Some(&self.top), &diff_id);
                    self.diff_ids.push(diff_id);
                }
                return Ok(());
            }
        }
        self.announce(index, total, step, false);
        let agent = self.sandbox_agent().await?;
        match action {
            Action::Run(argv) => self.run_command(&agent, step, argv).await?,
            Action::MakeDir(dir) => {
                agent.agent().mkdir(&dir).await.map_err(step_failed(step))?;
            }
            Action::Copy { tar, dir, owner } => {
                let body = file_body(&tar).await?;
                agent
                    .agent()
                    .upload_archive_as(&dir, owner.as_deref(), body)
                    .await
                    .map_err(step_failed(step))?;
                let _ = tokio::fs::remove_file(&tar).await;
            }
        }
        let layer = self.take_layer(&agent).await?;
        let diff_id = match layer {
            Some(blob) => {
                let (import, below) = (Arc::clone(&self.import), self.top.clone());
                let diff_id = blob.diff_id.clone();
                self.top = blocking(move || {
                    let _held = import.hold_collections()?;
                    let (top, _) = import.layers().build_on(Some(&below), &[blob])?;
                    import.pin(&top)?;
                    Ok(top)
                })
                .await?;
                self.diff_ids.push(diff_id.clone());
                Some(diff_id)
            }
            None => None,
        };
        self.remember(&self.key.clone(), CacheEntry { diff_id })
            .await;
        Ok(())
    }

    /// The cache's entry for `key`, when its layer is still stored (and
    /// then pinned).
    async fn cached(&self, key: &str) -> Result<Option<CacheEntry>, SandboxError> {
        let path = self.cache_path(key);
        let (import, top) = (Arc::clone(&self.import), self.top.clone());
        blocking(move || {
            let Some(entry) = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok())
            else {
                return Ok(None);
            };
            let Some(diff_id) = &entry.diff_id else {
                return Ok(Some(entry));
            };
            let chain = chain_id(Some(&top), diff_id);
            let _held = import.hold_collections()?;
            if import.layers().rootfs(&chain).is_none() {
                return Ok(None);
            }
            import.pin(&chain)?;
            Ok(Some(entry))
        })
        .await
    }

    /// Records what the step `key` made. A cache that cannot be written
    /// only costs the next build time.
    async fn remember(&self, key: &str, entry: CacheEntry) {
        let path = self.cache_path(key);
        let written = blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("/"));
            std::fs::create_dir_all(dir).map_err(io("cannot make the build cache"))?;
            let staging = path.with_extension(format!("{:08x}.tmp", rand::random::<u32>()));
            let json = serde_json::to_vec(&entry).unwrap_or_default();
            std::fs::write(&staging, json).map_err(io("cannot write the build cache"))?;
            std::fs::rename(&staging, &path).map_err(io("cannot write the build cache"))
        })
        .await;
        if let Err(err) = written {
            tracing::warn!(error = %err, "cannot remember a build step");
        }
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.manager
            .images
            .dir()
            .join(CACHE_DIR)
            .join(key.trim_start_matches("sha256:"))
    }

    /// The agent of the build sandbox, started (on the image so far) and
    /// baselined if none runs.
    async fn sandbox_agent(&mut self) -> Result<Client, SandboxError> {
        if let Some(id) = &self.sandbox {
            return self.manager.agent(id).await;
        }
        let (from_name, from_rootfs) = self
            .from
            .clone()
            .ok_or_else(|| invalid("the Dockerfile has no FROM"))?;
        let rootfs = if self.diff_ids.is_empty() {
            from_rootfs
        } else {
            let (import, top, key) = (Arc::clone(&self.import), self.top.clone(), self.key.clone());
            let rootfs =
                blocking(move || import.stage_step(&top, &key).map_err(Into::into)).await?;
            self.manager
                .runtime
                .prepare_image(&rootfs)
                .await
                .map_err(|source| SandboxError::Runtime {
                    id: "(image build)".into(),
                    source,
                })?;
            rootfs
        };
        let request = CreateSandboxRequest {
            image: Some(from_name),
            network: Some(NetworkPolicy {
                egress: self.request.egress.clone(),
            }),
            labels: BTreeMap::from([(BUILD_LABEL.to_owned(), self.request.name.clone())]),
            ..CreateSandboxRequest::default()
        };
        let sandbox = self.manager.create_on_build(request, rootfs).await?;
        tracing::info!(id = %sandbox.id, image = %self.request.name, "build sandbox running");
        self.sandbox = Some(sandbox.id.clone());
        let agent = self.manager.agent(&sandbox.id).await?;
        agent
            .agent()
            .layer_baseline()
            .await
            .map_err(|err| agent_error("record the build sandbox's files", err))?;
        Ok(agent)
    }

    /// Runs `RUN`'s command, streaming its output; a non-zero exit fails
    /// the build.
    async fn run_command(
        &self,
        agent: &Client,
        step: &RawStep,
        argv: Vec<String>,
    ) -> Result<(), SandboxError> {
        let mut env: BTreeMap<String, String> = self.args.clone();
        env.extend(
            self.config
                .env
                .iter()
                .filter_map(|entry| entry.split_once('='))
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        let request = ExecRequest {
            cmd: Some(argv),
            cwd: Some(self.working_dir().to_owned()),
            env,
            user: self.config.user.as_deref().and_then(exec_user),
            timeout_ms: Some(STEP_TIMEOUT_MS),
            ..ExecRequest::default()
        };
        let mut events = agent
            .agent()
            .exec_stream(&request)
            .await
            .map_err(step_failed(step))?;
        let mut tail = String::new();
        loop {
            let event = events.next().await.map_err(step_failed(step))?;
            match event {
                Some(ExecEvent::Stdout { data }) => {
                    keep_tail(&mut tail, &data);
                    let _ = self.events.send(BuildEvent::Stdout { data });
                }
                Some(ExecEvent::Stderr { data }) => {
                    keep_tail(&mut tail, &data);
                    let _ = self.events.send(BuildEvent::Stderr { data });
                }
                Some(ExecEvent::Start { .. }) => {}
                Some(ExecEvent::Exit {
                    exit_code,
                    timed_out,
                    ..
                }) => {
                    if exit_code == 0 {
                        return Ok(());
                    }
                    let why = if timed_out {
                        " (timed out)".to_owned()
                    } else {
                        String::new()
                    };
                    return Err(invalid(format!(
                        "Dockerfile line {}: {} failed with exit code {exit_code}{why}{}",
                        step.line,
                        step.text,
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; its output ended with:\n{tail}")
                        }
                    )));
                }
                Some(ExecEvent::Error { message, .. }) => {
                    return Err(invalid(format!(
                        "Dockerfile line {}: {} did not finish: {message}",
                        step.line, step.text
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "Dockerfile line {}: {} ended without an exit status",
                        step.line, step.text
                    )))
                }
            }
        }
    }

    /// What the last step changed, from the agent, as a layer blob in the
    /// staging dir; `None` when it changed nothing. The agent's word is
    /// not trusted: the tar is hashed here, capped, and applied confined.
    async fn take_layer(&mut self, agent: &Client) -> Result<Option<LayerBlob>, SandboxError> {
        let mut changes = agent
            .agent()
            .layer_changes()
            .await
            .map_err(|err| agent_error("read the step's changes", err))?;
        self.scratch_files += 1;
        let path = self
            .import
            .staging_dir()
            .join(format!("layer-{}.tar", self.scratch_files));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(io("cannot store a layer"))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let limit = self.layer_limit();
        while let Some(chunk) = changes
            .next_chunk()
            .await
            .map_err(|err| agent_error("read the step's changes", err))?
        {
            size += chunk.len() as u64;
            if size > limit {
                return Err(invalid(format!(
                    "a build step changed more than {limit} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io("cannot store a layer"))?;
        }
        file.flush().await.map_err(io("cannot store a layer"))?;
        drop(file);
        let diff_id = format!("sha256:{:x}", hasher.finalize());
        let counted = path.clone();
        let entries = blocking(move || count_entries(&counted)).await?;
        if entries == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(None);
        }
        Ok(Some(LayerBlob {
            path,
            compression: Compression::None,
            diff_id,
        }))
    }

    /// The most one step's layer may hold: what the sandbox's disk can,
    /// twice over for the tar's framing, or the import limit.
    fn layer_limit(&self) -> u64 {
        match self.manager.config.default_disk_mb {
            0 => sbx_api::MAX_IMAGE_ARCHIVE_BYTES,
            mb => (mb << 21).saturating_add(64 << 20),
        }
    }

    /// Deletes the build sandbox, if one runs.
    async fn discard_sandbox(&mut self) {
        if let Some(id) = self.sandbox.take() {
            let reason = EndReason::Client(format!("the build of {}", self.request.name));
            if let Err(err) = self.manager.delete(&id, reason).await {
                tracing::warn!(%id, error = %err, "cannot delete a build sandbox");
            }
        }
    }

    fn announce(&self, index: u32, total: u32, step: &RawStep, cached: bool) {
        let _ = self.events.send(BuildEvent::Step {
            index,
            total,
            line: u32::try_from(step.line).unwrap_or(u32::MAX),
            instruction: step.text.clone(),
            cached,
        });
    }

    /// A line of the builder's own, among the output.
    fn say(&self, data: String) {
        let _ = self.events.send(BuildEvent::Stdout { data });
    }
}

/// The cache key after `key` and a step whose result `detail` decides.
fn next_key(key: &str, detail: &str) -> String {
    format!(
        "sha256:{:x}",
        Sha256::digest(format!("{key}\n{detail}").as_bytes())
    )
}

/// A command as argv: the shell form runs under `/bin/sh -c`.
fn argv(command: Command) -> Vec<String> {
    match command {
        Command::Shell(text) => vec!["/bin/sh".into(), "-c".into(), text],
        Command::Exec(argv) => argv,
    }
}

/// Sets `name` in `NAME=value` entries, in place when it is there.
fn set_env(env: &mut Vec<String>, name: &str, value: &str) {
    let entry = format!("{name}={value}");
    match env
        .iter_mut()
        .find(|existing| existing.split_once('=').map(|(n, _)| n) == Some(name))
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// `path` made absolute against `dir` and normalised (`..` stops at `/`),
/// as `WORKDIR` and `COPY`'s destination are.
fn absolute(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(dir).join(path)
    };
    let mut parts: Vec<String> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// A context path as the context tar names it (no `./`, no leading or
/// trailing `/`); `None` for one that climbs out.
fn context_name(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => return None,
            _ => {}
        }
    }
    Some(parts.join("/"))
}

/// The text of the file `wanted` in the context tar at `context`.
fn read_from_context(context: &Path, wanted: &str) -> Result<String, SandboxError> {
    let file = std::fs::File::open(context).map_err(io("cannot read the context"))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|err| invalid(format!("the build context is not a tar: {err}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|err| invalid(format!("the build context is corrupt: {err}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if context_name(&name).as_deref() != Some(wanted) {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(invalid(format!("{wanted} in the context is not a file")));
        }
        if entry.size() > MAX_DOCKERFILE_BYTES {
            return Err(invalid(format!(
                "{wanted} is larger than {MAX_DOCKERFILE_BYTES} bytes"
            )));
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|err| invalid(format!("{wanted} is not UTF-8 text: {err}")))?;
        return Ok(text);
    }
    Err(invalid(format!("the build context has no {wanted}")))
}

/// How many entries the tar at `path` holds.
fn count_entries(path: &Path) -> Result<usize, SandboxError> {
    let file = std::fs::File::open(path).map_err(io("cannot read a layer"))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|err| invalid(format!("a build step's changes are not a tar: {err}")))?;
    let mut count = 0;
    for entry in entries {
        entry.map_err(|err| invalid(format!("a build step's changes are corrupt: {err}")))?;
        count += 1;
    }
    Ok(count)
}

/// The file at `path` as a streamed request body.
async fn file_body(
    path: &Path,
) -> Result<
    StreamBody<impl Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + 'static>,
    SandboxError,
> {
    use futures_util::StreamExt as _;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io("cannot read a copy"))?;
    let frames = tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map(Frame::data));
    Ok(StreamBody::new(frames))
}

/// Keeps the last [`FAILED_OUTPUT_TAIL`] bytes of a command's output.
fn keep_tail(tail: &mut String, data: &str) {
    tail.push_str(data);
    if tail.len() > FAILED_OUTPUT_TAIL {
        let mut cut = tail.len() - FAILED_OUTPUT_TAIL;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

fn invalid(message: impl ToString) -> SandboxError {
    SandboxError::InvalidRequest(message.to_string())
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.to_owned();
    move |source| SandboxError::Io { context, source }
}

/// A step's call into the sandbox failed: the agent's answer is the
/// user's business (a COPY onto a file, say), so it is the message.
fn step_failed(step: &RawStep) -> impl FnOnce(sbx_api::client::ClientError) -> SandboxError {
    let (line, text) = (step.line, step.text.clone());
    move |err| invalid(format!("Dockerfile line {line}: {text}: {err}"))
}

fn agent_error(what: &str, err: sbx_api::client::ClientError) -> SandboxError {
    SandboxError::Io {
        context: format!("cannot {what}"),
        source: std::io::Error::other(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_working_dir() {
        assert_eq!(absolute("/", "app"), "/app");
        assert_eq!(absolute("/app", "src/"), "/app/src");
        assert_eq!(absolute("/app", "/etc"), "/etc");
        assert_eq!(absolute("/app", "../../.."), "/");
        assert_eq!(absolute("/a/b", "./c/../d"), "/a/b/d");
    }

    #[test]
    fn context_names_drop_dots_and_refuse_climbing() {
        assert_eq!(context_name("./Dockerfile").as_deref(), Some("Dockerfile"));
        assert_eq!(context_name("/src/").as_deref(), Some("src"));
        assert_eq!(context_name(".").as_deref(), Some(""));
        assert_eq!(context_name("../secret"), None);
    }

    #[test]
    fn env_entries_are_replaced_in_place() {
        let mut env = vec!["PATH=/bin".to_owned(), "A=1".to_owned()];
        set_env(&mut env, "PATH", "/usr/bin:/bin");
        set_env(&mut env, "B", "x=y");
        assert_eq!(env, ["PATH=/usr/bin:/bin", "A=1", "B=x=y"]);
    }

    #[test]
    fn keys_chain() {
        let first = next_key("", "FROM sha256:1");
        assert_ne!(next_key(&first, "RUN a"), next_key(&first, "RUN b"));
        assert_eq!(next_key(&first, "RUN a"), next_key(&first, "RUN a"));
        assert_ne!(next_key(&first, "RUN a"), next_key("", "RUN a"));
    }

    #[test]
    fn a_long_output_keeps_its_end() {
        let mut tail = String::new();
        keep_tail(&mut tail, &"a".repeat(FAILED_OUTPUT_TAIL));
        keep_tail(&mut tail, "é the end");
        assert!(tail.ends_with("é the end"));
        assert!(tail.len() <= FAILED_OUTPUT_TAIL + 1);
    }
}
