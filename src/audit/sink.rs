//! [`PgSink`]: the file writer's ([`super::AuditLog`]) hand-off to the
//! PostgreSQL chain ([`PgAudit`]). Batches are queued in the order the writer
//! wrote them to its file (it submits under its lock) and stored by one task on
//! the sink's own small runtime, several queued batches per transaction. The
//! writer does not wait: each batch's requests are released by the task once
//! their lines are in the database, or in the fsync'd spool when the database
//! cannot take them (`serve`), so a proxy worker never blocks on a database
//! round trip and the next batch forms meanwhile. Without a spool (the CLI
//! writers, [`PgSink::start_strict`]) a batch the database does not take is the
//! caller's error (it undoes its change). docs/store.md "Audit".

use super::error::{io_err, AuditError};
use super::event::Event;
use super::pg::{db, PgAudit};
use deadpool_postgres::Pool;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the sink waits for its database round trip before the batch is spooled.
pub const DB_APPEND_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed round trip, batches go straight to the spool for this long
/// (an outage costs one timeout, not one per batch).
pub const DB_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The most events one transaction takes from the queue.
pub const MAX_EVENTS_PER_TXN: usize = 2048;

/// Called with a batch's events once they are stored (or could not be).
pub type Done = Box<dyn FnOnce(Vec<Event>, Result<(), AuditError>) + Send>;

struct Job {
    events: Vec<Event>,
    done: Done,
}

/// What the storing task owns.
struct Core {
    audit: PgAudit,
    spool: Option<PathBuf>,
    /// Events in the spool not yet drained (known without reading the file).
    spooled: bool,
    /// No database attempt before this instant (after a failure).
    retry_at: Option<Instant>,
}

pub struct PgSink {
    rt: Option<tokio::runtime::Runtime>,
    queue: tokio::sync::mpsc::UnboundedSender<Job>,
    replica: String,
}

impl Drop for PgSink {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Queued batches are dropped with their `Done`s: their requests fail closed.
            rt.shutdown_background();
        }
    }
}

/// A one-thread runtime for a sink and a pool built on it.
fn sink_runtime(
    make_pool: impl FnOnce() -> Result<Pool, String>,
    replica: &str,
) -> Result<(tokio::runtime::Runtime, Pool), AuditError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyward-audit-db")
        .enable_all()
        .build()
        .map_err(|e| db(replica, "runtime", e))?;
    let pool = {
        let _g = rt.handle().enter();
        make_pool().map_err(|e| db(replica, "pool", e))?
    };
    Ok((rt, pool))
}

impl PgSink {
    /// Starts the sink's runtime, builds the pool there (`make_pool`) and
    /// registers `replica`; `spool` is drained on the first write.
    pub fn start(
        make_pool: impl FnOnce() -> Result<Pool, String>,
        schema: &str,
        replica: &str,
        spool: &Path,
    ) -> Result<PgSink, AuditError> {
        let (rt, pool) = sink_runtime(make_pool, replica)?;
        let (schema_s, replica_s) = (schema.to_string(), replica.to_string());
        let audit = run_on(rt.handle(), async move {
            PgAudit::register(pool, &schema_s, &replica_s).await
        })
        .ok_or_else(|| db(replica, "register", "the audit runtime stopped"))??;
        let spooled = std::fs::metadata(spool)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        Ok(PgSink::run(rt, audit, Some(spool.to_path_buf()), spooled))
    }

    /// A sink without a spool for a one-shot writer (a CLI command): the chain
    /// `replica` is registered by its first line ([`PgAudit::lazy`]), and every
    /// batch is in the database when `append` returns, or `append` fails.
    pub fn start_strict(
        make_pool: impl FnOnce() -> Result<Pool, String>,
        schema: &str,
        replica: &str,
    ) -> Result<PgSink, AuditError> {
        let (rt, pool) = sink_runtime(make_pool, replica)?;
        let (schema_s, replica_s) = (schema.to_string(), replica.to_string());
        let audit = run_on(rt.handle(), async move {
            match tokio::time::timeout(
                DB_APPEND_TIMEOUT,
                PgAudit::lazy(pool, &schema_s, &replica_s),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(db(&replica_s, "connect", "timed out")),
            }
        })
        .ok_or_else(|| db(replica, "connect", "the audit runtime stopped"))??;
        Ok(PgSink::run(rt, audit, None, false))
    }

