//! The tools: their arguments (MCP's wire, shaped for a model), what REST
//! calls each makes, and how their answers are put for a model to read.
//!
//! Descriptions and schemas are written for a model choosing and calling a
//! tool: what it is for, what it returns, the defaults, the limits. Every
//! tool that acts on one sandbox takes `sandbox_id`, except for a token
//! bound to a sandbox, whose schema drops it (see [`ToolDef::describe`]).

mod images;
mod lifecycle;
mod live;

use super::rest::{read_bounded, Rest};
use super::text::{self, Capture, Pager, INLINE_BYTES};
use axum::body::Body;
use axum::http::Method;
use http_body_util::BodyExt;
use rmcp::handler::server::common::schema_for_input;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use sbx_api::{
    CreateSandboxRequest, CreatedSandbox, ErrorBody, ErrorCode, ExecEvent, ExecRequest, FileInfo,
    FileList, FileType, LifecycleRequest, NetworkPolicy, ProcessInfo, Sandbox, SandboxList,
    SignalRequest, StartProcessRequest, UpdateSandboxRequest,
};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Largest JSON answer read whole (a sandbox list, a file listing).
const MAX_JSON_BYTES: usize = 16 * 1024 * 1024;
/// Output of one stream kept whole (and saved for paging) per exec; the
/// agent's own cap for a buffered exec.
const KEEP_BYTES: usize = sbx_api::DEFAULT_OUTPUT_CAP;
/// Longest NDJSON event line accepted from a stream.
const MAX_EVENT_LINE: usize = 4 * 1024 * 1024;
/// Largest file `edit_file` works on.
const MAX_EDIT_BYTES: u64 = 10 * 1024 * 1024;
/// Bytes `read_file` reads at most to reach the lines asked for.
const MAX_SCAN_BYTES: usize = 256 * 1024 * 1024;
/// Lines `read_file` returns by default, and at most.
const DEFAULT_READ_LINES: usize = 2000;
const MAX_READ_LINES: usize = 10_000;
/// Entries `list_files` shows at most.
const MAX_LIST_ENTRIES: usize = 1000;
const DEFAULT_EXEC_TIMEOUT_S: u64 = 120;
const MAX_EXEC_TIMEOUT_S: u64 = 3600;
/// Time past an exec's own timeout after which the tool stops waiting (the
/// agent kills the command at its timeout; this only guards the wait).
const EXEC_GRACE: Duration = Duration::from_secs(30);
/// Where cut output is saved inside the sandbox.
const OUTPUT_DIR: &str = "/tmp/sbx-output";

/// Why a tool call failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The REST API refused or failed the call; its error body.
    #[error("{0}")]
    Api(ErrorBody),
    /// The arguments are wrong (before any REST call).
    #[error("{0}")]
    Invalid(String),
    /// What came back is too large to handle.
    #[error("{0}")]
    TooLarge(String),
    /// The call can be made but not the way it was asked (an edit that
    /// does not apply).
    #[error("{0}")]
    Refused(String),
    /// A bug, or an answer the API should never give; logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ToolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ToolError::Api(body) => body.error_code,
            ToolError::Invalid(_) | ToolError::Refused(_) => ErrorCode::InvalidRequest,
            ToolError::TooLarge(_) => ErrorCode::PayloadTooLarge,
            ToolError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Whether the failure happened before any REST call (so the API's
    /// audit trail has no record of the call).
    pub fn reached_api(&self) -> bool {
        !matches!(self, ToolError::Invalid(_))
    }

    fn body(&self) -> ErrorBody {
        match self {
            ToolError::Api(body) => body.clone(),
            ToolError::Internal(detail) => {
                tracing::error!(%detail, "mcp tool failed");
                ErrorBody::new(ErrorCode::Internal, "internal error")
            }
            other => ErrorBody::new(other.code(), other.to_string()),
        }
    }
}

/// What a tool call gives back: text for the model, and structured data
/// for programs when there is some.
#[derive(Debug)]
pub struct Answer {
    text: String,
    structured: Option<serde_json::Value>,
}

impl Answer {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            structured: None,
        }
    }

    /// The answer with `line` before its text.
    fn headed(mut self, line: &str) -> Self {
        self.text = format!("{line}\n{}", self.text);
        self
    }

    fn with(mut self, structured: impl Serialize) -> Self {
        self.structured = serde_json::to_value(structured).ok();
        self
    }
}

/// The MCP result of a tool call; failures are tool errors (`isError`)
/// carrying the API's error body.
pub fn result(outcome: Result<Answer, ToolError>) -> CallToolResult {
    match outcome {
        Ok(answer) => {
            let mut result = CallToolResult::success(vec![ContentBlock::text(answer.text)]);
            result.structured_content = answer.structured;
            result
        }
        Err(err) => {
            let body = err.body();
            let mut text = format!("{}: {}", body.error_code, body.message);
            if let Some(id) = &body.request_id {
                let _ = write!(text, " (request {id})");
            }
            let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
            result.structured_content = serde_json::to_value(&body).ok();
            result
        }
    }
}

/// One tool: its name, what it says to a model, its argument schema, and
/// the REST routes it calls (which decide who sees it, see [`super::scope`]).
#[derive(Debug)]
pub struct ToolDef {
    pub name: &'static str,
    description: &'static str,
    schema: fn() -> Result<Arc<JsonObject>, String>,
    pub routes: &'static [(Method, &'static str)],
    /// Acts on one sandbox: takes `sandbox_id`.
    on_sandbox: bool,
    read_only: bool,
    destructive: bool,
}

impl ToolDef {
    /// The tool as `tools/list` shows it; `bound` drops `sandbox_id`, which
    /// a sandbox-bound token's calls get from the token.
    pub fn describe(&self, bound: bool) -> Tool {
        let mut schema = match (self.schema)() {
            Ok(schema) => schema.as_ref().clone(),
            Err(err) => {
                tracing::error!(tool = self.name, %err, "bad tool schema");
                JsonObject::new()
            }
        };
        if bound && self.on_sandbox {
            if let Some(serde_json::Value::Object(properties)) = schema.get_mut("properties") {
                properties.remove("sandbox_id");
            }
            if let Some(serde_json::Value::Array(required)) = schema.get_mut("required") {
                required.retain(|name| name != "sandbox_id");
            }
        }
        let mut annotations = ToolAnnotations::default();
        annotations.read_only_hint = Some(self.read_only);
        annotations.destructive_hint = Some(self.destructive);
        annotations.open_world_hint = Some(false);
        Tool::new(self.name, self.description, Arc::new(schema)).with_annotations(annotations)
    }
}

