//! Previews: who may reach a sandbox's port without a bearer token.
//!
//! A preview's secret is in its URL, so the table keeps only its SHA-256,
//! like a token's: a copy of the database opens no sandbox. A lookup is by
//! that hash and checks expiry in the same statement; expired rows are
//! pruned as new ones are made, and a sandbox's rows go when its record
//! does (a foreign key with `ON DELETE CASCADE`), so a recycled id never
//! inherits a preview.

use super::{parse_time, Store, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

/// A preview as stored: the API's view without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRecord {
    pub id: String,
    pub sandbox_id: String,
    pub port: u16,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

const PREVIEW_COLUMNS: &str = "id, sandbox_id, port, created_at, expires_at";

impl Store {
    /// Stores `preview` under the hash of its secret, and forgets the
    /// previews that expired.
    pub fn insert_preview(
        &self,
        preview: &PreviewRecord,
        secret_hash: &[u8; 32],
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM previews WHERE expires_at < ?1",
            params![preview.created_at.to_rfc3339()],
        )?;
        conn.execute(
            &format!(
                "INSERT INTO previews ({PREVIEW_COLUMNS}, secret_hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                preview.id,
                preview.sandbox_id,
                preview.port,
                preview.created_at.to_rfc3339(),
                preview.expires_at.to_rfc3339(),
                secret_hash.as_slice(),
            ],
        )?;
        Ok(())
    }

    /// The preview whose secret hashes to `secret_hash`, unless it expired
    /// by `now` or its sandbox was deleted.
    pub fn preview_by_hash(
        &self,
        secret_hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<PreviewRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {PREVIEW_COLUMNS} FROM previews WHERE secret_hash = ?1 \
             AND sandbox_id IN (SELECT id FROM sandboxes WHERE state != 'deleted')"
        ))?;
        let found = statement
            .query_row(params![secret_hash.as_slice()], read_preview)
            .optional()?
            .transpose()?;
        Ok(found.filter(|preview| preview.expires_at > now))
    }

    /// The live previews of sandbox `sandbox_id`, oldest first.
    pub fn list_previews(
        &self,
        sandbox_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<PreviewRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {PREVIEW_COLUMNS} FROM previews WHERE sandbox_id = ?1 \
             ORDER BY created_at, id"
        ))?;
        let rows = statement.query_map(params![sandbox_id], read_preview)?;
        let all: Vec<PreviewRecord> = rows.map(|row| row?).collect::<Result<_, _>>()?;
        Ok(all
            .into_iter()
            .filter(|preview| preview.expires_at > now)
            .collect())
    }

    /// Revokes the preview `id` of sandbox `sandbox_id`; false when it has
    /// no such preview.
    pub fn remove_preview(&self, sandbox_id: &str, id: &str) -> Result<bool, StoreError> {
        let removed = self.conn().execute(
            "DELETE FROM previews WHERE sandbox_id = ?1 AND id = ?2",
            params![sandbox_id, id],
        )?;
        Ok(removed > 0)
    }
}

fn read_preview(row: &Row<'_>) -> rusqlite::Result<Result<PreviewRecord, StoreError>> {
    let id: String = row.get(0)?;
    let port: i64 = row.get(2)?;
    let created_at: String = row.get(3)?;
    let expires_at: String = row.get(4)?;
    let corrupt = |reason: String| StoreError::CorruptRow {
        table: "previews",
        id: id.clone(),
        reason,
    };
    Ok((|| {
        Ok(PreviewRecord {
            sandbox_id: row.get(1).map_err(StoreError::from)?,
            port: u16::try_from(port).map_err(|_| corrupt(format!("port {port}")))?,
            created_at: parse_time(&created_at).map_err(|err| corrupt(err.to_string()))?,
            expires_at: parse_time(&expires_at).map_err(|err| corrupt(err.to_string()))?,
            id: id.clone(),
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::record;
    use chrono::Duration;

    fn preview(id: &str, sandbox_id: &str, expires_in: Duration) -> PreviewRecord {
        let now = Utc::now();
        PreviewRecord {
            id: id.into(),
            sandbox_id: sandbox_id.into(),
            port: 8000,
            created_at: now,
            expires_at: now + expires_in,
        }
    }

    #[test]
    fn previews_are_found_by_hash_until_they_expire_or_go_with_their_sandbox() {
        let store = Store::in_memory().expect("store");
        store.insert(&record("sb1")).expect("sandbox");
        let live = preview("pv_live", "sb1", Duration::hours(1));
        store.insert_preview(&live, &[1; 32]).expect("stored");
        let expired = preview("pv_old", "sb1", Duration::seconds(-1));
        store.insert_preview(&expired, &[2; 32]).expect("stored");

        let now = Utc::now();
        let found = store.preview_by_hash(&[1; 32], now).expect("query");
        assert_eq!(found.map(|found| found.id), Some("pv_live".to_owned()));
        assert_eq!(store.preview_by_hash(&[2; 32], now).expect("query"), None);
        assert_eq!(store.preview_by_hash(&[3; 32], now).expect("query"), None);
        let listed = store.list_previews("sb1", now).expect("list");
        assert_eq!(listed.len(), 1);

        assert!(!store
            .remove_preview("sb2", "pv_live")
            .expect("other sandbox"));
        assert!(store.remove_preview("sb1", "pv_live").expect("revoked"));
        assert_eq!(store.preview_by_hash(&[1; 32], now).expect("query"), None);

        store.insert_preview(&live, &[1; 32]).expect("stored again");
        store.remove("sb1").expect("sandbox removed");
        assert_eq!(store.preview_by_hash(&[1; 32], now).expect("query"), None);
    }
}
