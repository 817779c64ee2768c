//! Status of every background mechanism, in one place.
//!
//! Each mechanism (the store writer, replicated commits, push, pull,
//! anti-entropy, the membership prober, the sensors) registers a
//! [`StatusSource`] with the node's [`Workers`]; `/api/introspection`
//! (`workers`), `/metrics` (`hub_worker_*{worker=…}`) and
//! `hub inspect workers` read them all through [`Workers::statuses`]. As in
//! Garage's `Worker::status()`, a status is computed when asked for, so a
//! mechanism that already counts what it does (the committer's stats) needs
//! no extra bookkeeping; one that does not updates a [`Worker`] cell.
//!
//! Cost: one small mutex per worker, taken once per run (a commit group, a
//! tick, a snapshot of the cluster view) and per read.

use std::fmt::Display;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::store::commit::CommitObserver;

/// What a worker is doing now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Waiting for work.
    #[default]
    Idle,
    /// Has work queued or in progress.
    Busy,
    /// Its last run failed.
    Failing,
    /// Stopped (node shutting down).
    Stopped,
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Failing => "failing",
            WorkerState::Stopped => "stopped",
        })
    }
}

/// One worker's status, as served by the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    /// Items waiting for this worker (jobs, commits, frames, sessions).
    pub queue: u64,
    /// Runs so far (groups written, ticks, pulls sent, sessions, …).
    pub runs: u64,
    pub errors: u64,
    /// Errors since the last run that succeeded.
    pub consecutive_errors: u64,
    /// Wall-clock milliseconds of the last run, if any.
    pub last_run_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Anything that can report a worker status.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> WorkerStatus;
}

/// The node's registry of workers.
#[derive(Default)]
pub struct Workers {
    sources: Mutex<Vec<Arc<dyn StatusSource>>>,
}

impl Workers {
    pub fn new() -> Arc<Workers> {
        Arc::new(Workers::default())
    }

    pub fn add(&self, source: Arc<dyn StatusSource>) {
        if let Ok(mut s) = self.sources.lock() {
            s.push(source);
        }
    }

    /// Registers and returns a new [`Worker`] cell.
    pub fn register(&self, name: &str) -> Arc<Worker> {
        let w = Arc::new(Worker::new(name));
        self.add(w.clone());
        w
    }

    /// Every worker's status, in registration order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        let sources = match self.sources.lock() {
            Ok(s) => s.clone(),
            Err(_) => return Vec::new(),
        };
        sources.iter().map(|s| s.status()).collect()
    }
}

/// A status cell a mechanism updates as it runs.
pub struct Worker {
    s: Mutex<WorkerStatus>,
}

impl Worker {
    pub fn new(name: &str) -> Worker {
        Worker {
            s: Mutex::new(WorkerStatus {
                name: name.to_string(),
                ..WorkerStatus::default()
            }),
        }
    }

    fn with(&self, f: impl FnOnce(&mut WorkerStatus)) {
        if let Ok(mut s) = self.s.lock() {
            f(&mut s);
        }
    }

    /// A run that succeeded at `now_ms` (wall clock).
    pub fn ok(&self, now_ms: u64) {
        self.with(|s| {
            s.runs += 1;
            s.consecutive_errors = 0;
            s.last_run_ms = Some(now_ms);
            s.state = if s.queue > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            };
        });
    }

    /// A run that failed at `now_ms`.
    pub fn error(&self, now_ms: u64, error: &dyn Display) {
        self.with(|s| {
            s.runs += 1;
            s.errors += 1;
            s.consecutive_errors += 1;
            s.last_run_ms = Some(now_ms);
            s.last_error = Some(error.to_string());
            s.state = WorkerState::Failing;
        });
    }

    pub fn set_queue(&self, queue: u64) {
        self.with(|s| {
            s.queue = queue;
            if s.state != WorkerState::Failing && s.state != WorkerState::Stopped {
                s.state = if queue > 0 {
                    WorkerState::Busy
                } else {
                    WorkerState::Idle
                };
            }
        });
    }

    /// Takes counters a mechanism keeps itself (cumulative `runs` and
    /// `errors`); consecutive errors grow while only errors advance and
    /// reset when a run succeeds.
    pub fn observe(&self, now_ms: u64, runs: u64, errors: u64, last_error: Option<String>) {
        self.with(|s| {
            let new_runs = runs.saturating_sub(s.runs);
            let new_errors = errors.saturating_sub(s.errors);
            if new_runs == 0 && new_errors == 0 {
                return;
            }
            if new_runs > new_errors {
                s.consecutive_errors = 0;
                s.state = WorkerState::Idle;
            } else {
                s.consecutive_errors += new_errors;
                s.state = WorkerState::Failing;
            }
            s.runs = runs;
            s.errors = errors;
            s.last_run_ms = Some(now_ms);
            if last_error.is_some() {
                s.last_error = last_error;
            }
        });
    }

    pub fn stopped(&self) {
        self.with(|s| s.state = WorkerState::Stopped);
    }
}

impl StatusSource for Worker {
    fn status(&self) -> WorkerStatus {
        self.s.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The store writer, read from the counters it keeps anyway (without
/// keeping the writer alive).
pub struct CommitterStatus(pub CommitObserver);

impl StatusSource for CommitterStatus {
    fn status(&self) -> WorkerStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let st = self.0.stats();
        let queue = self.0.queue_len() as u64;
        let consecutive_errors = st.consecutive_failures.load(Relaxed);
        let last_run_ms = Some(st.last_run_ms.load(Relaxed)).filter(|ms| *ms > 0);
        WorkerStatus {
            name: "committer".into(),
            state: if consecutive_errors > 0 {
                WorkerState::Failing
            } else if queue > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            },
            queue,
            runs: st.groups.load(Relaxed),
            errors: st.failures.load(Relaxed),
            consecutive_errors,
            last_run_ms,
            last_error: st.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_errors_count_until_a_run_succeeds() {
        let workers = Workers::new();
        let w = workers.register("pull");
        w.error(1, &"disk full");
        w.error(2, &"disk full");
        let s = &workers.statuses()[0];
        assert_eq!((s.runs, s.errors, s.consecutive_errors), (2, 2, 2));
        assert_eq!(s.state, WorkerState::Failing);
        assert_eq!(s.last_error.as_deref(), Some("disk full"));
        w.ok(3);
        let s = &workers.statuses()[0];
        assert_eq!((s.runs, s.errors, s.consecutive_errors), (3, 2, 0));
        assert_eq!(s.state, WorkerState::Idle);
        assert_eq!(s.last_run_ms, Some(3));
    }

    #[test]
    fn observed_counters_give_consecutive_errors_and_state() {
        let w = Worker::new("anti-entropy");
        w.observe(10, 5, 0, None);
        w.observe(20, 7, 2, Some("peer down".into()));
        let s = w.status();
        assert_eq!((s.consecutive_errors, s.state), (2, WorkerState::Failing));
        w.observe(30, 8, 2, None);
        let s = w.status();
        assert_eq!((s.consecutive_errors, s.state), (0, WorkerState::Idle));
        assert_eq!(s.last_error.as_deref(), Some("peer down"));
    }
}
