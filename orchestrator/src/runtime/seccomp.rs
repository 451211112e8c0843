//! The seccomp profile of every youki sandbox.
//!
//! Docker's default profile is an allowlist of ~350 syscalls; what it keeps
//! out of a container is a short list: the kernel's keyrings, BPF and perf,
//! module loading and kexec, mounting and namespace juggling, the clock,
//! swap, reboot, raw I/O ports, cross-process memory access and ptrace, and
//! (without `CAP_SYS_ADMIN`) new user namespaces. This profile is that short
//! list written as a denylist: every other syscall is allowed, so a new
//! syscall a future glibc or toolchain relies on (as `openat2` or `clone3`
//! were) does not break the sandbox, and the list stays readable. Most of the
//! denied calls need a capability the sandbox lacks anyway; seccomp is the
//! second wall, and for `keyctl`, `bpf`, `perf_event_open`, `userfaultfd`,
//! `ptrace`, `process_vm_*` and unprivileged user namespaces it is the first.
//!
//! Choices worth knowing about:
//! - Denied calls answer `EPERM` (as Docker's do), so a program sees
//!   "Operation not permitted" and can fall back or report, never a kill.
//! - `clone3` answers `ENOSYS`: its flags live in a struct seccomp cannot
//!   read, so like Docker we make glibc (`fork`, `posix_spawn`,
//!   `pthread_create`) and Rust's std fall back to `clone`, whose flags we
//!   filter.
//! - `clone` and `unshare` are denied only when they ask for a new user
//!   namespace (`CLONE_NEWUSER` set in the flags, argument 0): ordinary
//!   fork/exec and threads keep working. The other namespace flags need
//!   `CAP_SYS_ADMIN`, which the sandbox does not have.
//! - The condition is `SCMP_CMP_MASKED_EQ` with mask = value =
//!   `CLONE_NEWUSER`. runc reads the OCI `value` as the mask and `valueTwo`
//!   as the datum; libcontainer 0.7 reads them the other way round. Setting
//!   both to the same number means the same rule under either reading.
//! - `personality` stays allowed. Docker allows only a few personality
//!   values; a denylist cannot say "everything but these values" through
//!   libcontainer (several conditions on one argument become separate,
//!   OR-ed rules), and what personality changes (ASLR, the uname the caller
//!   sees) concerns only the calling process itself.
//! - Architectures are x86-64 plus its two compat ABIs (i386, x32), as in
//!   Docker: a 32-bit binary or an `int 0x80` gets the same denylist rather
//!   than an unfiltered path. Names a table does not know on x86-64 (`stime`,
//!   `umount`, `vm86`…) resolve in libseccomp to pseudo numbers that it maps
//!   onto the 32-bit table and skips on the native one; a name libseccomp
//!   does not know at all is skipped by libcontainer with a warning.
//!
//! libcontainer installs the filter as the last step before exec'ing the
//! agent (the process sets no-new-privileges), so the agent and everything it
//! starts run under it.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use oci_spec::OciSpecError;

