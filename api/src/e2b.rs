//! E2B's wire, as its official SDKs speak it: the control plane's JSON and
//! envd's Connect messages (JSON codec), written from the messages' shapes
//! rather than generated from E2B's definitions.
//!
//! Only what sbx serves is here. Fields the SDKs send that sbx has no use
//! for are ignored, never refused: the SDKs add fields between releases,
//! and a refusal would break a client that changed nothing else.
//!
//! Conventions of Connect's JSON codec (protobuf's JSON mapping) that the
//! types follow: field names are lowerCamelCase; 64-bit integers are
//! strings (and read from numbers too); `bytes` are base64; enums are their
//! names (and read from numbers too); a field at its default may be left
//! out, so every field has a default.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// The envd version sbx's envd surface answers as. The SDKs gate features
/// on it (stdin at 0.3.0, the default user at 0.4.0, octet-stream uploads
/// at 0.5.7); this is the oldest version whose features sbx all serves.
pub const ENVD_VERSION: &str = "0.5.7";

/// The port the SDKs address envd on, in `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;

// ----- control plane -----

/// `POST /sandboxes`, `POST /v2/sandboxes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until the sandbox ends; E2B's default is 300 s when absent.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Pause instead of ending at the timeout.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// `false` asks for a sandbox without internet access.
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// `POST /sandboxes/{id}/connect`, `POST /v2/sandboxes/{id}/connect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectSandbox {
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize)]
pub struct SandboxTimeout {
    pub timeout: u64,
}

/// A sandbox as create and connect answer it.
#[derive(Debug, Clone, Serialize)]
pub struct E2bSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    /// What envd calls carry in `X-Access-Token`: an sbx token.
    #[serde(rename = "envdAccessToken")]
    pub envd_access_token: String,
    /// Always null: the SDKs then use `E2B_SANDBOX_URL` or their default
    /// domain.
    pub domain: Option<String>,
}

/// A sandbox as get and list answer it.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "startedAt")]
    pub started_at: DateTime<Utc>,
    #[serde(rename = "endAt")]
    pub end_at: DateTime<Utc>,
    #[serde(rename = "cpuCount")]
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub state: E2bState,
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    pub metadata: BTreeMap<String, String>,
}

/// The two states E2B knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2bState {
    Running,
    Paused,
}

/// The control plane's error body: the SDKs read `code` and `message`.
#[derive(Debug, Clone, Serialize)]
pub struct E2bErrorBody {
    pub code: u16,
    pub message: String,
}

// ----- envd: Connect -----

/// A Connect error: the body of a failed unary call, or the `error` of a
/// stream's end message.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectError {
    /// Connect's code name: `not_found`, `invalid_argument`, …
    pub code: &'static str,
    pub message: String,
}

/// A stream's last message (flag 0x02): `{}` or `{"error": …}`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndOfStream {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// An empty message (most responses of the unary calls).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

// ----- envd: process -----

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    pub process: ProcessConfig,
    /// A terminal: sbx serves those at `/v1/…/pty`, not here.
    pub pty: Option<serde_json::Value>,
    pub tag: Option<String>,
    /// Whether the process's stdin stays open for `SendInput`.
    pub stdin: Option<bool>,
}

/// Names a process by pid (sbx does not keep tags).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessSelector {
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessRequest {
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    pub process: ProcessSelector,
    pub input: ProcessInput,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessInput {
    #[serde(with = "base64_opt")]
    pub stdin: Option<Vec<u8>>,
    #[serde(with = "base64_opt")]
    pub pty: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    pub process: ProcessSelector,
    #[serde(deserialize_with = "signal")]
    pub signal: Option<Signal>,
}

/// The two signals E2B's `Signal` enum has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    /// The name sbx's signal route takes.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

fn signal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Signal>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(match value {
        serde_json::Value::String(name) if name == "SIGNAL_SIGTERM" => Some(Signal::Term),
        serde_json::Value::String(name) if name == "SIGNAL_SIGKILL" => Some(Signal::Kill),
        serde_json::Value::Number(n) if n.as_u64() == Some(15) => Some(Signal::Term),
        serde_json::Value::Number(n) if n.as_u64() == Some(9) => Some(Signal::Kill),
        _ => None,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// One message of a `Start` or `Connect` stream.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStreamMessage {
    pub event: ProcessEvent,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessEvent {
    Start { pid: u32 },
    Data(DataEvent),
    End(EndEvent),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataEvent {
    Stdout(#[serde(with = "base64_bytes")] Vec<u8>),
    Stderr(#[serde(with = "base64_bytes")] Vec<u8>),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ----- envd: filesystem -----

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    pub path: String,
    pub depth: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatchRequest {
    pub path: String,
    pub recursive: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatcherRequest {
    pub watcher_id: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateWatcherResponse {
    pub watcher_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatcherEvents {
    pub events: Vec<FilesystemEvent>,
}

/// One message of a `WatchDir` stream.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchDirMessage {
    Start {},
    Filesystem(FilesystemEvent),
}

#[derive(Debug, Clone, Serialize)]
pub struct FilesystemEvent {
    /// The path relative to the watched directory.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create,
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write,
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove,
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListDirResponse {
    pub entries: Vec<EntryInfo>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    pub path: String,
    /// int64: a string on the wire.
    #[serde(serialize_with = "as_string")]
    pub size: u64,
    pub mode: u32,
    /// `-rw-r--r--`, as `ls -l` shows it.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified_time: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FileType {
    #[serde(rename = "FILE_TYPE_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "FILE_TYPE_FILE")]
    File,
    #[serde(rename = "FILE_TYPE_DIRECTORY")]
    Directory,
    #[serde(rename = "FILE_TYPE_SYMLINK")]
    Symlink,
}

// ----- envd: REST -----

/// `GET|POST /files` query.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FilesQuery {
    pub path: Option<String>,
    pub username: Option<String>,
}

/// One written file, in `POST /files`' answer.
#[derive(Debug, Clone, Serialize)]
pub struct WriteInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub path: String,
}

/// envd's REST error body.
#[derive(Debug, Clone, Serialize)]
pub struct EnvdError {
    pub code: u16,
    pub message: String,
}

fn as_string<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

mod base64_opt {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        // Protobuf's JSON accepts both alphabets, padded or not.
        let trimmed = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}
