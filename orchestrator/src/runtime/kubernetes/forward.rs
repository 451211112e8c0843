//! The channel to a pod's agent: the API server's port-forward.
//!
//! Why port-forward rather than the pod's IP:
//! - the orchestrator may run outside the cluster, where pod IPs do not
//!   route;
//! - the agent can listen on loopback inside the pod
//!   (`sbx_api::AGENT_TCP_LISTEN`), because the kubelet's port-forward
//!   connects from within the pod's network namespace. So no other pod can
//!   reach an agent at all, NetworkPolicy or not;
//! - the path is authenticated at every hop: the orchestrator to the API
//!   server by its kubeconfig (TLS, a token or a client certificate, and
//!   RBAC on `pods/portforward`), the API server to the kubelet by its
//!   client certificate. The pod is named by the API server, so nothing in
//!   a sandbox can redirect a connection to another pod.
//!
//! Both ways: the agent serves only requests carrying its sandbox's key
//! (from the sandbox's Secret), and the orchestrator knows it reached that
//! sandbox because the API server chose the pod by name.
//!
//! Each connection is one WebSocket to the API server carrying one stream;
//! it costs a few milliseconds more than a Unix socket (see BENCHMARKS.md).

use kube::api::{Api, Portforwarder};
use sbx_api::client::{AgentDialer, AgentStream, Dialing};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The port the agent listens on inside its pod.
pub fn agent_port() -> u16 {
    sbx_api::AGENT_TCP_LISTEN
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("AGENT_TCP_LISTEN names a port")
}

/// Dials the agent of one pod.
#[derive(Clone)]
pub struct PortForward {
    pub pods: Api<k8s_openapi::api::core::v1::Pod>,
    pub pod: String,
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("pod", &self.pod)
            .finish()
    }
}

impl AgentDialer for PortForward {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move {
            let port = agent_port();
            let mut forwarder = self
                .pods
                .portforward(&self.pod, &[port])
                .await
                .map_err(io::Error::other)?;
            let stream = forwarder
                .take_stream(port)
                .ok_or_else(|| io::Error::other("the port-forward has no stream"))?;
            Ok(Box::new(Forwarded { stream, forwarder }) as Box<dyn AgentStream>)
        })
    }

    fn describe(&self) -> String {
        format!("port-forward to pod {}", self.pod)
    }
}

/// One forwarded connection. Dropping it ends the WebSocket under it.
struct Forwarded<S> {
    stream: S,
    forwarder: Portforwarder,
}

impl<S> Drop for Forwarded<S> {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Forwarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Forwarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
