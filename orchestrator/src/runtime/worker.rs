//! The one thread that calls libcontainer.
//!
//! libcontainer's `build()` and `start()` `chdir()` the whole process and
//! `build()` flips `PR_SET_DUMPABLE` on the caller; two threads inside them
//! at once corrupt each other. So every libcontainer call is sent here as a
//! closure and runs on this thread, one at a time, and no code in the
//! orchestrator relies on the process's working directory. The tokio pool
//! never blocks on a container clone.

use super::RuntimeError;
use std::sync::mpsc;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub(crate) struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    pub(crate) fn spawn(name: &str) -> Result<Self, RuntimeError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .map_err(RuntimeError::io("cannot spawn the libcontainer thread"))?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the worker thread and waits for its result.
    pub(crate) async fn run<T, F>(&self, job: F) -> Result<T, RuntimeError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                // The receiver is gone only if the caller was cancelled.
                let _ = reply.send(job());
            }))
            .map_err(|_| RuntimeError::WorkerGone)?;
        result.await.map_err(|_| RuntimeError::WorkerGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_thread_in_order() {
        let worker = Worker::spawn("test-worker").expect("spawn");
        let first = worker
            .run(|| std::thread::current().id())
            .await
            .expect("runs");
        let second = worker
            .run(|| std::thread::current().id())
            .await
            .expect("runs");
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
    }
}
