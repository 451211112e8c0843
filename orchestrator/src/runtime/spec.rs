//! The OCI runtime spec (`config.json`) of a sandbox.
//!
//! Starts from oci-spec's defaults (runc's: pid, net, ipc, uts, mount and
//! cgroup namespaces, masked and read-only /proc paths, the usual /dev and
//! /sys mounts) and narrows them: a small capability set, no new privileges,
//! a seccomp profile ([`super::seccomp`]), cgroup limits, a user namespace
//! ([`super::idmap`]), and the two bind mounts that connect the agent to the
//! host.

use super::{overlay, seccomp, ContainerSpec, RuntimeError};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Docker's default capability set minus `NET_RAW` and `MKNOD`: enough for
/// root inside to own files, switch users and bind low ports; nothing that
/// administers the host, the network or devices.
const CAPABILITIES: [Capability; 12] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::Setfcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::AuditWrite,
];

/// The same set by name (`CAP_CHOWN`…), for engines configured by name.
pub(crate) fn capability_names() -> Vec<String> {
    CAPABILITIES
        .iter()
        .filter_map(|cap| serde_json::to_value(cap).ok()?.as_str().map(str::to_owned))
        .collect()
}

const CPU_PERIOD_US: u64 = 100_000;
const OPEN_FILES_LIMIT: u64 = 65_536;

/// PATH of the agent process, and so of every command it starts.
pub(crate) const SANDBOX_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The sandbox's open-files limit: ours, capped at [`OPEN_FILES_LIMIT`].
/// Raising a hard limit needs `CAP_SYS_RESOURCE`, which the orchestrator may
/// itself lack (it does on the CI machines), so never ask for more than the
/// current hard limit.
pub(crate) fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard.min(OPEN_FILES_LIMIT))
        .unwrap_or(1024)
}

/// Parent cgroup of every sandbox (`/sbx/<id>` in each v1 hierarchy).
pub(crate) fn cgroup_path(id: &str) -> PathBuf {
    PathBuf::from(format!("/sbx/{id}"))
}

/// The agent's environment as `KEY=VALUE` lines: the sandbox's own, and
/// where the agent receives its listener.
pub(crate) fn agent_env(spec: &ContainerSpec) -> Vec<String> {
    [
        SANDBOX_PATH.to_owned(),
        format!("SBX_AGENT_HANDOFF={}", sbx_api::HANDOFF_SOCKET_PATH),
    ]
    .into_iter()
    .chain(
        spec.agent_env
            .iter()
            .map(|(key, value)| format!("{key}={value}")),
    )
    .collect()
}

/// A user namespace mapping sandbox ids `0..size` to host ids
/// `host_base..host_base + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdMap {
    pub host_base: u32,
    pub size: u32,
}

