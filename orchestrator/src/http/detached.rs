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
//! The tasks are tracked in [`AppState::detached`]: a stopping server
//! waits for them before it flushes the audit trail, or their records
//! would be lost.

use super::audit::Call;
use super::error::ApiError;
use super::request_id::carry;
use super::AppState;
use std::future::Future;

/// Runs `work` (given the call's record, to add what it learns) in a task
/// of its own and returns its outcome; the work goes on to its end if the
/// caller's future is dropped.
pub async fn detached<T, F, Fut>(state: &AppState, call: Call, work: F) -> Result<T, ApiError>
where
    F: FnOnce(Call) -> Fut,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    T: Send + 'static,
{
    // The task keeps its own hold on the record, even if `work` lets go of
    // it early, so that the record is written after the work.
    let held = call.clone();
    let work = work(call);
    let task = state.detached.spawn(carry(async move {
        let outcome = work.await;
        drop(held);
        outcome
    }));
    match task.await {
        Ok(outcome) => outcome,
        Err(err) => Err(ApiError::internal(format!("detached work failed: {err}"))),
    }
}
