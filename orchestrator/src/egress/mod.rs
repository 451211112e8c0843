//! The egress proxy: the only way out of a sandbox, and only to the hosts
//! its policy names.
//!
//! A sandbox's network namespace has `lo` and no route. Its agent listens
//! on `127.0.0.1:3128` inside that namespace and relays every connection to
//! a Unix socket that this proxy listens on *for that sandbox*,
//! `<sandbox-dir>/run/egress.sock` (the agent sees it as
//! `/.sbx/run/egress.sock` through the run directory's bind mount). Which
//! socket a connection arrives on is which sandbox it comes from: the
//! sandbox holds no credential, and cannot claim to be another one.
//!
//! Each connection carries one HTTP proxy request: `CONNECT host:port`
//! (HTTPS, or anything tunnelled) or an absolute-form `http://` request,
//! forwarded with `Connection: close` (see [`request`]). The target is
//! checked against the sandbox's [`Allowlist`] when the request arrives,
//! and again whenever the policy changes ([`EgressProxy::set_policy`]):
//! a connection the new policy no longer allows is closed at once, so
//! taking a host out of the list cuts the tunnels to it too, and detaching
//! a sandbox cuts them all. Allowed names are resolved on the host and never
//! to internal addresses ([`resolve`]). Every decision, closings included,
//! goes to an [`EgressObserver`].
//!
//! Cost: a listening socket and one parked accept task per sandbox, in the
//! orchestrator's runtime; a connection costs a task and two 8 KiB relay
//! buffers while it lives. Nothing runs per idle sandbox.
//!
//! Bounds: [`Limits`] — head size and header count, time to send the head,
//! time to resolve and connect, idle time of a relay, and concurrent
//! connections per sandbox (beyond which the proxy answers 503 at once).

mod connection;
pub mod observer;
pub mod request;
pub mod resolve;

pub use observer::{EgressEvent, EgressObserver, TracingObserver};
pub use resolve::Resolver;

use sbx_api::{EgressRule, NetworkPolicy};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("cannot listen on egress socket {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid network policy: {0}")]
    InvalidPolicy(String),
}

/// Timeouts and sizes of the proxy (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From accepting a connection to having its whole request head.
    pub head_timeout: Duration,
    /// To resolve the host, and again to connect to it.
    pub connect_timeout: Duration,
    /// A relay with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections of one sandbox.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 256,
        }
    }
}

/// A sandbox's egress policy in the form the proxy checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    rules: Vec<EgressRule>,
}

impl Allowlist {
    pub fn new(policy: &NetworkPolicy) -> Result<Self, EgressError> {
        Ok(Self {
            rules: policy.rules().map_err(EgressError::InvalidPolicy)?,
        })
    }

    /// The first rule that allows `host:port` (`host` normalised).
    pub fn matching(&self, host: &str, port: u16) -> Option<&EgressRule> {
        self.rules.iter().find(|rule| rule.matches(host, port))
    }
}

/// What the proxy keeps per sandbox.
#[derive(Debug)]
struct SandboxEgress {
    id: String,
    /// Replaced whole by a policy change; open connections watch it.
    allowlist: watch::Sender<Arc<Allowlist>>,
}

impl SandboxEgress {
    fn new(id: String, allowlist: Allowlist) -> Self {
        Self {
            id,
            allowlist: watch::Sender::new(Arc::new(allowlist)),
        }
    }

    /// The allowlist now, and a receiver that sees every later one.
    fn watch_allowlist(&self) -> watch::Receiver<Arc<Allowlist>> {
        self.allowlist.subscribe()
    }

    fn set_allowlist(&self, allowlist: Allowlist) {
        self.allowlist.send_replace(Arc::new(allowlist));
    }
}

/// What every connection of every sandbox shares.
#[derive(Debug)]
struct Shared {
    resolver: Resolver,
    observer: Arc<dyn EgressObserver>,
    limits: Limits,
}

#[derive(Debug)]
struct Attached {
    sandbox: Arc<SandboxEgress>,
    accept: AbortHandle,
}

/// The proxy: one listener per attached sandbox, one policy each.
#[derive(Debug)]
pub struct EgressProxy {
    shared: Arc<Shared>,
    sandboxes: Mutex<HashMap<String, Attached>>,
}

/// Answer to a connection beyond [`Limits::max_connections`].
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 57\r\n\
Connection: close\r\n\
\r\n\
sbx egress proxy: too many connections from this sandbox\n";

/// Pause after a failed `accept` (out of fds): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

impl EgressProxy {
    /// `observer` receives every decision; see [`observer`] for the seam.
    pub fn new(resolver: Resolver, observer: Arc<dyn EgressObserver>) -> Self {
        Self::with_limits(resolver, observer, Limits::default())
    }

