//! The sbx benchmark: sbx (youki and Docker runtimes) against plain Docker,
//! measured on this machine in one run. Prints a markdown table and writes
//! it to `--out` (default `target/bench.md` under the Cargo target dir).
//!
//! `--quick` keeps every section but shrinks the counts so the whole run
//! takes under two minutes; CI runs that and asserts nothing about the
//! figures. Only loopback and the sandboxes' own namespaces are used.
//!
//! Docker figures go through the `docker` CLI, which is how people use it:
//! `docker run -d` + `docker exec` + `docker rm -f`.
//!
//! `--only import` runs the image import section alone (at the size
//! `--quick` picks or the full one); `--only build` the Dockerfile build
//! section; `--only live` the live section (terminal keystroke echo, HTTP
//! through the port proxy against the same request inside the sandbox, and
//! watch event latency).

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use rand::RngCore as _;
use sbx_api::client::{Client, SandboxClient};
use sbx_api::{
    BuildEvent, BuildImageQuery, CreatePtyRequest, CreateSandboxRequest, ExecRequest,
    PortWaitQuery, StartProcessRequest, WatchEventKind, WatchQuery,
};
use sbx_tests::{tree_tar, Engine, Server};
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Copy)]
struct Sizes {
    cycles: usize,
    execs: usize,
    docker_execs: usize,
    throughput_window: Duration,
    densities: &'static [usize],
    docker_density: usize,
    tree_files: usize,
    /// Samples of each lifecycle call (stop, start, pause + resume, …).
    lifecycle: usize,
    /// Fork calls of 10, and rounds of 10 cold creates to set beside them.
    forks: usize,
    /// `docker commit`s of a container holding 1 GiB (~10 s each).
    docker_commits: usize,
    /// Stopped sandboxes held at once for the memory figure.
    stopped: usize,
    /// MiB of random file data in the image the import section makes.
    import_mib: usize,
    /// Samples of each live figure (keystrokes, proxied and direct GETs,
    /// watched writes).
    live: usize,
}

const FULL: Sizes = Sizes {
    cycles: 50,
    execs: 1000,
    docker_execs: 100,
    throughput_window: Duration::from_secs(5),
    densities: &[100, 500, 1000],
    docker_density: 200,
    tree_files: 10_000,
    lifecycle: 30,
    forks: 3,
    docker_commits: 3,
    stopped: 500,
    import_mib: 200,
    live: 1000,
};

const QUICK: Sizes = Sizes {
    cycles: 10,
    execs: 100,
    docker_execs: 10,
    throughput_window: Duration::from_secs(1),
    densities: &[20],
    docker_density: 20,
    tree_files: 10_000,
    lifecycle: 3,
    forks: 1,
    docker_commits: 1,
    stopped: 20,
    import_mib: 20,
    live: 100,
};

/// p50/p95/p99 of a set of samples.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: Duration,
    p95: Duration,
    p99: Duration,
}

impl Percentiles {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let at = |q: f64| {
            let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[index.min(samples.len() - 1)]
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
        }
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

/// How many times faster `ours` is than `theirs`.
fn ratio(theirs: Duration, ours: Duration) -> String {
    format!(
        "{:.1}×",
        theirs.as_secs_f64() / ours.as_secs_f64().max(1e-9)
    )
}

/// One table of the report.
#[derive(Debug)]
struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Debug, Default)]
struct Report {
    sections: Vec<Section>,
}

impl Report {
    fn table(&mut self, title: &str, header: &[&str], rows: Vec<Vec<String>>) {
        let section = Section {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows,
        };
        // Progress on stderr; the whole report goes to stdout at the end.
        eprintln!("{}", render(std::slice::from_ref(&section)));
        self.sections.push(section);
    }
}

fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for Section {
        title,
        header,
        rows,
    } in sections
    {
        let _ = writeln!(out, "### {title}\n");
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
    }
    out
}

fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker").args(args).output()?;
    if !output.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The Docker tag the sbx Docker runtime imports the base image as.
fn docker_image() -> Result<String> {
    let images = sbx_tests::required_env_path("SBX_TEST_IMAGES_DIR");
    let build = std::fs::canonicalize(images.join("base"))?;
    let name = build
        .file_name()
        .context("image build dir")?
        .to_string_lossy()
        .into_owned();
    let (image, hash) = name.rsplit_once('-').context("NAME-HASH build dir")?;
    Ok(format!("sbx/{image}:{hash}"))
}

fn docker_run_idle(image: &str, name: &str) -> Result<String> {
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        image,
        "sleep",
        "infinity",
    ])
}

/// One create, exec `true`, delete; returns how long the create took and
/// the whole cycle.
async fn cycle(client: &Client) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let sandbox = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?;
    let created = started.elapsed();
    let result = client
        .exec(&sandbox.id, &ExecRequest::argv(["true"]))
        .await?;
    client.delete_sandbox(&sandbox.id).await?;
    let whole = started.elapsed();
    if result.exit_code != 0 {
        bail!("true failed: {}", result.stderr);
    }
    Ok((created, whole))
}

async fn cold_cycles(client: &Client, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(cycle(client).await?.1);
    }
    Ok(samples)
}

/// The cold cycle on a server with a warm pool of `pool`, each cycle
/// started once the pool is full again (untimed): what a client sees when
/// its creates come no faster than the pool refills. Returns the creates
/// alone and the whole cycles.
async fn warm_cycles(
    server: &Server,
    pool: usize,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let sandboxes = server.data_dir().join("sandboxes");
    let pool_full = || async { std::fs::read_dir(&sandboxes).map_or(0, |dir| dir.count()) == pool };
    let client = server.client();
    let (mut creates, mut cycles) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        if !sbx_tests::eventually(Duration::from_secs(60), pool_full).await {
            bail!("the warm pool did not refill within 60 s");
        }
        let (created, whole) = cycle(&client).await?;
        creates.push(created);
        cycles.push(whole);
    }
    Ok((creates, cycles))
}

