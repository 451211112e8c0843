//! Live shells: terminals (a PTY attached over a WebSocket) and persistent
//! shell sessions (one shell whose `cd`, `export` and functions persist
//! between commands). Both live in the agent; the orchestrator forwards
//! `/v1/sandboxes/{id}/pty…` and `/sessions…` to the agent's `/pty…` and
//! `/sessions…`.

use crate::exec::{validate_user, MAX_TIMEOUT_MS};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of a terminal's output kept for a viewer that attaches later: it
/// is sent first, so a reattached screen shows where things stand.
pub const PTY_SCROLLBACK_BYTES: usize = 64 * 1024;

/// Largest terminal side, in cells, either way.
pub const MAX_PTY_CELLS: u16 = 1000;

/// `POST /pty`: a terminal running `cmd`, or the user's login shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePtyRequest {
    /// An argv; the user's login shell (from `/etc/passwd`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 1000)]
    pub cols: u16,
    #[schema(minimum = 1, maximum = 1000)]
    pub rows: u16,
    /// Added to the sandbox's environment (after `TERM=xterm-256color`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory; the user's home when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub cwd: Option<String>,
    /// A name from the sandbox's `/etc/passwd` or `uid[:gid]`; root when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CreatePtyRequest {
    /// A login shell of `cols` × `rows`.
    pub fn shell(cols: u16, rows: u16) -> Self {
        Self {
            cmd: None,
            cols,
            rows,
            env: BTreeMap::new(),
            cwd: None,
            user: None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_size(self.cols, self.rows)?;
        if let Some(cmd) = &self.cmd {
            if cmd.is_empty() || cmd[0].is_empty() {
                return Err("cmd must name a program".into());
            }
            if cmd.iter().any(|arg| arg.contains('\0')) {
                return Err("cmd must not contain NUL bytes".into());
            }
        }
        validate_shell_options(self.cwd.as_deref(), &self.env, self.user.as_deref())
    }
}

fn validate_size(cols: u16, rows: u16) -> Result<(), String> {
    if !(1..=MAX_PTY_CELLS).contains(&cols) || !(1..=MAX_PTY_CELLS).contains(&rows) {
        return Err(format!(
            "cols and rows must be between 1 and {MAX_PTY_CELLS} (got {cols}x{rows})"
        ));
    }
    Ok(())
}

fn validate_shell_options(
    cwd: Option<&str>,
    env: &BTreeMap<String, String>,
    user: Option<&str>,
) -> Result<(), String> {
    if let Some(user) = user {
        validate_user(user)?;
    }
    if let Some(cwd) = cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(format!("cwd {cwd:?} must be an absolute path"));
        }
    }
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!("env var {key:?} is not a valid name=value pair"));
        }
    }
    Ok(())
}

/// A terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pty {
    /// The terminal's id, unique within its sandbox.
    pub id: String,
    /// The pid of its command inside the sandbox.
    pub pid: i32,
    pub cmd: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// WebSockets attached right now.
    pub viewers: u32,
    /// Set once the command has exited; the terminal stays listed (and
    /// attachable, for its scrollback and exit) until it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub created_at: DateTime<Utc>,
}

/// `GET /pty`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PtyList {
    pub terminals: Vec<Pty>,
}

/// The path parameters of `/v1/sandboxes/{id}/pty/{tid}…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PtyPath {
    /// The sandbox's id.
    pub id: String,
    /// The terminal's id.
    pub tid: String,
}

/// `POST /pty/{tid}/resize`, and the same as a WebSocket text frame
/// (`{"type":"resize","cols":120,"rows":40}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl PtySize {
    pub fn validate(&self) -> Result<(), String> {
        validate_size(self.cols, self.rows)
    }
}

/// A WebSocket text frame of a terminal. Binary frames carry the
/// terminal's bytes both ways; text frames carry these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyControl {
    /// From a client: the window changed size.
    Resize { cols: u16, rows: u16 },
    /// From the server, last: the command exited (`128 + N` for signal N).
    Exit { exit_code: i32 },
}

/// `POST /sessions`: a persistent shell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// The starting directory; `/workspace` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A name from the sandbox's `/etc/passwd` or `uid[:gid]`; root when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl CreateSessionRequest {
    pub fn validate(&self) -> Result<(), String> {
        validate_shell_options(self.cwd.as_deref(), &self.env, self.user.as_deref())
    }
}

/// A persistent shell session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    /// The session's id, unique within its sandbox.
    pub id: String,
    /// The pid of its shell inside the sandbox.
    pub pid: i32,
    /// A command is running in it now.
    pub busy: bool,
    /// How many commands it has run.
    pub commands: u64,
    pub created_at: DateTime<Utc>,
}

/// `GET /sessions`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

/// The path parameters of `/v1/sandboxes/{id}/sessions/{sid}…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The sandbox's id.
    pub id: String,
    /// The session's id.
    pub sid: String,
}

/// `POST /sessions/{sid}/exec`: one command in the session's shell. The
/// answer is an [`crate::ExecResult`], or with `stream` (or `Accept:
/// application/x-ndjson`) a stream of [`crate::ExecEvent`]s. One command
/// runs at a time: a second call while one runs gets 409.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecRequest {
    /// Shell text, run by the session's shell as if typed: `cd`, `export`,
    /// functions and `$?` carry over to the next command. Its stdin is
    /// empty (`/dev/null`).
    pub command: String,
    /// Kill the command (not the session) after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl SessionExecRequest {
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.command.contains('\0') {
            return Err("command must not contain NUL bytes".into());
        }
        match self.timeout_ms {
            Some(0) => Err("timeout_ms must be positive".into()),
            Some(ms) if ms > MAX_TIMEOUT_MS => Err(format!(
                "timeout_ms {ms} exceeds the maximum of {MAX_TIMEOUT_MS}"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sizes_and_commands_are_checked() {
        assert!(CreatePtyRequest::shell(80, 24).validate().is_ok());
        assert!(CreatePtyRequest::shell(0, 24).validate().is_err());
        assert!(CreatePtyRequest::shell(80, 1001).validate().is_err());
        let empty = CreatePtyRequest {
            cmd: Some(vec![]),
            ..CreatePtyRequest::shell(80, 24)
        };
        assert!(empty.validate().is_err());
        let relative = CreatePtyRequest {
            cwd: Some("tmp".into()),
            ..CreatePtyRequest::shell(80, 24)
        };
        assert!(relative.validate().is_err());
    }

    #[test]
    fn control_frames_are_tagged_by_type() {
        let resize: PtyControl =
            serde_json::from_str(r#"{"type":"resize","cols":120,"rows":40}"#).expect("parses");
        assert_eq!(
            resize,
            PtyControl::Resize {
                cols: 120,
                rows: 40
            }
        );
        let exit = serde_json::to_string(&PtyControl::Exit { exit_code: 130 }).expect("json");
        assert_eq!(exit, r#"{"type":"exit","exit_code":130}"#);
    }

    #[test]
    fn session_commands_are_checked() {
        assert!(SessionExecRequest::new("cd /tmp").validate().is_ok());
        assert!(SessionExecRequest::new("a\0b").validate().is_err());
        let zero = SessionExecRequest {
            timeout_ms: Some(0),
            ..SessionExecRequest::new("true")
        };
        assert!(zero.validate().is_err());
        let bad_user = CreateSessionRequest {
            user: Some("Root".into()),
            ..CreateSessionRequest::default()
        };
        assert!(bad_user.validate().is_err());
    }
}