fn schema<T: JsonSchema + 'static>() -> Result<Arc<JsonObject>, String> {
    schema_for_input::<T>()
}

const SANDBOX: &str = "/v1/sandboxes/{id}";
const EXEC: &str = "/v1/sandboxes/{id}/exec";
const FILES: &str = "/v1/sandboxes/{id}/files";
const IMAGES: &str = "/v1/images";
const IMAGE: &str = "/v1/images/{name}";

pub static TOOLS: &[ToolDef] = &[
    ToolDef {
        name: "create_sandbox",
        description: "Create a new Linux sandbox and return its id. A sandbox is an isolated \
Debian machine with bash, git, python3, curl, jq, ripgrep and make, a writable /workspace \
(the default working directory) and no network unless `egress` allows hosts; `image` starts it \
from another image instead of that default \"base\" (list_images shows the images' names). It \
is ready for exec as soon as this returns (usually well under a second). Pass the returned \
sandbox_id to the other tools, and delete the sandbox with delete_sandbox when the task is done.",
        schema: schema::<CreateSandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes")],
        on_sandbox: false,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "list_sandboxes",
        description: "List the sandboxes that exist: id, state, image, creation time, labels \
and egress allowlist of each.",
        schema: schema::<ListSandboxesArgs>,
        routes: &[(Method::GET, "/v1/sandboxes")],
        on_sandbox: false,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "delete_sandbox",
        description: "Delete a sandbox: stop everything running in it and remove its files. \
This cannot be undone.",
        schema: schema::<SandboxArgs>,
        routes: &[(Method::DELETE, SANDBOX)],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "exec",
        description: "Run a shell command in the sandbox and wait for it to finish; returns its \
exit code, stdout and stderr. The command is a bash script (pipes, &&, redirects, cd all work) \
run in /workspace unless `cwd` says otherwise; each call starts a fresh shell, so `cd` and \
variables do not carry over. It is killed after `timeout_seconds` (default 120). Long output is \
cut in the middle, with a marker naming a file in the sandbox that holds all of it: page \
through that file with read_file (offset/limit in lines) or search it with exec (grep -n). For \
servers and other commands that do not end, use start_process instead.",
        schema: schema::<ExecArgs>,
        routes: &[(Method::POST, EXEC), (Method::PUT, FILES)],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "read_file",
        description: "Read a text file in the sandbox, by lines. Returns up to `limit` lines \
(default 2000) starting at line `offset` (1-based, default 1), each prefixed with its line \
number and a tab (the prefix is not part of the file), and says whether more lines follow and \
with which offset to read them. Lines longer than 2000 bytes are cut. Binary files are refused: \
inspect them with exec (e.g. `xxd file | head`).",
        schema: schema::<ReadFileArgs>,
        routes: &[(Method::GET, FILES)],
        on_sandbox: true,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "write_file",
        description: "Write a file in the sandbox, replacing it if it exists; missing parent \
directories are created. The write is atomic: readers see the old or the new file, never half \
of it. To change part of an existing file, prefer edit_file.",
        schema: schema::<WriteFileArgs>,
        routes: &[(Method::PUT, FILES)],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "list_files",
        description: "List a directory in the sandbox: one line per entry with its type (file, \
dir, symlink), size in bytes and path, directories ending in '/'. `depth` 1 (the default) lists \
the directory itself; larger values descend into subdirectories. At most 1000 entries are \
shown; for big trees use exec with find or rg --files.",
        schema: schema::<ListFilesArgs>,
        routes: &[(Method::GET, "/v1/sandboxes/{id}/files/list")],
        on_sandbox: true,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "edit_file",
        description: "Edit a text file in the sandbox by exact string replacement: \
`old_string` is replaced by `new_string`. old_string must match the file exactly (whitespace \
and indentation included; do not include read_file's line-number prefixes) and must occur \
exactly once, unless `replace_all` is true; otherwise nothing is changed and the error says \
why. Include enough surrounding lines to make old_string unique. The file keeps its \
permissions. Returns the edited lines with their numbers.",
        schema: schema::<EditFileArgs>,
        routes: &[
            (Method::GET, "/v1/sandboxes/{id}/files/stat"),
            (Method::GET, FILES),
            (Method::PUT, FILES),
        ],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "start_process",
        description: "Start a shell command in the background in the sandbox (a server, a \
watcher, a long build) and return its pid at once. It keeps running after this call; read its \
output with process_logs and stop it with kill_process. Its last 1 MiB of output per stream is \
kept.",
        schema: schema::<StartProcessArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/processes")],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "process_logs",
        description: "Show a background process's output so far (stdout and stderr) and whether \
it is still running or its exit code. Long output is cut with a marker naming a file that holds \
all of it, as with exec.",
        schema: schema::<ProcessArgs>,
        routes: &[
            (Method::GET, "/v1/sandboxes/{id}/processes/{pid}/logs"),
            (Method::PUT, FILES),
        ],
        on_sandbox: true,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "kill_process",
        description: "Send a signal (default TERM; KILL if it does not stop) to a background \
process and every process it started.",
        schema: schema::<KillProcessArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/processes/{pid}/signal")],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "set_egress",
        description: "Set which hosts the sandbox may reach over the network, replacing the \
previous list; takes effect at once. Entries are host names, optionally with a port: \
\"pypi.org\", \"github.com:443\", \"*.githubusercontent.com\" (every subdomain, not the domain \
itself). An empty list cuts the sandbox off. Commands reach the hosts through a proxy that \
HTTP_PROXY/HTTPS_PROXY already name, so curl, git and pip work unchanged.",
        schema: schema::<SetEgressArgs>,
        routes: &[(Method::PATCH, SANDBOX)],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "stop_sandbox",
        description: "Stop a sandbox: every process in it ends and its memory is freed, but its \
files (all it wrote, installed or configured) are kept, as are its id, egress and labels. \
start_sandbox boots it again. Use it to park a sandbox you will come back to.",
        schema: schema::<SandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/stop")],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "start_sandbox",
        description: "Start a stopped sandbox again, on the files it had. Processes that ran \
before the stop do not come back: start background processes again with start_process.",
        schema: schema::<SandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/start")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "pause_sandbox",
        description: "Pause a sandbox: every process in it is frozen in memory, exactly where it \
is, and uses no CPU. resume_sandbox thaws them.",
        schema: schema::<SandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/pause")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "resume_sandbox",
        description: "Resume a paused sandbox: its processes run on from where they were frozen.",
        schema: schema::<SandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/resume")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "extend_sandbox",
        description: "Set when a sandbox's timeout acts: `timeout_s` seconds from now (what it \
does then, delete, stop or pause, was chosen at create_sandbox). Call it before a long task so \
the sandbox is not stopped or deleted under you. Returns the new expiry time.",
        schema: schema::<lifecycle::ExtendSandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/timeout")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "snapshot_sandbox",
        description: "Save a sandbox's files as they are now under a name, e.g. before a risky \
change. restore_sandbox rolls a sandbox back to the snapshot; create_sandbox with `snapshot` \
starts a new sandbox from it. Running processes and memory are not saved, only files.",
        schema: schema::<lifecycle::SnapshotSandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/snapshots")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "list_snapshots",
        description: "List the snapshots that exist: name, the sandbox it was taken from, \
image, size on disk and creation time of each.",
        schema: schema::<lifecycle::ListSnapshotsArgs>,
        routes: &[(Method::GET, "/v1/snapshots")],
        on_sandbox: false,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "delete_snapshot",
        description: "Delete a snapshot and free its disk space. Sandboxes made or restored \
from it are not affected. This cannot be undone.",
        schema: schema::<lifecycle::SnapshotArgs>,
        routes: &[(Method::DELETE, "/v1/snapshots/{name}")],
        on_sandbox: false,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "fork_sandbox",
        description: "Copy a sandbox into `count` new running sandboxes (default 1), each with \
its files as they are now and the same image, limits, egress and labels; the original is left \
as it is. Use it to try alternatives side by side. Returns the new sandbox ids; processes are \
not copied. Delete the copies with delete_sandbox when done.",
        schema: schema::<lifecycle::ForkSandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/fork")],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "restore_sandbox",
        description: "Roll a sandbox back to a snapshot, in place: its files become the \
snapshot's (everything written since is lost) and it is restarted, keeping its id (a stopped \
sandbox stays stopped). Background processes must be started again.",
        schema: schema::<lifecycle::RestoreSandboxArgs>,
        routes: &[(Method::POST, "/v1/sandboxes/{id}/restore")],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "list_images",
        description: "List the images sandboxes can be made from: name, id, where it came from \
(a recipe built on the server, like the default \"base\", or an imported OCI/docker image), \
size, creation time, and the defaults a sandbox made from it gets (env, working dir, user). \
Pass a name as create_sandbox's `image`.",
        schema: schema::<images::ListImagesArgs>,
        routes: &[(Method::GET, IMAGES)],
        on_sandbox: false,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "get_image",
        description: "Show one image by name (e.g. \"base\" or \"localhost:5000/team/app:v1\"; \
a name without a tag means \":latest\"): its id, source, layers, size, creation time and \
config: the env, working dir and user every sandbox made from it gets by default, and its \
entrypoint, cmd and labels (kept for reference; nothing of them is run).",
        schema: schema::<images::ImageArgs>,
        routes: &[(Method::GET, IMAGE)],
        on_sandbox: false,
        read_only: true,
        destructive: false,
    },
    ToolDef {
        name: "build_image",
        description: "Build an image from a Dockerfile, on the server, and name it: each step \
runs in a sandbox (RUN has no network unless `allow` names hosts), steps are cached, and the \
answer is the image, ready for create_sandbox's `image`. `files` are the other files COPY can \
take. A failing step or an unsupported instruction is an error naming its Dockerfile line (and \
the end of a failing command's output). FROM names an image list_images shows, or a registry \
image that can be pulled anonymously.",
        schema: schema::<images::BuildImageArgs>,
        routes: &[(Method::POST, "/v1/images/build")],
        on_sandbox: false,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "delete_image",
        description: "Delete an image and free its disk space (layers other images share \
stay). Refused with a conflict while a sandbox or snapshot is made from it, and for the default \
image \"base\". Sandboxes cannot be made from it afterwards. This cannot be undone.",
        schema: schema::<images::ImageArgs>,
        routes: &[(Method::DELETE, IMAGE)],
        on_sandbox: false,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "session_exec",
        description: "Run a shell command in a persistent shell session of the sandbox: unlike \
exec, `cd`, exported variables, shell functions and `$?` carry over to the next command in the \
same session. Leave session_id out to start a session; the answer names it, pass it back to run \
the next command there. Returns the exit code, stdout and stderr (long output cut and saved as \
with exec). The command's stdin is empty. A timeout kills the command, not the session; `exit` \
ends the session. One command runs at a time per session.",
        schema: schema::<live::SessionExecArgs>,
        routes: &[
            (Method::POST, "/v1/sandboxes/{id}/sessions"),
            (Method::POST, "/v1/sandboxes/{id}/sessions/{sid}/exec"),
            (Method::PUT, FILES),
        ],
        on_sandbox: true,
        read_only: false,
        destructive: true,
    },
    ToolDef {
        name: "fetch_port",
        description: "Send an HTTP request to a server running inside the sandbox (e.g. a dev \
server started with start_process) on `port`, and show its status, content type and the start \
of its body, whatever the status. `wait_seconds` first waits for something to listen there. \
Use it to check that a web app answers; for a person to look at it, use preview_port.",
        schema: schema::<live::FetchPortArgs>,
        routes: &[
            (Method::GET, "/v1/sandboxes/{id}/ports/{port}/wait"),
            (Method::GET, "/v1/sandboxes/{id}/ports/{port}/{path}"),
        ],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
    ToolDef {
        name: "preview_port",
        description: "Make a URL that opens a web server running inside the sandbox on `port` \
in anyone's browser, no token needed, until it expires (`ttl_seconds`, default one hour). \
Waits for something to listen on the port first (`wait_seconds`, default 30). Give the URL to \
the person you work for so they can see the app. Links in the app that start with '/' leave \
the URL's path prefix; relative links work.",
        schema: schema::<live::PreviewPortArgs>,
        routes: &[
            (Method::GET, "/v1/sandboxes/{id}/ports/{port}/wait"),
            (Method::POST, "/v1/sandboxes/{id}/previews"),
        ],
        on_sandbox: true,
        read_only: false,
        destructive: false,
    },
];

pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|tool| tool.name == name)
}