fn docker_cold_cycles(image: &str, n: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let name = format!("sbx-bench-cycle-{i}");
        docker_run_idle(image, &name)?;
        docker(&["exec", &name, "true"])?;
        docker(&["rm", "-f", &name])?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn exec_round_trips(client: &Client, id: &str, n: usize) -> Result<Vec<Duration>> {
    let request = ExecRequest::argv(["true"]);
    // Warm the connection path and the page cache first.
    client.exec(id, &request).await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.exec(id, &request).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

fn docker_exec_round_trips(container: &str, n: usize) -> Result<Vec<Duration>> {
    docker(&["exec", container, "true"])?;
    (0..n)
        .map(|_| {
            let started = Instant::now();
            docker(&["exec", container, "true"])?;
            Ok(started.elapsed())
        })
        .collect()
}

/// Execs per second with `clients` concurrent clients over `ids`.
async fn throughput(
    client: &Client,
    ids: &[String],
    clients: usize,
    window: Duration,
) -> Result<f64> {
    let deadline = Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..clients {
        let client = client.clone();
        let id = ids[worker % ids.len()].clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                client.exec(&id, &ExecRequest::argv(["true"])).await?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let started = Instant::now();
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn docker_throughput(containers: &[String], clients: usize, window: Duration) -> Result<f64> {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|worker| {
            let container = containers[worker % containers.len()].clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut done = 0;
                while Instant::now() < deadline {
                    docker(&["exec", &container, "true"])?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle
            .join()
            .map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Writes then reads 100 MiB; returns (write MiB/s, read MiB/s).
async fn file_round_trip(client: &Client, id: &str) -> Result<(f64, f64)> {
    let mut data = vec![0u8; 100 * 1024 * 1024];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut data)?;
    let data = Bytes::from(data);
    let sandbox = client.sandbox(id);
    let started = Instant::now();
    sandbox
        .write_file("/workspace/bench.bin", None, Full::new(data.clone()))
        .await?;
    let write = started.elapsed();
    let started = Instant::now();
    let read = sandbox
        .read_file("/workspace/bench.bin")
        .await?
        .bytes()
        .await?;
    let read_time = started.elapsed();
    if read.len() != data.len() {
        bail!("read {} bytes, wrote {}", read.len(), data.len());
    }
    let rate = |time: Duration| data.len() as f64 / MIB / time.as_secs_f64();
    Ok((rate(write), rate(read_time)))
}

/// Memory in use on the host (`MemTotal - MemAvailable`), measured after
/// dropping clean caches so that earlier file traffic does not blur it.
fn host_memory_used() -> Result<u64> {
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> Result<u64> {
        let line = meminfo
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} in /proc/meminfo"))?;
        let kib: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib * 1024)
    };
    Ok(field("MemTotal:")? - field("MemAvailable:")?)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn host_total_memory() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .context("MemTotal")?
        .parse()?;
    Ok(kib * 1024)
}

/// Sum of `memory.usage_in_bytes` over the cgroups under `parent`.
fn cgroup_usage(parent: &Path) -> u64 {
    std::fs::read_dir(parent)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().is_dir())
                .filter_map(|entry| {
                    std::fs::read_to_string(entry.path().join("memory.usage_in_bytes")).ok()
                })
                .filter_map(|text| text.trim().parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes dirty pages back before a timed file phase, so that one phase's
/// writeback does not slow the next one down.
fn flush_writeback() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Lets the kernel settle (lazy frees, page cache) before a reading.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

struct Density {
    count: usize,
    per_sandbox_meminfo: f64,
    per_sandbox_cgroup: f64,
    orchestrator_rss: f64,
    create_p50: Duration,
}

async fn sbx_density(server: &Server, counts: &[usize]) -> Result<Vec<Density>> {
    let client = server.client();
    settle().await;
    let baseline = host_memory_used()?;
    let mut ids = Vec::new();
    let mut results = Vec::new();
    let mut create_times = Vec::new();
    for &count in counts {
        while ids.len() < count {
            let started = Instant::now();
            match client
                .create_sandbox(&CreateSandboxRequest::default())
                .await
            {
                Ok(sandbox) => ids.push(sandbox.id),
                Err(err) => {
                    eprintln!("stopped at {} sandboxes: {err}", ids.len());
                    break;
                }
            }
            create_times.push(started.elapsed());
        }
        settle().await;
        let held = ids.len();
        let used = host_memory_used()?.saturating_sub(baseline) as f64;
        results.push(Density {
            count: held,
            per_sandbox_meminfo: used / held as f64 / MIB,
            per_sandbox_cgroup: cgroup_usage(Path::new("/sys/fs/cgroup/memory/sbx")) as f64
                / held as f64
                / MIB,
            orchestrator_rss: server.pid().and_then(rss).unwrap_or(0) as f64 / MIB,
            create_p50: Percentiles::of(&mut create_times.clone()).p50,
        });
        if held < count {
            break;
        }
    }
    for id in &ids {
        client.delete_sandbox(id).await?;
    }
    Ok(results)
}

fn docker_density(image: &str, count: usize) -> Result<(usize, f64, f64)> {
    std::thread::sleep(Duration::from_secs(2));
    let baseline = host_memory_used()?;
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("sbx-bench-idle-{i}");
        if let Err(err) = docker_run_idle(image, &name) {
            eprintln!("docker stopped at {i} containers: {err}");
            break;
        }
        names.push(name);
    }
    std::thread::sleep(Duration::from_secs(2));
    let used = host_memory_used()?.saturating_sub(baseline) as f64;
    let cgroups = cgroup_usage(Path::new("/sys/fs/cgroup/memory/docker")) as f64;
    let held = names.len().max(1);
    for chunk in names.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        docker(&args)?;
    }
    Ok((
        names.len(),
        used / held as f64 / MIB,
        cgroups / held as f64 / MIB,
    ))
}

/// What one cgroup v1 migration costs on this kernel: moving a fresh
/// process into a new cgroup, as libcontainer must do for every sandbox.
/// The first migration after a quiet spell waits for an RCU grace period
/// (the cgroup threadgroup rwsem switching to its slow mode), which sets a
/// floor under every cold create that no runtime on cgroup v1 avoids.
fn cgroup_migration_floor(samples: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/pids/sbx-bench-probe-{i}"));
        std::fs::create_dir(&dir)?;
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let started = Instant::now();
        let moved = std::fs::write(dir.join("cgroup.procs"), child.id().to_string());
        times.push(started.elapsed());
        child.kill()?;
        child.wait()?;
        std::fs::remove_dir(&dir)?;
        moved?;
        // Quiet spell, as between two creates.
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(times)
}

/// What the lifecycle section measures on one sbx server.
struct LifecycleFigures {
    snapshot: Vec<Duration>,
    fork: Vec<Duration>,
    fork_fresh: Vec<Duration>,
    ten_creates: Vec<Duration>,
    pause_resume: Vec<Duration>,
    stop: Vec<Duration>,
    start: Vec<Duration>,
    create: Vec<Duration>,
    restore: Vec<Duration>,
    /// Stopped sandboxes held, and host memory used with them all stopped
    /// minus before the first was created (bytes, may be negative).
    stopped: (usize, f64),
    /// The same for the RSS of `sbx serve` (what it keeps per record).
    stopped_rss: f64,
    auto_start_exec: Vec<Duration>,
    exec: Vec<Duration>,
}

/// 1 GiB written with `dd` (synced, so that the first snapshot does not
/// pay for its writeback).
const DD_GIB: [&str; 6] = [
    "dd",
    "if=/dev/zero",
    "of=/workspace/big.bin",
    "bs=1M",
    "count=1024",
    "conv=fsync",
];

async fn timed<T, F: std::future::Future<Output = T>>(future: F) -> (T, Duration) {
    let started = Instant::now();
    let value = future.await;
    (value, started.elapsed())
}

/// One fork call of 10 copies of `id`, timed; the copies are deleted.
async fn fork_ten(client: &Client, id: &str) -> Result<Duration> {
    let (forks, took) = timed(client.fork_sandbox(id, 10)).await;
    let mut failed = None;
    for outcome in forks? {
        match (outcome.sandbox, outcome.error) {
            (Some(made), _) => client.delete_sandbox(&made.sandbox.id).await?,
            (None, error) => failed = Some(format!("{error:?}")),
        }
    }
    if let Some(error) = failed {
        bail!("a fork failed: {error}");
    }
    Ok(took)
}

async fn sbx_lifecycle(server: &Server, sizes: Sizes) -> Result<LifecycleFigures> {
    let client = server.client();
    let n = sizes.lifecycle;

    // Snapshot, restore and fork of a sandbox holding 1 GiB.
    let big = client
        .create_sandbox(&CreateSandboxRequest {
            disk_mb: Some(4096),
            ..CreateSandboxRequest::default()
        })
        .await?
        .id;
    let mut dd = ExecRequest::argv(DD_GIB);
    dd.timeout_ms = Some(300_000);
    let written = client.exec(&big, &dd).await?;
    if written.exit_code != 0 {
        bail!("dd failed: {}", written.stderr);
    }
    let mut snapshots = Vec::new();
    let mut snapshot = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("sbx-bench-{i}");
        let (made, took) = timed(client.create_snapshot(&big, &name)).await;
        made?;
        snapshot.push(took);
        snapshots.push(name);
    }
    let mut restore = Vec::with_capacity(n);
    for _ in 0..n {
        let (restored, took) = timed(client.restore_sandbox(&big, &snapshots[0])).await;
        restored?;
        restore.push(took);
    }
    let (mut fork, mut ten_creates) = (Vec::new(), Vec::new());
    for _ in 0..sizes.forks {
        fork.push(fork_ten(&client, &big).await?);
        let mut ids = Vec::new();
        let started = Instant::now();
        for _ in 0..10 {
            ids.push(
                client
                    .create_sandbox(&CreateSandboxRequest::default())
                    .await?
                    .id,
            );
        }
        ten_creates.push(started.elapsed());
        for id in &ids {
            client.delete_sandbox(id).await?;
        }
    }
    client.delete_sandbox(&big).await?;
    for name in &snapshots {
        client.delete_snapshot(name).await?;
    }

    // Fork, pause, stop and start of a fresh sandbox, and cold creates
    // beside.
    let id = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await?
        .id;
    let mut fork_fresh = Vec::with_capacity(sizes.forks);
    for _ in 0..sizes.forks {
        fork_fresh.push(fork_ten(&client, &id).await?);
    }
    let mut pause_resume = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        client.pause_sandbox(&id).await?;
        client.resume_sandbox(&id).await?;
        pause_resume.push(started.elapsed());
    }
    let (mut stop, mut start) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (stopped, took) = timed(client.stop_sandbox(&id)).await;
        stopped?;
        stop.push(took);
        let (started, took) = timed(client.start_sandbox(&id)).await;
        started?;
        start.push(took);
    }
    let exec = exec_round_trips(&client, &id, n.max(20)).await?;
    client.delete_sandbox(&id).await?;
    let mut create = Vec::with_capacity(n);
    for _ in 0..n {
        let (made, took) = timed(client.create_sandbox(&CreateSandboxRequest::default())).await;
        create.push(took);
        client.delete_sandbox(&made?.id).await?;
    }

    // The first exec on a stopped sandbox that auto-resumes.
    let auto = client
        .create_sandbox(&CreateSandboxRequest {
            lifecycle: Some(sbx_api::LifecycleRequest {
                auto_resume: Some(true),
                ..Default::default()
            }),
            ..CreateSandboxRequest::default()
        })
        .await?
        .id;
    let mut auto_start_exec = Vec::with_capacity(n);
    for _ in 0..n {
        client.stop_sandbox(&auto).await?;
        let (result, took) = timed(client.exec(&auto, &ExecRequest::argv(["true"]))).await;
        if result?.exit_code != 0 {
            bail!("true failed after an auto-start");
        }
        auto_start_exec.push(took);
    }
    client.delete_sandbox(&auto).await?;

    // Memory of stopped sandboxes.
    flush_writeback();
    settle().await;
    let baseline = host_memory_used()?;
    let rss_before = server.pid().and_then(rss).unwrap_or(0);
    let mut ids = Vec::with_capacity(sizes.stopped);
    for _ in 0..sizes.stopped {
        match client
            .create_sandbox(&CreateSandboxRequest::default())
            .await
        {
            Ok(sandbox) => {
                client.stop_sandbox(&sandbox.id).await?;
                ids.push(sandbox.id);
            }
            Err(err) => {
                eprintln!("stopped at {} stopped sandboxes: {err}", ids.len());
                break;
            }
        }
    }
    flush_writeback();
    settle().await;
    let used = host_memory_used()? as f64 - baseline as f64;
    let stopped_rss = server.pid().and_then(rss).unwrap_or(0) as f64 - rss_before as f64;
    for id in &ids {
        client.delete_sandbox(id).await?;
    }

    Ok(LifecycleFigures {
        snapshot,
        fork,
        fork_fresh,
        ten_creates,
        pause_resume,
        stop,
        start,
        create,
        restore,
        stopped: (ids.len(), used),
        stopped_rss,
        auto_start_exec,
        exec,
    })
}

