//! E2B's control plane: sandboxes created, listed, connected to, timed,
//! paused and killed, in the route shapes of the SDKs' current and
//! previous releases (`/v2/sandboxes` and `/sandboxes`).
//!
//! The mapping onto sbx:
//! - `templateID` names an sbx snapshot when one has that name, else an
//!   image (E2B's default template, `base`, is sbx's default image);
//! - `timeout` is the lifecycle's `timeout_s`, ending the sandbox (E2B's
//!   kill) or, with `autoPause`, pausing it;
//! - `metadata` are labels, `envVars` the sandbox's environment;
//! - `pause` is sbx's pause (processes frozen, memory kept);
//! - `connect` resumes a paused sandbox and starts a stopped one, then
//!   sets the timeout it names.

use super::error::{E2bError, JsonError};
use super::sbx::{encode, Sbx, NO_BODY};
use super::E2b;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sbx_api::e2b::{
    ConnectSandbox, E2bErrorBody, E2bSandbox, E2bState, NewSandbox, SandboxDetail, SandboxTimeout,
    ENVD_VERSION,
};
use sbx_api::{
    CreateSandboxRequest, CreatedSandbox, LifecycleRequest, OnTimeout, Sandbox, SandboxList,
    SandboxState, SetTimeoutRequest,
};
use std::collections::BTreeMap;

/// What E2B's SDKs report as the client a sandbox runs on.
const CLIENT_ID: &str = "sbx";
/// `endAt` of a sandbox without a timeout: E2B always has one.
const NO_END: &str = "9999-12-31T23:59:59Z";
/// E2B's lifetime of a sandbox created without one.
const DEFAULT_TIMEOUT_S: u64 = 300;
/// Largest control-plane request body.
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn routes(state: E2b) -> Router {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/resume", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .fallback(unsupported)
        .with_state(state)
}

/// The caller's key: `X-API-KEY`, as the SDKs send it.
fn caller(state: &E2b, headers: &HeaderMap, call: &'static str) -> Sbx {
    let key = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    Sbx::new(state.api.clone(), key, call)
}

fn key_of(headers: &HeaderMap) -> String {
    headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn body<T: serde::de::DeserializeOwned + Default>(request: Request) -> Result<T, E2bError> {
    let bytes = super::sbx::read_bounded(request.into_body(), MAX_BODY_BYTES).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|err| E2bError::invalid(format!("a malformed body: {err}")))
}

