//! The sandbox's end of the egress proxy: a byte relay on `127.0.0.1:3128`.
//!
//! A sandbox's network namespace has only `lo` and no route, so nothing in
//! it can reach the orchestrator's proxy over the network — which is the
//! point. Instead the agent listens on loopback inside that namespace and,
//! for every connection it accepts, connects to the orchestrator's Unix
//! socket for this sandbox (`/.sbx/run/egress.sock`, the bind-mounted run
//! directory) and copies bytes both ways until either side closes.
//!
//! The relay does not parse HTTP and decides nothing: the allowlist is the
//! orchestrator's, and it knows which sandbox a connection comes from by the
//! socket it arrives on, so no credential ever lives inside the sandbox.
//! The relay always runs, even for a sandbox created without a network
//! policy: the proxy then answers 403 to everything, and a live policy
//! change needs nothing restarted in here.
//!
//! When the orchestrator's socket cannot be reached (it is restarting), the
//! relay answers `503` itself, so clients fail at once with a message
//! instead of hanging.

use crate::error::AgentError;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Where proxy clients in the sandbox need not go through the proxy.
const NO_PROXY: &str = "localhost,127.0.0.1";

/// Pause after a failed `accept` (out of fds): the error is the process's,
/// not the connection's, so retrying at once would only spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 40\r\n\
Connection: close\r\n\
\r\n\
sbx: the egress proxy is not reachable\r\n";

/// Where the relay listens and where it relays to.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `sbx_api::EGRESS_PROXY_LISTEN` in a sandbox; port 0 picks a free
    /// port (agent tests on the host).
    pub listen: SocketAddr,
    /// `sbx_api::EGRESS_SOCKET_PATH` in a sandbox.
    pub socket: PathBuf,
}

/// A bound relay, not yet serving.
#[derive(Debug)]
pub struct Relay {
    listener: TcpListener,
    socket: Arc<Path>,
}

impl Relay {
    /// Binds the listening address; fails when it is taken or `lo` is down.
    pub async fn bind(config: &RelayConfig) -> Result<Self, AgentError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| AgentError::EgressListen {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            socket: config.socket.clone().into(),
        })
    }

    /// The address actually bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr, AgentError> {
        self.listener
            .local_addr()
            .map_err(|source| AgentError::EgressListen {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                source,
            })
    }

    /// Accepts and relays until the task is dropped (at agent shutdown).
    pub async fn run(self) {
        loop {
            match self.listener.accept().await {
                Ok((client, _)) => {
                    let socket = Arc::clone(&self.socket);
                    tokio::spawn(async move { relay(client, &socket).await });
                }
                Err(err) => {
                    tracing::warn!(%err, "egress relay cannot accept");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

async fn relay(mut client: TcpStream, socket: &Path) {
    let _ = client.set_nodelay(true);
    match UnixStream::connect(socket).await {
        Ok(mut proxy) => {
            // Errors here are resets by either end; the proxy reports its
            // own view of the connection.
            let _ = tokio::io::copy_bidirectional(&mut client, &mut proxy).await;
        }
        Err(err) => {
            tracing::warn!(socket = %socket.display(), %err, "egress proxy unreachable");
            let _ = client.write_all(UNAVAILABLE).await;
            let _ = client.shutdown().await;
        }
    }
}

/// The variables that point HTTP clients (curl, git, pip, apt…) at the
/// relay at `addr`: both spellings, since tools disagree on which they read
/// (curl ignores upper-case `HTTP_PROXY`, others read only it).
pub fn proxy_env(addr: SocketAddr) -> BTreeMap<String, String> {
    let url = format!("http://{addr}");
    [
        ("HTTP_PROXY", url.as_str()),
        ("HTTPS_PROXY", url.as_str()),
        ("http_proxy", url.as_str()),
        ("https_proxy", url.as_str()),
        ("NO_PROXY", NO_PROXY),
        ("no_proxy", NO_PROXY),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    #[test]
    fn proxy_env_names_the_relay_in_both_spellings() {
        let env = proxy_env(SocketAddr::from(([127, 0, 0, 1], 3128)));
        for key in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            assert_eq!(env[key], "http://127.0.0.1:3128");
        }
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1");
    }

    #[test]
    fn unavailable_answer_has_the_right_length() {
        let text = std::str::from_utf8(UNAVAILABLE).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[tokio::test]
    async fn relays_both_ways_and_answers_503_without_a_proxy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("egress.sock");
        let relay = Relay::bind(&RelayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket: socket.clone(),
        })
        .await
        .expect("bind");
        let addr = relay.local_addr().expect("addr");
        let task = tokio::spawn(relay.run());

        // No proxy socket yet: the relay answers for it.
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, UNAVAILABLE);

        let proxy = UnixListener::bind(&socket).expect("bind proxy");
        let echo = tokio::spawn(async move {
            let (mut stream, _) = proxy.accept().await.expect("accept");
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.expect("read");
            stream.write_all(&request).await.expect("write");
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"CONNECT x:1 HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        client.shutdown().await.expect("half-close");
        let mut echoed = Vec::new();
        client.read_to_end(&mut echoed).await.expect("read");
        assert_eq!(echoed, b"CONNECT x:1 HTTP/1.1\r\n\r\n");
        echo.await.expect("echo");
        task.abort();
    }
}