// ---- arguments -------------------------------------------------------------

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreateSandboxArgs {
    /// Image to start from, by name: list_images shows the names. Default "base" (Debian bookworm with bash, git, python3, curl, jq, ripgrep, make).
    #[serde(default)]
    image: Option<String>,
    /// Memory limit in MiB (default 512).
    #[serde(default)]
    memory_mb: Option<u64>,
    /// CPU limit in cores, e.g. 1 or 0.5 (default 1).
    #[serde(default)]
    cpus: Option<f64>,
    /// Disk space for what the sandbox writes, in MiB (default: the server's, usually 10240).
    #[serde(default)]
    disk_mb: Option<u64>,
    /// Hosts the sandbox may reach over the network, e.g. ["pypi.org", "files.pythonhosted.org", "github.com:443"]. Default: none, no network. Can be changed later with set_egress.
    #[serde(default)]
    egress: Option<Vec<String>>,
    /// Environment variables every command in the sandbox gets.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Free-form labels, shown by list_sandboxes.
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Seconds until on_timeout acts (default: the server's; 0: no timeout). extend_sandbox sets it again later.
    #[serde(default)]
    #[schemars(range(min = 0, max = 2592000))]
    timeout_s: Option<u64>,
    /// Seconds without any tool call on the sandbox after which on_timeout acts (default: the server's, usually 3600; 0: never).
    #[serde(default)]
    #[schemars(range(min = 0, max = 2592000))]
    idle_timeout_s: Option<u64>,
    /// What a timeout does: "delete", "stop" (files kept) or "pause" (memory kept too). Default: the server's.
    #[serde(default)]
    on_timeout: Option<lifecycle::OnTimeoutArg>,
    /// Whether a tool call on a stopped or paused sandbox wakes it instead of failing (default: the server's, usually true).
    #[serde(default)]
    auto_resume: Option<bool>,
    /// Start from this snapshot's files (see snapshot_sandbox) instead of a fresh image; image and disk_mb must then be left out or match it.
    #[serde(default)]
    snapshot: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListSandboxesArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SandboxArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ExecArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The bash command to run, e.g. "cd src && make test 2>&1 | tail -50".
    command: String,
    /// Absolute directory to run in (default /workspace).
    #[serde(default)]
    cwd: Option<String>,
    /// Kill the command after this many seconds (default 120, at most 3600).
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// Extra environment variables for this command.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Text written to the command's standard input (which is then closed).
    #[serde(default)]
    stdin: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReadFileArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Absolute path of the file, e.g. "/workspace/src/main.py".
    path: String,
    /// First line to return, 1-based (default 1).
    #[serde(default)]
    #[schemars(range(min = 1))]
    offset: Option<usize>,
    /// How many lines to return (default 2000, at most 10000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    limit: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteFileArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Absolute path of the file, e.g. "/workspace/hello.py".
    path: String,
    /// The whole new content of the file.
    content: String,
    /// Permission bits in octal, e.g. "0755" for a script (default "0644").
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListFilesArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Absolute path of the directory (default /workspace).
    #[serde(default)]
    path: Option<String>,
    /// How many levels to list: 1 (default) is the directory's own entries.
    #[serde(default)]
    #[schemars(range(min = 1, max = 64))]
    depth: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EditFileArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// Absolute path of the file to edit.
    path: String,
    /// The exact text to replace, as it is in the file now.
    old_string: String,
    /// The text to put in its place.
    new_string: String,
    /// Replace every occurrence instead of requiring exactly one (default false).
    #[serde(default)]
    replace_all: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StartProcessArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The bash command to run in the background, e.g. "python3 -m http.server 8000".
    command: String,
    /// Absolute directory to run in (default /workspace).
    #[serde(default)]
    cwd: Option<String>,
    /// Extra environment variables for the process.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// A label to recognise it by.
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProcessArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The pid start_process returned.
    pid: i32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KillProcessArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The pid start_process returned.
    pid: i32,
    /// Signal name: TERM (default), INT, HUP, KILL…
    #[serde(default)]
    signal: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SetEgressArgs {
    /// The sandbox's id, as create_sandbox returned it.
    sandbox_id: String,
    /// The new allowlist: "host", "host:port" or "*.domain" entries; [] for no network.
    egress: Vec<String>,
}

// ---- calls -----------------------------------------------------------------

/// Parses `arguments` for `tool`. A sandbox-bound token's calls get their
/// sandbox from the token; naming another one is an error.
fn parse<T: DeserializeOwned>(
    tool: &ToolDef,
    bound: Option<&str>,
    mut arguments: JsonObject,
) -> Result<T, ToolError> {
    if let (Some(bound), true) = (bound, tool.on_sandbox) {
        match arguments.get("sandbox_id") {
            None => {
                arguments.insert("sandbox_id".into(), bound.into());
            }
            Some(serde_json::Value::String(id)) if id == bound => {}
            Some(_) => {
                return Err(ToolError::Invalid(format!(
                    "this token works only on sandbox {bound}; leave sandbox_id out"
                )))
            }
        }
    }
    serde_json::from_value(serde_json::Value::Object(arguments))
        .map_err(|err| ToolError::Invalid(format!("invalid arguments for {}: {err}", tool.name)))
}

/// A sandbox id as it may appear in a path (ids are hex; anything else is
/// refused here rather than spliced into a URI).
fn sandbox_path(id: &str) -> Result<String, ToolError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if valid {
        Ok(format!("/v1/sandboxes/{id}"))
    } else {
        Err(ToolError::Invalid(format!(
            "sandbox_id {:?} is not a sandbox id",
            text::printable(id)
        )))
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("string pairs always encode")
}

fn absolute(path: &str) -> Result<(), ToolError> {
    sbx_api::validate_path(path).map_err(ToolError::Invalid)
}

pub async fn call(
    tool: &'static ToolDef,
    rest: &Rest,
    bound: Option<&str>,
    arguments: JsonObject,
) -> Result<Answer, ToolError> {
    match tool.name {
        "create_sandbox" => create_sandbox(rest, parse(tool, bound, arguments)?).await,
        "list_sandboxes" => {
            let _: ListSandboxesArgs = parse(tool, bound, arguments)?;
            list_sandboxes(rest).await
        }
        "delete_sandbox" => {
            let args: SandboxArgs = parse(tool, bound, arguments)?;
            let uri = sandbox_path(&args.sandbox_id)?;
            rest.call(Method::DELETE, &uri, None, false).await?;
            Ok(Answer::text(format!("deleted sandbox {}", args.sandbox_id)))
        }
        "exec" => exec(rest, parse(tool, bound, arguments)?).await,
        "read_file" => read_file(rest, parse(tool, bound, arguments)?).await,
        "write_file" => write_file(rest, parse(tool, bound, arguments)?).await,
        "list_files" => list_files(rest, parse(tool, bound, arguments)?).await,
        "edit_file" => edit_file(rest, parse(tool, bound, arguments)?).await,
        "start_process" => start_process(rest, parse(tool, bound, arguments)?).await,
        "process_logs" => process_logs(rest, parse(tool, bound, arguments)?).await,
        "kill_process" => kill_process(rest, parse(tool, bound, arguments)?).await,
        "set_egress" => set_egress(rest, parse(tool, bound, arguments)?).await,
        "stop_sandbox" | "start_sandbox" | "pause_sandbox" | "resume_sandbox" => {
            lifecycle::change(rest, tool.name, parse(tool, bound, arguments)?).await
        }
        "extend_sandbox" => lifecycle::extend(rest, parse(tool, bound, arguments)?).await,
        "snapshot_sandbox" => lifecycle::snapshot(rest, parse(tool, bound, arguments)?).await,
        "list_snapshots" => {
            let _: lifecycle::ListSnapshotsArgs = parse(tool, bound, arguments)?;
            lifecycle::list_snapshots(rest).await
        }
        "delete_snapshot" => lifecycle::delete_snapshot(rest, parse(tool, bound, arguments)?).await,
        "fork_sandbox" => lifecycle::fork(rest, parse(tool, bound, arguments)?).await,
        "restore_sandbox" => lifecycle::restore(rest, parse(tool, bound, arguments)?).await,
        "list_images" => {
            let _: images::ListImagesArgs = parse(tool, bound, arguments)?;
            images::list_images(rest).await
        }
        "get_image" => images::get_image(rest, parse(tool, bound, arguments)?).await,
        "delete_image" => images::delete_image(rest, parse(tool, bound, arguments)?).await,
        "build_image" => images::build_image(rest, parse(tool, bound, arguments)?).await,
        "session_exec" => live::session_exec(rest, parse(tool, bound, arguments)?).await,
        "fetch_port" => live::fetch_port(rest, parse(tool, bound, arguments)?).await,
        "preview_port" => live::preview_port(rest, parse(tool, bound, arguments)?).await,
        other => Err(ToolError::Internal(format!("tool {other} has no handler"))),
    }
}

fn describe_sandbox(sandbox: &Sandbox) -> String {
    let egress = if sandbox.network.egress.is_empty() {
        "none".to_owned()
    } else {
        sandbox.network.egress.join(", ")
    };
    let mut line = format!(
        "{}  {}  image {}  {} MiB  {} cpu  created {}  egress: {egress}",
        sandbox.id,
        sandbox.state.as_str(),
        sandbox.image,
        sandbox.memory_mb,
        sandbox.cpus,
        sandbox
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    if let Some(at) = &sandbox.expires_at {
        let _ = write!(
            line,
            "  timeout ({}) at {}",
            sandbox.lifecycle.on_timeout.as_str(),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    if !sandbox.labels.is_empty() {
        let labels: Vec<String> = sandbox
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let _ = write!(line, "  labels: {}", labels.join(","));
    }
    line
}

async fn create_sandbox(rest: &Rest, args: CreateSandboxArgs) -> Result<Answer, ToolError> {
    let lifecycle = LifecycleRequest {
        timeout_s: args.timeout_s,
        idle_timeout_s: args.idle_timeout_s,
        on_timeout: args.on_timeout.map(Into::into),
        auto_resume: args.auto_resume,
    };
    let request = CreateSandboxRequest {
        image: args.image,
        memory_mb: args.memory_mb,
        cpus: args.cpus,
        disk_mb: args.disk_mb,
        env: args.env.unwrap_or_default(),
        labels: args.labels.unwrap_or_default(),
        network: args.egress.map(|egress| NetworkPolicy { egress }),
        lifecycle: (lifecycle != LifecycleRequest::default()).then_some(lifecycle),
        snapshot: args.snapshot,
    };
    let created: CreatedSandbox = rest
        .json(
            Method::POST,
            "/v1/sandboxes",
            Some(&request),
            MAX_JSON_BYTES,
        )
        .await?;
    // The sandbox's own token stays out of the model's context: the
    // caller's token already reaches the sandbox.
    let sandbox = created.sandbox;
    let text = format!(
        "created sandbox {id}\n{line}\nPass sandbox_id \"{id}\" to the other tools; \
         /workspace is the working directory.",
        id = sandbox.id,
        line = describe_sandbox(&sandbox)
    );
    Ok(Answer::text(text).with(&sandbox))
}

async fn list_sandboxes(rest: &Rest) -> Result<Answer, ToolError> {
    let list: SandboxList = rest
        .json(Method::GET, "/v1/sandboxes", None::<&()>, MAX_JSON_BYTES)
        .await?;
    let text = if list.sandboxes.is_empty() {
        "no sandboxes".to_owned()
    } else {
        list.sandboxes
            .iter()
            .map(describe_sandbox)
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(Answer::text(text).with(&list))
}

/// Reads an NDJSON event stream, line by line with a bounded line length.
struct Events {
    body: Body,
    pending: Vec<u8>,
    ended: bool,
}

impl Events {
    fn new(body: Body) -> Self {
        Self {
            body,
            pending: Vec::new(),
            ended: false,
        }
    }

    async fn next(&mut self) -> Result<Option<ExecEvent>, ToolError> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|err| ToolError::Internal(format!("bad event line: {err}")));
            }
            if self.ended {
                return Ok(None);
            }
            if self.pending.len() > MAX_EVENT_LINE {
                return Err(ToolError::TooLarge("an output event is too long".into()));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
                Some(Err(err)) => {
                    return Err(ToolError::Api(ErrorBody::new(
                        ErrorCode::Unavailable,
                        format!("the output stream broke off: {err}"),
                    )))
                }
                None => {
                    self.ended = true;
                    self.pending.push(b'\n');
                }
            }
        }
    }
}

/// Output of both streams and how it ended.
#[derive(Debug)]
struct Run {
    stdout: Capture,
    stderr: Capture,
    exit: Option<(i32, u64, bool)>,
}

async fn collect(events: &mut Events, run: &mut Run) -> Result<(), ToolError> {
    while let Some(event) = events.next().await? {
        match event {
            ExecEvent::Start { .. } => {}
            ExecEvent::Stdout { data } => run.stdout.push(&data),
            ExecEvent::Stderr { data } => run.stderr.push(&data),
            ExecEvent::Exit {
                exit_code,
                duration_ms,
                timed_out,
            } => run.exit = Some((exit_code, duration_ms, timed_out)),
            ExecEvent::Error {
                error_code,
                message,
            } => return Err(ToolError::Api(ErrorBody::new(error_code, message))),
        }
    }
    Ok(())
}

/// A stream's text for the model: whole if short, else cut, with the whole
/// saved in the sandbox at `OUTPUT_DIR/NAME` for paging.
async fn shown(rest: &Rest, sandbox: &str, name: &str, capture: &Capture) -> String {
    let Some(cut) = text::cut(&capture.kept, INLINE_BYTES) else {
        let mut text = capture.kept.clone();
        if capture.overflowed() {
            let _ = write!(
                text,
                "\n[… output cut: {} bytes in all, only the first {} kept]",
                capture.total,
                capture.kept.len()
            );
        }
        return text;
    };
    let path = format!("{OUTPUT_DIR}/{name}");
    let saved = save(rest, sandbox, &path, capture.kept.as_bytes()).await;
    let whole = match &saved {
        Ok(()) => {
            let lines = text::line_count(&capture.kept);
            let mut whole = format!(
                "the whole output ({} bytes, {lines} lines) is in {path}: read it with read_file \
                 (offset/limit are line numbers) or search it with exec (grep -n …)",
                capture.kept.len()
            );
            if capture.overflowed() {
                let _ = write!(
                    whole,
                    "; the command wrote {} bytes, of which only the first {} were kept",
                    capture.total,
                    capture.kept.len()
                );
            }
            whole
        }
        Err(err) => format!("the whole output could not be saved ({err})"),
    };
    format!(
        "{}\n[… {} bytes cut here, of {}; {whole} …]\n{}",
        cut.head,
        cut.omitted,
        capture.kept.len(),
        cut.tail
    )
}

async fn save(rest: &Rest, sandbox: &str, path: &str, bytes: &[u8]) -> Result<(), ToolError> {
    let uri = format!(
        "{}/files?{}",
        sandbox_path(sandbox)?,
        query(&[("path", path), ("mode", "0644")])
    );
    rest.call(Method::PUT, &uri, Some(Body::from(bytes.to_vec())), false)
        .await
}

fn output_name(kind: &str) -> String {
    format!("{kind}-{:08x}", rand::random::<u32>())
}

fn render_run(
    head: String,
    stdout: String,
    stderr: String,
    run: &Run,
) -> (String, serde_json::Value) {
    let mut text = head;
    if !stdout.is_empty() {
        let _ = write!(text, "\n--- stdout ---\n{stdout}");
        if !stdout.ends_with('\n') {
            text.push('\n');
        }
    }
    if !stderr.is_empty() {
        let _ = write!(text, "\n--- stderr ---\n{stderr}");
        if !stderr.ends_with('\n') {
            text.push('\n');
        }
    }
    if stdout.is_empty() && stderr.is_empty() {
        text.push_str("\n(no output)");
    }
    let structured = serde_json::json!({
        "exit_code": run.exit.map(|exit| exit.0),
        "timed_out": run.exit.is_some_and(|exit| exit.2),
        "stdout_bytes": run.stdout.total,
        "stderr_bytes": run.stderr.total,
    });
    (text, structured)
}

async fn exec(rest: &Rest, args: ExecArgs) -> Result<Answer, ToolError> {
    let base = sandbox_path(&args.sandbox_id)?;
    let seconds = args.timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT_S);
    if !(1..=MAX_EXEC_TIMEOUT_S).contains(&seconds) {
        return Err(ToolError::Invalid(format!(
            "timeout_seconds {seconds} is out of range (1..={MAX_EXEC_TIMEOUT_S})"
        )));
    }
    let request = ExecRequest {
        shell: Some(args.command),
        cwd: args.cwd,
        env: args.env.unwrap_or_default(),
        timeout_ms: Some(seconds * 1000),
        stdin: args.stdin,
        stream: true,
        ..ExecRequest::default()
    };
    request.validate().map_err(ToolError::Invalid)?;
    let body = serde_json::to_vec(&request)
        .map_err(|err| ToolError::Internal(format!("cannot encode an exec: {err}")))?;
    let response = rest
        .send(
            Method::POST,
            &format!("{base}/exec"),
            Some(Body::from(body)),
            true,
        )
        .await?;
    report_run(rest, &args.sandbox_id, response, seconds, "exec").await
}

/// Reads a streamed run (an exec's, or a session command's) to its exit,
/// or `seconds` and a grace, and puts it for a model: the exit, then the
/// output, long output cut and saved in the sandbox under a name that
/// starts with `kind`.
async fn report_run(
    rest: &Rest,
    sandbox_id: &str,
    response: axum::response::Response,
    seconds: u64,
    kind: &str,
) -> Result<Answer, ToolError> {
    let mut events = Events::new(response.into_body());
    let mut run = Run {
        stdout: Capture::new(KEEP_BYTES),
        stderr: Capture::new(KEEP_BYTES),
        exit: None,
    };
    let deadline = Duration::from_secs(seconds) + EXEC_GRACE;
    let waited = tokio::time::timeout(deadline, collect(&mut events, &mut run)).await;
    // Dropping the stream ends the command if it is still running.
    drop(events);
    let head = match (waited, run.exit) {
        (Ok(Err(err)), _) => return Err(err),
        (Err(_), _) => format!(
            "no exit after {} s: the command was stopped and its output so far is below",
            deadline.as_secs()
        ),
        (Ok(Ok(())), None) => "the command's output ended without an exit status".to_owned(),
        (Ok(Ok(())), Some((code, ms, true))) => format!(
            "timed out after {seconds} s: the command and its children were killed (exit code {code}, {ms} ms)"
        ),
        (Ok(Ok(())), Some((code, ms, false))) => format!("exit code {code} ({ms} ms)"),
    };
    let name = output_name(kind);
    let stdout = shown(rest, sandbox_id, &format!("{name}.stdout"), &run.stdout).await;
    let stderr = shown(rest, sandbox_id, &format!("{name}.stderr"), &run.stderr).await;
    let (text, structured) = render_run(head, stdout, stderr, &run);
    Ok(Answer {
        text,
        structured: Some(structured),
    })
}

async fn read_file(rest: &Rest, args: ReadFileArgs) -> Result<Answer, ToolError> {
    absolute(&args.path)?;
    let offset = args.offset.unwrap_or(1).max(1);
    let limit = args.limit.unwrap_or(DEFAULT_READ_LINES);
    if !(1..=MAX_READ_LINES).contains(&limit) {
        return Err(ToolError::Invalid(format!(
            "limit {limit} is out of range (1..={MAX_READ_LINES})"
        )));
    }
    let uri = format!(
        "{}/files?{}",
        sandbox_path(&args.sandbox_id)?,
        query(&[("path", &args.path)])
    );
    let response = rest.send(Method::GET, &uri, None, false).await?;
    let mut body = response.into_body();
    let mut pager = Pager::new(offset, limit);
    let mut scanned = 0usize;
    let mut eof = false;
    // Past the lines wanted, read on only to learn whether the file ends there.
    while !(pager.binary || pager.done() && pager.more) {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    scanned += data.len();
                    pager.push(&data);
                    if scanned > MAX_SCAN_BYTES && !pager.done() {
                        return Err(ToolError::TooLarge(format!(
                            "read {MAX_SCAN_BYTES} bytes of {} without reaching line {}; \
                             use exec (sed -n, tail) to reach that far",
                            text::printable(&args.path),
                            offset + pager.lines.len()
                        )));
                    }
                }
            }
            Some(Err(err)) => {
                return Err(ToolError::Api(ErrorBody::new(
                    ErrorCode::Unavailable,
                    format!("reading {} broke off: {err}", text::printable(&args.path)),
                )))
            }
            None => {
                eof = true;
                break;
            }
        }
    }
    drop(body);
    if pager.binary {
        return Err(ToolError::Refused(format!(
            "{} looks binary (it has NUL bytes); read_file shows text. Inspect it with exec, \
             e.g. `file PATH` or `xxd PATH | head`",
            text::printable(&args.path)
        )));
    }
    let total = if eof && !pager.more {
        Some(pager.finish())
    } else {
        None
    };
    let path = text::printable(&args.path);
    let first = pager.first();
    let shown = pager.lines.len();
    let mut out = String::new();
    for (index, line) in pager.lines.iter().enumerate() {
        out.push_str(&text::numbered(first + index, line));
        out.push('\n');
    }
    let footer = match total {
        Some(0) => format!("[{path} is empty]"),
        Some(total) if shown == 0 => {
            format!("[{path} has {total} lines; offset {first} is past its end]")
        }
        Some(total) if first + shown > total => format!(
            "[lines {first}-{} of {total}: end of {path}]",
            first + shown - 1
        ),
        _ => format!(
            "[lines {first}-{} of {path}; more follow: call read_file with offset={} to go on]",
            first + shown - 1,
            first + shown
        ),
    };
    out.push_str(&footer);
    Ok(Answer::text(out))
}

