//! Tenant cgroups: the sandbox's commands under its limits, the agent
//! beside them with headroom.
//!
//! Why: a sandbox's limits used to bind its agent too. A background fork
//! bomb that filled the pids limit left the agent unable to fork the next
//! exec (or even a thread), so the sandbox was lost until deleted. Now the
//! container's cgroup gets the sandbox's limits plus a small headroom
//! ([`Limits::container`]), and a child cgroup `tenant` gets exactly the
//! sandbox's limits. The agent stays in the container's cgroup; every
//! command it starts moves itself into `tenant` between fork and exec
//! (writing `0` to an open `cgroup.procs` the orchestrator handed over, see
//! `sbx_api::Handoff`). A bomb fills `tenant` and stops there; the agent
//! still forks from the headroom (a migration into a full cgroup is allowed,
//! a fork inside it is not), answers, and can kill everything
//! (`POST …/processes/kill-all`).
//!
//! Only cgroup v1 controllers (`pids`, `memory`) are split here, which is
//! what this machine kind runs (v1 hybrid). Under v2 a cgroup holding the
//! agent could not also delegate controllers to a child, so the agent would
//! need a leaf of its own; until that is built, no tenant cgroup is made
//! there and the sandbox works as before, without the headroom.
//!
//! The files are opened by the orchestrator (host root); cgroup v1 checks
//! a migration against the opener's credentials, which is what lets the
//! sandbox's processes use them. Only processes of the sandbox can be named
//! through them (pids are looked up in the writer's pid namespace), and
//! the agent, which holds them, is not dumpable.

use super::{Limits, RuntimeError};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted.
pub(super) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The child cgroup that holds the sandbox's commands.
const TENANT: &str = "tenant";

/// The v1 controllers split, and how each takes its limit.
const CONTROLLERS: [&str; 2] = ["pids", "memory"];

/// The cgroup path of `pid` in each of [`CONTROLLERS`] (from
/// `/proc/<pid>/cgroup`), or `None` when one of them is not a v1 hierarchy.
pub(crate) fn container_cgroups_of(pid: u32) -> Result<Option<Vec<PathBuf>>, RuntimeError> {
    let path = format!("/proc/{pid}/cgroup");
    let text =
        std::fs::read_to_string(&path).map_err(RuntimeError::io(format!("cannot read {path}")))?;
    Ok(parse_v1_paths(&text))
}

fn parse_v1_paths(text: &str) -> Option<Vec<PathBuf>> {
    CONTROLLERS
        .iter()
        .map(|controller| {
            text.lines().find_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                controllers
                    .split(',')
                    .any(|name| name == *controller)
                    .then(|| {
                        Path::new(CGROUP_ROOT)
                            .join(controller)
                            .join(path.trim_start_matches('/'))
                    })
            })
        })
        .collect()
}

/// The youki container cgroups of sandbox `id` (`/sbx/<id>`, see
/// `spec::cgroup_path`) in each of [`CONTROLLERS`].
pub(crate) fn youki_container_cgroups(id: &str) -> Vec<PathBuf> {
    CONTROLLERS
        .iter()
        .map(|controller| {
            Path::new(CGROUP_ROOT).join(controller).join(
                super::spec::cgroup_path(id)
                    .strip_prefix("/")
                    .unwrap_or(Path::new("")),
            )
        })
        .collect()
}

fn write(path: &Path, value: impl ToString) -> Result<(), RuntimeError> {
    std::fs::write(path, value.to_string())
        .map_err(RuntimeError::io(format!("cannot write {}", path.display())))
}

/// Makes the tenant cgroup under each of `containers` (one per entry of
/// [`CONTROLLERS`]) with the sandbox's own `limits`, and opens their
/// `cgroup.procs` for the agent.
pub(crate) fn make(containers: &[PathBuf], limits: &Limits) -> Result<Vec<File>, RuntimeError> {
    let mut files = Vec::with_capacity(containers.len());
    for (controller, container) in CONTROLLERS.iter().zip(containers) {
        let tenant = container.join(TENANT);
        match std::fs::create_dir(&tenant) {
            Err(err) if err.kind() != ErrorKind::AlreadyExists => {
                return Err(RuntimeError::Io {
                    context: format!("cannot create {}", tenant.display()),
                    source: err,
                })
            }
            _ => {}
        }
        match *controller {
            "pids" => write(&tenant.join("pids.max"), limits.pids)?,
            _ => {
                write(&tenant.join("memory.limit_in_bytes"), limits.memory_bytes)?;
                // No swap on top, as for the container (absent without
                // swap accounting).
                let memsw = tenant.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, limits.memory_bytes)?;
                }
            }
        }
        let procs = tenant.join("cgroup.procs");
        files.push(
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(RuntimeError::io(format!("cannot open {}", procs.display())))?,
        );
    }
    Ok(files)
}

/// Removes the tenant cgroups under `containers`, whose processes must be
/// gone; missing ones are fine.
pub(crate) fn remove(containers: &[PathBuf]) -> Result<(), RuntimeError> {
    for container in containers {
        let tenant = container.join(TENANT);
        match std::fs::remove_dir(&tenant) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(RuntimeError::Io {
                    context: format!("cannot remove {}", tenant.display()),
                    source: err,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_paths_of_pids_and_memory() {
        let text = "12:pids:/sbx/abc\n4:memory:/sbx/abc\n3:cpu,cpuacct:/sbx/abc\n0::/\n";
        assert_eq!(
            parse_v1_paths(text),
            Some(vec![
                PathBuf::from("/sys/fs/cgroup/pids/sbx/abc"),
                PathBuf::from("/sys/fs/cgroup/memory/sbx/abc"),
            ])
        );
        // Pure v2: no tenant cgroups.
        assert_eq!(parse_v1_paths("0::/docker/abc\n"), None);
    }

    #[test]
    fn youki_paths_are_under_sbx() {
        assert_eq!(
            youki_container_cgroups("abc"),
            [
                PathBuf::from("/sys/fs/cgroup/pids/sbx/abc"),
                PathBuf::from("/sys/fs/cgroup/memory/sbx/abc"),
            ]
        );
    }
}