    fn run(
        rt: tokio::runtime::Runtime,
        audit: PgAudit,
        spool: Option<PathBuf>,
        spooled: bool,
    ) -> PgSink {
        let replica = audit.replica().to_string();
        let (queue, jobs) = tokio::sync::mpsc::unbounded_channel();
        let core = Core {
            audit,
            spool,
            spooled,
            retry_at: None,
        };
        rt.spawn(store_loop(core, jobs));
        PgSink {
            rt: Some(rt),
            queue,
            replica,
        }
    }

    /// The chain this sink writes.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Queues `events` (in the caller's order: submit under the writer's lock);
    /// `done` gets them back with the outcome. If the sink has stopped, `done`
    /// is called at once with an error.
    pub fn submit(&self, events: Vec<Event>, done: Done) {
        if let Err(tokio::sync::mpsc::error::SendError(job)) = self.queue.send(Job { events, done })
        {
            (job.done)(
                job.events,
                Err(db(&self.replica, "append", "the audit runtime stopped")),
            );
        }
    }

    /// [`Self::submit`] and wait (the CLI and admin writers, off the request path).
    pub fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            events.to_vec(),
            Box::new(move |_, r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(db(&self.replica, "append", "the audit runtime stopped")))
    }
}

/// Takes whatever is queued (up to [`MAX_EVENTS_PER_TXN`] events), stores it as
/// one batch, tells every job; in queue order, one batch at a time.
async fn store_loop(mut core: Core, mut jobs: tokio::sync::mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut n = first.events.len();
        let mut taken = vec![first];
        while n < MAX_EVENTS_PER_TXN {
            match jobs.try_recv() {
                Ok(job) => {
                    n += job.events.len();
                    taken.push(job);
                }
                Err(_) => break,
            }
        }
        let batch: Vec<Event> = taken
            .iter()
            .flat_map(|j| j.events.iter().cloned())
            .collect();
        let result = core.store(batch).await;
        for job in taken {
            let r = result.as_ref().map(|_| ()).map_err(AuditError::duplicate);
            (job.done)(job.events, r);
        }
    }
}

impl Core {
    /// Stores `events` (drained spool first); on a database failure spools them
    /// (without a spool: fails).
    async fn store(&mut self, events: Vec<Event>) -> Result<(), AuditError> {
        let Some(spool) = self.spool.clone() else {
            // SECURITY: no spool: a line the database did not take fails the
            // caller, who undoes the change it was about.
            return self.try_db(events).await;
        };
        let down = self.retry_at.is_some_and(|t| Instant::now() < t);
        if !down {
            let mut batch = if self.spooled {
                read_spool(&spool)?
            } else {
                Vec::new()
            };
            let drained = !batch.is_empty() || self.spooled;
            batch.extend(events.iter().cloned());
            match self.try_db(batch).await {
                Ok(()) => {
                    if drained {
                        clear_spool(&spool)?;
                        self.spooled = false;
                    }
                    self.retry_at = None;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, spool = %spool.display(), "audit database unavailable: spooling");
                    self.retry_at = Some(Instant::now() + DB_RETRY_AFTER);
                }
            }
        }
        // SECURITY: a line that reaches neither the database nor the fsync'd
        // spool fails the request closed (the caller's error).
        write_spool(&spool, &events)?;
        self.spooled = true;
        Ok(())
    }

    async fn try_db(&self, mut batch: Vec<Event>) -> Result<(), AuditError> {
        match tokio::time::timeout(DB_APPEND_TIMEOUT, self.audit.append(&mut batch)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(db(self.audit.replica(), "append", "timed out")),
        }
    }
}

/// Runs `fut` on `rt` and waits from a thread that is not one of `rt`'s
/// (`None`: the runtime stopped).
fn run_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().ok()
}

fn spool_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    io_err(path)
}

fn write_spool(path: &std::path::Path, events: &[Event]) -> Result<(), AuditError> {
    use std::io::Write;
    let err = spool_err(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(&err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(&err)?;
    let mut buf = Vec::new();
    for ev in events {
        serde_json::to_writer(&mut buf, ev)
            .map_err(|e| super::error::corrupt(path, e.to_string()))?;
        buf.push(b'\n');
    }
    f.write_all(&buf).map_err(&err)?;
    f.sync_all().map_err(&err)
}

fn read_spool(path: &std::path::Path) -> Result<Vec<Event>, AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(spool_err(path)(e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| super::error::corrupt(path, format!("spool: {e}")))
        })
        .collect()
}

fn clear_spool(path: &std::path::Path) -> Result<(), AuditError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(spool_err(path)(e)),
    }
}
