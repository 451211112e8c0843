//! Scoped API tokens: `POST/GET /v1/tokens`, `DELETE /v1/tokens/{id}`, and
//! the sandbox token that `POST /v1/sandboxes` hands out.
//!
//! A token is a set of [`Scope`]s, optionally bound to one sandbox. The
//! secret is shown once, when the token is created; the server keeps only
//! its hash, so neither listing tokens nor reading the database reveals it.

use crate::Sandbox;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every secret the server mints starts with this, so a leaked one is easy
/// to recognise (and to scan for) in logs and repositories.
pub const TOKEN_PREFIX: &str = "sbx_";
/// Longest lifetime a minted token may ask for: one year.
pub const MAX_TOKEN_TTL_S: u64 = 365 * 24 * 60 * 60;
/// Longest token name.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// What a token may do. A token bound to a sandbox may do it only to that
/// sandbox, and only the per-sandbox scopes make sense for it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Scope {
    /// `POST /v1/sandboxes`.
    #[serde(rename = "sandboxes:create")]
    SandboxesCreate,
    /// `GET /v1/sandboxes` and `GET /v1/sandboxes/{id}`.
    #[serde(rename = "sandboxes:read")]
    SandboxesRead,
    /// `DELETE /v1/sandboxes/{id}`.
    #[serde(rename = "sandboxes:delete")]
    SandboxesDelete,
    /// Everything inside a sandbox: exec, processes, files, archives.
    #[serde(rename = "sandboxes:exec")]
    SandboxesExec,
    /// `PATCH /v1/sandboxes/{id}`: change what a sandbox may reach. Apart
    /// from `sandboxes:exec` so that the code working in a sandbox (its own
    /// token) cannot widen its own network.
    #[serde(rename = "sandboxes:network")]
    SandboxesNetwork,
    /// Stop, start, pause, resume, extend, snapshot and restore a sandbox.
    /// Never in a sandbox's own token: code in a sandbox cannot keep it
    /// alive past the lifetime its owner gave it.
    #[serde(rename = "sandboxes:lifecycle")]
    SandboxesLifecycle,
    /// Mint, list and revoke tokens (never with scopes the caller lacks).
    #[serde(rename = "tokens:admin")]
    TokensAdmin,
    /// `GET /v1/audit`.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// `GET /metrics`: the server's Prometheus metrics (counts and
    /// latencies, never a sandbox id).
    #[serde(rename = "metrics:read")]
    MetricsRead,
    /// `GET /v1/images` and `GET /v1/images/{name}`.
    #[serde(rename = "images:read")]
    ImagesRead,
    /// Import and delete images: they are the server's, shared by every
    /// sandbox, and take its disk.
    #[serde(rename = "images:write")]
    ImagesWrite,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::SandboxesCreate,
        Scope::SandboxesRead,
        Scope::SandboxesDelete,
        Scope::SandboxesExec,
        Scope::SandboxesNetwork,
        Scope::SandboxesLifecycle,
        Scope::TokensAdmin,
        Scope::AuditRead,
        Scope::MetricsRead,
        Scope::ImagesRead,
        Scope::ImagesWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::SandboxesCreate => "sandboxes:create",
            Scope::SandboxesRead => "sandboxes:read",
            Scope::SandboxesDelete => "sandboxes:delete",
            Scope::SandboxesExec => "sandboxes:exec",
            Scope::SandboxesNetwork => "sandboxes:network",
            Scope::SandboxesLifecycle => "sandboxes:lifecycle",
            Scope::TokensAdmin => "tokens:admin",
            Scope::AuditRead => "audit:read",
            Scope::MetricsRead => "metrics:read",
            Scope::ImagesRead => "images:read",
            Scope::ImagesWrite => "images:write",
        }
    }

    /// Whether the scope is about one existing sandbox, and so may be held
    /// by a token bound to a sandbox.
    pub fn is_per_sandbox(self) -> bool {
        matches!(
            self,
            Scope::SandboxesRead
                | Scope::SandboxesDelete
                | Scope::SandboxesExec
                | Scope::SandboxesNetwork
                | Scope::SandboxesLifecycle
        )
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.as_str()).collect();
                format!("unknown scope {text:?} (known: {})", known.join(", "))
            })
    }
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// The identity the audit trail records for every call with the token
    /// (`admin` and `anonymous` are reserved).
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Lifetime in seconds; no expiry when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_s: Option<u64>,
    /// Bind the token to this sandbox: it then works on it alone, and is
    /// revoked when the sandbox is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

