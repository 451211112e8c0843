//! Calls on the policy routes: tokens and the audit trail.

use super::{Client, ClientError, NO_BODY};
use crate::{
    AuditList, AuditQuery, AuditRecord, CreateSandboxRequest, CreateTokenRequest, CreatedSandbox,
    CreatedToken, TokenInfo, TokenList,
};
use http::Method;

impl Client {
    /// `POST /v1/sandboxes`, keeping the sandbox's own token, which
    /// [`Client::create_sandbox`] drops.
    pub async fn create_sandbox_with_token(
        &self,
        request: &CreateSandboxRequest,
    ) -> Result<CreatedSandbox, ClientError> {
        self.call(Method::POST, "/v1/sandboxes", Some(request))
            .await
    }

    /// `POST /v1/tokens`: the answer carries the secret, this once.
    pub async fn create_token(
        &self,
        request: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, "/v1/tokens", Some(request)).await
    }

    /// `GET /v1/tokens`
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        let list: TokenList = self.call(Method::GET, "/v1/tokens", NO_BODY).await?;
        Ok(list.tokens)
    }

    /// `DELETE /v1/tokens/{id}`
    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &format!("/v1/tokens/{id}"), NO_BODY)
            .await
    }

    /// `GET /v1/audit`: the newest records first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        let query = serde_urlencoded::to_string(query).map_err(|err| ClientError::Unexpected {
            status: 0,
            text: format!("cannot encode query: {err}"),
        })?;
        let path = if query.is_empty() {
            "/v1/audit".to_owned()
        } else {
            format!("/v1/audit?{query}")
        };
        let list: AuditList = self.call(Method::GET, &path, NO_BODY).await?;
        Ok(list.records)
    }
}
