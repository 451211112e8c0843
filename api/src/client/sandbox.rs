//! Calls on one sandbox: exec, processes, files, archives.
//!
//! The same methods serve the public API (`Client::sandbox(id)`, prefix
//! `/v1/sandboxes/{id}`) and an agent reached directly on its socket
//! (`Client::agent()`, no prefix), because the two route trees mirror each
//! other.

use super::stream::{ByteStream, EventStream};
use super::{decode, ClientError};
use crate::{
    ArchiveSummary, ExecRequest, ExecResult, FileInfo, FileList, FileQuery, KillAllResult,
    LogsQuery, MkdirRequest, MoveRequest, ProcessInfo, ProcessList, SignalRequest,
    StartProcessRequest, StdinQuery, NDJSON,
};
use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// See the module docs. Borrowed from a [`super::Client`].
#[derive(Debug, Clone)]
pub struct SandboxClient<'a> {
    pub(super) client: &'a super::Client,
    pub(super) prefix: String,
}

pub(super) fn query<T: Serialize>(value: &T) -> Result<String, ClientError> {
    serde_urlencoded::to_string(value).map_err(|err| ClientError::Unexpected {
        status: 0,
        text: format!("cannot encode query: {err}"),
    })
}

fn file_query(path: &str) -> FileQuery {
    FileQuery {
        path: path.to_owned(),
        ..FileQuery::default()
    }
}

