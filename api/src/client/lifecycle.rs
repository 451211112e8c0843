//! Calls on the lifecycle routes: stop, start, pause, resume and timeout
//! of a sandbox; snapshots, fork and restore; the event stream.
//!
//! These are the server's own routes (an agent has no lifecycle), so they
//! sit on [`Client`] beside `delete_sandbox`, not on the sandbox client.

use super::stream::LifecycleEvents;
use super::{Client, ClientError, NO_BODY};
use crate::{
    CreateSnapshotRequest, EventsQuery, ForkOutcome, ForkRequest, ForkResult, RestoreRequest,
    Sandbox, SandboxEventsQuery, SetTimeoutRequest, Snapshot, SnapshotList, NDJSON,
};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;

impl Client {
    /// `POST /v1/sandboxes/{id}/stop`: processes end, the disk stays.
    pub async fn stop_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/stop"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/start`: boots a stopped sandbox again.
    pub async fn start_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/start"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/pause`: processes are frozen in memory.
    pub async fn pause_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/pause"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/resume`: thaws a paused sandbox.
    pub async fn resume_sandbox(&self, id: &str) -> Result<Sandbox, ClientError> {
        self.call(Method::POST, &format!("/v1/sandboxes/{id}/resume"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/timeout`: the sandbox's timeout acts
    /// `timeout_s` seconds from now.
    pub async fn set_timeout(&self, id: &str, timeout_s: u64) -> Result<Sandbox, ClientError> {
        let request = SetTimeoutRequest { timeout_s };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/timeout"),
            Some(&request),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/snapshots`
    pub async fn create_snapshot(&self, id: &str, name: &str) -> Result<Snapshot, ClientError> {
        let request = CreateSnapshotRequest {
            name: name.to_owned(),
        };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshots"),
            Some(&request),
        )
        .await
    }

    /// `GET /v1/snapshots`
    pub async fn list_snapshots(&self) -> Result<Vec<Snapshot>, ClientError> {
        let list: SnapshotList = self.call(Method::GET, "/v1/snapshots", NO_BODY).await?;
        Ok(list.snapshots)
    }

    /// `GET /v1/snapshots/{name}`
    pub async fn get_snapshot(&self, name: &str) -> Result<Snapshot, ClientError> {
        self.call(Method::GET, &format!("/v1/snapshots/{name}"), NO_BODY)
            .await
    }

    /// `DELETE /v1/snapshots/{name}`
    pub async fn delete_snapshot(&self, name: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/v1/snapshots/{name}"), NO_BODY)
            .await
    }

    /// `POST /v1/sandboxes/{id}/fork`: one outcome per copy, each a new
    /// sandbox with its token or the error that copy met.
    pub async fn fork_sandbox(
        &self,
        id: &str,
        count: u32,
    ) -> Result<Vec<ForkOutcome>, ClientError> {
        let request = ForkRequest { count };
        let result: ForkResult = self
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/fork"),
                Some(&request),
            )
            .await?;
        Ok(result.forks)
    }

    /// `POST /v1/sandboxes/{id}/restore`: rolls the sandbox back to
    /// `snapshot`, in place.
    pub async fn restore_sandbox(&self, id: &str, snapshot: &str) -> Result<Sandbox, ClientError> {
        let request = RestoreRequest {
            snapshot: snapshot.to_owned(),
        };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/restore"),
            Some(&request),
        )
        .await
    }

    /// `GET /v1/events`: the events so far, oldest first, and with
    /// `follow` the ones that happen from then on.
    pub async fn events(&self, query: &EventsQuery) -> Result<LifecycleEvents, ClientError> {
        self.event_stream("/v1/events", query).await
    }

    /// `GET /v1/sandboxes/{id}/events`: one sandbox's events, readable
    /// with a token bound to it.
    pub async fn sandbox_events(
        &self,
        id: &str,
        query: &SandboxEventsQuery,
    ) -> Result<LifecycleEvents, ClientError> {
        self.event_stream(&format!("/v1/sandboxes/{id}/events"), query)
            .await
    }

    async fn event_stream(
        &self,
        route: &str,
        query: &impl serde::Serialize,
    ) -> Result<LifecycleEvents, ClientError> {
        let query = serde_urlencoded::to_string(query).map_err(|err| ClientError::Unexpected {
            status: 0,
            text: format!("cannot encode query: {err}"),
        })?;
        let path = if query.is_empty() {
            route.to_owned()
        } else {
            format!("{route}?{query}")
        };
        let request = Request::get(&path)
            .header(header::ACCEPT, NDJSON)
            .body(Full::new(Bytes::new()))
            .map_err(|err| ClientError::Unexpected {
                status: 0,
                text: format!("cannot build request for {path}: {err}"),
            })?;
        let response = self.send_request(request).await?;
        Ok(LifecycleEvents::new(self.streaming(response).await?))
    }
}
