//! The job database's tables and how their rows map to records: the schema, the job row, and the
//! gap-free event append. [`JobStore`](super::store::JobStore) owns the connection and the
//! transactions; this file owns the SQL shapes.

use super::job::JobState;
use super::record::{EventKind, JobEvent, JobRecord};
use super::store::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Row};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT NOT NULL UNIQUE,
    labels        TEXT NOT NULL,
    spec          TEXT NOT NULL,
    output_dir    TEXT NOT NULL,
    state         TEXT NOT NULL,
    create_ms     INTEGER NOT NULL,
    start_ms      INTEGER,
    end_ms        INTEGER,
    update_ms     INTEGER NOT NULL,
    progress      TEXT,
    error         TEXT,
    result        TEXT,
    restart_count INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, position);
CREATE INDEX IF NOT EXISTS jobs_by_output_dir ON jobs (output_dir);
CREATE TABLE IF NOT EXISTS events (
    job_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id  TEXT NOT NULL,
    step    INTEGER NOT NULL,
    path    TEXT NOT NULL,
    loss    REAL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
";

pub(super) const JOB_COLUMNS: &str =
    "position, job_id, labels, spec, state, create_ms, start_ms, end_ms, \
     update_ms, progress, error, result, restart_count";

pub(super) fn get_job(conn: &Connection, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"))?;
    let mut rows = stmt.query(params![job_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(job_from_row(row)?)),
        None => Ok(None),
    }
}

pub(super) fn job_from_row(row: &Row<'_>) -> Result<JobRecord, StoreError> {
    fn json<T: serde::de::DeserializeOwned>(text: Option<String>) -> Result<Option<T>, StoreError> {
        Ok(match text {
            Some(t) => Some(serde_json::from_str(&t)?),
            None => None,
        })
    }
    let state: String = row.get(4)?;
    Ok(JobRecord {
        position: row.get(0)?,
        job_id: row.get(1)?,
        labels: serde_json::from_str(&row.get::<_, String>(2)?)?,
        spec: serde_json::from_str(&row.get::<_, String>(3)?)?,
        state: JobState::parse(&state).ok_or(StoreError::UnknownState(state))?,
        create_ms: row.get(5)?,
        start_ms: row.get(6)?,
        end_ms: row.get(7)?,
        update_ms: row.get(8)?,
        progress: json(row.get(9)?)?,
        error: json(row.get(10)?)?,
        result: json(row.get(11)?)?,
        restart_count: row.get::<_, i64>(12)? as u32,
    })
}

/// Appends the next event of a job (sequence numbers come from the job row, so they have no gaps).
pub(super) fn append_event(
    tx: &Connection,
    job_id: &str,
    now: i64,
    kind: &EventKind,
) -> Result<JobEvent, StoreError> {
    let seq: Option<i64> = tx
        .query_row(
            "UPDATE jobs SET last_seq = last_seq + 1 WHERE job_id = ?1 RETURNING last_seq",
            params![job_id],
            |r| r.get(0),
        )
        .optional()?;
    let seq = seq.ok_or_else(|| StoreError::NotFound(job_id.into()))?;
    tx.execute(
        "INSERT INTO events (job_id, seq, time_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        params![job_id, seq, now, serde_json::to_string(kind)?],
    )?;
    Ok(JobEvent {
        job_id: job_id.into(),
        seq: seq as u64,
        time_ms: now,
        kind: kind.clone(),
    })
}