pub(crate) fn build(spec: &ContainerSpec, id_map: Option<IdMap>) -> Result<Spec, RuntimeError> {
    let invalid = |err: oci_spec::OciSpecError| RuntimeError::Spec {
        id: spec.id.clone(),
        reason: err.to_string(),
    };
    let capabilities: HashSet<Capability> = CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capabilities.clone())
        .effective(capabilities.clone())
        .permitted(capabilities)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(invalid)?;
    let process = ProcessBuilder::default()
        .args(vec![sbx_api::AGENT_BINARY_PATH.to_owned()])
        .env(agent_env(spec))
        .cwd("/")
        .no_new_privileges(true)
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(open_files_limit())
            .hard(open_files_limit())
            .build()
            .map_err(invalid)?])
        .build()
        .map_err(invalid)?;

    let limits = spec.limits.container();
    let memory_bytes = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
    let resources = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(memory_bytes)
                // Equal to the limit: no swap beyond the memory limit.
                .swap(memory_bytes)
                .build()
                .map_err(invalid)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(i64::try_from(limits.pids).unwrap_or(i64::MAX))
                .build()
                .map_err(invalid)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota((limits.cpus * CPU_PERIOD_US as f64).round() as i64)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(invalid)?,
        )
        .build()
        .map_err(invalid)?;
    let default_linux = oci_spec::runtime::Linux::default();
    let mut namespaces = default_linux.namespaces().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default();
    if let Some(map) = id_map {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .map_err(invalid)?,
        );
        let mapping = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.host_base)
            .size(map.size)
            .build()
            .map_err(invalid)?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    let linux = linux
        .namespaces(namespaces)
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default())
        .cgroups_path(cgroup_path(&spec.id))
        .resources(resources)
        .seccomp(seccomp::profile().map_err(invalid)?)
        .build()
        .map_err(invalid)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    mounts.push(
        read_only_bind(
            sbx_api::AGENT_BINARY_PATH,
            &spec.agent_binary,
            Exec::Allowed,
        )
        .map_err(invalid)?,
    );
    if let Some(bundle) = &spec.ca_bundle {
        mounts
            .push(read_only_bind(sbx_api::CA_BUNDLE_PATH, bundle, Exec::Refused).map_err(invalid)?);
    }
    // The sandbox connects to the sockets here; it must not be able to
    // replace them or store anything on the host.
    mounts.push(
        read_only_bind(sbx_api::RUN_DIR, &spec.dir.run_dir(), Exec::Refused).map_err(invalid)?,
    );

    let mut oci = Spec::default();
    oci.set_hostname(Some(hostname(&spec.id)))
        .set_root(Some(
            RootBuilder::default()
                .path(overlay::rootfs(&spec.dir))
                .readonly(false)
                .build()
                .map_err(invalid)?,
        ))
        .set_process(Some(process))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(oci)
}

/// Whether what a bind mount shows may be executed.
enum Exec {
    Allowed,
    Refused,
}

/// A read-only bind mount of the host's `source` at `destination`, with
/// neither set-id programs nor devices.
fn read_only_bind(
    destination: &str,
    source: &Path,
    exec: Exec,
) -> Result<oci_spec::runtime::Mount, oci_spec::OciSpecError> {
    let mut options = vec!["bind", "ro", "nosuid", "nodev"];
    if matches!(exec, Exec::Refused) {
        options.push("noexec");
    }
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(options.into_iter().map(String::from).collect::<Vec<_>>())
        .build()
}

