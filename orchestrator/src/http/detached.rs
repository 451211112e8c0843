//! Work that changes state finishes whether or not its client stays.
//!
//! hyper drops a handler's future when its client disconnects, and the
//! handler stops at whatever `.await` it had reached: a create between
//! "recorded" and "running", a delete between "deleting" and "gone", a
//! token minted for a sandbox that then never learns of it. Rather than
//! make every step below cancellation-safe, the handlers that change state
//! run their work in its own task with [`detached`] and only await the
//! outcome, as dropshot runs every handler. If the client leaves, the
//! waiting stops; the work does not.
//!
//! The task holds the call's audit record ([`Call`]) until the work is
//! done, so a call whose client left is recorded once the work has
//! finished, with status 499 and what the work added (the id of the
//! sandbox a create made). It also keeps the call's request id and tracing
//! span (see [`carry`]), so its log lines and error bodies name the call.
//!
//! The tasks are tracked (in [`AppState::detached`](super::AppState)): a
//! stopping server waits for them before it flushes the audit trail, or
//! their records would be lost.

use super::audit_trail::Call;
use super::error::ApiError;
use super::request_id::carry;
use std::future::Future;
use tokio_util::task::TaskTracker;

/// Runs `work` (given the call's record, to add what it learns) in a task
/// of its own and returns its outcome; the work goes on to its end if the
/// caller's future is dropped.
pub async fn detached<T, F, Fut>(tasks: &TaskTracker, call: Call, work: F) -> Result<T, ApiError>
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    // The task keeps its own hold on the record, even if `work` lets go of
    // it early, so that the record is written after the work.
    let held = call.clone();
    let work = work(call);
    let task = tasks.spawn(carry(async move {
        let outcome = work.await;
        drop(held);
        outcome
    }));
    match task.await {
        Ok(outcome) => outcome,
        Err(err) => Err(ApiError::internal(format!("detached work failed: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::http::request_id::RequestId;
    use crate::store::{AuditFilter, Store};
    use axum::http::Method;
    use std::sync::Arc;

    #[tokio::test]
    async fn work_goes_on_when_its_caller_is_dropped_and_is_recorded_after_it() {
        let store = Arc::new(Store::in_memory().expect("store"));
        let log = AuditLog::start(store, None).expect("audit writer");
        let id = RequestId::new();
        let call = Call::arrive(log.clone(), &Method::POST, "/v1/sandboxes", &id);
        let tasks = TaskTracker::new();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        let caller = id.clone().scope(detached(&tasks, call, |call| async move {
            let _ = wait.await;
            call.sandbox("aaaa");
            let _ = done.send(RequestId::current());
            Ok(())
        }));
        let mut caller = Box::pin(caller);
        tokio::select! {
            biased;
            _ = &mut caller => panic!("the work waits for its signal"),
            () = std::future::ready(()) => {}
        }
        drop(caller);
        go.send(()).expect("the work is alive");
        let seen = finished.await.expect("the work finished");
        assert_eq!(seen, Some(id.clone()), "the work keeps the request id");
        tasks.close();
        tasks.wait().await;
        let filter = AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        };
        let records = log.query(&filter).await.expect("query");
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].status, sbx_api::CLIENT_CLOSED_REQUEST);
        assert_eq!(records[0].sandbox.as_deref(), Some("aaaa"));
        assert_eq!(records[0].request_id.as_deref(), Some(id.as_str()));
    }
}