/// Plain Docker's counterparts of the lifecycle calls, through the CLI.
struct DockerLifecycle {
    commit: Vec<Duration>,
    pause_unpause: Vec<Duration>,
    stop: Vec<Duration>,
    start: Vec<Duration>,
    run: Vec<Duration>,
    stopped: (usize, f64),
}

fn docker_timed(args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    docker(args)?;
    Ok(started.elapsed())
}

fn docker_lifecycle(image: &str, sizes: Sizes) -> Result<DockerLifecycle> {
    let n = sizes.lifecycle;
    let name = "sbx-bench-lifecycle";
    docker_run_idle(image, name)?;
    // The same dd, into the container's writable layer.
    let dd: Vec<&str> = ["exec", name].into_iter().chain(DD_GIB).collect();
    docker(&dd)?;
    let mut commit = Vec::with_capacity(sizes.docker_commits);
    for i in 0..sizes.docker_commits {
        let tag = format!("sbx-bench-commit:{i}");
        let took = docker_timed(&["commit", name, &tag]);
        let _ = docker(&["rmi", "-f", &tag]);
        commit.push(took?);
    }
    let mut pause_unpause = Vec::with_capacity(n);
    for _ in 0..n {
        pause_unpause.push(docker_timed(&["pause", name])? + docker_timed(&["unpause", name])?);
    }
    let (mut stop, mut start) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        stop.push(docker_timed(&["stop", "-t", "0", name])?);
        start.push(docker_timed(&["start", name])?);
    }
    docker(&["rm", "-f", name])?;
    let mut run = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("sbx-bench-run-{i}");
        let started = Instant::now();
        docker_run_idle(image, &name)?;
        run.push(started.elapsed());
        docker(&["rm", "-f", &name])?;
    }

    flush_writeback();
    std::thread::sleep(Duration::from_secs(2));
    let baseline = host_memory_used()?;
    let mut names = Vec::new();
    for i in 0..sizes.docker_density {
        let name = format!("sbx-bench-stopped-{i}");
        if let Err(err) = docker_run_idle(image, &name) {
            eprintln!("docker stopped at {i} containers: {err}");
            break;
        }
        names.push(name);
    }
    for chunk in names.chunks(50) {
        let mut args = vec!["stop", "-t", "0"];
        args.extend(chunk.iter().map(String::as_str));
        docker(&args)?;
    }
    flush_writeback();
    std::thread::sleep(Duration::from_secs(2));
    let used = host_memory_used()? as f64 - baseline as f64;
    for chunk in names.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        docker(&args)?;
    }
    Ok(DockerLifecycle {
        commit,
        pause_unpause,
        stop,
        start,
        run,
        stopped: (names.len(), used),
    })
}

/// A lifecycle cell: p50 of `samples`, and how many there were.
fn p50_cell(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "—".into();
    }
    let p = Percentiles::of(&mut samples.to_vec());
    format!("{} (n={})", ms(p.p50), samples.len())
}

fn stopped_cell((held, used): (usize, f64)) -> String {
    format!(
        "{:+.1} MiB for {held} ({:+.2} MiB each)",
        used / MIB,
        used / held.max(1) as f64 / MIB
    )
}

/// A data dir on the sbx storage pool (`SBX_DATA_DIR`), where disks are
/// copied by reflink as on a real server, rather than in /tmp.
fn pool_data_dir() -> Result<tempfile::TempDir> {
    let pool = std::env::var_os("SBX_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/sbx"));
    Ok(tempfile::Builder::new()
        .prefix("sbx-bench-")
        .tempdir_in(pool)?)
}

fn remove_leftover_bench_containers() {
    if let Ok(names) = docker(&["ps", "-aq", "--filter", "name=sbx-bench-"]) {
        for name in names.lines().filter(|line| !line.is_empty()) {
            let _ = docker(&["rm", "-f", name]);
        }
    }
}

/// A layer tar being written: entries owned by root, with a fixed mtime.
struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    fn with_capacity(bytes: usize) -> Self {
        Self(tar::Builder::new(Vec::with_capacity(bytes)))
    }

    fn header(kind: tar::EntryType, mode: u32, size: usize) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, 0o755, 0);
        Ok(self.0.append_data(&mut header, path, std::io::empty())?)
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, mode, data.len());
        Ok(self.0.append_data(&mut header, path, data)?)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        Ok(self.0.append_link(&mut header, path, target)?)
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(self.0.into_inner()?)
    }
}

