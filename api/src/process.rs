//! Background processes: `/v1/sandboxes/{id}/processes`, mirrored by the
//! agent's `/processes`. They outlive the request that started them and die
//! with the sandbox.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of output the agent keeps per stream of a background process; older
/// output is dropped first.
pub const PROCESS_LOG_CAP: usize = 1024 * 1024;

/// `POST /processes`: the same command fields as an exec, plus a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcessRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A label for people; not unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl StartProcessRequest {
    /// The command fields as an exec request, for shared validation and
    /// spawning.
    pub fn as_exec(&self) -> crate::ExecRequest {
        crate::ExecRequest {
            cmd: self.cmd.clone(),
            shell: self.shell.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            user: self.user.clone(),
            ..crate::ExecRequest::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.name {
            if name.len() > 256 || name.contains('\0') {
                return Err("name must be at most 256 bytes without NUL".into());
            }
        }
        self.as_exec().validate()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited,
}

/// One background process, as `GET /processes/{pid}` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessInfo {
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The argv that was run (a shell request shows the shell invocation).
    pub cmd: Vec<String>,
    pub state: ProcessState,
    /// Set once exited; `128 + N` when killed by signal N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<DateTime<Utc>>,
}

/// The path parameters of every `/v1/sandboxes/{id}/processes/{pid}…`
/// route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProcessPath {
    /// The sandbox's id.
    pub id: String,
    /// The process's pid inside the sandbox, as its start returned it.
    pub pid: i32,
}

/// `GET /processes`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// `POST /processes/kill-all`: every process in the sandbox but its agent
/// was killed and reaped; exec works again at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KillAllResult {
    /// How many processes were running when the call came.
    pub killed: u32,
}

/// `POST /processes/{pid}/signal`: `{"signal":"TERM"}`. Names with or
/// without the `SIG` prefix (`TERM`, `SIGKILL`, `INT`, `HUP`, `USR1`…) or a
/// number. The signal goes to the whole process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: String,
}

/// Query of `GET /processes/{pid}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only the last this many bytes of each stream's buffer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Keep the stream open and send output as it happens, then `exit`.
    #[serde(default)]
    pub follow: bool,
}

/// Query of `POST /processes/{pid}/stdin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StdinQuery {
    /// Close the process's stdin after writing the body.
    #[serde(default)]
    pub close: bool,
}
