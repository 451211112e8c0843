//! envd's plane: what the SDKs send to `E2B_SANDBOX_URL` with an
//! `E2b-Sandbox-Id` header. Each call names its sandbox by that header,
//! its credential by `X-Access-Token` (an sbx token), and the user it acts
//! as by `Authorization: Basic base64("user:")` (Connect calls) or a
//! `username` query (`/files`); no user is E2B's default, `user`.

use super::error::E2bError;
use super::sbx::{encode, Sbx, NO_BODY};
use super::{connect, files, filesystem, process, E2b};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use sbx_api::e2b::{E2bErrorBody, ENVD_PORT};
use sbx_api::{Sandbox, SandboxState};

/// The user a call names none acts as: E2B's templates run as `user`
/// (uid 1000, home `/home/user`), as sbx's base image has it.
pub const DEFAULT_USER: &str = "user";

pub fn routes(state: E2b) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(files::download).post(files::upload))
        .route("/process.Process/Start", post(process::start))
        .route("/process.Process/Connect", post(process::connect))
        .route("/process.Process/List", post(process::list))
        .route("/process.Process/SendInput", post(process::send_input))
        .route("/process.Process/CloseStdin", post(process::close_stdin))
        .route("/process.Process/SendSignal", post(process::send_signal))
        .route("/filesystem.Filesystem/Stat", post(filesystem::stat))
        .route("/filesystem.Filesystem/ListDir", post(filesystem::list_dir))
        .route("/filesystem.Filesystem/MakeDir", post(filesystem::make_dir))
        .route("/filesystem.Filesystem/Remove", post(filesystem::remove))
        .route("/filesystem.Filesystem/Move", post(filesystem::move_entry))
        .route(
            "/filesystem.Filesystem/WatchDir",
            post(filesystem::watch_dir),
        )
        .route(
            "/filesystem.Filesystem/CreateWatcher",
            post(filesystem::create_watcher),
        )
        .route(
            "/filesystem.Filesystem/GetWatcherEvents",
            post(filesystem::watcher_events),
        )
        .route(
            "/filesystem.Filesystem/RemoveWatcher",
            post(filesystem::remove_watcher),
        )
        .fallback(unimplemented)
        .with_state(state)
}

/// One envd call: the sandbox it is for, as whom, through which token.
pub struct Envd {
    pub sbx: Sbx,
    pub sandbox: String,
    /// The Connect calls' Basic user, or [`DEFAULT_USER`].
    pub user: Option<String>,
    /// The token the call carried, which identifies its caller (watchers
    /// are kept per caller).
    pub token: String,
}

impl Envd {
    pub fn new(state: &E2b, headers: &HeaderMap, call: &'static str) -> Result<Envd, E2bError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
        };
        let port = header("e2b-sandbox-port");
        if !port.is_empty() && port != ENVD_PORT.to_string() {
            return Err(E2bError::invalid(format!(
                "port {port}: only envd's port ({ENVD_PORT}) is served here; a preview URL \
                 (POST /v1/sandboxes/{{id}}/previews) serves a sandbox's own ports"
            )));
        }
        let token = header("x-access-token").to_string();
        let sandbox = header(super::SANDBOX_ID_HEADER).to_string();
        Ok(Envd {
            sbx: Sbx::new(state.api.clone(), &token, call).for_sandbox(&sandbox),
            sandbox,
            user: Some(
                basic_user(header("authorization")).unwrap_or_else(|| DEFAULT_USER.to_string()),
            ),
            token,
        })
    }

    /// `/v1/sandboxes/{id}/REST`.
    pub fn uri(&self, rest: &str) -> String {
        format!("/v1/sandboxes/{}/{rest}", encode(&self.sandbox))
    }
}

/// `Basic base64("user:")` → `user`.
fn basic_user(authorization: &str) -> Option<String> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?.trim();
    (!user.is_empty()).then(|| user.to_string())
}

/// 204 while the sandbox runs; 502, as E2B's proxy answers, otherwise.
async fn health(State(state): State<E2b>, headers: HeaderMap) -> Response {
    let envd = match Envd::new(&state, &headers, "health") {
        Ok(envd) => envd,
        Err(error) => return error.into_json(),
    };
    let uri = format!("/v1/sandboxes/{}", encode(&envd.sandbox));
    match envd.sbx.json::<Sandbox>(Method::GET, &uri, NO_BODY).await {
        Ok(sandbox) if sandbox.state == SandboxState::Running => {
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(sandbox) => not_running(&format!("sandbox {} is {:?}", sandbox.id, sandbox.state)),
        Err(E2bError::Api(body)) if body.error_code == sbx_api::ErrorCode::NotFound => {
            E2bError::Gone(envd.sandbox).into_json()
        }
        Err(error) => error.into_json(),
    }
}

fn not_running(message: &str) -> Response {
    let body = E2bErrorBody {
        code: StatusCode::BAD_GATEWAY.as_u16(),
        message: message.to_string(),
    };
    (StatusCode::BAD_GATEWAY, Json(body)).into_response()
}

/// An RPC sbx does not serve (terminals, `Update`, `StreamInput`):
/// Connect's `unimplemented`.
async fn unimplemented(request: Request) -> Response {
    connect::unary_error(sbx_api::e2b::ConnectError {
        code: "unimplemented",
        message: format!("{} is not served by sbx's envd", request.uri().path()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_basic_user_is_the_name_before_the_colon() {
        assert_eq!(basic_user("Basic dXNlcjo=").as_deref(), Some("user"));
        assert_eq!(basic_user("Basic cm9vdDo=").as_deref(), Some("root"));
        assert_eq!(basic_user("Bearer x"), None);
        assert_eq!(basic_user("Basic !!!"), None);
        assert_eq!(basic_user("Basic Og=="), None);
    }
}
