//! Snapshots and lifecycle events: the two tables the lifecycle adds.
//!
//! A snapshot's disk is a file the manager keeps under
//! `<data-dir>/snapshots`; its row is what makes it one (written after the
//! file is complete, removed before the file is). Events are appended as
//! they happen and read back by `GET /v1/events`; they are kept as long as
//! their sandbox's record, and pruned with it.

use super::{parse_time, Store, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use sbx_api::{Event, EventKind};
use std::path::PathBuf;

/// Most events one read returns; a follower reads again from the last.
pub const MAX_EVENTS_READ: u32 = 1000;

/// A snapshot as stored: the API's view plus the image build it pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub name: String,
    pub sandbox_id: String,
    pub image: String,
    pub image_build: PathBuf,
    pub disk_mb: u64,
    pub created_at: DateTime<Utc>,
}

const SNAPSHOT_COLUMNS: &str = "name, sandbox_id, image, image_build, disk_mb, created_at";

impl Store {
    /// Stores a snapshot; false when the name is taken.
    pub fn insert_snapshot(&self, snapshot: &SnapshotRecord) -> Result<bool, StoreError> {
        let inserted = self.conn().execute(
            &format!(
                "INSERT OR IGNORE INTO snapshots ({SNAPSHOT_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            params![
                snapshot.name,
                snapshot.sandbox_id,
                snapshot.image,
                snapshot.image_build.to_string_lossy(),
                snapshot.disk_mb as i64,
                snapshot.created_at.to_rfc3339(),
            ],
        )?;
        Ok(inserted > 0)
    }

    pub fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE name = ?1"
        ))?;
        statement
            .query_row(params![name], read_snapshot)
            .optional()?
            .transpose()
    }

    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created_at, name"
        ))?;
        let rows = statement.query_map([], read_snapshot)?;
        rows.map(|row| row?).collect()
    }

    /// False when there was no such snapshot.
    pub fn remove_snapshot(&self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .conn()
            .execute("DELETE FROM snapshots WHERE name = ?1", params![name])?;
        Ok(removed > 0)
    }

    /// Appends an event; the store numbers it.
    pub fn insert_event(&self, event: &Event) -> Result<Event, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO events (time, sandbox_id, kind, reason, detail, at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                event.time.to_rfc3339(),
                event.sandbox_id,
                event.kind.as_str(),
                event.reason,
                event.detail,
                event.at.map(|time| time.to_rfc3339()),
            ],
        )?;
        Ok(Event {
            seq: conn.last_insert_rowid() as u64,
            ..event.clone()
        })
    }

    /// Events after `since`, oldest first, of one sandbox or of all.
    pub fn query_events(
        &self,
        sandbox: Option<&str>,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT seq, time, sandbox_id, kind, reason, detail, at FROM events \
             WHERE seq > ?1 AND (?2 IS NULL OR sandbox_id = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = statement.query_map(params![since as i64, sandbox, limit], read_event)?;
        rows.map(|row| row?).collect()
    }

    /// Forgets the events of sandboxes the store no longer holds, older
    /// than `before`.
    pub fn prune_events(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM events WHERE time < ?1 \
             AND sandbox_id NOT IN (SELECT id FROM sandboxes)",
            params![before.to_rfc3339()],
        )?)
    }

    /// Removes the `deleted` records that ended before `before`; returns
    /// their ids.
    pub fn purge_ended(&self, before: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "DELETE FROM sandboxes WHERE state = 'deleted' AND ended_at < ?1 RETURNING id",
        )?;
        let rows = statement.query_map(params![before.to_rfc3339()], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn read_snapshot(row: &Row<'_>) -> rusqlite::Result<Result<SnapshotRecord, StoreError>> {
    let name: String = row.get(0)?;
    let build: String = row.get(3)?;
    let disk_mb: i64 = row.get(4)?;
    let created_at: String = row.get(5)?;
    let corrupt = |reason: String| StoreError::CorruptRow {
        table: "snapshots",
        id: name.clone(),
        reason,
    };
    Ok((|| {
        Ok(SnapshotRecord {
            sandbox_id: row.get(1).map_err(StoreError::from)?,
            image: row.get(2).map_err(StoreError::from)?,
            image_build: PathBuf::from(build),
            disk_mb: u64::try_from(disk_mb).map_err(|_| corrupt(format!("disk_mb {disk_mb}")))?,
            created_at: parse_time(&created_at)
                .map_err(|err| corrupt(format!("created_at: {err}")))?,
            name: name.clone(),
        })
    })())
}

fn read_event(row: &Row<'_>) -> rusqlite::Result<Result<Event, StoreError>> {
    let seq: i64 = row.get(0)?;
    let time: String = row.get(1)?;
    let kind: String = row.get(3)?;
    let at: Option<String> = row.get(6)?;
    let corrupt = |reason: String| StoreError::CorruptRow {
        table: "events",
        id: seq.to_string(),
        reason,
    };
    Ok((|| {
        Ok(Event {
            seq: seq as u64,
            time: parse_time(&time).map_err(|err| corrupt(format!("time: {err}")))?,
            sandbox_id: row.get(2).map_err(StoreError::from)?,
            kind: EventKind::parse(&kind).ok_or_else(|| corrupt(format!("kind {kind:?}")))?,
            reason: row.get(4).map_err(StoreError::from)?,
            detail: row.get(5).map_err(StoreError::from)?,
            at: at
                .map(|text| parse_time(&text).map_err(|err| corrupt(format!("at: {err}"))))
                .transpose()?,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sandbox: &str, kind: EventKind) -> Event {
        Event {
            seq: 0,
            time: Utc::now(),
            sandbox_id: sandbox.into(),
            kind,
            reason: Some("timeout".into()),
            detail: None,
            at: None,
        }
    }

    #[test]
    fn events_are_numbered_and_filtered() {
        let store = Store::in_memory().expect("open");
        let first = store
            .insert_event(&event("aaaa", EventKind::Created))
            .expect("insert");
        store
            .insert_event(&event("bbbb", EventKind::Created))
            .expect("insert");
        let third = store
            .insert_event(&event("aaaa", EventKind::Stopped))
            .expect("insert");
        assert!(third.seq > first.seq);
        let of_a = store.query_events(Some("aaaa"), 0, 10).expect("query");
        assert_eq!(
            of_a.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Created, EventKind::Stopped]
        );
        assert_eq!(of_a[1].reason.as_deref(), Some("timeout"));
        let after = store.query_events(None, first.seq, 10).expect("query");
        assert_eq!(after.len(), 2);
        assert_eq!(store.prune_events(Utc::now()).expect("prune"), 3);
    }

    #[test]
    fn snapshot_names_are_unique() {
        let store = Store::in_memory().expect("open");
        let snapshot = SnapshotRecord {
            name: "template".into(),
            sandbox_id: "aaaa".into(),
            image: "base".into(),
            image_build: PathBuf::from("/images/.store/base-1/rootfs"),
            disk_mb: 1024,
            created_at: Utc::now(),
        };
        assert!(store.insert_snapshot(&snapshot).expect("insert"));
        assert!(!store.insert_snapshot(&snapshot).expect("insert"));
        let loaded = store
            .get_snapshot("template")
            .expect("get")
            .expect("present");
        assert_eq!(loaded.image_build, snapshot.image_build);
        assert_eq!(store.list_snapshots().expect("list").len(), 1);
        assert!(store.remove_snapshot("template").expect("remove"));
        assert!(!store.remove_snapshot("template").expect("remove"));
    }
}