/// Syscalls that answer `EPERM` whatever their arguments.
pub(crate) const DENIED: &[&str] = &[
    // Kernel keyrings: shared with the host, not namespaced.
    "keyctl",
    "add_key",
    "request_key",
    // Kernel programmability and introspection.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "lookup_dcookie",
    // Loading code into the kernel, or replacing it.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "uselib",
    "_sysctl",
    "nfsservctl",
    // File handles bypass path-based confinement (the "shocker" escape).
    "open_by_handle_at",
    "name_to_handle_at",
    // Mounting, old API and new.
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    // Host-wide state: swap, power, accounting, quotas, the clock.
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "stime",
    "clock_settime",
    "clock_settime64",
    "clock_adjtime",
    "clock_adjtime64",
    "adjtimex",
    // Raw hardware access.
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "vhangup",
    // Other processes and other namespaces.
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// Syscalls denied only when their flags (argument 0) ask for a new user
/// namespace.
pub(crate) const DENIED_WITH_NEW_USER_NS: &[&str] = &["clone", "unshare"];

/// Syscalls that answer `ENOSYS`, so that callers fall back to a filterable
/// equivalent.
pub(crate) const UNIMPLEMENTED: &[&str] = &["clone3"];

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

pub(crate) fn profile() -> Result<LinuxSeccomp, OciSpecError> {
    let errno = |names: &[&str], errno: i32| -> Result<LinuxSyscall, OciSpecError> {
        LinuxSyscallBuilder::default()
            .names(
                names
                    .iter()
                    .map(|&name| name.to_owned())
                    .collect::<Vec<_>>(),
            )
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(errno.unsigned_abs())
            .build()
    };
    let new_user_ns = LinuxSyscallBuilder::default()
        .names(
            DENIED_WITH_NEW_USER_NS
                .iter()
                .map(|&name| name.to_owned())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM.unsigned_abs())
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(0_usize)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            // Mask and datum are the same number: see the module doc.
            .value(CLONE_NEWUSER)
            .value_two(CLONE_NEWUSER)
            .build()?])
        .build()?;
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![
            errno(DENIED, libc::EPERM)?,
            new_user_ns,
            errno(UNIMPLEMENTED, libc::ENOSYS)?,
        ])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_for(profile: &LinuxSeccomp, name: &str) -> LinuxSyscall {
        let rules: Vec<_> = profile
            .syscalls()
            .as_ref()
            .expect("syscall rules")
            .iter()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .cloned()
            .collect();
        assert_eq!(rules.len(), 1, "exactly one rule for {name}");
        rules.into_iter().next().expect("one rule")
    }

    #[test]
    fn allows_by_default_and_denies_the_dangerous_calls_with_eperm() {
        let profile = profile().expect("valid profile");
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            profile.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "kexec_file_load",
            "open_by_handle_at",
            "name_to_handle_at",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "swapon",
            "swapoff",
            "reboot",
            "init_module",
            "finit_module",
            "delete_module",
            "iopl",
            "ioperm",
            "acct",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "stime",
            "userfaultfd",
            "lookup_dcookie",
            "nfsservctl",
            "vhangup",
            "quotactl",
            "setns",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
        ] {
            let rule = rule_for(&profile, name);
            assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno, "{name}");
            assert_eq!(rule.errno_ret(), Some(libc::EPERM as u32), "{name}");
            assert!(rule.args().is_none(), "{name} is denied unconditionally");
        }
    }

    #[test]
    fn keeps_what_the_agent_and_its_children_need() {
        let profile = profile().expect("valid profile");
        let named: Vec<&String> = profile
            .syscalls()
            .as_ref()
            .expect("syscall rules")
            .iter()
            .flat_map(|rule| rule.names())
            .collect();
        for needed in [
            "openat2",
            "personality",
            "setsid",
            "kill",
            "wait4",
            "pidfd_open",
            "setgroups",
            "setuid",
            "execve",
            "socket",
        ] {
            assert!(
                !named.iter().any(|n| *n == needed),
                "{needed} must stay allowed"
            );
        }
    }

    #[test]
    fn denies_clone_and_unshare_only_for_a_new_user_namespace() {
        let profile = profile().expect("valid profile");
        for name in ["clone", "unshare"] {
            let rule = rule_for(&profile, name);
            assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
            assert_eq!(rule.errno_ret(), Some(libc::EPERM as u32));
            let args = rule.args().as_ref().expect("an argument condition");
            assert_eq!(args.len(), 1);
            let arg = &args[0];
            assert_eq!(arg.index(), 0);
            assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
            assert_eq!(arg.value(), 0x1000_0000);
            assert_eq!(arg.value_two(), Some(0x1000_0000));
        }
    }

    #[test]
    fn clone3_answers_enosys() {
        let profile = profile().expect("valid profile");
        let rule = rule_for(&profile, "clone3");
        assert_eq!(rule.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rule.errno_ret(), Some(libc::ENOSYS as u32));
        assert!(rule.args().is_none());
    }

    /// Set in the child process of [`libcontainer_installs_the_profile`].
    const CHILD_ENV: &str = "SBX_SECCOMP_TEST_CHILD";

    /// Loads the profile through libcontainer, as a sandbox's init does,
    /// and checks what the kernel then answers. The filter is installed in a
    /// re-executed copy of this test binary (never in the test runner, and
    /// never after a fork of a multi-threaded process).
    #[test]
    fn libcontainer_installs_the_profile() {
        if std::env::var_os(CHILD_ENV).is_some() {
            in_filtered_child();
            return;
        }
        let exe = std::env::current_exe().expect("test binary path");
        let output = std::process::Command::new(exe)
            .args([
                "--exact",
                "runtime::seccomp::tests::libcontainer_installs_the_profile",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the test binary again");
        assert!(
            output.status.success(),
            "filtered child failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("seccomp checks passed"),
            "the child did not run the checks: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    fn in_filtered_child() {
        // SAFETY: prctl with integer arguments; as the sandbox's init does,
        // so that an unprivileged process may load a filter.
        let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        assert_eq!(ret, 0, "set no_new_privs");
        libcontainer::seccomp::initialize_seccomp(&profile().expect("valid profile"))
            .expect("libcontainer loads the profile");

        let errno_of = |ret: libc::c_long| {
            if ret == -1 {
                std::io::Error::last_os_error().raw_os_error()
            } else {
                None
            }
        };
        // SAFETY: raw syscalls with integer arguments only: no pointer is
        // dereferenced by any call that the filter lets through here.
        unsafe {
            // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)
            let ret = libc::syscall(libc::SYS_keyctl, 0, -3, 0);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "keyctl");
            let ret = libc::syscall(libc::SYS_bpf, 0, 0, 0);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "bpf");
            let ret = libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "ptrace");
            let ret = libc::syscall(libc::SYS_setns, -1, 0);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "setns");
            let ret = libc::syscall(libc::SYS_clone3, 0, 0);
            assert_eq!(errno_of(ret), Some(libc::ENOSYS), "clone3");
            let ret = libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "unshare(CLONE_NEWUSER)");
            let ret = libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER | libc::CLONE_NEWNS);
            assert_eq!(errno_of(ret), Some(libc::EPERM), "unshare(NEWUSER|NEWNS)");
            // Flags without CLONE_NEWUSER reach the kernel: unshare(0) and
            // unsharing the file table are no-ops anyone may do.
            let ret = libc::syscall(libc::SYS_unshare, 0);
            assert_eq!(errno_of(ret), None, "unshare(0)");
            let ret = libc::syscall(libc::SYS_unshare, libc::CLONE_FILES);
            assert_eq!(errno_of(ret), None, "unshare(CLONE_FILES)");
            // openat2 reaches the kernel, which refuses the NULL path itself.
            let ret = libc::syscall(libc::SYS_openat2, -1, 0, 0, 0);
            assert_ne!(errno_of(ret), Some(libc::EPERM), "openat2 is allowed");
        }
        // fork/exec through std (clone3 → ENOSYS → clone) still works.
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .status()
            .expect("spawn under the filter");
        assert_eq!(status.code(), Some(7));
        let thread = std::thread::spawn(|| 42);
        assert_eq!(thread.join().expect("thread under the filter"), 42);
        println!("seccomp checks passed");
    }
}
