//! The orchestrator's durable state: one SQLite file, `<data-dir>/sbx.db`.
//!
//! SQLite (bundled, WAL) rather than a directory of JSON files because later
//! issues add tokens and an audit trail that need queries, and because a
//! crash mid-write must never leave a half-written record. Every call is a
//! short statement on one connection behind a mutex: contention is a few
//! microseconds, far below a sandbox's creation cost, so no pool is needed.
//!
//! Tables: `sandboxes`; `tokens`, which keeps only a SHA-256 hash of each
//! secret and whose rows bound to a sandbox go with it (a foreign key with
//! `ON DELETE CASCADE`, so no deletion path can forget them); and `audit`,
//! append-only, written in batches by [`crate::audit`]'s writer thread;
//! `snapshots` and `events` (see [`history`]); `previews` (see
//! [`previews`]).

mod history;
mod previews;

pub use history::{SnapshotRecord, MAX_EVENTS_READ};
pub use previews::PreviewRecord;

use crate::lifecycle::Transition;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use sbx_api::{AuditRecord, NetworkPolicy, Sandbox, SandboxState, Scope, TokenInfo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt record for sandbox {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("corrupt {table} record {id}: {reason}")]
    CorruptRow {
        table: &'static str,
        id: String,
        reason: String,
    },
}

/// A token as stored: what the API lists, plus the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub info: TokenInfo,
    pub secret_hash: [u8; 32],
}

/// Which audit records to read, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub sandbox: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// One audit record to append; the store numbers it. Defined here, below
/// [`crate::audit`], which writes and reads them through the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When the call arrived.
    pub time: DateTime<Utc>,
    /// The caller's token name, or [`sbx_api::ANONYMOUS`].
    pub identity: String,
    pub token_id: Option<String>,
    /// An HTTP method, or the verb of another gate (`CONNECT`).
    pub method: String,
    /// A route template (`/v1/sandboxes/{id}/exec`) or another gate's name.
    pub route: String,
    pub sandbox: Option<String>,
    /// A short description of the request (`crate::audit::summarize`).
    pub summary: Option<String>,
    pub status: u16,
    pub duration: std::time::Duration,
    /// The API call's `x-request-id`; none for other gates.
    pub request_id: Option<String>,
}

/// A sandbox as stored: the public record plus what only the orchestrator
/// needs (the environment, which the API never echoes back).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub sandbox: Sandbox,
    pub env: BTreeMap<String, String>,
    /// Started ahead of demand for the warm pool and not handed out yet:
    /// known to the store (so never an orphan) but to no client.
    pub pooled: bool,
    /// The image build its disk sits on (`runtime::resolve_image`), pinned
    /// at create so that a start after a rebuild keeps the same lower layer.
    /// None for records from before it was kept.
    pub image_build: Option<PathBuf>,
    /// When it entered `deleted`: its retention runs from here.
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    image       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    memory_mb   INTEGER NOT NULL,
    cpus        REAL NOT NULL,
    labels      TEXT NOT NULL,
    env         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    sandbox_id  TEXT REFERENCES sandboxes (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    created_by  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tokens_by_sandbox ON tokens (sandbox_id);
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    time        TEXT NOT NULL,
    identity    TEXT NOT NULL,
    token_id    TEXT,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,
    sandbox_id  TEXT,
    summary     TEXT,
    status      INTEGER NOT NULL,
    duration_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_by_sandbox ON audit (sandbox_id, seq);
";

/// Changes to [`SCHEMA`] since the first release, in order. SQLite's
/// `user_version` counts how many a database has had, so an old data dir is
/// brought up to date on open and a new one goes through the same steps.
const MIGRATIONS: &[&str] = &[
    // The writable layer's size limit; NULL: unlimited.
    "ALTER TABLE sandboxes ADD COLUMN disk_mb INTEGER",
    // The network policy, JSON (`sbx_api::NetworkPolicy`); none: no egress.
    r#"ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{"egress":[]}'"#,
    // 1: a warm-pool sandbox no client has claimed yet.
    "ALTER TABLE sandboxes ADD COLUMN pooled INTEGER NOT NULL DEFAULT 0",
    // The API call's `x-request-id`; NULL for other gates and older records.
    "ALTER TABLE audit ADD COLUMN request_id TEXT",
    // The lifecycle (`sbx_api::Lifecycle`, JSON), when its timeout acts, why
    // it ended and when, and the image build its disk sits on.
    "ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';
     ALTER TABLE sandboxes ADD COLUMN expires_at TEXT;
     ALTER TABLE sandboxes ADD COLUMN ended_reason TEXT;
     ALTER TABLE sandboxes ADD COLUMN ended_at TEXT;
     ALTER TABLE sandboxes ADD COLUMN image_build TEXT;",
    // Snapshots (their disks are files under `<data-dir>/snapshots`), and
    // the lifecycle events `GET /v1/events` reads.
    "CREATE TABLE snapshots (
         name        TEXT PRIMARY KEY,
         sandbox_id  TEXT NOT NULL,
         image       TEXT NOT NULL,
         image_build TEXT NOT NULL,
         disk_mb     INTEGER NOT NULL,
         created_at  TEXT NOT NULL
     );
     CREATE TABLE events (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         time        TEXT NOT NULL,
         sandbox_id  TEXT NOT NULL,
         kind        TEXT NOT NULL,
         reason      TEXT,
         detail      TEXT,
         at          TEXT
     );
     CREATE INDEX events_by_sandbox ON events (sandbox_id, seq);",
    // A restore between recording its new disk source and renaming the new
    // disk into place: the staged file's name in the sandbox's directory.
    "ALTER TABLE sandboxes ADD COLUMN restoring TEXT",
    // Preview URLs: the SHA-256 of each one's secret, never the secret.
    "CREATE TABLE previews (
         id          TEXT PRIMARY KEY,
         sandbox_id  TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
         port        INTEGER NOT NULL,
         created_at  TEXT NOT NULL,
         expires_at  TEXT NOT NULL,
         secret_hash BLOB NOT NULL UNIQUE
     );
     CREATE INDEX previews_by_sandbox ON previews (sandbox_id);",
];

