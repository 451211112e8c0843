//! The audit trail: who did what, to which sandbox, with what outcome.
//!
//! Every `/v1` call is recorded by the HTTP layer (`http::audit_trail`); any
//! other gate that decides on a sandbox's behalf (the egress proxy) calls
//! [`AuditLog::record`] the same way. A record holds a short summary of the
//! request, never its contents: no stdin, file bodies, env values or tokens.
//!
//! Recording must not slow the calls it records (an exec takes about a
//! millisecond): [`AuditLog::record`] only sends the entry down a channel.
//! One writer thread commits whatever has queued up in one transaction, so
//! a burst of calls costs one WAL append, not one each, and nothing on the
//! request path waits for SQLite, let alone an fsync. Under WAL with
//! `synchronous = NORMAL` a committed batch survives a crash of the server;
//! what a SIGKILL can lose is the entries still queued, i.e. those of calls
//! answered in the last instant. A graceful stop flushes them first.
//!
//! Readers call [`AuditLog::flush`] first, so a query sees every call that
//! was answered before it was made.

use crate::egress::{EgressEvent, EgressObserver, TracingObserver};
pub use crate::store::AuditEntry;
use crate::store::{AuditFilter, Store, StoreError};
use chrono::Utc;
use sbx_api::AuditRecord;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Longest summary kept; longer ones are cut at a character boundary.
pub const MAX_SUMMARY_BYTES: usize = 512;
/// Most entries one transaction commits.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open the audit log {}: {source}", path.display())]
    OpenLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the audit writer: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Cuts `text` to [`MAX_SUMMARY_BYTES`] (marking the cut with `…`) and
/// replaces control characters, so one record stays one line in any log.
pub fn summarize(text: &str) -> String {
    let mut summary = String::with_capacity(text.len().min(MAX_SUMMARY_BYTES + 3));
    for c in text.chars() {
        if summary.len() + c.len_utf8() > MAX_SUMMARY_BYTES {
            summary.push('…');
            break;
        }
        summary.push(if c.is_control() { ' ' } else { c });
    }
    summary
}

#[derive(Debug)]
enum Message {
    Entry(AuditEntry),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A handle on the audit trail; cheap to clone. The writer thread stops
/// when the last handle is dropped, after writing what was queued.
#[derive(Debug, Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Message>,
    store: Arc<Store>,
}

impl AuditLog {
    /// Starts the writer thread. With `json_log`, every record is also
    /// appended to that file as one JSON line, after it is committed.
    pub fn start(store: Arc<Store>, json_log: Option<&Path>) -> Result<Self, AuditError> {
        let json_log = json_log
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|source| AuditError::OpenLog {
                        path: path.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let (sender, receiver) = mpsc::channel();
        let writer_store = Arc::clone(&store);
        std::thread::Builder::new()
            .name("sbx-audit".into())
            .spawn(move || write_batches(&writer_store, &receiver, json_log))
            .map_err(AuditError::Spawn)?;
        Ok(Self { sender, store })
    }

    /// Queues an entry; never blocks.
    pub fn record(&self, entry: AuditEntry) {
        if let Err(mpsc::SendError(Message::Entry(entry))) = self.sender.send(Message::Entry(entry))
        {
            // Only if the writer thread died: keep the record in the log.
            tracing::error!(?entry, "audit writer is gone; record not stored");
        }
    }

    /// Waits until every entry queued before this call is committed.
    pub async fn flush(&self) {
        let (done, waiter) = tokio::sync::oneshot::channel();
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = waiter.await;
        }
    }

    /// Records matching `filter`, newest first, including every call
    /// answered before this one.
    pub async fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        self.flush().await;
        Ok(self.store.query_audit(filter)?)
    }
}

