//! Serving the API over HTTP/1.1: `axum::serve`, plus the one step that
//! cannot wait for the router.
//!
//! hyper hands a request to its service as soon as the head is parsed, but
//! only polls the future it gets back later. A client that writes a whole
//! request and hangs up at once is seen to be gone before that first poll,
//! and hyper drops the future unpolled. `axum::serve` calls the router
//! lazily, from that first poll (hyper-util's `TowerToHyperService`), so
//! such a call runs no code of ours: no layer, no audit record, although a
//! create's whole body arrived. Measured here: a create written whole and
//! closed at once left neither a record nor a sandbox.
//!
//! So [`serve`] is `axum::serve` with a service of its own in front of the
//! router whose `call`, which hyper makes at once, gives the request its id
//! and, under `/v1`, starts its audit record ([`Call::arrive`]). If the
//! future is then dropped unpolled, the record is written with status 499;
//! if it completes, with the response's status (unless the audit layer
//! inside has written it already).

use super::audit_trail::{self, Call};
use super::request_id::RequestId;
use super::{ports, router, AppState};
use crate::audit::AuditLog;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves the API on `listener` until `shutdown` completes, then waits for
/// the calls in progress (not for idle connections) to finish.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: impl Future<Output = ()>) {
    let service = Arrivals {
        audit: state.audit.clone(),
        preview_domain: state.preview_domain.clone(),
        router: TowerToHyperService::new(router(state)),
    };
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = service.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::trace!(error = %err, "connection ended with an error");
            }
        });
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// A failed accept: a connection that went away meanwhile is nothing; out
/// of file descriptors (or worse) is logged and waited out, as
/// `axum::serve` does, rather than spun on.
async fn accept_failed(err: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The service hyper calls, at once, for every request it parses.
#[derive(Debug, Clone)]
struct Arrivals {
    audit: AuditLog,
    preview_domain: Option<Arc<str>>,
    router: TowerToHyperService<Router>,
}

impl hyper::service::Service<Request<Incoming>> for Arrivals {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        // A preview's own host is a preview's path from here on, audited
        // and routed as one.
        if let Some(domain) = &self.preview_domain {
            ports::route_host_preview(domain, &mut request);
        }
        let id = RequestId::new();
        let path = request.uri().path();
        let call = audit_trail::is_audited(path)
            .then(|| Call::arrive(self.audit.clone(), request.method(), path, &id));
        if let Some(call) = &call {
            request.extensions_mut().insert(call.clone());
        }
        request.extensions_mut().insert(id);
        let response = self.router.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(call) = call {
                call.finish(response.status().as_u16());
            }
            Ok(response)
        })
    }
}