/// Every column, in the order `read_row` reads them.
const COLUMNS: &str = "id, state, image, created_at, memory_mb, cpus, labels, env, disk_mb, \
     network, pooled, lifecycle, expires_at, ended_reason, ended_at, image_build";

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    let applied: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (version, statement) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(statement)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Audit times are stored in one fixed RFC 3339 shape (UTC, microseconds,
/// `Z`) so that text order is time order and `since` is a range scan.
fn audit_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn scopes_to_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL is durable across an orchestrator crash under WAL; only a
        // power loss can drop the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Per connection, and off by default: the tokens' cascade needs it.
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    #[cfg(test)]
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (statements are atomic), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let sandbox = &record.sandbox;
        self.conn().execute(
            &format!(
                "INSERT INTO sandboxes ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ),
            params![
                sandbox.id,
                sandbox.state.as_str(),
                sandbox.image,
                sandbox.created_at.to_rfc3339(),
                sandbox.memory_mb as i64,
                sandbox.cpus,
                to_json(&sandbox.labels),
                to_json(&record.env),
                sandbox.disk_mb.map(|mb| mb as i64),
                network_json(&sandbox.network),
                record.pooled,
                lifecycle_json(&sandbox.lifecycle),
                sandbox.expires_at.map(|time| time.to_rfc3339()),
                sandbox.ended_reason,
                record.ended_at.map(|time| time.to_rfc3339()),
                record
                    .image_build
                    .as_ref()
                    .map(|path| path.to_string_lossy().into_owned()),
            ],
        )?;
        Ok(())
    }

    /// Sets when a sandbox's timeout acts (none: never); false when the
    /// sandbox is not stored.
    pub fn set_expiry(&self, id: &str, at: Option<DateTime<Utc>>) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sandboxes SET expires_at = ?2 WHERE id = ?1",
            params![id, at.map(|time| time.to_rfc3339())],
        )?;
        Ok(changed > 0)
    }

    /// Records why a sandbox ended (or failed), and when.
    pub fn set_ended(&self, id: &str, reason: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET ended_reason = ?2, ended_at = ?3 WHERE id = ?1",
            params![id, reason, at.to_rfc3339()],
        )?;
        Ok(())
    }

    /// Points a sandbox at another disk's image (a restore from a snapshot
    /// of another image, or of another size).
    /// Records a restore's new disk source, and `staged`, the file (in the
    /// sandbox's directory) that becomes its disk: until
    /// [`Store::finish_restore`], recovery completes the rename (see
    /// `Manager::recover`).
    pub fn set_disk_source(
        &self,
        id: &str,
        image: &str,
        image_build: &Path,
        disk_mb: u64,
        staged: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET image = ?2, image_build = ?3, disk_mb = ?4, restoring = ?5 \
             WHERE id = ?1",
            params![
                id,
                image,
                image_build.to_string_lossy(),
                disk_mb as i64,
                staged
            ],
        )?;
        Ok(())
    }

    /// The staged disk is in place: nothing of the restore is left to do.
    pub fn finish_restore(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET restoring = NULL WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Sandboxes whose restore was recorded but maybe not renamed into
    /// place: (id, staged file name).
    pub fn unfinished_restores(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached("SELECT id, restoring FROM sandboxes WHERE restoring IS NOT NULL")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Hands a running pooled sandbox to a client: it takes the claim's
    /// creation time, labels, network policy and lifecycle. False when `id`
    /// is not a running pooled sandbox (any more).
    pub fn claim_pooled(&self, id: &str, claim: &Sandbox) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sandboxes SET pooled = 0, created_at = ?2, labels = ?3, network = ?4, \
             lifecycle = ?5, expires_at = ?6 WHERE id = ?1 AND pooled = 1 AND state = ?7",
            params![
                id,
                claim.created_at.to_rfc3339(),
                to_json(&claim.labels),
                network_json(&claim.network),
                lifecycle_json(&claim.lifecycle),
                claim.expires_at.map(|time| time.to_rfc3339()),
                SandboxState::Running.as_str(),
            ],
        )?;
        Ok(changed > 0)
    }

    /// Gives a sandbox a timeout of `seconds`, acting `at`.
    pub fn set_timeout(
        &self,
        id: &str,
        seconds: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sandboxes SET lifecycle = json_set(lifecycle, '$.timeout_s', ?2), \
             expires_at = ?3 WHERE id = ?1",
            params![id, seconds as i64, at.to_rfc3339()],
        )?;
        Ok(changed > 0)
    }

    /// Replaces the network policy of a sandbox that is in state `when`;
    /// returns false when there is no such sandbox in that state.
    pub fn set_network(
        &self,
        id: &str,
        when: SandboxState,
        network: &NetworkPolicy,
    ) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE sandboxes SET network = ?3 WHERE id = ?1 AND state = ?2",
            params![id, when.as_str(), network_json(network)],
        )?;
        Ok(changed > 0)
    }

    /// Applies `transition` to sandbox `id` if the lifecycle table allows
    /// it from the sandbox's current state: one conditional update, so of
    /// two racing transitions only one wins. False when it was not allowed
    /// (or the sandbox is not stored).
    pub fn transition(&self, id: &str, transition: Transition) -> Result<bool, StoreError> {
        let (from, to) = transition.rule();
        let changed = self.conn().execute(
            "UPDATE sandboxes SET state = ?2 WHERE id = ?1 \
             AND state IN (SELECT value FROM json_each(?3))",
            params![id, to.as_str(), state_list(from)],
        )?;
        Ok(changed > 0)
    }

    /// [`Store::transition`] to an end (`failed`), with why and when in the
    /// same update: no reader sees the end without its reason.
    pub fn transition_ended(
        &self,
        id: &str,
        transition: Transition,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (from, to) = transition.rule();
        let changed = self.conn().execute(
            "UPDATE sandboxes SET state = ?2, ended_reason = ?4, ended_at = ?5 WHERE id = ?1 \
             AND state IN (SELECT value FROM json_each(?3))",
            params![id, to.as_str(), state_list(from), reason, at.to_rfc3339()],
        )?;
        Ok(changed > 0)
    }

    /// Removes the sandbox, and with it (by cascade) its tokens.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"))?;
        statement
            .query_row(params![id], read_row)
            .optional()?
            .transpose()
    }

    /// How many clients' sandboxes (pooled ones apart) are in each state;
    /// states with none are absent.
    pub fn count_by_state(&self) -> Result<Vec<(SandboxState, u64)>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT state, COUNT(*) FROM sandboxes WHERE pooled = 0 GROUP BY state",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (state, count) = row?;
            let state = SandboxState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                id: "(count)".into(),
                reason: format!("unknown state {state:?}"),
            })?;
            counts.push((state, count));
        }
        Ok(counts)
    }

    /// Every sandbox with a disk: (id, state, disk_mb). What the storage
    /// accounting reads per admission, without decoding whole records.
    pub fn disks(&self) -> Result<Vec<(String, SandboxState, u64)>, StoreError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare_cached("SELECT id, state, disk_mb FROM sandboxes WHERE disk_mb IS NOT NULL")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut disks = Vec::new();
        for row in rows {
            let (id, state, disk_mb) = row?;
            let state = SandboxState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                id: id.clone(),
                reason: format!("unknown state {state:?}"),
            })?;
            disks.push((id, state, u64::try_from(disk_mb).unwrap_or(0)));
        }
        Ok(disks)
    }

    pub fn list(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at, id"
        ))?;
        let rows = statement.query_map([], read_row)?;
        rows.map(|row| row?).collect()
    }
}

