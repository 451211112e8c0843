//! A sandbox's ports, reached without giving it an address: HTTP (and
//! WebSocket upgrades) proxied to `127.0.0.1:{port}` inside it through its
//! agent, raw TCP tunnels over a WebSocket, and preview URLs that let a
//! browser (which cannot send a bearer token) reach one port for a while.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How long a preview lasts unless asked otherwise: one hour.
pub const DEFAULT_PREVIEW_TTL_S: u64 = 60 * 60;
/// The longest a preview may last: seven days.
pub const MAX_PREVIEW_TTL_S: u64 = 7 * 24 * 60 * 60;
/// The longest `GET /ports/{port}/wait` waits: ten minutes.
pub const MAX_PORT_WAIT_MS: u64 = 10 * 60 * 1000;
/// How long `GET /ports/{port}/wait` waits when not told.
pub const DEFAULT_PORT_WAIT_MS: u64 = 30 * 1000;
/// The path prefix preview URLs are served under: `/p/<token>/…`.
pub const PREVIEW_PATH_PREFIX: &str = "/p/";

/// The path parameters of `/v1/sandboxes/{id}/ports/{port}…` and
/// `/tunnel/{port}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PortPath {
    /// The sandbox's id.
    pub id: String,
    /// A TCP port inside the sandbox.
    #[param(minimum = 1, maximum = 65535)]
    pub port: u16,
}

/// Query of `GET /ports/{port}/wait`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PortWaitQuery {
    /// Give up after this long (503); 30 s when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 600000)]
    pub timeout_ms: Option<u64>,
}

impl PortWaitQuery {
    pub fn validate(&self) -> Result<(), String> {
        match self.timeout_ms {
            Some(0) => Err("timeout_ms must be positive".into()),
            Some(ms) if ms > MAX_PORT_WAIT_MS => Err(format!(
                "timeout_ms {ms} exceeds the maximum of {MAX_PORT_WAIT_MS}"
            )),
            _ => Ok(()),
        }
    }
}

/// `GET /ports/{port}/wait`: something listens on the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortStatus {
    pub port: u16,
    pub listening: bool,
    /// How long the call waited.
    pub waited_ms: u64,
}

/// `POST /v1/sandboxes/{id}/previews`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePreviewRequest {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Seconds until the preview stops working; an hour when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 604800)]
    pub ttl_s: Option<u64>,
}

impl CreatePreviewRequest {
    pub fn validate(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("port must be between 1 and 65535".into());
        }
        match self.ttl_s {
            Some(0) => Err("ttl_s must be positive".into()),
            Some(ttl) if ttl > MAX_PREVIEW_TTL_S => Err(format!(
                "ttl_s {ttl} exceeds the maximum of {MAX_PREVIEW_TTL_S}"
            )),
            _ => Ok(()),
        }
    }
}

/// A preview: one sandbox's port, reachable without a bearer token by
/// whoever holds its URL, until it expires or is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Preview {
    /// The preview's id, for revoking it; not a secret.
    pub id: String,
    pub sandbox_id: String,
    pub port: u16,
    /// The URL, with its secret token in it: only in the answer that
    /// created the preview (the server keeps a hash of the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// `GET /v1/sandboxes/{id}/previews`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreviewList {
    pub previews: Vec<Preview>,
}

/// The path parameters of `/v1/sandboxes/{id}/previews/{preview}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PreviewPath {
    /// The sandbox's id.
    pub id: String,
    /// The preview's id.
    pub preview: String,
}

/// The query parameter of a host preview's URL that carries its secret on
/// the first visit; the server trades it for [`PREVIEW_COOKIE`].
pub const PREVIEW_TOKEN_PARAM: &str = "sbx_preview_token";

/// The cookie that carries a host preview's secret after the first visit.
pub const PREVIEW_COOKIE: &str = "sbx_preview";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_and_waits_are_bounded() {
        let request = CreatePreviewRequest {
            port: 8000,
            ttl_s: None,
        };
        assert!(request.validate().is_ok());
        let zero_port = CreatePreviewRequest {
            port: 0,
            ..request.clone()
        };
        assert!(zero_port.validate().is_err());
        let forever = CreatePreviewRequest {
            ttl_s: Some(MAX_PREVIEW_TTL_S + 1),
            ..request
        };
        assert!(forever.validate().is_err());
        let wait = PortWaitQuery {
            timeout_ms: Some(0),
        };
        assert!(wait.validate().is_err());
    }
}