async fn write_file(rest: &Rest, args: WriteFileArgs) -> Result<Answer, ToolError> {
    absolute(&args.path)?;
    let mut pairs = vec![("path", args.path.as_str())];
    if let Some(mode) = &args.mode {
        sbx_api::parse_mode(mode).map_err(ToolError::Invalid)?;
        pairs.push(("mode", mode));
    }
    let uri = format!(
        "{}/files?{}",
        sandbox_path(&args.sandbox_id)?,
        query(&pairs)
    );
    let bytes = args.content.len();
    rest.call(Method::PUT, &uri, Some(Body::from(args.content)), false)
        .await?;
    Ok(Answer::text(format!(
        "wrote {bytes} bytes to {}",
        text::printable(&args.path)
    )))
}

async fn list_files(rest: &Rest, args: ListFilesArgs) -> Result<Answer, ToolError> {
    let path = args
        .path
        .unwrap_or_else(|| sbx_api::WORKSPACE_DIR.to_owned());
    absolute(&path)?;
    let depth = args.depth.unwrap_or(1).to_string();
    let uri = format!(
        "{}/files/list?{}",
        sandbox_path(&args.sandbox_id)?,
        query(&[("path", &path), ("depth", &depth)])
    );
    let list: FileList = rest
        .json(Method::GET, &uri, None::<&()>, MAX_JSON_BYTES)
        .await?;
    let mut entries = list.entries;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = String::new();
    for entry in entries.iter().take(MAX_LIST_ENTRIES) {
        let (kind, suffix) = match entry.file_type {
            FileType::File => ("file   ", ""),
            FileType::Dir => ("dir    ", "/"),
            FileType::Symlink => ("symlink", ""),
            FileType::Other => ("other  ", ""),
        };
        let _ = write!(
            out,
            "{kind} {:>10}  {}{suffix}",
            entry.size,
            text::printable(&entry.path)
        );
        if let Some(target) = &entry.link_target {
            let _ = write!(out, " -> {}", text::printable(target));
        }
        out.push('\n');
    }
    if entries.is_empty() {
        let _ = writeln!(out, "{} is empty", text::printable(&path));
    } else if entries.len() > MAX_LIST_ENTRIES {
        let _ = writeln!(
            out,
            "[… {} more entries not shown; list a subdirectory, or use exec with find]",
            entries.len() - MAX_LIST_ENTRIES
        );
    }
    Ok(Answer::text(out))
}