impl Store {
    /// Stores a token; false when it is bound to a sandbox that is not
    /// stored (never was, or was deleted meanwhile).
    pub fn insert_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        let info = &token.info;
        let inserted = self.conn().execute(
            "INSERT INTO tokens
                 (id, name, secret_hash, scopes, sandbox_id, created_at, expires_at, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                info.id,
                info.name,
                &token.secret_hash[..],
                scopes_to_text(&info.scopes),
                info.sandbox,
                info.created_at.to_rfc3339(),
                info.expires_at.map(|time| time.to_rfc3339()),
                info.created_by,
            ],
        );
        match inserted {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(failure, _))
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
            {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    pub fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_hash = ?1"
        ))?;
        statement
            .query_row(params![&secret_hash[..]], read_token)
            .optional()?
            .transpose()
    }

    pub fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?;
        statement
            .query_row(params![id], read_token)
            .optional()?
            .transpose()
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
        ))?;
        let rows = statement.query_map([], read_token)?;
        rows.map(|row| row?).collect()
    }

    /// Deletes a token; false when there was none with this id.
    pub fn remove_token(&self, id: &str) -> Result<bool, StoreError> {
        let removed = self
            .conn()
            .execute("DELETE FROM tokens WHERE id = ?1", params![id])?;
        Ok(removed > 0)
    }

    /// Appends audit entries in one transaction (one WAL commit for the
    /// batch); returns them as stored, with their sequence numbers.
    pub fn insert_audit(&self, entries: &[AuditEntry]) -> Result<Vec<AuditRecord>, StoreError> {
        let mut conn = self.conn();
        let transaction = conn.transaction()?;
        let mut stored = Vec::with_capacity(entries.len());
        {
            let mut statement = transaction.prepare_cached(
                "INSERT INTO audit
                     (time, identity, token_id, method, route, sandbox_id, summary, status,
                      duration_us, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for entry in entries {
                // What is read back later has microseconds; so does this.
                let time = entry.time.trunc_subsecs(6);
                let duration_us = i64::try_from(entry.duration.as_micros()).unwrap_or(i64::MAX);
                statement.execute(params![
                    audit_time(&time),
                    entry.identity,
                    entry.token_id,
                    entry.method,
                    entry.route,
                    entry.sandbox,
                    entry.summary,
                    entry.status,
                    duration_us,
                    entry.request_id,
                ])?;
                stored.push(AuditRecord {
                    seq: transaction.last_insert_rowid().unsigned_abs(),
                    time,
                    identity: entry.identity.clone(),
                    token_id: entry.token_id.clone(),
                    method: entry.method.clone(),
                    route: entry.route.clone(),
                    sandbox: entry.sandbox.clone(),
                    summary: entry.summary.clone(),
                    status: entry.status,
                    duration_us: duration_us.unsigned_abs(),
                    request_id: entry.request_id.clone(),
                });
            }
        }
        transaction.commit()?;
        Ok(stored)
    }

    /// Audit records matching `filter`, newest first.
    pub fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT seq, time, identity, token_id, method, route, sandbox_id, summary, status,
                    duration_us, request_id
             FROM audit
             WHERE (?1 IS NULL OR sandbox_id = ?1) AND (?2 IS NULL OR time >= ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![
                filter.sandbox,
                filter.since.as_ref().map(audit_time),
                filter.limit
            ],
            read_audit,
        )?;
        rows.map(|row| row?).collect()
    }
}