/// `docker save` output for an image named `repo_tag` made of `layers`
/// (bottom first): `manifest.json`, the config with the layers' diff ids,
/// and one `<hex>/layer.tar` per layer.
fn docker_save(repo_tag: &str, layers: &[Vec<u8>]) -> Result<Vec<u8>> {
    let hex = |data: &[u8]| format!("{:x}", Sha256::digest(data));
    let layer_hexes: Vec<String> = layers.iter().map(|layer| hex(layer)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": layer_hexes.iter().map(|hex| format!("sha256:{hex}")).collect::<Vec<_>>(),
        },
    }))?;
    let config_name = format!("{}.json", hex(&config));
    let layer_names: Vec<String> = layer_hexes
        .iter()
        .map(|hex| format!("{hex}/layer.tar"))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}
    ]))?;
    let total = layers.iter().map(Vec::len).sum::<usize>() + (1 << 20);
    let mut archive = tar::Builder::new(Vec::with_capacity(total));
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        archive.append_data(&mut header, name, data)
    };
    add("manifest.json", &manifest)?;
    add(&config_name, &config)?;
    for (name, layer) in layer_names.iter().zip(layers) {
        add(name, layer)?;
    }
    Ok(archive.into_inner()?)
}

/// Layers of random data in the import section's image, above busybox.
const IMPORT_DATA_LAYERS: usize = 3;
/// Files in each of those layers.
const IMPORT_FILES_PER_LAYER: usize = 4;

/// The import section's image as `docker save` output: busybox (static,
/// from the host) with its `sh` and an account in a bottom layer, then
/// `mib` MiB of random (incompressible) data spread evenly over
/// [`IMPORT_DATA_LAYERS`] layers of [`IMPORT_FILES_PER_LAYER`] files.
fn import_archive(mib: usize) -> Result<Bytes> {
    let busybox = std::fs::read("/bin/busybox").context("busybox-static (scripts/setup)")?;
    let mut base = LayerTar::with_capacity(busybox.len() + (1 << 16));
    base.dir("bin/")?;
    base.file("bin/busybox", &busybox, 0o755)?;
    base.symlink("bin/sh", "busybox")?;
    base.dir("etc/")?;
    base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    base.file("etc/group", b"root:x:0:\n", 0o644)?;
    let mut layers = vec![base.finish()?];
    let file_bytes = mib * (1 << 20) / (IMPORT_DATA_LAYERS * IMPORT_FILES_PER_LAYER);
    let mut rng = rand::rng();
    for layer_index in 0..IMPORT_DATA_LAYERS {
        let mut layer = LayerTar::with_capacity(IMPORT_FILES_PER_LAYER * (file_bytes + 1024));
        let dir = format!("data/layer{layer_index}/");
        layer.dir("data/")?;
        layer.dir(&dir)?;
        let mut data = vec![0u8; file_bytes];
        for file in 0..IMPORT_FILES_PER_LAYER {
            rng.fill_bytes(&mut data);
            layer.file(&format!("{dir}file{file}.bin"), &data, 0o644)?;
        }
        layers.push(layer.finish()?);
    }
    Ok(Bytes::from(docker_save(
        "sbx-bench/import:archive",
        &layers,
    )?))
}

/// What the import section measures on one server.
struct ImportFigures {
    import: Duration,
    first_create: Duration,
    first_exec: Duration,
    import_to_exec: Duration,
    second_create: Duration,
    reimport: Duration,
}

/// The sandboxes and images a measurement made, deleted after it whether
/// it succeeded or not.
#[derive(Default)]
struct Made {
    sandboxes: Vec<String>,
    images: Vec<String>,
}

