//! Running one command to completion: `POST /v1/sandboxes/{id}/exec`, which
//! the orchestrator forwards unchanged to the agent's `POST /exec`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest timeout a client may ask for: one day. Anything longer is almost
/// certainly a unit mistake, and is rejected rather than honoured.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Bytes kept per output stream of one exec; the rest is drained and counted
/// as truncated, so a flood cannot grow the agent's memory.
pub const DEFAULT_OUTPUT_CAP: usize = 10 * 1024 * 1024;

/// Either `cmd` (an argv, run directly) or `shell` (a string for the shell).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Working directory; `/workspace` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^/")]
    pub cwd: Option<String>,
    /// Added to (and overriding) the sandbox's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the command's whole process group after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    /// Written to the command's stdin, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Run as this user: a name from the sandbox's `/etc/passwd`, or
    /// `uid[:gid]`. Root when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Answer with an NDJSON stream of [`ExecEvent`]s instead of one
    /// [`ExecResult`] (the same as sending `Accept: application/x-ndjson`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

impl ExecRequest {
    /// An argv request: `ExecRequest::argv(["echo", "hi"])`.
    pub fn argv<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cmd: Some(args.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// A shell request: `ExecRequest::shell("echo hi | tr a-z A-Z")`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self {
            shell: Some(script.into()),
            ..Self::default()
        }
    }

    /// Checks what serde cannot: exactly one of `cmd`/`shell`, no NUL bytes
    /// (they cannot cross `execve`), an absolute `cwd`, a sane timeout.
    /// The message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cmd, &self.shell) {
            (Some(_), Some(_)) => return Err("give either cmd or shell, not both".into()),
            (None, None) => return Err("one of cmd or shell is required".into()),
            (Some(argv), None) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err("cmd must name a program".into());
                }
                if argv.iter().any(|arg| arg.contains('\0')) {
                    return Err("cmd must not contain NUL bytes".into());
                }
            }
            (None, Some(script)) => {
                if script.contains('\0') {
                    return Err("shell must not contain NUL bytes".into());
                }
            }
        }
        if let Some(user) = &self.user {
            validate_user(user)?;
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') || cwd.contains('\0') {
                return Err(format!("cwd {cwd:?} must be an absolute path"));
            }
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!("env var {key:?} is not a valid name=value pair"));
            }
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

/// `user` is a name (`[a-z_][a-z0-9_.-]*`) or `uid[:gid]`.
pub fn validate_user(user: &str) -> Result<(), String> {
    let numeric = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && part.parse::<u32>().is_ok()
    };
    let valid = match user.split_once(':') {
        Some((uid, gid)) => numeric(uid) && numeric(gid),
        None => {
            numeric(user)
                || (!user.is_empty()
                    && user.len() <= 32
                    && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && user.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'_' | b'.' | b'-')
                    }))
        }
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "user {user:?} is neither a user name nor uid[:gid]"
        ))
    }
}

/// Media type of NDJSON streams: one JSON value per line.
pub const NDJSON: &str = "application/x-ndjson";

/// One line of a streamed exec, or of a background process's logs.
///
/// Order: one `start`, then `stdout`/`stderr` as the output happens, then
/// one `exit` last (logs that are not followed end without `exit` while the
/// process runs). Output is decoded as UTF-8 with invalid sequences
/// replaced; a character split across two reads is never broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecEvent {
    Start {
        pid: i32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: i32,
        duration_ms: u64,
        timed_out: bool,
    },
    /// The stream could not go on (e.g. the agent is shutting down); no
    /// `exit` follows.
    Error {
        error_code: crate::ErrorCode,
        message: String,
    },
}

/// The outcome of a command run to completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecResult {
    /// The exit status; `128 + N` when killed by signal N, as shells report it.
    pub exit_code: i32,
    /// Captured stdout, decoded as UTF-8 with invalid sequences replaced.
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// The timeout fired and the process group was killed.
    pub timed_out: bool,
    /// At least one stream went past the output cap and was cut.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_exactly_one_command_form() {
        assert!(ExecRequest::default().validate().is_err());
        let both = ExecRequest {
            shell: Some("true".into()),
            ..ExecRequest::argv(["true"])
        };
        assert!(both.validate().is_err());
        assert!(ExecRequest::argv(Vec::<String>::new()).validate().is_err());
        assert!(ExecRequest::argv(["echo", "hi"]).validate().is_ok());
        assert!(ExecRequest::shell("echo hi").validate().is_ok());
    }

    #[test]
    fn rejects_nul_relative_cwd_and_absurd_timeouts() {
        assert!(ExecRequest::argv(["ec\0ho"]).validate().is_err());
        let relative = ExecRequest {
            cwd: Some("tmp".into()),
            ..ExecRequest::shell("true")
        };
        assert!(relative.validate().is_err());
        let huge = ExecRequest {
            timeout_ms: Some(1_000_000_000_000),
            ..ExecRequest::shell("true")
        };
        assert!(huge
            .validate()
            .expect_err("absurd timeout")
            .contains("timeout_ms"));
        let zero = ExecRequest {
            timeout_ms: Some(0),
            ..ExecRequest::shell("true")
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn users_are_names_or_numeric_ids() {
        for good in ["root", "www-data", "_apt", "1000", "1000:1000"] {
            assert!(validate_user(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Root",
            "a/b",
            "1000:",
            ":1000",
            "x:y",
            "99999999999",
            "a\0",
        ] {
            assert!(validate_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn events_are_tagged_by_type() {
        let line = serde_json::to_string(&ExecEvent::Exit {
            exit_code: 0,
            duration_ms: 5,
            timed_out: false,
        })
        .expect("serializable");
        assert_eq!(
            line,
            r#"{"type":"exit","exit_code":0,"duration_ms":5,"timed_out":false}"#
        );
        let start: ExecEvent = serde_json::from_str(r#"{"type":"start","pid":7}"#).expect("parses");
        assert_eq!(start, ExecEvent::Start { pid: 7 });
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let parsed: Result<ExecRequest, _> = serde_json::from_str(r#"{"cmd":["true"],"cwdd":"/"}"#);
        assert!(parsed.is_err());
    }
}
