//! Files and archives: `/v1/sandboxes/{id}/files…` and `/archive`,
//! mirrored by the agent's `/files…` and `/archive`. Contents travel as raw
//! bytes (binary and NUL safe), never inside JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

/// `GET /files/stat`, and each entry of `GET /files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: FileType,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`), e.g. 420 for 0644.
    pub mode: u32,
    pub mtime: DateTime<Utc>,
    pub uid: u32,
    pub gid: u32,
    /// Where a symlink points (not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// The owner's name in the sandbox's `/etc/passwd`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The group's name in the sandbox's `/etc/group`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `GET /files/list`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileList {
    pub entries: Vec<FileInfo>,
}

/// Query of every `/files` route: the absolute path inside the sandbox.
/// Each route reads only some of the fields; the OpenAPI spec lists, per
/// route, the ones it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    pub path: String,
    /// `PUT /files`: permission bits of the new file, as octal (`0644`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `DELETE /files`: required to remove a directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recursive: bool,
    /// `GET /files/list`: how many levels to descend (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// `PUT /files`, `PUT /archive`: who owns what the call writes (the
    /// file, every archive entry, and the directories made for them), as
    /// `user[:group]` (names from the sandbox's `/etc/passwd` and
    /// `/etc/group`, or numeric ids); absent, the agent's user. What a
    /// Dockerfile's `COPY --chown` becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Deepest `GET /files/list` walk a client may ask for.
pub const MAX_LIST_DEPTH: u32 = 64;

/// `POST /files/mkdir`: like `mkdir -p`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    #[schema(pattern = "^/")]
    pub path: String,
    /// Octal permission bits of created directories (default `0755`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(0o)?0*[0-7]{1,4}$")]
    pub mode: Option<String>,
    /// Who owns the directories made, as `user[:group]` (names from the
    /// sandbox's `/etc/passwd` and `/etc/group`, or numeric ids); absent,
    /// the agent's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// `POST /files/move`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    #[schema(pattern = "^/")]
    pub from: String,
    #[schema(pattern = "^/")]
    pub to: String,
}

/// `PUT /archive?path=DIR`: what the extraction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArchiveSummary {
    pub entries: u64,
    pub bytes: u64,
}

/// Paths must be absolute and free of NUL; `..` is allowed (the sandbox is
/// the boundary, not the path), except where an operation says otherwise.
pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must be absolute"));
    }
    if path.contains('\0') {
        return Err("path must not contain NUL bytes".into());
    }
    if path.len() > 4096 {
        return Err("path is longer than 4096 bytes".into());
    }
    Ok(())
}

/// Parses an octal mode such as `644`, `0644` or `0o644`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    // from_str_radix alone would also take a sign ("+644").
    let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    octal
        .then(|| u32::from_str_radix(digits, 8).ok())
        .flatten()
        .filter(|mode| *mode <= 0o7777)
        .ok_or_else(|| format!("mode {text:?} is not an octal mode like 0644"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("+644").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("0o").is_err());
        assert_eq!(parse_mode("0000644"), Ok(0o644));
    }

    #[test]
    fn paths_must_be_absolute_without_nul() {
        assert!(validate_path("/workspace/a").is_ok());
        assert!(validate_path("workspace").is_err());
        assert!(validate_path("/a\0b").is_err());
    }

    #[test]
    fn file_type_is_serialized_as_type() {
        let info = FileInfo {
            path: "/a".into(),
            name: "a".into(),
            file_type: FileType::Dir,
            size: 0,
            mode: 0o755,
            mtime: DateTime::<Utc>::UNIX_EPOCH,
            uid: 0,
            gid: 0,
            link_target: None,
            owner: None,
            group: None,
        };
        let json = serde_json::to_value(&info).expect("serializable");
        assert_eq!(json["type"], "dir");
    }
}