async fn edit_file(rest: &Rest, args: EditFileArgs) -> Result<Answer, ToolError> {
    absolute(&args.path)?;
    let base = sandbox_path(&args.sandbox_id)?;
    let path = text::printable(&args.path).into_owned();
    if args.old_string.is_empty() {
        return Err(ToolError::Invalid(text::EditError::EmptyOld.to_string()));
    }
    let stat: FileInfo = rest
        .json(
            Method::GET,
            &format!("{base}/files/stat?{}", query(&[("path", &args.path)])),
            None::<&()>,
            MAX_JSON_BYTES,
        )
        .await?;
    if stat.file_type != FileType::File {
        return Err(ToolError::Refused(format!(
            "{path} is not a regular file; edit_file edits text files"
        )));
    }
    if stat.size > MAX_EDIT_BYTES {
        return Err(ToolError::TooLarge(format!(
            "{path} is {} bytes; edit_file works on files up to {MAX_EDIT_BYTES} bytes",
            stat.size
        )));
    }
    let file_uri = format!("{base}/files?{}", query(&[("path", &args.path)]));
    let response = rest.send(Method::GET, &file_uri, None, false).await?;
    let bytes = read_bounded(response.into_body(), MAX_EDIT_BYTES as usize)
        .await
        .map_err(|_| ToolError::TooLarge(format!("{path} grew past {MAX_EDIT_BYTES} bytes")))?;
    let content = std::str::from_utf8(&bytes).map_err(|_| {
        ToolError::Refused(format!(
            "{path} is not UTF-8 text; edit it with exec (sed, python3) instead"
        ))
    })?;
    let (edited, count, at) = text::replace(
        content,
        &args.old_string,
        &args.new_string,
        args.replace_all,
    )
    .map_err(|err| ToolError::Refused(format!("{path}: {err}")))?;
    let mode = format!("{:04o}", stat.mode & 0o7777);
    let uri = format!(
        "{base}/files?{}",
        query(&[("path", &args.path), ("mode", &mode)])
    );
    let snippet = text::snippet(&edited, at, args.new_string.len(), 3);
    rest.call(Method::PUT, &uri, Some(Body::from(edited)), false)
        .await?;
    let what = if count == 1 {
        "1 occurrence".to_owned()
    } else {
        format!("{count} occurrences")
    };
    Ok(Answer::text(format!(
        "replaced {what} in {path}; the first edit now reads:\n{snippet}"
    )))
}

