//! The `/processes` routes, merged into the agent's router by
//! [`crate::server::router`]:
//!
//! | route | answer |
//! |---|---|
//! | `POST /processes` (StartProcessRequest) | 201 ProcessInfo |
//! | `GET /processes` | 200 ProcessList |
//! | `GET /processes/{pid}` | 200 ProcessInfo |
//! | `GET /processes/{pid}/logs?tail=N&follow=true` | 200 NDJSON ExecEvents |
//! | `POST /processes/{pid}/stdin?close=true` (raw body) | 204 |
//! | `POST /processes/{pid}/signal` (SignalRequest) | 204 |
//! | `GET /processes/{pid}/wait` | 200 ProcessInfo, once exited |
//! | `POST /processes/kill-all` | 200 KillAllResult (see [`crate::kill_all`]) |
//!
//! Errors: unknown pid 404, stdin or signal of an exited process or a
//! closed stdin 409, bad signal / query / body 400 — all as `ErrorBody`,
//! which is why path and query go through the extractors below rather
//! than axum's plain-text rejections.

use super::{parse_signal, LogReader, Processes};
use crate::error::AgentError;
use crate::events::ndjson_response;
use crate::server::JsonBody;
use crate::Agent;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use sbx_api::{
    KillAllResult, LogsQuery, ProcessInfo, ProcessList, SignalRequest, StartProcessRequest,
    StdinQuery,
};
use serde::de::DeserializeOwned;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/processes", post(start).get(list))
        .route("/processes/kill-all", post(kill_all))
        .route("/processes/{pid}", get(info))
        .route("/processes/{pid}/logs", get(logs))
        .route("/processes/{pid}/stdin", post(stdin))
        .route("/processes/{pid}/signal", post(signal))
        .route("/processes/{pid}/wait", get(wait))
}

async fn start(
    State(agent): State<Arc<Agent>>,
    JsonBody(request): JsonBody<StartProcessRequest>,
) -> Result<(StatusCode, Json<ProcessInfo>), AgentError> {
    request.validate().map_err(AgentError::InvalidRequest)?;
    Ok((
        StatusCode::CREATED,
        Json(Processes::start(&agent, &request)?),
    ))
}

async fn kill_all(State(agent): State<Arc<Agent>>) -> Result<Json<KillAllResult>, AgentError> {
    Ok(Json(crate::kill_all::kill_all(&agent).await?))
}

async fn list(State(agent): State<Arc<Agent>>) -> Json<ProcessList> {
    Json(ProcessList {
        processes: agent.processes.list(),
    })
}

async fn info(
    State(agent): State<Arc<Agent>>,
    PidParam(pid): PidParam,
) -> Result<Json<ProcessInfo>, AgentError> {
    Ok(Json(agent.processes.get(pid)?.info()))
}

async fn logs(
    State(agent): State<Arc<Agent>>,
    PidParam(pid): PidParam,
    QueryParams(query): QueryParams<LogsQuery>,
) -> Result<Response, AgentError> {
    let reader = LogReader::open(agent.processes.get(pid)?, &query);
    Ok(ndjson_response(reader.into_stream()))
}

async fn stdin(
    State(agent): State<Arc<Agent>>,
    PidParam(pid): PidParam,
    QueryParams(query): QueryParams<StdinQuery>,
    body: Body,
) -> Result<StatusCode, AgentError> {
    let process = agent.processes.get(pid)?;
    process.write_stdin(body, query.close).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn signal(
    State(agent): State<Arc<Agent>>,
    PidParam(pid): PidParam,
    JsonBody(request): JsonBody<SignalRequest>,
) -> Result<StatusCode, AgentError> {
    let signal = parse_signal(&request.signal)?;
    agent.processes.get(pid)?.signal(signal)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn wait(
    State(agent): State<Arc<Agent>>,
    PidParam(pid): PidParam,
) -> Result<Json<ProcessInfo>, AgentError> {
    let process = agent.processes.get(pid)?;
    Ok(Json(process.wait().await))
}

/// The `{pid}` of the path; a non-number is a 400 `ErrorBody`.
#[derive(Debug, Clone, Copy)]
pub struct PidParam(pub i32);

impl<S: Send + Sync> FromRequestParts<S> for PidParam {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AgentError::InvalidRequest(rejection.body_text()))?;
        raw.parse()
            .map(PidParam)
            .map_err(|_| AgentError::InvalidRequest(format!("pid {raw:?} is not a number")))
    }
}

/// A query string whose failures are `ErrorBody`s, like [`JsonBody`].
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = AgentError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::try_from_uri(&parts.uri)
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| {
                AgentError::InvalidRequest(format!("invalid query: {}", rejection.body_text()))
            })
    }
}
