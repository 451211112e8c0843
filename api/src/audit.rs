//! The audit trail: `GET /v1/audit`.
//!
//! One record per `/v1` call (and per decision of other gates, such as the
//! egress proxy): who, what, which sandbox, the outcome and how long it
//! took. A record never holds contents or secrets: no stdin, file bodies,
//! environment values or tokens, only a short summary of the request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Records `GET /v1/audit` returns when the query names no limit.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
/// Most records one `GET /v1/audit` returns.
pub const MAX_AUDIT_LIMIT: u32 = 1000;

/// The identity recorded for a call that presented no valid token.
pub const ANONYMOUS: &str = "anonymous";

/// The status recorded for a call whose client left before it was
/// answered (nginx's "client closed request"); no client ever receives it.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Increases with every record; newer records have larger numbers.
    pub seq: u64,
    /// When the call arrived.
    pub time: DateTime<Utc>,
    /// The token's name (`admin`, `sandbox:<id>`, a minted token's name),
    /// or `anonymous`.
    pub identity: String,
    /// The token's id; absent for the admin token and anonymous calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    pub method: String,
    /// The matched route template, e.g. `/v1/sandboxes/{id}/exec`.
    pub route: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// What was asked, without contents: an exec's command, a file's path,
    /// a new sandbox's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The HTTP status of the answer, or [`CLIENT_CLOSED_REQUEST`] when
    /// the client left before it.
    pub status: u16,
    /// Time to the answer's status and headers; a streamed body (an exec
    /// stream, followed logs) may go on after it.
    pub duration_us: u64,
    /// The call's `x-request-id`; absent on records of other gates (the
    /// egress proxy) and on records written before request ids existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Query of `GET /v1/audit`: the newest records first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only records about this sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Only records at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// At most this many records: 1 to [`MAX_AUDIT_LIMIT`], default
    /// [`DEFAULT_AUDIT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// The limit to apply, or why the one asked for is out of range.
    pub fn effective_limit(&self) -> Result<u32, String> {
        match self.limit {
            None => Ok(DEFAULT_AUDIT_LIMIT),
            Some(limit) if (1..=MAX_AUDIT_LIMIT).contains(&limit) => Ok(limit),
            Some(limit) => Err(format!(
                "limit {limit} is out of range (1..={MAX_AUDIT_LIMIT})"
            )),
        }
    }
}

/// `GET /v1/audit`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(AuditQuery::default().effective_limit(), Ok(100));
        let with = |limit| AuditQuery {
            limit: Some(limit),
            ..AuditQuery::default()
        };
        assert_eq!(with(1).effective_limit(), Ok(1));
        assert_eq!(with(1000).effective_limit(), Ok(1000));
        assert!(with(0).effective_limit().is_err());
        assert!(with(1001).effective_limit().is_err());
    }
}