const TOKEN_COLUMNS: &str =
    "id, name, secret_hash, scopes, sandbox_id, created_at, expires_at, created_by";

fn read_token(row: &Row<'_>) -> rusqlite::Result<Result<TokenRecord, StoreError>> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(2)?;
    let scopes: String = row.get(3)?;
    let created_at: String = row.get(5)?;
    let expires_at: Option<String> = row.get(6)?;
    let corrupt = |reason: String| StoreError::CorruptRow {
        table: "tokens",
        id: id.clone(),
        reason,
    };
    let time = |text: &str, field: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|err| corrupt(format!("{field}: {err}")))
    };
    let decoded = (|| {
        Ok(TokenRecord {
            secret_hash: hash
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(format!("secret_hash of {} bytes", hash.len())))?,
            info: TokenInfo {
                name: row.get(1).map_err(StoreError::from)?,
                scopes: scopes
                    .split_whitespace()
                    .map(|scope| scope.parse().map_err(corrupt))
                    .collect::<Result<_, _>>()?,
                sandbox: row.get(4).map_err(StoreError::from)?,
                created_at: time(&created_at, "created_at")?,
                expires_at: expires_at
                    .as_deref()
                    .map(|text| time(text, "expires_at"))
                    .transpose()?,
                created_by: row.get(7).map_err(StoreError::from)?,
                id: id.clone(),
            },
        })
    })();
    Ok(decoded)
}