async fn start_process(rest: &Rest, args: StartProcessArgs) -> Result<Answer, ToolError> {
    let request = StartProcessRequest {
        shell: Some(args.command),
        cwd: args.cwd,
        env: args.env.unwrap_or_default(),
        name: args.name,
        ..StartProcessRequest::default()
    };
    request.validate().map_err(ToolError::Invalid)?;
    let uri = format!("{}/processes", sandbox_path(&args.sandbox_id)?);
    let process: ProcessInfo = rest
        .json(Method::POST, &uri, Some(&request), MAX_JSON_BYTES)
        .await?;
    Ok(Answer::text(format!(
        "started pid {pid}; it runs in the background: see its output with process_logs \
         (pid {pid}) and stop it with kill_process",
        pid = process.pid
    ))
    .with(&process))
}

async fn process_logs(rest: &Rest, args: ProcessArgs) -> Result<Answer, ToolError> {
    let uri = format!(
        "{}/processes/{}/logs",
        sandbox_path(&args.sandbox_id)?,
        args.pid
    );
    let response = rest.send(Method::GET, &uri, None, false).await?;
    let mut events = Events::new(response.into_body());
    let mut run = Run {
        stdout: Capture::new(KEEP_BYTES),
        stderr: Capture::new(KEEP_BYTES),
        exit: None,
    };
    collect(&mut events, &mut run).await?;
    drop(events);
    let head = match run.exit {
        None => format!("pid {} is running", args.pid),
        Some((code, _, _)) => format!("pid {} exited with code {code}", args.pid),
    };
    // One name per process: polling its logs overwrites, never piles up.
    let name = format!("process-{}", args.pid);
    let stdout = shown(
        rest,
        &args.sandbox_id,
        &format!("{name}.stdout"),
        &run.stdout,
    )
    .await;
    let stderr = shown(
        rest,
        &args.sandbox_id,
        &format!("{name}.stderr"),
        &run.stderr,
    )
    .await;
    let (text, mut structured) = render_run(head, stdout, stderr, &run);
    structured["running"] = run.exit.is_none().into();
    Ok(Answer {
        text,
        structured: Some(structured),
    })
}

