//! The persistent job queue: one SQLite file under the server's folder. Jobs and their state
//! survive a restart; a job that was running when the server stopped is queued again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::{Error, Result};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the worker.
    Queued,
    /// Being generated.
    Running,
    /// Finished; its outputs are there.
    Done,
    /// Stopped by an error (see `error`).
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// The job's id (letters, digits, `_`).
    pub id: String,
    /// Where it stands.
    pub state: JobState,
    /// The prompt (for lists).
    pub prompt: String,
    /// Seconds since the Unix epoch: submitted, started, finished.
    pub created: f64,
    /// When the worker took it.
    pub started: Option<f64>,
    /// When it ended.
    pub finished: Option<f64>,
    /// Sections finished, of `sections`.
    pub sections_done: u32,
    /// Sections in the job (0 until it starts).
    pub sections: u32,
    /// Steps finished in the current section, of `steps`.
    pub step: u32,
    /// Steps per section.
    pub steps: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// The request, as the run record stores it.
    #[schema(value_type = Object)]
    pub request: serde_json::Value,
}

/// Progress of a running job, as stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub sections_done: u32,
    pub sections: u32,
    pub step: u32,
    pub steps: u32,
}

/// The queue on SQLite.
pub struct JobStore {
    db: Mutex<Connection>,
    path: PathBuf,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl JobStore {
    /// Opens (or creates) the queue file, and queues again the jobs a stopped server left
    /// running.
    pub fn open(path: &Path) -> Result<Self> {
        let fail = |e: rusqlite::Error| Error::Queue {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let db = Connection::open(path).map_err(fail)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS jobs (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL UNIQUE,
                 state TEXT NOT NULL,
                 prompt TEXT NOT NULL,
                 request TEXT NOT NULL,
                 created REAL NOT NULL,
                 started REAL,
                 finished REAL,
                 error TEXT,
                 sections_done INTEGER NOT NULL DEFAULT 0,
                 sections INTEGER NOT NULL DEFAULT 0,
                 step INTEGER NOT NULL DEFAULT 0,
                 steps INTEGER NOT NULL DEFAULT 0
             );
             UPDATE jobs SET state = 'queued', started = NULL, step = 0, sections_done = 0
                 WHERE state = 'running';",
        )
        .map_err(fail)?;
        Ok(Self {
            db: Mutex::new(db),
            path: path.to_path_buf(),
        })
    }

    fn with<R>(&self, work: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        work(&db).map_err(|e| Error::Queue {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Adds a queued job.
    pub fn insert(&self, id: &str, prompt: &str, request_json: &str) -> Result<()> {
        self.with(|db| {
            db.execute(
                "INSERT INTO jobs (id, state, prompt, request, created) VALUES (?1, 'queued', ?2, ?3, ?4)",
                params![id, prompt, request_json, now()],
            )
            .map(|_| ())
        })
    }

    /// Jobs waiting.
    pub fn queued(&self) -> Result<u32> {
        self.with(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued'",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Takes the oldest queued job: marks it running and returns its id and request JSON.
    pub fn claim(&self) -> Result<Option<(String, String)>> {
        self.with(|db| {
            let next: Option<(String, String)> = db
                .query_row(
                    "SELECT id, request FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, _)) = &next {
                db.execute(
                    "UPDATE jobs SET state = 'running', started = ?2 WHERE id = ?1",
                    params![id, now()],
                )?;
            }
            Ok(next)
        })
    }

    /// Records a running job's progress.
    pub fn progress(&self, id: &str, p: Progress) -> Result<()> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET sections_done = ?2, sections = ?3, step = ?4, steps = ?5
                 WHERE id = ?1",
                params![id, p.sections_done, p.sections, p.step, p.steps],
            )
            .map(|_| ())
        })
    }

    /// Ends a job (`error` for a failed one).
    pub fn finish(&self, id: &str, state: JobState, error: Option<&str>) -> Result<()> {
        self.with(|db| {
            db.execute(
                "UPDATE jobs SET state = ?2, finished = ?3, error = ?4 WHERE id = ?1",
                params![id, state.name(), now(), error],
            )
            .map(|_| ())
        })
    }

    /// Cancels a queued job at once; returns its state before.
    pub fn cancel_queued(&self, id: &str) -> Result<Option<JobState>> {
        let before = self.get(id)?.map(|j| j.state);
        if before == Some(JobState::Queued) {
            self.finish(id, JobState::Cancelled, None)?;
        }
        Ok(before)
    }

    /// Removes a job's row.
    pub fn delete(&self, id: &str) -> Result<bool> {
        self.with(|db| {
            db.execute("DELETE FROM jobs WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Option<JobView>> {
        self.with(|db| {
            db.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], view_of_row)
                .optional()
        })
    }

    /// Every job, newest first.
    pub fn list(&self) -> Result<Vec<JobView>> {
        self.with(|db| {
            let mut statement = db.prepare(&format!("{SELECT} ORDER BY seq DESC"))?;
            let rows = statement.query_map([], view_of_row)?;
            rows.collect()
        })
    }

    /// The stored request JSON of a job.
    pub fn request_json(&self, id: &str) -> Result<Option<String>> {
        self.with(|db| {
            db.query_row("SELECT request FROM jobs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()
        })
    }
}

const SELECT: &str = "SELECT id, state, prompt, request, created, started, finished, error, \
                      sections_done, sections, step, steps FROM jobs";

fn view_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobView> {
    let state: String = r.get(1)?;
    let request: String = r.get(3)?;
    Ok(JobView {
        id: r.get(0)?,
        state: JobState::parse(&state),
        prompt: r.get(2)?,
        request: serde_json::from_str(&request).unwrap_or(serde_json::Value::Null),
        created: r.get(4)?,
        started: r.get(5)?,
        finished: r.get(6)?,
        error: r.get(7)?,
        sections_done: r.get(8)?,
        sections: r.get(9)?,
        step: r.get(10)?,
        steps: r.get(11)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_survive_a_restart_and_a_running_job_is_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite");
        {
            let store = JobStore::open(&path).unwrap();
            store.insert("a", "first", "{}").unwrap();
            store.insert("b", "second", "{}").unwrap();
            assert_eq!(store.queued().unwrap(), 2);
            let (id, _) = store.claim().unwrap().unwrap();
            assert_eq!(id, "a");
            assert_eq!(store.get("a").unwrap().unwrap().state, JobState::Running);
        }
        let store = JobStore::open(&path).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().state, JobState::Queued);
        // Submission order is kept.
        assert_eq!(store.claim().unwrap().unwrap().0, "a");
        store.finish("a", JobState::Done, None).unwrap();
        assert_eq!(store.claim().unwrap().unwrap().0, "b");
        assert!(store.claim().unwrap().is_none());
        let list = store.list().unwrap();
        assert_eq!(
            list.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert!(store.delete("a").unwrap());
        assert!(store.get("a").unwrap().is_none());
    }
}