fn read_audit(row: &Row<'_>) -> rusqlite::Result<Result<AuditRecord, StoreError>> {
    let seq: i64 = row.get(0)?;
    let time: String = row.get(1)?;
    let time = match DateTime::parse_from_rfc3339(&time) {
        Ok(time) => time.with_timezone(&Utc),
        Err(err) => {
            return Ok(Err(StoreError::CorruptRow {
                table: "audit",
                id: seq.to_string(),
                reason: format!("time: {err}"),
            }))
        }
    };
    let duration_us: i64 = row.get(9)?;
    Ok(Ok(AuditRecord {
        seq: seq.unsigned_abs(),
        time,
        identity: row.get(2)?,
        token_id: row.get(3)?,
        method: row.get(4)?,
        route: row.get(5)?,
        sandbox: row.get(6)?,
        summary: row.get(7)?,
        status: row.get(8)?,
        duration_us: duration_us.unsigned_abs(),
        request_id: row.get(10)?,
    }))
}

fn to_json(map: &BTreeMap<String, String>) -> String {
    serde_json::to_string(map).expect("a string map always serializes")
}

fn lifecycle_json(lifecycle: &sbx_api::Lifecycle) -> String {
    serde_json::to_string(lifecycle).expect("a lifecycle always serializes")
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc))
}

fn network_json(network: &NetworkPolicy) -> String {
    serde_json::to_string(network).expect("a list of strings always serializes")
}

/// `states` as the JSON list the transitions' `json_each` reads.
fn state_list(states: &[SandboxState]) -> String {
    let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
    serde_json::to_string(&names).expect("a list of strings always serializes")
}