/// The writer thread: blocks for one message, then takes whatever else is
/// already queued, and commits the lot in one transaction.
fn write_batches(store: &Store, receiver: &mpsc::Receiver<Message>, mut json_log: Option<File>) {
    let mut entries = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Entry(entry) => entries.push(entry),
                Message::Flush(done) => flushes.push(done),
            }
            next = if entries.len() < MAX_BATCH {
                receiver.try_recv().ok()
            } else {
                None
            };
        }
        if !entries.is_empty() {
            match store.insert_audit(&entries) {
                Ok(records) => {
                    if let Some(file) = json_log.as_mut() {
                        append_json_lines(file, &records);
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, ?entries, "cannot store audit records");
                }
            }
            entries.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

fn append_json_lines(file: &mut File, records: &[AuditRecord]) {
    let mut lines = Vec::new();
    for record in records {
        serde_json::to_writer(&mut lines, record).expect("an audit record always serializes");
        lines.push(b'\n');
    }
    if let Err(err) = file.write_all(&lines) {
        tracing::error!(error = %err, "cannot append to the audit log file");
    }
}

/// The egress proxy's decisions join the same trail as API calls: one
/// record per proxied request, the identity being the sandbox that asked
/// (`sandbox:<id>`), the method `CONNECT` or the forwarded one, the route
/// `egress`, the summary `host:port: reason`, the status 200 or 403.
/// Denials are also logged, as before, so an operator tailing the log sees
/// them without a query.
#[derive(Debug, Clone)]
pub struct EgressAudit {
    pub log: AuditLog,
}

impl EgressObserver for EgressAudit {
    fn observe(&self, event: EgressEvent) {
        TracingObserver.observe(event.clone());
        self.log.record(AuditEntry {
            time: Utc::now(),
            identity: format!("sandbox:{}", event.sandbox_id),
            token_id: None,
            method: event.method,
            route: EGRESS_ROUTE.to_owned(),
            summary: Some(summarize(&format!(
                "{}:{}: {}",
                event.host, event.port, event.reason
            ))),
            sandbox: Some(event.sandbox_id),
            status: if event.allowed { 200 } else { 403 },
            duration: Duration::ZERO,
            request_id: None,
        });
    }
}

/// The `route` of egress proxy records.
pub const EGRESS_ROUTE: &str = "egress";

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SubsecRound;

    fn entry(identity: &str, sandbox: Option<&str>, time: chrono::DateTime<Utc>) -> AuditEntry {
        AuditEntry {
            time,
            identity: identity.into(),
            token_id: None,
            method: "POST".into(),
            route: "/v1/sandboxes/{id}/exec".into(),
            sandbox: sandbox.map(str::to_owned),
            summary: Some("echo hi".into()),
            status: 200,
            duration: Duration::from_micros(1234),
            request_id: Some(format!("{:016x}", time.timestamp_micros())),
        }
    }

    #[test]
    fn summaries_are_bounded_single_lines() {
        assert_eq!(summarize("echo hi"), "echo hi");
        assert_eq!(summarize("a\nb\tc"), "a b c");
        let long = "é".repeat(MAX_SUMMARY_BYTES);
        let cut = summarize(&long);
        assert!(cut.len() <= MAX_SUMMARY_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    #[tokio::test]
    async fn records_are_committed_filtered_and_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(&dir.path().join("sbx.db")).expect("store"));
        let json_path = dir.path().join("audit.jsonl");
        let audit = AuditLog::start(Arc::clone(&store), Some(&json_path)).expect("start");
        let start = Utc::now();
        for i in 0..10 {
            let sandbox = if i % 2 == 0 { "aaaa" } else { "bbbb" };
            let time = start + chrono::Duration::seconds(i);
            audit.record(entry(&format!("caller-{i}"), Some(sandbox), time));
        }
        let filter = |sandbox: Option<&str>, since, limit| AuditFilter {
            sandbox: sandbox.map(str::to_owned),
            since,
            limit,
        };
        let all = audit.query(&filter(None, None, 100)).await.expect("query");
        assert_eq!(all.len(), 10, "flush makes every queued entry visible");
        assert_eq!(all[0].identity, "caller-9", "newest first");
        assert!(all.windows(2).all(|pair| pair[0].seq > pair[1].seq));
        assert_eq!(all[0].duration_us, 1234);
        assert_eq!(
            all[0].request_id,
            Some(format!("{:016x}", all[0].time.timestamp_micros())),
            "the request id round-trips"
        );
        let ninth = start + chrono::Duration::seconds(9);
        assert_eq!(
            all[0].time,
            ninth.trunc_subsecs(6),
            "kept to the microsecond"
        );

        let only_a = audit
            .query(&filter(Some("aaaa"), None, 2))
            .await
            .expect("query");
        let names: Vec<&str> = only_a.iter().map(|r| r.identity.as_str()).collect();
        assert_eq!(names, ["caller-8", "caller-6"]);

        let since = start + chrono::Duration::seconds(7);
        let recent = audit
            .query(&filter(None, Some(since), 100))
            .await
            .expect("query");
        assert_eq!(recent.len(), 3, "since is inclusive");

        let lines = std::fs::read_to_string(&json_path).expect("json log");
        let parsed: Vec<AuditRecord> = lines
            .lines()
            .map(|line| serde_json::from_str(line).expect("one record per line"))
            .collect();
        assert_eq!(parsed.len(), 10);
        assert_eq!(parsed.last(), all.first());

        drop(audit);
        let reopened = Store::open(&dir.path().join("sbx.db")).expect("reopen");
        assert_eq!(
            reopened
                .query_audit(&filter(None, None, 100))
                .expect("query")
                .len(),
            10,
            "records survive a reopen"
        );
    }
}