    pub fn with_limits(
        resolver: Resolver,
        observer: Arc<dyn EgressObserver>,
        limits: Limits,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                resolver,
                observer,
                limits,
            }),
            sandboxes: Mutex::new(HashMap::new()),
        }
    }

    fn sandboxes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attached>> {
        // Every critical section is a map insert or remove: a panic cannot
        // leave the map half-changed.
        self.sandboxes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts serving sandbox `id` on `socket` with `policy`, replacing a
    /// stale socket file (left by an earlier orchestrator) and an earlier
    /// attachment of the same id. Must run inside the tokio runtime.
    ///
    /// The socket is made mode 0600 and owned by `owner`, the host uid that
    /// root inside the sandbox is (`None`: not remapped, root): its agent
    /// can connect, other unprivileged users of the host cannot.
    pub fn attach(
        &self,
        id: &str,
        socket: &Path,
        policy: &NetworkPolicy,
        owner: Option<u32>,
    ) -> Result<(), EgressError> {
        let allowlist = Allowlist::new(policy)?;
        let listen_error = |source| EgressError::Listen {
            path: socket.to_owned(),
            source,
        };
        let listener = crate::sandbox_socket::bind(socket, owner)
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                UnixListener::from_std(listener)
            })
            .map_err(listen_error)?;
        let sandbox = Arc::new(SandboxEgress::new(id.to_owned(), allowlist));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&sandbox),
            Arc::clone(&self.shared),
        ));
        let previous = self.sandboxes().insert(
            id.to_owned(),
            Attached {
                sandbox,
                accept: accept.abort_handle(),
            },
        );
        if let Some(previous) = previous {
            previous.accept.abort();
        }
        Ok(())
    }

    /// Replaces sandbox `id`'s policy: the next request sees it, and open
    /// connections it no longer allows are closed. Returns false when the
    /// sandbox is not attached.
    pub fn set_policy(&self, id: &str, policy: &NetworkPolicy) -> Result<bool, EgressError> {
        let allowlist = Allowlist::new(policy)?;
        let sandboxes = self.sandboxes();
        let Some(attached) = sandboxes.get(id) else {
            return Ok(false);
        };
        attached.sandbox.set_allowlist(allowlist);
        Ok(true)
    }

    /// Stops accepting connections for `id` and closes the open ones.
    pub fn detach(&self, id: &str) {
        if let Some(attached) = self.sandboxes().remove(id) {
            attached.accept.abort();
            attached.sandbox.set_allowlist(Allowlist::default());
        }
    }

    /// How many sandboxes are attached.
    pub fn attached(&self) -> usize {
        self.sandboxes().len()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        for attached in self.sandboxes().values() {
            attached.accept.abort();
        }
    }
}

async fn accept_loop(listener: UnixListener, sandbox: Arc<SandboxEgress>, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(sandbox = %sandbox.id, %err, "egress proxy cannot accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // Best effort and without waiting: the client is misbehaving.
            let _ = stream.try_write(TOO_MANY);
            continue;
        };
        let sandbox = Arc::clone(&sandbox);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            connection::serve(stream, &sandbox, &shared).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    fn policy(egress: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            egress: egress.iter().map(|entry| (*entry).to_owned()).collect(),
        }
    }

    async fn status_of(socket: &Path, request: &str) -> String {
        let mut stream = UnixStream::connect(socket).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[test]
    fn too_many_answer_has_the_right_length() {
        let text = std::str::from_utf8(TOO_MANY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn allowlist_reports_the_first_matching_rule() {
        let allowlist = Allowlist::new(&policy(&["a.test:1", "*.test"])).expect("valid");
        let rule = allowlist.matching("a.test", 1).expect("allowed");
        assert_eq!(rule.to_string(), "a.test:1");
        assert_eq!(
            allowlist.matching("a.test", 2).map(ToString::to_string),
            Some("*.test".to_owned())
        );
        assert!(allowlist.matching("test", 1).is_none());
        assert!(Allowlist::default().matching("a.test", 1).is_none());
        assert!(Allowlist::new(&policy(&["http://a.test"])).is_err());
    }

    #[tokio::test]
    async fn policy_changes_apply_to_the_next_connection_and_detach_stops_serving() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("egress.sock");
        std::fs::write(&socket, b"stale").expect("a stale file");
        let proxy = EgressProxy::new(
            Resolver::with_overrides([(
                "denied.test".to_owned(),
                "127.0.0.1".parse().expect("ip"),
            )]),
            Arc::new(TracingObserver),
        );
        proxy
            .attach("sbx1", &socket, &NetworkPolicy::default(), None)
            .expect("attach");
        let mode = std::fs::metadata(&socket)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the sandbox's root may connect");
        assert_eq!(proxy.attached(), 1);
        let request = "CONNECT denied.test:1 HTTP/1.1\r\n\r\n";
        assert_eq!(status_of(&socket, request).await, "HTTP/1.1 403 Forbidden");

        assert!(proxy
            .set_policy("sbx1", &policy(&["denied.test"]))
            .expect("valid"));
        // Port 1 on loopback has no listener: allowed, then refused there.
        assert_eq!(
            status_of(&socket, request).await,
            "HTTP/1.1 502 Bad Gateway"
        );
        assert!(!proxy.set_policy("other", &policy(&[])).expect("valid"));

        proxy.detach("sbx1");
        assert_eq!(proxy.attached(), 0);
        let refused = async {
            loop {
                match UnixStream::connect(&socket).await {
                    Err(_) => return,
                    // The accept task may still be finishing its abort.
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("the listener closes");
    }
}