fn read_row(row: &Row<'_>) -> rusqlite::Result<Result<SandboxRecord, StoreError>> {
    let id: String = row.get(0)?;
    let state: String = row.get(1)?;
    let created_at: String = row.get(3)?;
    let labels: String = row.get(6)?;
    let env: String = row.get(7)?;
    let memory_mb: i64 = row.get(4)?;
    let disk_mb: Option<i64> = row.get(8)?;
    let network: String = row.get(9)?;
    let pooled: bool = row.get(10)?;
    let lifecycle: String = row.get(11)?;
    let expires_at: Option<String> = row.get(12)?;
    let ended_reason: Option<String> = row.get(13)?;
    let ended_at: Option<String> = row.get(14)?;
    let image_build: Option<String> = row.get(15)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.clone(),
        reason,
    };
    let decoded = (|| {
        Ok(SandboxRecord {
            sandbox: Sandbox {
                state: SandboxState::parse(&state)
                    .ok_or_else(|| corrupt(format!("unknown state {state:?}")))?,
                image: row.get(2).map_err(StoreError::from)?,
                created_at: DateTime::parse_from_rfc3339(&created_at)
                    .map_err(|err| corrupt(format!("created_at: {err}")))?
                    .with_timezone(&Utc),
                memory_mb: u64::try_from(memory_mb)
                    .map_err(|_| corrupt(format!("memory_mb {memory_mb}")))?,
                cpus: row.get(5).map_err(StoreError::from)?,
                disk_mb: disk_mb
                    .map(|mb| u64::try_from(mb).map_err(|_| corrupt(format!("disk_mb {mb}"))))
                    .transpose()?,
                labels: serde_json::from_str(&labels)
                    .map_err(|err| corrupt(format!("labels: {err}")))?,
                network: serde_json::from_str(&network)
                    .map_err(|err| corrupt(format!("network: {err}")))?,
                lifecycle: serde_json::from_str(&lifecycle)
                    .map_err(|err| corrupt(format!("lifecycle: {err}")))?,
                expires_at: expires_at
                    .map(|text| {
                        parse_time(&text).map_err(|err| corrupt(format!("expires_at: {err}")))
                    })
                    .transpose()?,
                idle_since: None,
                ended_reason,
                id: id.clone(),
            },
            env: serde_json::from_str(&env).map_err(|err| corrupt(format!("env: {err}")))?,
            pooled,
            ended_at: ended_at
                .map(|text| parse_time(&text).map_err(|err| corrupt(format!("ended_at: {err}"))))
                .transpose()?,
            image_build: image_build.map(PathBuf::from),
        })
    })();
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            sandbox: Sandbox {
                id: id.into(),
                state: SandboxState::Creating,
                image: "base".into(),
                created_at: Utc::now(),
                memory_mb: 512,
                cpus: 1.0,
                disk_mb: Some(1024),
                labels: BTreeMap::from([("team".into(), "infra".into())]),
                network: NetworkPolicy {
                    egress: vec!["github.com:443".into(), "*.pypi.org".into()],
                },
                lifecycle: Default::default(),
                expires_at: None,
                idle_since: None,
                ended_reason: None,
            },
            env: BTreeMap::from([("SECRET".into(), "x".into())]),
            pooled: false,
            image_build: Some(PathBuf::from("/images/.store/base-1/rootfs")),
            ended_at: None,
        }
    }

    #[test]
    fn insert_get_update_list_remove() {
        let store = Store::in_memory().expect("open");
        let mut first = record("aaaa");
        store.insert(&first).expect("insert");
        store.insert(&record("bbbb")).expect("insert");
        assert!(store.insert(&record("aaaa")).is_err(), "ids are unique");

        assert!(store.transition("aaaa", Transition::Ready).expect("update"));
        assert!(!store.transition("zzzz", Transition::Ready).expect("update"));
        first.sandbox.state = SandboxState::Running;
        let loaded = store.get("aaaa").expect("get").expect("present");
        assert_eq!(loaded.env, first.env);
        assert_eq!(loaded.sandbox.labels, first.sandbox.labels);
        assert_eq!(loaded.sandbox.disk_mb, Some(1024));
        assert_eq!(loaded.sandbox.network, first.sandbox.network);
        assert_eq!(loaded.sandbox.state, SandboxState::Running);
        assert_eq!(
            loaded.sandbox.created_at.timestamp_micros(),
            first.sandbox.created_at.timestamp_micros()
        );

        assert!(
            !store.transition("aaaa", Transition::Ready).expect("update"),
            "already running"
        );
        assert!(store
            .transition("aaaa", Transition::Delete)
            .expect("transition"));
        assert!(
            !store
                .transition("aaaa", Transition::Delete)
                .expect("update"),
            "a second delete loses"
        );
        assert!(store
            .transition("aaaa", Transition::TeardownFailed)
            .expect("update"));
        assert_eq!(
            store
                .get("aaaa")
                .expect("get")
                .expect("present")
                .sandbox
                .state,
            SandboxState::Failed
        );

        assert_eq!(store.list().expect("list").len(), 2);
        store.remove("aaaa").expect("remove");
        assert!(store.get("aaaa").expect("get").is_none());
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn states_are_counted_without_pooled_sandboxes() {
        let store = Store::in_memory().expect("open");
        assert!(store.count_by_state().expect("count").is_empty());
        for id in ["aaaa", "bbbb", "cccc"] {
            store.insert(&record(id)).expect("insert");
        }
        store
            .insert(&SandboxRecord {
                pooled: true,
                ..record("dddd")
            })
            .expect("insert");
        for id in ["aaaa", "bbbb", "dddd"] {
            assert!(store.transition(id, Transition::Ready).expect("ready"));
        }
        let mut counts = store.count_by_state().expect("count");
        counts.sort_by_key(|(state, _)| state.as_str());
        assert_eq!(
            counts,
            [(SandboxState::Creating, 1), (SandboxState::Running, 2)]
        );
    }

    #[test]
    fn a_pooled_sandbox_is_claimed_once_and_only_when_running() {
        let store = Store::in_memory().expect("open");
        let pooled = SandboxRecord {
            pooled: true,
            ..record("aaaa")
        };
        store.insert(&pooled).expect("insert");
        assert!(store.get("aaaa").expect("get").expect("present").pooled);
        let labels = BTreeMap::from([("owner".into(), "agent-7".into())]);
        let network = NetworkPolicy {
            egress: vec!["pypi.org".into()],
        };
        let now = Utc::now();
        let claim = Sandbox {
            created_at: now,
            labels: labels.clone(),
            network: network.clone(),
            lifecycle: sbx_api::Lifecycle {
                timeout_s: Some(60),
                ..Default::default()
            },
            expires_at: Some(now),
            ..record("aaaa").sandbox
        };
        assert!(
            !store.claim_pooled("aaaa", &claim).expect("claim"),
            "still creating"
        );
        store.transition("aaaa", Transition::Ready).expect("update");
        assert!(store.claim_pooled("aaaa", &claim).expect("claim"));
        assert!(
            !store.claim_pooled("aaaa", &claim).expect("claim"),
            "claimed once"
        );
        let claimed = store.get("aaaa").expect("get").expect("present");
        assert!(!claimed.pooled);
        assert_eq!(claimed.sandbox.labels, labels);
        assert_eq!(claimed.sandbox.network, network);
        assert_eq!(claimed.sandbox.lifecycle.timeout_s, Some(60));
        assert!(claimed.sandbox.expires_at.is_some());
        assert_eq!(
            claimed.sandbox.created_at.timestamp_micros(),
            now.timestamp_micros()
        );
        assert!(!store.claim_pooled("zzzz", &claim).expect("claim"));
    }

    #[test]
    fn network_policy_changes_only_in_the_given_state() {
        let store = Store::in_memory().expect("open");
        store.insert(&record("aaaa")).expect("insert");
        let open = NetworkPolicy {
            egress: vec!["example.com".into()],
        };
        assert!(!store
            .set_network("aaaa", SandboxState::Running, &open)
            .expect("update"));
        store.transition("aaaa", Transition::Ready).expect("update");
        assert!(store
            .set_network("aaaa", SandboxState::Running, &open)
            .expect("update"));
        assert!(!store
            .set_network("zzzz", SandboxState::Running, &open)
            .expect("update"));
        let loaded = store.get("aaaa").expect("get").expect("present");
        assert_eq!(loaded.sandbox.network, open);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sbx.db");
        Store::open(&path)
            .expect("open")
            .insert(&record("cccc"))
            .expect("insert");
        let reopened = Store::open(&path).expect("reopen");
        assert!(reopened.get("cccc").expect("get").is_some());
    }

    #[test]
    fn migrates_a_database_from_before_the_migrations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sbx.db");
        let old = Connection::open(&path).expect("open");
        old.execute_batch(SCHEMA).expect("first schema");
        old.execute(
            "INSERT INTO sandboxes VALUES ('dddd', 'running', 'base', ?1, 512, 1.0, '{}', '{}')",
            params![Utc::now().to_rfc3339()],
        )
        .expect("old row");
        old.execute(
            "INSERT INTO audit (time, identity, method, route, status, duration_us)
             VALUES ('2026-01-01T00:00:00.000000Z', 'admin', 'GET', '/v1/info', 200, 5)",
            [],
        )
        .expect("old audit row");
        drop(old);
        let store = Store::open(&path).expect("migrates");
        let loaded = store.get("dddd").expect("get").expect("present");
        assert_eq!(loaded.sandbox.disk_mb, None);
        assert!(loaded.sandbox.network.egress.is_empty(), "no egress");
        let all = AuditFilter {
            limit: 10,
            ..AuditFilter::default()
        };
        let audit = store.query_audit(&all).expect("query");
        assert_eq!(audit.len(), 1);
        assert_eq!(
            audit[0].request_id, None,
            "older records have no request id"
        );
        drop(store);
        Store::open(&path).expect("opening again applies nothing twice");
    }
}