async fn kill_process(rest: &Rest, args: KillProcessArgs) -> Result<Answer, ToolError> {
    let signal = args.signal.unwrap_or_else(|| "TERM".to_owned());
    let uri = format!(
        "{}/processes/{}/signal",
        sandbox_path(&args.sandbox_id)?,
        args.pid
    );
    let body = serde_json::to_vec(&SignalRequest {
        signal: signal.clone(),
    })
    .map_err(|err| ToolError::Internal(err.to_string()))?;
    rest.call(Method::POST, &uri, Some(Body::from(body)), true)
        .await?;
    Ok(Answer::text(format!(
        "sent SIG{} to pid {} and its process group",
        signal.trim_start_matches("SIG"),
        args.pid
    )))
}

async fn set_egress(rest: &Rest, args: SetEgressArgs) -> Result<Answer, ToolError> {
    let request = UpdateSandboxRequest {
        network: Some(NetworkPolicy {
            egress: args.egress,
        }),
    };
    let sandbox: Sandbox = rest
        .json(
            Method::PATCH,
            &sandbox_path(&args.sandbox_id)?,
            Some(&request),
            MAX_JSON_BYTES,
        )
        .await?;
    let text = if sandbox.network.egress.is_empty() {
        format!("sandbox {} may now reach no host", sandbox.id)
    } else {
        format!(
            "sandbox {} may now reach: {}",
            sandbox.id,
            sandbox.network.egress.join(", ")
        )
    };
    Ok(Answer::text(text).with(&sandbox.network))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_is_an_object_and_bound_tokens_lose_sandbox_id() {
        for tool in TOOLS {
            let open = tool.describe(false);
            let bound = tool.describe(true);
            assert_eq!(
                open.input_schema.get("type"),
                Some(&"object".into()),
                "{}",
                tool.name
            );
            let has = |tool: &Tool| {
                tool.input_schema
                    .get("properties")
                    .and_then(|p| p.get("sandbox_id"))
                    .is_some()
            };
            assert_eq!(has(&open), tool.on_sandbox, "{}", tool.name);
            assert!(!has(&bound), "{}", tool.name);
            let required = bound.input_schema.get("required");
            assert!(
                !required.is_some_and(|r| r.to_string().contains("sandbox_id")),
                "{}",
                tool.name
            );
        }
    }

    #[test]
    fn bound_calls_get_their_sandbox_and_cannot_name_another() {
        let tool = find("exec").expect("exec");
        let arguments = |json: serde_json::Value| match json {
            serde_json::Value::Object(map) => map,
            _ => unreachable!(),
        };
        let args: ExecArgs = parse(
            tool,
            Some("aaaa"),
            arguments(serde_json::json!({"command": "true"})),
        )
        .expect("parses");
        assert_eq!(args.sandbox_id, "aaaa");
        let other = parse::<ExecArgs>(
            tool,
            Some("aaaa"),
            arguments(serde_json::json!({"command": "true", "sandbox_id": "bbbb"})),
        );
        assert!(matches!(other, Err(ToolError::Invalid(_))));
        let unbound = parse::<ExecArgs>(
            tool,
            None,
            arguments(serde_json::json!({"command": "true"})),
        );
        assert!(
            matches!(unbound, Err(ToolError::Invalid(_))),
            "sandbox_id is required"
        );
    }

    #[test]
    fn sandbox_ids_cannot_reach_other_routes() {
        assert_eq!(sandbox_path("ab12").expect("valid"), "/v1/sandboxes/ab12");
        for bad in ["", "../tokens", "a/b", "a?b", "a b"] {
            assert!(sandbox_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_are_tool_errors_with_the_error_code() {
        let result = result(Err(ToolError::Api(
            ErrorBody::new(ErrorCode::NotFound, "sandbox x not found")
                .with_request_id(Some("0123".into())),
        )));
        assert_eq!(result.is_error, Some(true));
        let structured = result.structured_content.expect("structured");
        assert_eq!(structured["error_code"], "not_found");
        let internal = super::result(Err(ToolError::Internal("/host/path leaked".into())));
        let text = serde_json::to_string(&internal.content).expect("json");
        assert!(
            !text.contains("/host/path"),
            "internal detail stays in the log"
        );
    }
}