impl CreateTokenRequest {
    /// Shape checks; what the caller may grant is the server's business.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let valid_name = !name.is_empty()
            && name.len() <= MAX_TOKEN_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            return Err(format!(
                "token name {name:?} must be 1 to {MAX_TOKEN_NAME_LEN} letters, digits, '-', '_' or '.'"
            ));
        }
        // `admin` and `anonymous` are identities the audit trail already
        // uses, and `sandbox:` names cannot be spelled (':' is refused).
        if matches!(name.as_str(), "admin" | "anonymous") {
            return Err(format!("token name {name:?} is reserved"));
        }
        if self.scopes.is_empty() {
            return Err("scopes must name at least one scope".into());
        }
        match self.ttl_s {
            Some(ttl) if !(1..=MAX_TOKEN_TTL_S).contains(&ttl) => {
                return Err(format!(
                    "ttl_s {ttl} is out of range (1..={MAX_TOKEN_TTL_S})"
                ))
            }
            _ => {}
        }
        if self.sandbox.is_some() {
            if let Some(scope) = self.scopes.iter().find(|scope| !scope.is_per_sandbox()) {
                return Err(format!("a token bound to a sandbox cannot hold {scope}"));
            }
        }
        Ok(())
    }
}

/// A token as `GET /v1/tokens` lists it: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The sandbox the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The identity that minted it.
    pub created_by: String,
}

/// `POST /v1/tokens` → 201: the token, and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenInfo,
    pub secret: String,
}

/// `GET /v1/tokens`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /v1/sandboxes` → 201: the sandbox, and the secret of a token that
/// can read it and work inside it (`sandboxes:read`, `sandboxes:exec`)
/// and nothing else, shown this once. It is revoked with the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedSandbox {
    #[serde(flatten)]
    pub sandbox: Sandbox,
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_text_and_json() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            let json = serde_json::to_string(&scope).expect("serializable");
            assert_eq!(json, format!("\"{}\"", scope.as_str()));
        }
        assert!("sandboxes:everything".parse::<Scope>().is_err());
        let unknown: Result<CreateTokenRequest, _> =
            serde_json::from_str(r#"{"name":"x","scopes":["root"]}"#);
        assert!(unknown.is_err(), "unknown scopes are a decoding error");
    }

    #[test]
    fn create_requests_are_checked() {
        let good = CreateTokenRequest {
            name: "ci-bot".into(),
            scopes: vec![Scope::SandboxesRead],
            ttl_s: Some(3600),
            sandbox: None,
        };
        assert!(good.validate().is_ok());
        let bad = [
            CreateTokenRequest {
                name: String::new(),
                ..good.clone()
            },
            CreateTokenRequest {
                name: "sandbox:abc".into(),
                ..good.clone()
            },
            CreateTokenRequest {
                name: "admin".into(),
                ..good.clone()
            },
            CreateTokenRequest {
                name: "x".repeat(65),
                ..good.clone()
            },
            CreateTokenRequest {
                scopes: vec![],
                ..good.clone()
            },
            CreateTokenRequest {
                ttl_s: Some(0),
                ..good.clone()
            },
            CreateTokenRequest {
                ttl_s: Some(MAX_TOKEN_TTL_S + 1),
                ..good.clone()
            },
            CreateTokenRequest {
                scopes: vec![Scope::SandboxesCreate],
                sandbox: Some("abc".into()),
                ..good.clone()
            },
        ];
        for request in bad {
            assert!(request.validate().is_err(), "{request:?}");
        }
    }

    #[test]
    fn created_sandbox_reads_as_a_sandbox() {
        let created = CreatedSandbox {
            sandbox: Sandbox {
                disk_mb: None,
                network: Default::default(),
                id: "abc".into(),
                state: crate::SandboxState::Running,
                image: "base".into(),
                created_at: Utc::now(),
                memory_mb: 512,
                cpus: 1.0,
                labels: Default::default(),
                lifecycle: Default::default(),
                expires_at: None,
                idle_since: None,
                ended_reason: None,
            },
            token: "sbx_secret".into(),
        };
        let json = serde_json::to_string(&created).expect("serializable");
        let plain: Sandbox = serde_json::from_str(&json).expect("a sandbox");
        assert_eq!(plain, created.sandbox);
        let back: CreatedSandbox = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, created);
    }
}