pub(crate) fn hostname(id: &str) -> String {
    format!("sbx-{}", &id[..id.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Limits, SandboxDir};
    use std::collections::BTreeMap;

    fn container_spec() -> ContainerSpec {
        ContainerSpec {
            id: "abc123".into(),
            image_rootfs: "/images/base/rootfs".into(),
            dir: SandboxDir::new("/data/sandboxes/abc123".into()),
            agent_binary: "/usr/lib/sbx/sandbox-agent".into(),
            agent_env: BTreeMap::from([("SBX_ENV_FOO".into(), "bar".into())]),
            limits: Limits {
                memory_bytes: 512 << 20,
                cpus: 1.5,
                pids: 1024,
                disk_bytes: None,
            },
            keep_disk: false,
            ca_bundle: None,
        }
    }

    #[test]
    fn a_trusted_host_ca_bundle_is_mounted_read_only_over_the_images() {
        let bundle = |spec: &ContainerSpec| {
            let oci = build(spec, None).expect("valid spec");
            oci.mounts()
                .as_ref()
                .expect("mounts")
                .iter()
                .find(|mount| mount.destination() == std::path::Path::new(sbx_api::CA_BUNDLE_PATH))
                .map(|mount| (mount.source().clone(), mount.options().clone()))
        };
        assert_eq!(bundle(&container_spec()), None);
        let trusting = ContainerSpec {
            ca_bundle: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            ..container_spec()
        };
        let (source, options) = bundle(&trusting).expect("mounted");
        assert_eq!(source.as_deref(), trusting.ca_bundle.as_deref());
        assert!(options.expect("options").contains(&"ro".to_owned()));
    }

    #[test]
    fn narrows_privileges_and_sets_limits() {
        let oci = build(&container_spec(), None).expect("valid spec");
        let process = oci.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(
            process.args().as_ref().expect("args")[0],
            sbx_api::AGENT_BINARY_PATH
        );
        let caps = process.capabilities().as_ref().expect("caps");
        let bounding = caps.bounding().as_ref().expect("bounding");
        for forbidden in [
            Capability::SysAdmin,
            Capability::NetAdmin,
            Capability::SysPtrace,
            Capability::SysModule,
            Capability::NetRaw,
        ] {
            assert!(
                !bounding.contains(&forbidden),
                "{forbidden:?} must be dropped"
            );
        }
        assert!(process
            .env()
            .as_ref()
            .expect("env")
            .contains(&"SBX_ENV_FOO=bar".to_owned()));

        let linux = oci.linux().as_ref().expect("linux");
        let resources = linux.resources().as_ref().expect("resources");
        // The container's limits carry the agent's headroom; the sandbox's
        // own go to its tenant cgroup.
        assert_eq!(
            resources.memory().as_ref().expect("memory").limit(),
            Some((512 << 20) + crate::runtime::AGENT_MEMORY_HEADROOM as i64)
        );
        assert_eq!(
            resources.pids().as_ref().expect("pids").limit(),
            1024 + crate::runtime::AGENT_PIDS_HEADROOM as i64
        );
        assert_eq!(
            resources.cpu().as_ref().expect("cpu").quota(),
            Some(150_000)
        );
        let namespaces: Vec<_> = linux
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .map(|ns| ns.typ())
            .collect();
        assert!(namespaces.contains(&oci_spec::runtime::LinuxNamespaceType::Network));
        assert!(namespaces.contains(&oci_spec::runtime::LinuxNamespaceType::Pid));
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new("/sbx/abc123"))
        );
        let seccomp = linux.seccomp().as_ref().expect("a seccomp profile");
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        assert!(seccomp
            .syscalls()
            .as_ref()
            .expect("syscall rules")
            .iter()
            .any(|rule| rule.names().iter().any(|name| name == "keyctl")));
    }

    #[test]
    fn maps_root_to_the_host_range_in_a_user_namespace() {
        let map = IdMap {
            host_base: 1_000_000_000,
            size: 65_536,
        };
        let oci = build(&container_spec(), Some(map)).expect("valid spec");
        let linux = oci.linux().as_ref().expect("linux");
        assert!(linux
            .namespaces()
            .as_ref()
            .expect("namespaces")
            .iter()
            .any(|ns| ns.typ() == LinuxNamespaceType::User));
        for mappings in [linux.uid_mappings(), linux.gid_mappings()] {
            let mappings = mappings.as_ref().expect("mappings");
            assert_eq!(mappings.len(), 1);
            assert_eq!(mappings[0].container_id(), 0);
            assert_eq!(mappings[0].host_id(), 1_000_000_000);
            assert_eq!(mappings[0].size(), 65_536);
        }
        let unmapped = build(&container_spec(), None).expect("valid spec");
        assert!(unmapped
            .linux()
            .as_ref()
            .expect("linux")
            .uid_mappings()
            .is_none());
    }

    #[test]
    fn capability_names_are_the_kernel_names() {
        let names = capability_names();
        assert_eq!(names.len(), CAPABILITIES.len());
        assert!(names.contains(&"CAP_CHOWN".to_owned()));
        assert!(!names.contains(&"CAP_SYS_ADMIN".to_owned()));
    }

    #[test]
    fn mounts_the_agent_read_only_and_the_socket_dir() {
        let oci = build(&container_spec(), None).expect("valid spec");
        let mounts = oci.mounts().as_ref().expect("mounts");
        let agent = mounts
            .iter()
            .find(|m| m.destination() == std::path::Path::new(sbx_api::AGENT_BINARY_PATH))
            .expect("agent mount");
        assert!(agent
            .options()
            .as_ref()
            .expect("options")
            .contains(&"ro".to_owned()));
        assert!(mounts
            .iter()
            .any(|m| m.source().as_deref()
                == Some(std::path::Path::new("/data/sandboxes/abc123/run"))));
    }
}
