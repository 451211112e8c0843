//! Freezing a youki sandbox: one write to its cgroup's freezer, and a wait
//! for the kernel to say every task has stopped.
//!
//! Why not libcontainer's `pause`/`resume`: a pause there loads the
//! container's state, parses the host's mount table to build a cgroup
//! manager, and polls the freezer in a loop that sleeps 10 ms every 25
//! reads. That came to about 2 ms a call with 13 ms tails, where the
//! kernel needs tens of microseconds; a pause is on the path of every
//! snapshot and fork. And its `resume` refuses a container whose state
//! file says `running` while its cgroup is frozen, which is what a server
//! killed between the two writes leaves. So sbx writes the freezer itself,
//! and libcontainer's state file keeps saying `running` while a sandbox is
//! frozen: sbx's store is the record of a pause (a frozen container is
//! still running to libcontainer's `kill` and `delete`).
//!
//! The cgroup path is sbx's own (`spec::cgroup_path`), not read from
//! anything the sandbox can write; a sandbox cannot rename its cgroup (the
//! hierarchy is not mounted writable inside).

use super::tenant::CGROUP_ROOT;
use super::RuntimeError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the freezing of every task may take before the freeze is
/// undone. Tasks in uninterruptible sleep (I/O on a slow disk) delay it.
const FREEZE_LIMIT: Duration = Duration::from_secs(5);
/// The first pause between reads of the freezer's state; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_micros(20);
const MAX_BACKOFF: Duration = Duration::from_millis(5);

/// The freezer of one sandbox's cgroup, on whichever hierarchy holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Freezer {
    /// cgroup v1: `freezer.state` reads THAWED, FREEZING or FROZEN.
    V1(PathBuf),
    /// cgroup v2: `cgroup.freeze` takes 0 or 1, `cgroup.events` reports.
    V2(PathBuf),
}

impl Freezer {
    /// The freezer of the cgroup at `cgroup` (a path like `/sbx/<id>`)
    /// under `root`: v1 where a freezer hierarchy is mounted, v2 otherwise.
    pub(crate) fn of(root: &Path, cgroup: &Path) -> Self {
        let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
        let v1 = root.join("freezer");
        if v1.is_dir() {
            Self::V1(v1.join(relative))
        } else {
            Self::V2(root.join(relative))
        }
    }

    /// The freezer of youki sandbox `id` on this host.
    pub(crate) fn of_sandbox(id: &str) -> Self {
        Self::of(Path::new(CGROUP_ROOT), &super::spec::cgroup_path(id))
    }

    /// Freezes every task of the cgroup, and returns once the kernel says
    /// they are all frozen. If that takes over [`FREEZE_LIMIT`], the cgroup
    /// is thawed again and the pause fails: a half-frozen sandbox is worse
    /// than a running one.
    pub(crate) fn freeze(&self) -> Result<(), RuntimeError> {
        self.freeze_within(FREEZE_LIMIT)
    }

    fn freeze_within(&self, limit: Duration) -> Result<(), RuntimeError> {
        self.write(true)?;
        let deadline = Instant::now() + limit;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.is_frozen()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.write(false);
                return Err(RuntimeError::Engine {
                    context: format!("freezing {}", self.dir().display()),
                    message: format!("its tasks were not all frozen within {limit:?}"),
                });
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Thaws the cgroup, whatever state it was in.
    pub(crate) fn thaw(&self) -> Result<(), RuntimeError> {
        self.write(false)
    }

    /// Whether every task of the cgroup is frozen (not merely freezing).
    pub(crate) fn is_frozen(&self) -> Result<bool, RuntimeError> {
        let (path, is_frozen): (PathBuf, fn(&str) -> bool) = match self {
            Self::V1(dir) => (dir.join("freezer.state"), |text| text.trim() == "FROZEN"),
            Self::V2(dir) => (dir.join("cgroup.events"), |text| {
                text.lines().any(|line| line.trim() == "frozen 1")
            }),
        };
        let text = std::fs::read_to_string(&path)
            .map_err(RuntimeError::io(format!("cannot read {}", path.display())))?;
        Ok(is_frozen(&text))
    }

    fn write(&self, frozen: bool) -> Result<(), RuntimeError> {
        let (path, value) = match self {
            Self::V1(dir) => (
                dir.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
            Self::V2(dir) => (dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
        };
        std::fs::write(&path, value)
            .map_err(RuntimeError::io(format!("cannot write {}", path.display())))
    }

    fn dir(&self) -> &Path {
        match self {
            Self::V1(dir) | Self::V2(dir) => dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_where_a_freezer_hierarchy_is_mounted_else_v2() {
        let root = tempfile::tempdir().expect("tempdir");
        let cgroup = Path::new("/sbx/abc");
        assert_eq!(
            Freezer::of(root.path(), cgroup),
            Freezer::V2(root.path().join("sbx/abc"))
        );
        std::fs::create_dir(root.path().join("freezer")).expect("mkdir");
        assert_eq!(
            Freezer::of(root.path(), cgroup),
            Freezer::V1(root.path().join("freezer/sbx/abc"))
        );
    }

    /// The files stand in for the kernel's: a freeze that the "kernel"
    /// never completes is undone, and one it completes returns.
    #[test]
    fn a_freeze_waits_for_frozen_and_is_undone_when_it_never_comes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let freezer = Freezer::V2(dir.path().to_owned());
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 1\n").expect("w");
        freezer.freeze().expect("frozen");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"),
            "1"
        );
        freezer.thaw().expect("thawed");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"),
            "0"
        );

        // A "kernel" that never reports frozen: the freeze is undone.
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").expect("w");
        assert!(freezer.freeze_within(Duration::from_millis(50)).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.freeze")).expect("read"),
            "0"
        );

        let v1 = Freezer::V1(dir.path().to_owned());
        // A v1 "kernel" that leaves the state as written reports FROZEN.
        v1.freeze().expect("frozen");
        assert!(v1.is_frozen().expect("read"));
        v1.thaw().expect("thawed");
        assert!(!v1.is_frozen().expect("read"));
    }

    #[test]
    fn a_missing_cgroup_is_an_error_not_a_hang() {
        let freezer = Freezer::V1(PathBuf::from("/nonexistent/sbx/abc"));
        assert!(freezer.freeze().is_err());
        assert!(freezer.thaw().is_err());
    }
}