impl SandboxClient<'_> {
    pub(super) fn url(&self, route: &str) -> String {
        format!("{}{route}", self.prefix)
    }

    fn endpoint(&self) -> String {
        self.client.endpoint.to_string()
    }

    pub(super) async fn request<B>(
        &self,
        method: Method,
        route: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        body: B,
    ) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut builder = Request::builder().method(method).uri(self.url(route));
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        let request = builder.body(body).map_err(|err| ClientError::Unexpected {
            status: 0,
            text: format!("cannot build request for {route}: {err}"),
        })?;
        self.client.send_request(request).await
    }

    /// A JSON call; `T = ()` for 204 answers.
    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.client.call(method, &self.url(route), body).await
    }

    /// Checks the status and hands the body over unread.
    pub(super) async fn streaming(
        &self,
        response: Response<Incoming>,
    ) -> Result<ByteStream, ClientError> {
        self.client.streaming(response).await
    }

    /// `POST exec`, buffered.
    pub async fn exec(&self, request: &ExecRequest) -> Result<ExecResult, ClientError> {
        let request = ExecRequest {
            stream: false,
            ..request.clone()
        };
        self.json(Method::POST, "/exec", Some(&request)).await
    }

    /// `POST exec` with `stream: true`: events as they happen.
    pub async fn exec_stream(&self, request: &ExecRequest) -> Result<EventStream, ClientError> {
        let request = ExecRequest {
            stream: true,
            ..request.clone()
        };
        let body = Bytes::from(serde_json::to_vec(&request)?);
        let response = self
            .request(
                Method::POST,
                "/exec",
                Some("application/json"),
                Some(NDJSON),
                Full::new(body),
            )
            .await?;
        Ok(EventStream::new(self.streaming(response).await?))
    }

    /// `POST processes`: start a background process.
    pub async fn start_process(
        &self,
        request: &StartProcessRequest,
    ) -> Result<ProcessInfo, ClientError> {
        self.json(Method::POST, "/processes", Some(request)).await
    }

    pub async fn processes(&self) -> Result<Vec<ProcessInfo>, ClientError> {
        let list: ProcessList = self.json(Method::GET, "/processes", NO_BODY).await?;
        Ok(list.processes)
    }

    pub async fn process(&self, pid: i32) -> Result<ProcessInfo, ClientError> {
        self.json(Method::GET, &format!("/processes/{pid}"), NO_BODY)
            .await
    }

    /// `GET processes/{pid}/logs`: buffered output, then live output when
    /// `follow` is set.
    pub async fn process_logs(
        &self,
        pid: i32,
        logs: &LogsQuery,
    ) -> Result<EventStream, ClientError> {
        let route = format!("/processes/{pid}/logs?{}", query(logs)?);
        let response = self
            .request(
                Method::GET,
                &route,
                None,
                Some(NDJSON),
                Full::new(Bytes::new()),
            )
            .await?;
        Ok(EventStream::new(self.streaming(response).await?))
    }

    /// `POST processes/{pid}/stdin`
    pub async fn write_stdin(&self, pid: i32, data: Bytes, close: bool) -> Result<(), ClientError> {
        let route = format!("/processes/{pid}/stdin?{}", query(&StdinQuery { close })?);
        let response = self
            .request(
                Method::POST,
                &route,
                Some("application/octet-stream"),
                None,
                Full::new(data),
            )
            .await?;
        decode(response, &self.endpoint()).await
    }

    /// `POST processes/{pid}/signal`: to the whole process group.
    pub async fn signal(&self, pid: i32, signal: &str) -> Result<(), ClientError> {
        let request = SignalRequest {
            signal: signal.to_owned(),
        };
        self.json(
            Method::POST,
            &format!("/processes/{pid}/signal"),
            Some(&request),
        )
        .await
    }

    /// `POST processes/kill-all`: every process but the agent, killed and
    /// reaped.
    pub async fn kill_all(&self) -> Result<KillAllResult, ClientError> {
        self.json(Method::POST, "/processes/kill-all", NO_BODY)
            .await
    }

    /// `GET processes/{pid}/wait`: blocks until the process exits.
    pub async fn wait_process(&self, pid: i32) -> Result<ProcessInfo, ClientError> {
        self.json(Method::GET, &format!("/processes/{pid}/wait"), NO_BODY)
            .await
    }

    /// `GET files`: the file's bytes, streamed.
    pub async fn read_file(&self, path: &str) -> Result<ByteStream, ClientError> {
        let route = format!("/files?{}", query(&file_query(path))?);
        let response = self
            .request(Method::GET, &route, None, None, Full::new(Bytes::new()))
            .await?;
        self.streaming(response).await
    }

    /// `PUT files`: writes `body` (bytes or a stream) atomically.
    pub async fn write_file<B>(
        &self,
        path: &str,
        mode: Option<u32>,
        body: B,
    ) -> Result<FileInfo, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let file = FileQuery {
            mode: mode.map(|mode| format!("{mode:o}")),
            ..file_query(path)
        };
        let route = format!("/files?{}", query(&file)?);
        let response = self
            .request(
                Method::PUT,
                &route,
                Some("application/octet-stream"),
                None,
                body,
            )
            .await?;
        decode(response, &self.endpoint()).await
    }

    /// `DELETE files`; a directory needs `recursive`.
    pub async fn remove_path(&self, path: &str, recursive: bool) -> Result<(), ClientError> {
        let file = FileQuery {
            recursive,
            ..file_query(path)
        };
        self.json(
            Method::DELETE,
            &format!("/files?{}", query(&file)?),
            NO_BODY,
        )
        .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo, ClientError> {
        let route = format!("/files/stat?{}", query(&file_query(path))?);
        self.json(Method::GET, &route, NO_BODY).await
    }

    pub async fn list(&self, path: &str, depth: Option<u32>) -> Result<Vec<FileInfo>, ClientError> {
        let file = FileQuery {
            depth,
            ..file_query(path)
        };
        let list: FileList = self
            .json(
                Method::GET,
                &format!("/files/list?{}", query(&file)?),
                NO_BODY,
            )
            .await?;
        Ok(list.entries)
    }

    /// `POST files/mkdir`, like `mkdir -p`.
    pub async fn mkdir(&self, path: &str) -> Result<FileInfo, ClientError> {
        let request = MkdirRequest {
            path: path.to_owned(),
            mode: None,
            owner: None,
        };
        self.json(Method::POST, "/files/mkdir", Some(&request))
            .await
    }

    /// `POST files/move`
    pub async fn move_path(&self, from: &str, to: &str) -> Result<(), ClientError> {
        let request = MoveRequest {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.json(Method::POST, "/files/move", Some(&request)).await
    }

    /// `PUT archive`: extracts a tar (bytes or a stream) into `dir`.
    pub async fn upload_archive<B>(&self, dir: &str, tar: B) -> Result<ArchiveSummary, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.upload_archive_as(dir, None, tar).await
    }

    /// `PUT archive`, every entry written owned by `owner`
    /// (`user[:group]`, resolved in the sandbox) when given.
    pub async fn upload_archive_as<B>(
        &self,
        dir: &str,
        owner: Option<&str>,
        tar: B,
    ) -> Result<ArchiveSummary, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let file = FileQuery {
            owner: owner.map(str::to_owned),
            ..file_query(dir)
        };
        let route = format!("/archive?{}", query(&file)?);
        let response = self
            .request(Method::PUT, &route, Some("application/x-tar"), None, tar)
            .await?;
        decode(response, &self.endpoint()).await
    }

    /// The agent's `POST layer/baseline` (agents only: no public route):
    /// records the root filesystem as it is now.
    pub async fn layer_baseline(&self) -> Result<crate::LayerBaseline, ClientError> {
        self.json(Method::POST, "/layer/baseline", NO_BODY).await
    }

    /// The agent's `GET layer/changes` (agents only): what changed since
    /// the baseline, as an OCI layer tar, streamed.
    pub async fn layer_changes(&self) -> Result<ByteStream, ClientError> {
        let response = self
            .request(
                Method::GET,
                "/layer/changes",
                None,
                None,
                Full::new(Bytes::new()),
            )
            .await?;
        self.streaming(response).await
    }

    /// `GET archive`: a tar of the file or tree at `path`, streamed.
    pub async fn download_archive(&self, path: &str) -> Result<ByteStream, ClientError> {
        let route = format!("/archive?{}", query(&file_query(path))?);
        let response = self
            .request(Method::GET, &route, None, None, Full::new(Bytes::new()))
            .await?;
        self.streaming(response).await
    }
}

const NO_BODY: Option<&()> = None;
