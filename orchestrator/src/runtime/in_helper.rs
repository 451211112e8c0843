//! What the youki helper process runs: the mounts and libcontainer calls
//! of a start, and the delete of a stopped container.
//!
//! Apart from both [`super::helper`] (the protocol, which calls these) and
//! [`super::youki`] (the runtime, which sends the requests), so neither
//! depends on the other's internals.

use super::{disk, loopback, overlay, RuntimeError, SandboxDir};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::Instant;

fn libcontainer_error(id: &str) -> impl FnOnce(LibcontainerError) -> RuntimeError + '_ {
    move |source| RuntimeError::Libcontainer {
        id: id.to_owned(),
        source: Box::new(source),
    }
}

/// Runs in the helper, in its own mount namespace (see [`super::helper`]):
/// mount the sandbox's disk (with `disk`) and its overlay of `lower`, start
/// the container, whose mount namespace takes copies of both, and unmount
/// them from the helper's namespace again, whatever happened: from then on
/// they live (and die) with the sandbox.
pub(crate) fn mount_and_start(
    id: &str,
    state_root: &Path,
    dir: &SandboxDir,
    log_path: &Path,
    layers: Layers<'_>,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let mounted = if layers.disk {
        disk::mount_image(&dir.disk_image(), &dir.layer())
    } else {
        Ok(())
    }
    .and_then(|()| mount_overlay(dir, &layers));
    let mounts = started.elapsed();
    let outcome = mounted.and_then(|()| create_and_start(id, state_root, dir.path(), log_path));
    let unmounted = overlay::unmount_rootfs(dir).and_then(|()| disk::unmount(&dir.layer()));
    tracing::debug!(%id, mounts_us = mounts.as_micros() as u64, "rootfs mounted");
    outcome.and(unmounted)
}

/// What a sandbox's root filesystem is made of.
pub(crate) struct Layers<'a> {
    /// The image build (resolved), or its shifted copy.
    pub lower: &'a Path,
    /// `lower` is the build itself, to be mounted idmapped.
    pub idmap_lower: bool,
    /// Mount the sandbox's disk under its layer.
    pub disk: bool,
    /// The host uid of the sandbox's root.
    pub root_uid: Option<u32>,
}

/// Mounts the overlay of `layers.lower` (through an idmapped bind at
/// `<sandbox dir>/lower`, detached again once the overlay holds its own
/// clone of it, when asked).
fn mount_overlay(dir: &SandboxDir, layers: &Layers<'_>) -> Result<(), RuntimeError> {
    if !layers.idmap_lower {
        return overlay::mount_rootfs(dir, layers.lower, layers.root_uid);
    }
    let mapped = dir.path().join("lower");
    std::fs::create_dir_all(&mapped).map_err(RuntimeError::io(format!(
        "cannot create {}",
        mapped.display()
    )))?;
    super::idmapped::bind(layers.lower, &mapped)?;
    let mounted = overlay::mount_rootfs(dir, &mapped, layers.root_uid);
    let detached = super::idmapped::detach(&mapped);
    mounted.and(detached)
}

/// Runs in the helper: clone the init, bring `lo` up in its network
/// namespace, then let it exec the agent.
fn create_and_start(
    id: &str,
    state_root: &Path,
    bundle: &Path,
    log_path: &Path,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(RuntimeError::io(format!(
            "cannot open {}",
            log_path.display()
        )))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(RuntimeError::io("cannot duplicate the agent log fd"))?;
    let stdin = File::open("/dev/null").map_err(RuntimeError::io("cannot open /dev/null"))?;
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(libcontainer_error(id))?
        .with_stdin(stdin)
        .with_stdout(log)
        .with_stderr(log_for_stderr)
        .as_init(bundle)
        .with_systemd(false)
        .build()
        .map_err(libcontainer_error(id))?;
    let built = started.elapsed();
    let pid = container.pid().ok_or_else(|| RuntimeError::Spec {
        id: id.to_owned(),
        reason: "libcontainer created no init process".into(),
    })?;
    loopback::bring_up_in(pid.as_raw())?;
    let network = started.elapsed() - built;
    container.start().map_err(libcontainer_error(id))?;
    tracing::debug!(
        %id,
        build_us = built.as_micros() as u64,
        loopback_us = network.as_micros() as u64,
        start_us = (started.elapsed() - built - network).as_micros() as u64,
        "container started"
    );
    Ok(())
}

/// Runs in the helper: delete a stopped container (its cgroups and state).
pub(crate) fn delete_container(id: &str, state_root: &Path) -> Result<(), RuntimeError> {
    let root = state_root.join(id);
    let mut container = Container::load(root.clone()).map_err(libcontainer_error(id))?;
    container.delete(true).map_err(libcontainer_error(id))?;
    // delete() leaves the state dir when it failed half-way.
    match std::fs::remove_dir_all(&root) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Io {
            context: format!("cannot remove {}", root.display()),
            source: err,
        }),
        _ => Ok(()),
    }
}