async fn create(State(state): State<E2b>, request: Request) -> Result<Response, JsonError> {
    let sbx = caller(&state, request.headers(), "create");
    let asked: NewSandbox = body(request).await?;
    let template = asked.template_id.clone();
    let is_snapshot = sbx
        .raw(
            Method::GET,
            &format!("/v1/snapshots/{}", encode(&template)),
            axum::body::Body::empty(),
            None,
        )
        .await?
        .status()
        .is_success();
    let on_timeout = if asked.auto_pause == Some(true) {
        OnTimeout::Pause
    } else {
        OnTimeout::Delete
    };
    let request = CreateSandboxRequest {
        image: (!is_snapshot).then(|| template.clone()),
        snapshot: is_snapshot.then(|| template.clone()),
        env: asked.env_vars.unwrap_or_default(),
        labels: asked.metadata.unwrap_or_default(),
        lifecycle: Some(LifecycleRequest {
            timeout_s: Some(asked.timeout.unwrap_or(DEFAULT_TIMEOUT_S)),
            on_timeout: Some(on_timeout),
            ..LifecycleRequest::default()
        }),
        ..CreateSandboxRequest::default()
    };
    let created: CreatedSandbox = sbx
        .json(Method::POST, "/v1/sandboxes", Some(&request))
        .await?;
    let answer = E2bSandbox {
        template_id: template,
        sandbox_id: created.sandbox.id,
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        envd_access_token: created.token,
        domain: None,
    };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The states E2B lists: running and paused (a stopped sbx sandbox is
/// paused to E2B: connect brings it back).
fn e2b_state(state: SandboxState) -> Option<E2bState> {
    match state {
        SandboxState::Running | SandboxState::Creating | SandboxState::Starting => {
            Some(E2bState::Running)
        }
        SandboxState::Paused | SandboxState::Stopped | SandboxState::Stopping => {
            Some(E2bState::Paused)
        }
        SandboxState::Deleting | SandboxState::Deleted | SandboxState::Failed => None,
    }
}

fn detail_of(sandbox: Sandbox) -> Option<SandboxDetail> {
    let state = e2b_state(sandbox.state)?;
    let no_end = NO_END.parse::<DateTime<Utc>>().ok()?;
    Some(SandboxDetail {
        template_id: sandbox.image,
        sandbox_id: sandbox.id,
        client_id: CLIENT_ID.to_string(),
        started_at: sandbox.created_at,
        end_at: sandbox.expires_at.unwrap_or(no_end),
        cpu_count: sandbox.cpus.ceil().max(1.0) as u32,
        memory_mb: sandbox.memory_mb,
        disk_size_mb: sandbox.disk_mb.unwrap_or(0),
        state,
        envd_version: ENVD_VERSION.to_string(),
        metadata: sandbox.labels,
    })
}

/// `GET /v2/sandboxes?metadata=k%3Dv&state=running&limit=N&nextToken=T`:
/// pages in creation order, the next page's token (an offset) in the
/// `x-next-token` header.
async fn list(
    State(state): State<E2b>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, JsonError> {
    let sbx = caller(&state, &headers, "list");
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or_default()).unwrap_or_default();
    let mut wanted_labels = BTreeMap::new();
    let mut wanted_states = Vec::new();
    let (mut limit, mut offset) = (None, 0);
    for (key, value) in pairs {
        match key.as_str() {
            "metadata" => {
                let labels: Vec<(String, String)> =
                    serde_urlencoded::from_str(&value).unwrap_or_default();
                wanted_labels.extend(labels);
            }
            "state" => wanted_states.extend(value.split(',').map(str::to_string)),
            "limit" => limit = value.parse::<usize>().ok().filter(|&limit| limit > 0),
            "nextToken" => offset = value.parse::<usize>().unwrap_or(0),
            _ => {}
        }
    }
    let listed: SandboxList = sbx.json(Method::GET, "/v1/sandboxes", NO_BODY).await?;
    let sandboxes = listed
        .sandboxes
        .into_iter()
        .filter_map(detail_of)
        .filter(|sandbox| {
            wanted_labels
                .iter()
                .all(|(key, value)| sandbox.metadata.get(key) == Some(value))
        })
        .filter(|sandbox| {
            let state = match sandbox.state {
                E2bState::Running => "running",
                E2bState::Paused => "paused",
            };
            wanted_states.is_empty() || wanted_states.iter().any(|wanted| wanted == state)
        })
        .collect::<Vec<_>>();
    let mut sandboxes = sandboxes;
    sandboxes.sort_by(|a, b| (a.started_at, &a.sandbox_id).cmp(&(b.started_at, &b.sandbox_id)));
    let total = sandboxes.len();
    let page: Vec<SandboxDetail> = sandboxes
        .into_iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    let next = offset + page.len();
    let mut response = Json(page).into_response();
    if next < total {
        if let Ok(token) = axum::http::HeaderValue::from_str(&next.to_string()) {
            response.headers_mut().insert("x-next-token", token);
        }
    }
    Ok(response)
}

/// A sandbox that has not ended: sbx keeps ended ones listed for a
/// while, E2B knows them no more.
async fn get_sandbox(sbx: &Sbx, id: &str) -> Result<Sandbox, E2bError> {
    let sandbox: Sandbox = sbx
        .json(
            Method::GET,
            &format!("/v1/sandboxes/{}", encode(id)),
            NO_BODY,
        )
        .await?;
    match e2b_state(sandbox.state) {
        Some(_) => Ok(sandbox),
        None => Err(E2bError::not_found(format!("sandbox {id} was not found"))),
    }
}

async fn detail(
    State(state): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, JsonError> {
    let sbx = caller(&state, &headers, "get_info");
    let sandbox = get_sandbox(&sbx, &id).await?;
    detail_of(sandbox)
        .map(Json)
        .ok_or_else(|| E2bError::not_found(format!("sandbox {id} has ended")).into())
}

async fn kill(
    State(state): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, JsonError> {
    let sbx = caller(&state, &headers, "kill");
    get_sandbox(&sbx, &id).await?;
    sbx.call(
        Method::DELETE,
        &format!("/v1/sandboxes/{}", encode(&id)),
        NO_BODY,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(state): State<E2b>,
    Path(id): Path<String>,
    request: Request,
) -> Result<StatusCode, JsonError> {
    let sbx = caller(&state, request.headers(), "set_timeout");
    let asked: SandboxTimeout = body::<Option<SandboxTimeout>>(request)
        .await?
        .ok_or_else(|| E2bError::invalid("timeout is required"))?;
    let timeout = SetTimeoutRequest {
        timeout_s: asked.timeout,
    };
    sbx.call(
        Method::POST,
        &format!("/v1/sandboxes/{}/timeout", encode(&id)),
        Some(&timeout),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(state): State<E2b>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, JsonError> {
    let sbx = caller(&state, &headers, "pause");
    let sandbox = get_sandbox(&sbx, &id).await?;
    if e2b_state(sandbox.state) == Some(E2bState::Paused) {
        return Err(E2bError::Api(sbx_api::ErrorBody::new(
            sbx_api::ErrorCode::Conflict,
            format!("sandbox {id} is already paused"),
        ))
        .into());
    }
    sbx.call(
        Method::POST,
        &format!("/v1/sandboxes/{}/pause", encode(&id)),
        NO_BODY,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect (and the previous SDKs' resume): the sandbox brought back if
/// paused or stopped, its timeout set if one is named. The access token
/// handed back is the caller's own key: it is what reached this sandbox,
/// and envd calls made with it are the caller's, with its scopes.
async fn connect(
    State(state): State<E2b>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, JsonError> {
    let key = key_of(request.headers());
    let sbx = caller(&state, request.headers(), "connect");
    let asked: ConnectSandbox = body(request).await?;
    let sandbox = get_sandbox(&sbx, &id).await?;
    let uri = |action: &str| format!("/v1/sandboxes/{}/{action}", encode(&id));
    let resumed = match sandbox.state {
        SandboxState::Paused => {
            sbx.call(Method::POST, &uri("resume"), NO_BODY).await?;
            true
        }
        SandboxState::Stopped => {
            sbx.call(Method::POST, &uri("start"), NO_BODY).await?;
            true
        }
        _ => false,
    };
    // Connect only ever lengthens a sandbox's life (as E2B's does), so a
    // token that may not change the lifecycle can still connect.
    let remaining = sandbox
        .expires_at
        .map(|end| (end - Utc::now()).num_seconds().max(0) as u64);
    let lengthens = |seconds: u64| remaining.is_some_and(|left| seconds > left);
    if let Some(timeout_s) = asked.timeout.filter(|&seconds| lengthens(seconds)) {
        sbx.call(
            Method::POST,
            &uri("timeout"),
            Some(&SetTimeoutRequest { timeout_s }),
        )
        .await?;
    }
    let answer = E2bSandbox {
        template_id: sandbox.image,
        sandbox_id: sandbox.id,
        client_id: CLIENT_ID.to_string(),
        envd_version: ENVD_VERSION.to_string(),
        envd_access_token: key,
        domain: None,
    };
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

/// Templates, snapshots, forks, volumes, secrets, metrics: a 501 the
/// SDKs raise as their own error, with this message.
async fn unsupported(request: Request) -> Response {
    let body = E2bErrorBody {
        code: StatusCode::NOT_IMPLEMENTED.as_u16(),
        message: format!(
            "{} {} is not served by sbx's E2B API",
            request.method(),
            request.uri().path()
        ),
    };
    (StatusCode::NOT_IMPLEMENTED, Json(body)).into_response()
}