impl Made {
    /// Deletes everything (sandboxes first: an image in use cannot go);
    /// the first failure is returned once all were tried.
    async fn delete(self, client: &Client) -> Result<()> {
        let mut failed = None;
        for id in &self.sandboxes {
            if let Err(err) = client.delete_sandbox(id).await {
                failed.get_or_insert(anyhow::anyhow!("deleting sandbox {id}: {err}"));
            }
        }
        for name in &self.images {
            if let Err(err) = client.delete_image(name).await {
                failed.get_or_insert(anyhow::anyhow!("deleting image {name}: {err}"));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

async fn busybox_true(client: &Client, id: &str) -> Result<()> {
    let result = client
        .sandbox(id)
        .exec(&ExecRequest::argv(["/bin/busybox", "true"]))
        .await?;
    if result.exit_code != 0 {
        bail!(
            "busybox true exited {}: {}",
            result.exit_code,
            result.stderr
        );
    }
    Ok(())
}

/// Imports `archive` as `name`, makes a sandbox of it and runs a first
/// exec there, each timed; then a second create, and an import of the
/// same archive as `<name>-again`, whose layers are stored already.
async fn measure_import(
    client: &Client,
    archive: &Bytes,
    name: &str,
    made: &mut Made,
) -> Result<ImportFigures> {
    flush_writeback();
    let started = Instant::now();
    let image = client
        .import_image(Full::new(archive.clone()), Some(name))
        .await?;
    let import = started.elapsed();
    made.images.push(image.name.clone());
    let request = CreateSandboxRequest {
        image: Some(image.name.clone()),
        ..CreateSandboxRequest::default()
    };
    let (created, first_create) = timed(client.create_sandbox(&request)).await;
    let first = created?.id;
    made.sandboxes.push(first.clone());
    let (ran, first_exec) = timed(busybox_true(client, &first)).await;
    ran?;
    let import_to_exec = started.elapsed();

    let (created, second_create) = timed(client.create_sandbox(&request)).await;
    let second = created?.id;
    made.sandboxes.push(second.clone());
    busybox_true(client, &second).await?;

    flush_writeback();
    let again = format!("{name}-again");
    let (imported, reimport) =
        timed(client.import_image(Full::new(archive.clone()), Some(&again))).await;
    made.images.push(imported?.name);
    Ok(ImportFigures {
        import,
        first_create,
        first_exec,
        import_to_exec,
        second_create,
        reimport,
    })
}

/// Removes the Docker engine's copies of the import section's images,
/// which deleting them from sbx leaves in the engine.
fn remove_leftover_bench_engine_images() {
    if let Ok(images) = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]) {
        for image in images
            .lines()
            .filter(|image| image.starts_with("sbx/sbx-bench-import-"))
        {
            let _ = docker(&["rmi", image]);
        }
    }
}

/// The image import section: on each runtime, a server on the storage
/// pool imports a fresh image (random data, so no layer of it is stored
/// yet) under a name of its own, and makes sandboxes of it. Each server
/// has made and deleted one sandbox of the default image first, so that
/// the first create from the import pays for the image, not for the
/// server's first sandbox.
async fn image_import(report: &mut Report, sizes: Sizes) -> Result<()> {
    let archive = import_archive(sizes.import_mib)?;
    let mut figures = Vec::new();
    for engine in [Engine::Youki, Engine::Docker] {
        let dir = pool_data_dir()?;
        let server = Server::start_on(engine, dir.path()).await?;
        let client = server.client();
        let warm = client
            .create_sandbox(&CreateSandboxRequest::default())
            .await?;
        client.delete_sandbox(&warm.id).await?;
        let name = format!("sbx-bench/import-{:08x}", rand::random::<u32>());
        let mut made = Made::default();
        let measured = measure_import(&client, &archive, &name, &mut made).await;
        let deleted = made.delete(&client).await;
        drop(server);
        drop(dir);
        figures.push(measured.with_context(|| format!("image import on {}", engine.name()))?);
        deleted?;
    }
    let row = |figure: &str, cell: &dyn Fn(&ImportFigures) -> Duration| {
        let mut row = vec![figure.to_owned()];
        row.extend(figures.iter().map(|f| ms(cell(f))));
        row
    };
    report.table(
        &format!(
            "Image import: a {:.0} MiB `docker save` archive (busybox, then {} MiB of random data \
             in {IMPORT_DATA_LAYERS} layers of {IMPORT_FILES_PER_LAYER} files), uploaded from memory (ms)",
            archive.len() as f64 / MIB,
            sizes.import_mib,
        ),
        &["", "sbx / youki", "sbx / docker"],
        vec![
            row(
                "import (upload, unpack, layers applied, runtime prepared)",
                &|f| f.import,
            ),
            row("first create from it", &|f| f.first_create),
            row("first exec `/bin/busybox true` in it", &|f| f.first_exec),
            row("import to first exec, in all", &|f| f.import_to_exec),
            row("second create from it", &|f| f.second_create),
            row(
                "import of the same archive under another name (layers stored)",
                &|f| f.reimport,
            ),
        ],
    );
    Ok(())
}

fn latency_row(
    name: &str,
    mut samples: Vec<Duration>,
    baseline: Option<Percentiles>,
) -> (Vec<String>, Percentiles) {
    let p = Percentiles::of(&mut samples);
    let row = vec![
        name.to_owned(),
        samples.len().to_string(),
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        baseline.map_or_else(|| "—".to_owned(), |docker| ratio(docker.p50, p.p50)),
    ];
    (row, p)
}

async fn run(sizes: Sizes, out: &Path) -> Result<()> {
    remove_leftover_bench_containers();
    let image = docker_image()?;
    let youki = Server::start(Engine::Youki).await?;
    let on_docker = Server::start(Engine::Docker).await?;
    // The Docker runtime imports the image on its first sandbox.
    let warm = on_docker
        .client()
        .create_sandbox(&CreateSandboxRequest::default())
        .await?;
    on_docker.client().delete_sandbox(&warm.id).await?;
    let mut report = Report::default();

    // 1. Cold cycle.
    let docker_cycles = Percentiles::of(&mut docker_cold_cycles(&image, sizes.cycles)?);
    let mut rows = Vec::new();
    for (name, server) in [("sbx / youki", &youki), ("sbx / docker", &on_docker)] {
        let samples = cold_cycles(&server.client(), sizes.cycles).await?;
        rows.push(latency_row(name, samples, Some(docker_cycles)).0);
    }
    let pooled = Server::start_with(Engine::Youki, &["--warm-pool", "2"]).await?;
    let (warm_creates, warm_cycles) = warm_cycles(&pooled, 2, sizes.cycles).await?;
    rows.push(
        latency_row(
            "sbx / youki, warm pool of 2",
            warm_cycles,
            Some(docker_cycles),
        )
        .0,
    );
    drop(pooled);
    rows.push(vec![
        "docker run -d + exec + rm -f".into(),
        sizes.cycles.to_string(),
        ms(docker_cycles.p50),
        ms(docker_cycles.p95),
        ms(docker_cycles.p99),
        "1.0×".into(),
    ]);
    report.table(
        "Cold sandbox cycle: create, first exec `true`, delete (ms)",
        &["", "n", "p50", "p95", "p99", "vs docker (p50)"],
        rows,
    );

    report.table(
        "Create from a warm pool: the create call alone, pool full (ms)",
        &["", "n", "p50", "p95", "p99", "—"],
        vec![latency_row("sbx / youki, warm pool of 2", warm_creates, None).0],
    );

    let floor = cgroup_migration_floor(20)?;
    report.table(
        "Floor set by the kernel: one cgroup v1 migration of a new process (ms)",
        &["", "n", "p50", "p95", "p99", "—"],
        vec![latency_row("write pid to cgroup.procs", floor, None).0],
    );

    // 2. Exec round trip, and 3. throughput, on 8 sandboxes per runtime.
    let docker_containers: Vec<String> = (0..8)
        .map(|i| {
            let name = format!("sbx-bench-exec-{i}");
            docker_run_idle(&image, &name).map(|_| name)
        })
        .collect::<Result<_>>()?;
    let docker_rtt = Percentiles::of(&mut docker_exec_round_trips(
        &docker_containers[0],
        sizes.docker_execs,
    )?);
    let mut rtt_rows = Vec::new();
    let mut throughput_rows = Vec::new();
    for (name, server) in [("sbx / youki", &youki), ("sbx / docker", &on_docker)] {
        let client = server.client();
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(
                client
                    .create_sandbox(&CreateSandboxRequest::default())
                    .await?
                    .id,
            );
        }
        let samples = exec_round_trips(&client, &ids[0], sizes.execs).await?;
        rtt_rows.push(latency_row(name, samples, Some(docker_rtt)).0);
        let mut row = vec![name.to_owned()];
        for clients in [1, 8, 32] {
            let rate = throughput(&client, &ids, clients, sizes.throughput_window).await?;
            row.push(format!("{rate:.0}"));
        }
        throughput_rows.push(row);
        for id in &ids {
            client.delete_sandbox(id).await?;
        }
    }
    rtt_rows.push(vec![
        "docker exec".into(),
        sizes.docker_execs.to_string(),
        ms(docker_rtt.p50),
        ms(docker_rtt.p95),
        ms(docker_rtt.p99),
        "1.0×".into(),
    ]);
    report.table(
        "Exec `true` round trip over HTTP (ms)",
        &["", "n", "p50", "p95", "p99", "vs docker exec (p50)"],
        rtt_rows,
    );
    let mut docker_row = vec!["docker exec (CLI)".to_owned()];
    for clients in [1, 8, 32] {
        let rate = docker_throughput(&docker_containers, clients, sizes.throughput_window)?;
        docker_row.push(format!("{rate:.0}"));
    }
    throughput_rows.push(docker_row);
    report.table(
        "Exec throughput, `true`, over 8 sandboxes (execs/s)",
        &["", "1 client", "8 clients", "32 clients"],
        throughput_rows,
    );

    // 4. Files.
    let tar = tree_tar(sizes.tree_files)?;
    let mut file_rows = Vec::new();
    let mut uploads = Vec::new();
    for (name, server) in [("sbx / youki", &youki), ("sbx / docker", &on_docker)] {
        let client = server.client();
        let id = client
            .create_sandbox(&CreateSandboxRequest::default())
            .await?
            .id;
        let (write, read) = file_round_trip(&client, &id).await?;
        flush_writeback();
        let started = Instant::now();
        client
            .sandbox(&id)
            .upload_archive("/workspace", Full::new(Bytes::from(tar.clone())))
            .await?;
        let upload = started.elapsed();
        file_rows.push(vec![
            name.to_owned(),
            format!("{write:.0}"),
            format!("{read:.0}"),
            ms(upload),
        ]);
        uploads.push(upload);
        client.delete_sandbox(&id).await?;
    }
    let tree_dir = tempfile::tempdir()?;
    tar::Archive::new(tar.as_slice()).unpack(tree_dir.path())?;
    flush_writeback();
    let started = Instant::now();
    docker(&[
        "cp",
        tree_dir.path().join("tree").to_str().context("utf-8")?,
        &format!("{}:/tmp/", docker_containers[0]),
    ])?;
    let docker_cp = started.elapsed();
    for (row, upload) in file_rows.iter_mut().zip(uploads) {
        row.push(ratio(docker_cp, upload));
    }
    file_rows.push(vec![
        "docker cp (tree)".into(),
        "—".into(),
        "—".into(),
        ms(docker_cp),
        "1.0×".into(),
    ]);
    report.table(
        &format!(
            "Files: 100 MiB write then read (MiB/s); upload of a {}-file tree as tar (ms)",
            sizes.tree_files
        ),
        &[
            "",
            "write MiB/s",
            "read MiB/s",
            "tree upload ms",
            "vs docker cp",
        ],
        file_rows,
    );
    let mut names = vec!["rm", "-f"];
    names.extend(docker_containers.iter().map(String::as_str));
    docker(&names)?;

    // 5. Density.
    drop(on_docker);
    let mut density_rows = Vec::new();
    for density in sbx_density(&youki, sizes.densities).await? {
        density_rows.push(vec![
            "sbx / youki".into(),
            density.count.to_string(),
            format!("{:.2}", density.per_sandbox_meminfo),
            format!("{:.2}", density.per_sandbox_cgroup),
            format!("{:.1}", density.orchestrator_rss),
            ms(density.create_p50),
        ]);
    }
    let (held, meminfo, cgroups) = docker_density(&image, sizes.docker_density)?;
    density_rows.push(vec![
        "docker run -d … sleep infinity".into(),
        held.to_string(),
        format!("{meminfo:.2}"),
        format!("{cgroups:.2}"),
        "—".into(),
        "—".into(),
    ]);
    report.table(
        "Density: idle sandboxes held at once (MiB)",
        &[
            "",
            "held",
            "host memory / sandbox (used Δ)",
            "cgroup usage / sandbox",
            "orchestrator RSS",
            "create p50 ms",
        ],
        density_rows,
    );

    // 6. Lifecycle, on servers whose data dir is on the storage pool.
    drop(youki);
    let lifecycle_started = Instant::now();
    let mut figures = Vec::new();
    let mut method = String::new();
    for engine in [Engine::Youki, Engine::Docker] {
        let dir = pool_data_dir()?;
        let server = Server::start_on(engine, dir.path()).await?;
        method = server.client().info().await?.storage.snapshot_method;
        let result = sbx_lifecycle(&server, sizes).await;
        drop(server);
        drop(dir);
        figures.push(result?);
    }
    let plain = docker_lifecycle(&image, sizes)?;
    eprintln!(
        "lifecycle figures took {:.0} s",
        lifecycle_started.elapsed().as_secs_f64()
    );
    let [y, d] = &figures[..] else {
        bail!("two runtimes");
    };
    let dash = || "—".to_owned();
    let row =
        |figure: &str, target: &str, cell: &dyn Fn(&LifecycleFigures) -> String, docker: String| {
            vec![
                figure.to_owned(),
                target.to_owned(),
                cell(y),
                cell(d),
                docker,
            ]
        };
    let lifecycle_rows = vec![
        row(
            "snapshot p50, 1 GiB written (ms)",
            "≤ 20",
            &|f| p50_cell(&f.snapshot),
            format!("docker commit: {}", p50_cell(&plain.commit)),
        ),
        row(
            "fork, count=10, one call, of the sandbox with 1 GiB written (ms)",
            "≤ 10 cold creates",
            &|f| p50_cell(&f.fork),
            dash(),
        ),
        row(
            "fork, count=10, one call, of a fresh sandbox (ms)",
            "≤ 10 cold creates",
            &|f| p50_cell(&f.fork_fresh),
            dash(),
        ),
        row(
            "10 cold creates, sequential (ms)",
            "—",
            &|f| p50_cell(&f.ten_creates),
            dash(),
        ),
        row(
            "pause + resume p50 (ms)",
            "≤ 5",
            &|f| p50_cell(&f.pause_resume),
            format!("docker pause + unpause: {}", p50_cell(&plain.pause_unpause)),
        ),
        row(
            "stop p50 (ms)",
            "≤ 30",
            &|f| p50_cell(&f.stop),
            format!("docker stop -t 0: {}", p50_cell(&plain.stop)),
        ),
        row(
            "start from stopped p50 (ms)",
            "≤ a cold create",
            &|f| p50_cell(&f.start),
            format!("docker start: {}", p50_cell(&plain.start)),
        ),
        row(
            "cold create p50 (ms)",
            "—",
            &|f| p50_cell(&f.create),
            format!("docker run -d: {}", p50_cell(&plain.run)),
        ),
        row(
            "restore p50, 1 GiB written (ms)",
            "≤ 100",
            &|f| p50_cell(&f.restore),
            dash(),
        ),
        row(
            "host memory used (host-wide: other work shows), all stopped vs before creating them",
            "0 MiB beyond their disks",
            &|f| stopped_cell(f.stopped),
            format!("docker stop -t 0: {}", stopped_cell(plain.stopped)),
        ),
        row(
            "`sbx serve` RSS, same span (MiB)",
            "—",
            &|f| format!("{:+.1}", f.stopped_rss / MIB),
            dash(),
        ),
        row(
            "first exec `true` on an auto-stopped sandbox p50 (ms)",
            "measured",
            &|f| p50_cell(&f.auto_start_exec),
            dash(),
        ),
        row(
            "exec `true` on a running sandbox p50 (ms)",
            "—",
            &|f| p50_cell(&f.exec),
            format!("docker exec: {}", ms(docker_rtt.p50)),
        ),
    ];
    report.table(
        &format!(
            "Lifecycle: p50 (ms) and samples; snapshots by {method}; the 10 cold creates one after another; \
             docker stop -t 0, since its `sleep infinity` as PID 1 ignores SIGTERM (an sbx stop gives \
             its agent up to 2 s after SIGTERM, and an idle one exits at once)"
        ),
        &["", "target", "sbx / youki", "sbx / docker", "plain docker"],
        lifecycle_rows,
    );

    // 7. Image import.
    image_import(&mut report, sizes).await?;

    // 8. Dockerfile build.
    image_build(&mut report).await?;

    // 9. Live: terminal, port proxy, watch.
    live(&mut report, sizes).await?;

    // 10. The same calls on the test cluster.
    kubernetes(&mut report, sizes).await?;

    write_report(&report, sizes, out)
}

/// The kubernetes section: sbx on the single-node test cluster
/// (`scripts/kube-up`), beside the youki figures measured the same way in
/// this run. A create makes a `Sandbox` record, a Secret and a pod and
/// waits for the agent through the API server's port-forward; every call
/// to the agent is a new port-forward (a WebSocket to the API server).
async fn kubernetes(report: &mut Report, sizes: Sizes) -> Result<()> {
    let mut cycle_rows = Vec::new();
    let mut exec_rows = Vec::new();
    for engine in [Engine::Youki, Engine::Kubernetes] {
        let server = Server::start(engine).await?;
        let client = server.client();
        // The first sandbox pays for the image's import into the node.
        let warm = client
            .create_sandbox(&CreateSandboxRequest::default())
            .await?;
        let mut creates = Vec::with_capacity(sizes.cycles);
        let mut cycles = Vec::with_capacity(sizes.cycles);
        for _ in 0..sizes.cycles {
            let (created, whole) = cycle(&client).await?;
            creates.push(created);
            cycles.push(whole);
        }
        let name = format!("sbx / {}", engine.name());
        cycle_rows.push(latency_row(&format!("{name}: create"), creates, None).0);
        cycle_rows.push(latency_row(&format!("{name}: create + exec + delete"), cycles, None).0);
        let samples = exec_round_trips(&client, &warm.id, sizes.execs).await?;
        exec_rows.push(latency_row(&name, samples, None).0);
        client.delete_sandbox(&warm.id).await?;
    }
    let pooled = Server::start_with(Engine::Kubernetes, &["--warm-pool", "2"]).await?;
    let (warm_creates, warm_cycles) = warm_cycles(&pooled, 2, sizes.cycles).await?;
    drop(pooled);
    cycle_rows.push(
        latency_row(
            "sbx / kubernetes, warm pool of 2: create",
            warm_creates,
            None,
        )
        .0,
    );
    cycle_rows.push(
        latency_row(
            "sbx / kubernetes, warm pool of 2: create + exec + delete",
            warm_cycles,
            None,
        )
        .0,
    );
    report.table(
        "Kubernetes (single-node test cluster, Kubernetes 1.20 from Debian's source): \
         cold and pooled creates, one after another (ms)",
        &["", "n", "p50", "p95", "p99", "—"],
        cycle_rows,
    );
    report.table(
        "Kubernetes: exec `true` round trip over HTTP (ms)",
        &["", "n", "p50", "p95", "p99", "—"],
        exec_rows,
    );
    Ok(())
}

async fn run_kubernetes_only(sizes: Sizes, out: &Path) -> Result<()> {
    let mut report = Report::default();
    kubernetes(&mut report, sizes).await?;
    write_report(&report, sizes, out)
}

/// The Dockerfile the build section builds: a `RUN` that writes 16 MiB,
/// a `COPY` of the context's `app/`, and a `RUN` of python on it. `NONCE`
/// makes each run's steps its own, so nothing comes from an earlier run.
const BENCH_DOCKERFILE: &str = "FROM base
ARG NONCE
RUN echo \"$NONCE\" > /nonce && mkdir -p /opt/data && head -c 16777216 /dev/urandom > /opt/data/blob
COPY app/ /srv/app/
RUN python3 -c 'import sys; print(sys.version)' > /srv/app/python-version
";

/// The build section's context: the Dockerfile and `app/main.py`, whose
/// text is `version`.
fn bench_context(version: &str) -> Result<Bytes> {
    let mut tar = LayerTar::with_capacity(1 << 16);
    tar.file("Dockerfile", BENCH_DOCKERFILE.as_bytes(), 0o644)?;
    tar.dir("app/")?;
    tar.file(
        "app/main.py",
        format!("print({version:?})\n").as_bytes(),
        0o644,
    )?;
    Ok(Bytes::from(tar.finish()?))
}

/// Builds `context` as `name`, to the end; the image's name.
async fn build_to_end(client: &Client, query: &BuildImageQuery, context: &Bytes) -> Result<String> {
    let mut events = client
        .build_image(query, Full::new(context.clone()))
        .await?;
    while let Some(event) = events.next().await? {
        match event {
            BuildEvent::Done { image } => return Ok(image.name),
            BuildEvent::Error { error } => bail!("the build failed: {}", error.message),
            _ => {}
        }
    }
    bail!("the build stream ended without an outcome")
}

/// The Dockerfile build section: on each runtime, a fresh build (its
/// `FROM base` chain already seeded by an untimed warm-up build), the same
/// build again (all cached), and a build after one context file changed
/// (its `COPY` and the `RUN` after it run again).
async fn image_build(report: &mut Report) -> Result<()> {
    let mut rows: Vec<Vec<String>> = vec![
        vec!["first build (3 steps run)".to_owned()],
        vec!["rebuild, nothing changed (all cached)".to_owned()],
        vec!["rebuild, one file changed (2 steps run)".to_owned()],
    ];
    for engine in [Engine::Youki, Engine::Docker] {
        let dir = pool_data_dir()?;
        let server = Server::start_on(engine, dir.path()).await?;
        let client = server.client();
        let name = format!("sbx-bench/build-{:08x}", rand::random::<u32>());
        let warm_up = BuildImageQuery {
            name: format!("{name}-warm-up"),
            ..BuildImageQuery::default()
        };
        let warm_context = {
            let mut tar = LayerTar::with_capacity(1 << 12);
            tar.file("Dockerfile", b"FROM base\nRUN true\n", 0o644)?;
            Bytes::from(tar.finish()?)
        };
        let mut made = Made::default();
        made.images
            .push(build_to_end(&client, &warm_up, &warm_context).await?);
        let query = BuildImageQuery {
            name: name.clone(),
            build_args: Some(
                serde_json::json!({"NONCE": format!("{:016x}", rand::random::<u64>())}).to_string(),
            ),
            ..BuildImageQuery::default()
        };
        let first = bench_context("one")?;
        let edited = bench_context("two")?;
        for (row, context) in rows.iter_mut().zip([&first, &first, &edited]) {
            flush_writeback();
            let (built, took) = timed(build_to_end(&client, &query, context)).await;
            let built = built.with_context(|| format!("a build on {}", engine.name()))?;
            if !made.images.contains(&built) {
                made.images.push(built);
            }
            row.push(ms(took));
        }
        made.delete(&client).await?;
        drop(server);
    }
    report.table(
        "Dockerfile build (`FROM base`, a RUN writing 16 MiB, a COPY, a RUN of python), \
         streamed to the end; `base` seeded into the layer store beforehand (ms)",
        &["", "sbx / youki", "sbx / docker"],
        rows,
    );
    Ok(())
}

/// How long any one wait of the live section may take: an echo, an event,
/// a port to listen.
const LIVE_WAIT: Duration = Duration::from_secs(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `path` on the server with its admin token, Nagle off as a
/// terminal client has it (a keystroke is one small frame).
async fn live_websocket(server: &Server, path: &str) -> Result<Ws> {
    let url = format!("{}{path}", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {}", server.token).parse()?);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    Ok(socket)
}

/// Reads a terminal's output until `wanted` shows in it; what it read.
async fn read_terminal_until(ws: &mut Ws, wanted: &[u8]) -> Result<Vec<u8>> {
    let mut seen = Vec::new();
    let reading = async {
        while !seen.windows(wanted.len()).any(|window| window == wanted) {
            match ws.next().await.context("the terminal's socket ended")?? {
                Message::Binary(bytes) => seen.extend_from_slice(&bytes),
                Message::Text(text) => bail!("the terminal said {text} first"),
                Message::Close(_) => bail!("the terminal closed first"),
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(LIVE_WAIT, reading)
        .await
        .context("timed out")?
        .with_context(|| format!("waiting for {:?}", String::from_utf8_lossy(wanted)))?;
    Ok(seen)
}

/// Keystroke echo: a terminal running `cat` with the line discipline raw
/// and its echo off, so that each byte typed is read by `cat` and written
/// back at once, as an editor or a shell's line editor echoes a key. One
/// byte per round, from its frame's send to the echo's arrival; the first
/// round warms the path and is not counted.
async fn keystroke_echo(
    server: &Server,
    sandbox: &SandboxClient<'_>,
    n: usize,
) -> Result<Vec<Duration>> {
    let cmd = ["sh", "-c", "stty raw -echo && printf ready && exec cat"];
    let pty = sandbox
        .create_pty(&CreatePtyRequest {
            cmd: Some(cmd.map(String::from).to_vec()),
            ..CreatePtyRequest::shell(80, 24)
        })
        .await?;
    let mut ws = live_websocket(server, &sandbox.route(&format!("/pty/{}", pty.id))).await?;
    read_terminal_until(&mut ws, b"ready").await?;
    let mut samples = Vec::with_capacity(n);
    for round in 0..=n {
        let key = b'a' + (round % 26) as u8;
        let started = Instant::now();
        ws.send(Message::Binary(vec![key].into())).await?;
        let echoed = read_terminal_until(&mut ws, &[key]).await?;
        // Exactly the key: with the terminal's own echo on, a second copy
        // would be timed in its place.
        ensure!(echoed == [key], "typed {key}, read {echoed:?}");
        if round > 0 {
            samples.push(started.elapsed());
        }
    }
    drop(ws);
    sandbox.kill_pty(&pty.id).await?;
    Ok(samples)
}

/// The port the live section's web server listens on, and what it serves.
const LIVE_PORT: u16 = 8000;
const LIVE_PAGE: &str = "hello from the sandbox\n";

/// `python3 -m http.server` on [`LIVE_PORT`], serving `hello.txt`.
async fn start_web_server(sandbox: &SandboxClient<'_>) -> Result<()> {
    sandbox
        .write_file(
            "/workspace/site/hello.txt",
            None,
            Full::new(Bytes::from_static(LIVE_PAGE.as_bytes())),
        )
        .await?;
    sandbox
        .start_process(&StartProcessRequest {
            shell: Some(format!(
                "exec python3 -m http.server {LIVE_PORT} --bind 127.0.0.1 --directory /workspace/site"
            )),
            ..StartProcessRequest::default()
        })
        .await?;
    let wait = PortWaitQuery {
        timeout_ms: Some(LIVE_WAIT.as_millis() as u64),
    };
    let status = sandbox.wait_for_port(LIVE_PORT, &wait).await?;
    ensure!(status.listening, "{status:?}");
    Ok(())
}

/// `GET /hello.txt` through `/v1/sandboxes/{id}/ports/8000/`, `n` times
/// after one untimed, each read to its end.
async fn proxied_gets(sandbox: &SandboxClient<'_>, n: usize) -> Result<Vec<Duration>> {
    let get = || async {
        let response = sandbox
            .port_request(
                LIVE_PORT,
                Method::GET,
                "/hello.txt",
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        ensure!(response.status() == StatusCode::OK, "{}", response.status());
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(body == LIVE_PAGE, "{body:?}");
        anyhow::Ok(())
    };
    get().await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let (got, took) = timed(get()).await;
        got?;
        samples.push(took);
    }
    Ok(samples)
}

/// The same GET made inside the sandbox by urllib (a new connection each,
/// as through the proxy: http.server speaks HTTP/1.0), timed by the loop
/// itself; prints the samples in seconds as a JSON list.
const DIRECT_GETS: &str = r#"
import json, sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url = "http://127.0.0.1:%d/hello.txt" % int(sys.argv[1])
def get():
    with opener.open(url) as response:
        assert response.read() == b"hello from the sandbox\n"
get()
samples = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    get()
    samples.append(time.perf_counter() - started)
print(json.dumps(samples))
"#;

async fn direct_gets(sandbox: &SandboxClient<'_>, n: usize) -> Result<Vec<Duration>> {
    let mut request = ExecRequest::argv([
        "python3".to_owned(),
        "-c".to_owned(),
        DIRECT_GETS.to_owned(),
        LIVE_PORT.to_string(),
        n.to_string(),
    ]);
    request.timeout_ms = Some(300_000);
    let result = sandbox.exec(&request).await?;
    ensure!(
        result.exit_code == 0,
        "the GETs inside exited {}: {}",
        result.exit_code,
        result.stderr
    );
    let seconds: Vec<f64> = serde_json::from_str(&result.stdout)?;
    Ok(seconds.into_iter().map(Duration::from_secs_f64).collect())
}

/// Watch latency: a file written through the files API into a watched
/// directory, timed from the write call's start to the file's event (its
/// `create`, or the `move` of an atomic write); the write call's own time
/// beside it, since the event may come before the call returns. The first
/// round is not counted.
async fn watch_latency(
    sandbox: &SandboxClient<'_>,
    n: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = "/workspace/watched";
    let made = sandbox
        .exec(&ExecRequest::argv(["mkdir", "-p", dir]))
        .await?;
    ensure!(made.exit_code == 0, "mkdir: {}", made.stderr);
    let mut events = sandbox
        .watch(&WatchQuery {
            path: dir.into(),
            recursive: false,
        })
        .await?;
    let (mut latency, mut writes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for round in 0..=n {
        let path = format!("{dir}/file-{round}");
        let started = Instant::now();
        let write = async {
            let body = Full::new(Bytes::from_static(b"x\n"));
            sandbox.write_file(&path, None, body).await?;
            anyhow::Ok(started.elapsed())
        };
        let event = async {
            loop {
                let event = events.next().await?.context("the watch ended")?;
                let kind = matches!(event.kind, WatchEventKind::Create | WatchEventKind::Move);
                if kind && event.path == path {
                    return anyhow::Ok(started.elapsed());
                }
            }
        };
        let (wrote, seen) = tokio::time::timeout(LIVE_WAIT, async { tokio::join!(write, event) })
            .await
            .with_context(|| format!("no event for {path}"))?;
        let (wrote, seen) = (wrote?, seen?);
        if round > 0 {
            writes.push(wrote);
            latency.push(seen);
        }
    }
    Ok((latency, writes))
}

/// What the live section measures on one server.
struct LiveFigures {
    keystroke: Vec<Duration>,
    proxied: Vec<Duration>,
    direct: Vec<Duration>,
    watch_event: Vec<Duration>,
    watch_write: Vec<Duration>,
}

async fn measure_live(server: &Server, n: usize) -> Result<LiveFigures> {
    let client = server.client();
    let id = server.new_sandbox().await?;
    let sandbox = client.sandbox(&id);
    let keystroke = keystroke_echo(server, &sandbox, n).await?;
    start_web_server(&sandbox).await?;
    let proxied = proxied_gets(&sandbox, n).await?;
    let direct = direct_gets(&sandbox, n).await?;
    let (watch_event, watch_write) = watch_latency(&sandbox, n).await?;
    client.delete_sandbox(&id).await?;
    Ok(LiveFigures {
        keystroke,
        proxied,
        direct,
        watch_event,
        watch_write,
    })
}

/// p50 / p99 of `samples`, and how many there were.
fn p50_p99_cell(samples: &[Duration]) -> String {
    let p = Percentiles::of(&mut samples.to_vec());
    format!("{} / {} (n={})", ms(p.p50), ms(p.p99), samples.len())
}

/// The live section: on each runtime, one sandbox, its terminal, a web
/// server in it reached through the port proxy and from inside, and a
/// watch.
async fn live(report: &mut Report, sizes: Sizes) -> Result<()> {
    let mut figures = Vec::new();
    for engine in [Engine::Youki, Engine::Docker] {
        let server = Server::start(engine).await?;
        let measured = measure_live(&server, sizes.live).await;
        figures.push(measured.with_context(|| format!("the live section on {}", engine.name()))?);
    }
    let row = |figure: &str, cell: &dyn Fn(&LiveFigures) -> String| {
        let mut row = vec![figure.to_owned()];
        row.extend(figures.iter().map(cell));
        row
    };
    let p50 = |samples: &[Duration]| Percentiles::of(&mut samples.to_vec()).p50;
    report.table(
        "Live: p50 / p99 (ms) and samples, on one sandbox; the terminal is a WebSocket, \
         the web server `python3 -m http.server`, the watch an NDJSON stream",
        &["", "sbx / youki", "sbx / docker"],
        vec![
            row(
                "terminal keystroke echo round trip (one byte to `cat` in raw mode and back)",
                &|f| p50_p99_cell(&f.keystroke),
            ),
            row(
                "GET of a small file through the port proxy (`/v1/sandboxes/{id}/ports/8000/`)",
                &|f| p50_p99_cell(&f.proxied),
            ),
            row(
                "the same GET made inside the sandbox (urllib to 127.0.0.1:8000)",
                &|f| p50_p99_cell(&f.direct),
            ),
            row("what the proxy adds (p50 through it minus inside)", &|f| {
                format!(
                    "{:+.2}",
                    (p50(&f.proxied).as_secs_f64() - p50(&f.direct).as_secs_f64()) * 1000.0
                )
            }),
            row(
                "watch event of a file written through the files API, from the write's start",
                &|f| p50_p99_cell(&f.watch_event),
            ),
            row("that write call alone", &|f| p50_p99_cell(&f.watch_write)),
        ],
    );
    Ok(())
}

/// Only the live section (`--only live`).
async fn run_live_only(sizes: Sizes, out: &Path) -> Result<()> {
    let mut report = Report::default();
    live(&mut report, sizes).await?;
    write_report(&report, sizes, out)
}

/// Only the Dockerfile build section (`--only build`).
async fn run_build_only(sizes: Sizes, out: &Path) -> Result<()> {
    let mut report = Report::default();
    image_build(&mut report).await?;
    write_report(&report, sizes, out)
}

/// Only the image import section (`--only import`).
async fn run_import_only(sizes: Sizes, out: &Path) -> Result<()> {
    let mut report = Report::default();
    image_import(&mut report, sizes).await?;
    write_report(&report, sizes, out)
}

/// Prints the report after a line on the machine, and writes it to `out`.
fn write_report(report: &Report, sizes: Sizes, out: &Path) -> Result<()> {
    let mut rendered = format!(
        "Machine: {} cores, {:.0} GiB; kernel {}; {} mode; {}\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        host_total_memory()? as f64 / MIB / 1024.0,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        if sizes.cycles == QUICK.cycles {
            "quick"
        } else {
            "full"
        },
        docker(&["version", "--format", "docker engine {{.Server.Version}}"])?,
    );
    rendered.push_str(&render(&report.sections));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, &rendered)?;
    println!("{rendered}");
    eprintln!("written to {}", out.display());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let out = args
        .iter()
        .position(|arg| arg == "--out")
        .and_then(|index| args.get(index + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target.join("bench.md")
        });
    let only = args
        .iter()
        .position(|arg| arg == "--only")
        .map(|index| args.get(index + 1).map(String::as_str));
    let sizes = if quick { QUICK } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = match only {
        None => runtime.block_on(run(sizes, &out)),
        Some(Some("import")) => runtime.block_on(run_import_only(sizes, &out)),
        Some(Some("build")) => runtime.block_on(run_build_only(sizes, &out)),
        Some(Some("live")) => runtime.block_on(run_live_only(sizes, &out)),
        Some(Some("kubernetes")) => runtime.block_on(run_kubernetes_only(sizes, &out)),
        Some(section) => {
            bail!("--only takes a section: import, build, live or kubernetes (got {section:?})")
        }
    };
    remove_leftover_bench_containers();
    remove_leftover_bench_engine_images();
    result
}
