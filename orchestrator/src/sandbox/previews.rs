//! Preview URLs: a browser reaching one port of one sandbox without a
//! bearer token, by a secret in the URL, until the preview expires or is
//! revoked.
//!
//! The secret (32 random bytes, hex) is shown once, in the answer that
//! made it; the store keeps its SHA-256 (see `store::previews`). A preview
//! names its sandbox and port, so a secret cannot be aimed anywhere else,
//! and a request through it is an ordinary forwarded call to that port,
//! audited as the preview's.

use super::{Manager, SandboxError};
use crate::store::PreviewRecord;
use crate::tokens::hash_secret;
use chrono::{Duration, Utc};
use sbx_api::{CreatePreviewRequest, Preview, DEFAULT_PREVIEW_TTL_S};
use std::fmt::Write as _;

/// Starts every preview secret, so one found in a log or a paste is known
/// for what it is.
const SECRET_PREFIX: &str = "sbxp_";

impl Manager {
    /// Makes a preview of `request.port` of sandbox `id`; returns it and
    /// its secret, which only this answer carries.
    pub async fn create_preview(
        &self,
        id: &str,
        request: CreatePreviewRequest,
    ) -> Result<(Preview, String), SandboxError> {
        request.validate().map_err(SandboxError::InvalidRequest)?;
        self.record(id).await?;
        let created_at = Utc::now();
        let ttl = request.ttl_s.unwrap_or(DEFAULT_PREVIEW_TTL_S);
        let record = PreviewRecord {
            id: format!("pv_{:016x}", rand::random::<u64>()),
            sandbox_id: id.to_owned(),
            port: request.port,
            created_at,
            expires_at: created_at + Duration::seconds(ttl as i64),
        };
        let secret = new_secret();
        let (stored, hash) = (record.clone(), hash_secret(&secret));
        self.db(move |store| store.insert_preview(&stored, &hash))
            .await?;
        Ok((preview(record), secret))
    }

    /// The live previews of sandbox `id`, without their secrets.
    pub async fn list_previews(&self, id: &str) -> Result<Vec<Preview>, SandboxError> {
        self.record(id).await?;
        let key = id.to_owned();
        let records = self
            .db(move |store| store.list_previews(&key, Utc::now()))
            .await?;
        Ok(records.into_iter().map(preview).collect())
    }

    /// Revokes preview `preview_id` of sandbox `id`.
    pub async fn revoke_preview(&self, id: &str, preview_id: &str) -> Result<(), SandboxError> {
        self.record(id).await?;
        let (key, preview_id) = (id.to_owned(), preview_id.to_owned());
        let missing = format!("preview {preview_id} not found");
        match self
            .db(move |store| store.remove_preview(&key, &preview_id))
            .await?
        {
            true => Ok(()),
            false => Err(SandboxError::PreviewNotFound(missing)),
        }
    }

    /// The live preview whose secret is `secret`. Every way of not being
    /// one (unknown, revoked, expired, its sandbox deleted) is the same
    /// `None`, so a prober learns nothing from the difference.
    pub async fn preview_by_secret(
        &self,
        secret: &str,
    ) -> Result<Option<PreviewRecord>, SandboxError> {
        if !is_secret(secret) {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        self.db(move |store| store.preview_by_hash(&hash, Utc::now()))
            .await
    }
}

fn preview(record: PreviewRecord) -> Preview {
    Preview {
        id: record.id,
        sandbox_id: record.sandbox_id,
        port: record.port,
        url: None,
        created_at: record.created_at,
        expires_at: record.expires_at,
    }
}

fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 64);
    secret.push_str(SECRET_PREFIX);
    for byte in bytes {
        write!(secret, "{byte:02x}").expect("writing to a String cannot fail");
    }
    secret
}

/// Whether `text` has the shape of a secret [`new_secret`] makes.
fn is_secret(text: &str) -> bool {
    text.strip_prefix(SECRET_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_one_shape() {
        let secret = new_secret();
        assert!(is_secret(&secret), "{secret}");
        assert_ne!(secret, new_secret());
        for bad in ["", "sbxp_", "sbxp_zz", &secret[1..], &format!("{secret}0")] {
            assert!(!is_secret(bad), "{bad}");
        }
    }
}
