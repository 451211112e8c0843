//! The seam between the egress proxy and whoever keeps a record of its
//! decisions.
//!
//! The proxy reports every decision it takes — one [`EgressEvent`] per
//! proxied request, allowed or refused — to an [`EgressObserver`]. Today
//! that is [`TracingObserver`], which logs; the audit trail plugs in by
//! implementing the trait and being passed to
//! [`EgressProxy::new`](super::EgressProxy::new) in `server.rs` instead.

use std::fmt;

/// One decision of the egress proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEvent {
    pub sandbox_id: String,
    /// The host the sandbox asked for, normalised (lowercase, no trailing dot).
    pub host: String,
    pub port: u16,
    /// `CONNECT` for a tunnel, else the forwarded request's method (`GET`…).
    pub method: String,
    pub allowed: bool,
    /// Why: the allowlist entry that matched, or what refused it.
    pub reason: String,
}

impl fmt::Display for EgressEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        write!(
            f,
            "{verdict} {} {}:{} for sandbox {}: {}",
            self.method, self.host, self.port, self.sandbox_id, self.reason
        )
    }
}

/// Receives every decision of the egress proxy.
///
/// Called on the proxy's connection task, before it connects anywhere or
/// answers the refusal: an implementation must be quick and must not block
/// on I/O it does not control (hand the event to a writer instead).
pub trait EgressObserver: Send + Sync + fmt::Debug {
    fn observe(&self, event: EgressEvent);
}

/// The default observer: one `tracing` line per decision (info when
/// allowed, warn when denied), target `sbx::egress`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingObserver;

impl EgressObserver for TracingObserver {
    fn observe(&self, event: EgressEvent) {
        if event.allowed {
            tracing::info!(
                target: "sbx::egress",
                sandbox = %event.sandbox_id,
                method = %event.method,
                host = %event.host,
                port = event.port,
                reason = %event.reason,
                "egress allowed"
            );
        } else {
            tracing::warn!(
                target: "sbx::egress",
                sandbox = %event.sandbox_id,
                method = %event.method,
                host = %event.host,
                port = event.port,
                reason = %event.reason,
                "egress denied"
            );
        }
    }
}
