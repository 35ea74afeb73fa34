//! The audit log in PostgreSQL (issue 17, docs/store.md "Audit"): each replica
//! keeps its own hash chain in `audit(replica, seq, …)`, registered with its
//! head in `audit_replicas`. A batch is one transaction: lock this replica's
//! head row (never another replica's), render the lines off that head, insert
//! them with one multi-row statement, move the head. [`verify_pg`] proves each
//! chain complete (seq contiguous from 1, hashes chain, the registered head is
//! the last row) and names the replica and seq that break it; [`lines_pg`]
//! merges the chains by time for query/export, [`tail_pg`] and [`PgFollower`]
//! for tail. [`PgSink`] is the writer's handle: `serve` with a spool, the CLI
//! writers without one (a chain per command run).
//!
//! The pool is handed in (built by whoever owns `[store]`): audit imports no
//! other keyward module but leaves.

use super::encode::{chain_hash, render, split_hash, GENESIS_HASH};
use super::error::AuditError;
use super::event::Event;
use crate::clock::now_rfc3339;
use deadpool_postgres::Pool;

/// A handle on one replica's chain.
pub struct PgAudit {
    pool: Pool,
    schema: String,
    replica: String,
    /// The chain's `audit_replicas` row exists (else the first append adds it,
    /// in its own transaction, so a command that writes nothing leaves no chain).
    registered: std::sync::atomic::AtomicBool,
    /// The head this handle last wrote (seq, hash): the next batch is one
    /// statement that moves the head only if it is still there ([`Self::append`]).
    head: parking_lot::Mutex<Option<(i64, String)>>,
}

/// The error of a database step, naming the replica (never a credential: the
/// driver does not echo the password).
pub(super) fn db(replica: &str, step: &str, e: impl std::fmt::Display) -> AuditError {
    AuditError::Db {
        what: format!("replica {replica}"),
        message: format!("{step}: {e}"),
    }
}

/// A pool that could not hand out a connection: the driver's cause when it has one.
fn pool_err(replica: &str, e: deadpool_postgres::PoolError) -> AuditError {
    match &e {
        deadpool_postgres::PoolError::Backend(be) => db(replica, "connect", describe(be)),
        _ => db(replica, "connect", e),
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return format!("{} ({})", d.message(), d.code().code());
    }
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

impl PgAudit {
    /// Registers `replica` (once; a restart continues its chain) in an already
    /// migrated `schema`.
    pub async fn register(pool: Pool, schema: &str, replica: &str) -> Result<PgAudit, AuditError> {
        let c = pool.get().await.map_err(|e| pool_err(replica, e))?;
        c.execute(
            &format!(
                "INSERT INTO {schema}.audit_replicas (replica, head_seq, head_hash) \
                 VALUES ($1, 0, $2) ON CONFLICT (replica) DO NOTHING"
            ),
            &[&replica, &GENESIS_HASH],
        )
        .await
        .map_err(|e| db(replica, "register", describe(&e)))?;
        Ok(PgAudit {
            pool,
            schema: schema.to_string(),
            replica: replica.to_string(),
            registered: true.into(),
            head: parking_lot::Mutex::new(None),
        })
    }

    /// A chain registered by its first append (`keyward secret set` and the other
    /// CLI writers: one chain per command run, none for a command that failed
    /// before writing). Connects now, so an unreachable database fails the
    /// command before it changes anything.
    pub async fn lazy(pool: Pool, schema: &str, replica: &str) -> Result<PgAudit, AuditError> {
        drop(pool.get().await.map_err(|e| pool_err(replica, e))?);
        Ok(PgAudit {
            pool,
            schema: schema.to_string(),
            replica: replica.to_string(),
            registered: false.into(),
            head: parking_lot::Mutex::new(None),
        })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Chains and stores one event; returns its hash.
    pub async fn record(&self, ev: Event) -> Result<String, AuditError> {
        let mut evs = [ev];
        let mut hashes = self.append(&mut evs).await?;
        hashes
            .pop()
            .ok_or_else(|| db(&self.replica, "append", "no line was written"))
    }

    /// Chains `events` off this replica's head and stores them in one
    /// transaction; returns their hashes. On error nothing was stored.
    pub async fn append(&self, events: &mut [Event]) -> Result<Vec<String>, AuditError> {
        let ts = now_rfc3339();
        for ev in events.iter_mut().filter(|ev| ev.ts.is_empty()) {
            ev.ts.clone_from(&ts);
        }
        let known = self.head.lock().clone();
        if let Some((seq, prev)) = known {
            if let Some(hashes) = self.append_at(events, seq, prev).await? {
                return Ok(hashes);
            }
        }
        // First batch, or the head moved under us: lock it and read it.
        *self.head.lock() = None;
        self.append_locked(events).await
    }

    /// The hot path: one statement (its own transaction, one round trip, a
    /// cached prepared statement) that inserts the batch chained off `(seq,
    /// prev)` and moves the head, only if the head is still `(seq, prev)`.
    /// `None`: it was not (another writer with this replica id), nothing stored.
    async fn append_at(
        &self,
        events: &mut [Event],
        seq: i64,
        prev: String,
    ) -> Result<Option<Vec<String>>, AuditError> {
        let (r, s) = (&self.replica, &self.schema);
        let rows = Rows::render(events, seq, prev);
        let c = self.pool.get().await.map_err(|e| pool_err(r, e))?;
        let err = |e: tokio_postgres::Error| db(r, "append", describe(&e));
        // SECURITY: the head moves only from where this handle left it (the
        // UPDATE's row lock re-checks the condition under concurrency), so two
        // writers with one replica id cannot fork its chain; other replicas'
        // rows are never touched (no cross-replica lock on the hot path).
        let stmt = c
            .prepare_cached(&format!(
                "WITH moved AS (UPDATE {s}.audit_replicas SET head_seq = $2, head_hash = $3 \
                 WHERE replica = $1 AND head_seq = $4 AND head_hash = $5 RETURNING 1) \
                 INSERT INTO {s}.audit (replica, seq, ts, line, prev_hash, hash) \
                 SELECT $1, u.* FROM unnest($6::bigint[], $7::text[], $8::text[], \
                 $9::text[], $10::text[]) AS u WHERE EXISTS (SELECT 1 FROM moved)"
            ))
            .await
            .map_err(err)?;
        let n = c
            .execute(
                &stmt,
                &[
                    r,
                    &rows.head_seq,
                    &rows.head_hash,
                    &seq,
                    &rows.base_hash,
                    &rows.seqs,
                    &rows.tss,
                    &rows.lines,
                    &rows.prevs,
                    &rows.hashes,
                ],
            )
            .await
            .map_err(err)?;
        if n != rows.seqs.len() as u64 {
            return Ok(None);
        }
        *self.head.lock() = Some((rows.head_seq, rows.head_hash));
        Ok(Some(rows.hashes))
    }

    /// The first batch of a handle (and after the head moved): a transaction
    /// that registers the chain if needed, locks and reads the head, inserts,
    /// moves the head.
    async fn append_locked(&self, events: &mut [Event]) -> Result<Vec<String>, AuditError> {
        let r = &self.replica;
        let s = &self.schema;
        let mut c = self.pool.get().await.map_err(|e| pool_err(r, e))?;
        let err = |e: tokio_postgres::Error| db(r, "append", describe(&e));
        let tx = c.transaction().await.map_err(err)?;
        let registered = self.registered.load(std::sync::atomic::Ordering::Acquire);
        if !registered {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.audit_replicas (replica, head_seq, head_hash) \
                     VALUES ($1, 0, $2) ON CONFLICT (replica) DO NOTHING"
                ),
                &[r, &GENESIS_HASH],
            )
            .await
            .map_err(err)?;
        }
        // SECURITY: the head row is locked for the whole batch, so two writers
        // with the same replica id cannot fork its chain; other replicas' rows
        // are never touched (no cross-replica lock on the hot path).
        let row = tx
            .query_opt(
                &format!(
                    "SELECT head_seq, head_hash FROM {s}.audit_replicas \
                     WHERE replica = $1 FOR UPDATE"
                ),
                &[r],
            )
            .await
            .map_err(err)?
            .ok_or_else(|| db(r, "append", "the replica is not registered"))?;
        let rows = Rows::render(events, row.get(0), row.get(1));
        let Rows {
            head_seq: seq,
            head_hash: prev,
            seqs,
            tss,
            lines,
            prevs,
            hashes,
            ..
        } = rows;
        tx.execute(
            &format!(
                "INSERT INTO {s}.audit (replica, seq, ts, line, prev_hash, hash) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::text[])"
            ),
            &[r, &seqs, &tss, &lines, &prevs, &hashes],
        )
        .await
        .map_err(err)?;
        tx.execute(
            &format!(
                "UPDATE {s}.audit_replicas SET head_seq = $2, head_hash = $3 WHERE replica = $1"
            ),
            &[r, &seq, &prev],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        if !registered {
            self.registered
                .store(true, std::sync::atomic::Ordering::Release);
        }
        *self.head.lock() = Some((seq, prev));
        Ok(hashes)
    }
}

/// A batch rendered off a head, as the columns of its rows.
struct Rows {
    base_hash: String,
    head_seq: i64,
    head_hash: String,
    seqs: Vec<i64>,
    tss: Vec<String>,
    lines: Vec<String>,
    prevs: Vec<String>,
    hashes: Vec<String>,
}

impl Rows {
    fn render(events: &mut [Event], mut seq: i64, mut prev: String) -> Rows {
        let base_hash = prev.clone();
        let n = events.len();
        let (mut seqs, mut tss, mut lines, mut prevs, mut hashes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut buf = Vec::new();
        for ev in events.iter_mut() {
            buf.clear();
            let hash = render(ev, &prev, &mut buf);
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            seq += 1;
            seqs.push(seq);
            tss.push(ev.ts.clone());
            lines.push(line);
            prevs.push(std::mem::replace(&mut prev, hash.clone()));
            hashes.push(hash);
        }
        Rows {
            base_hash,
            head_seq: seq,
            head_hash: prev,
            seqs,
            tss,
            lines,
            prevs,
            hashes,
        }
    }
}

/// One replica's chain, checked.
#[derive(Debug, Clone)]
pub struct ChainReport {
    pub replica: String,
    /// Rows that verified before the first problem.
    pub lines: u64,
    pub head: String,
    /// The seq where the chain breaks, and why.
    pub problem: Option<(i64, String)>,
}

/// Checks every registered chain (see the module doc).
pub async fn verify_pg(pool: &Pool, schema: &str) -> Result<Vec<ChainReport>, AuditError> {
    let c = pool.get().await.map_err(|e| pool_err("*", e))?;
    let err = |e: tokio_postgres::Error| db("*", "verify", describe(&e));
    let heads = c
        .query(
            &format!(
                "SELECT replica, head_seq, head_hash FROM {schema}.audit_replicas ORDER BY replica"
            ),
            &[],
        )
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    for h in heads {
        let replica: String = h.get(0);
        let (head_seq, head_hash): (i64, String) = (h.get(1), h.get(2));
        let rows = c
            .query(
                &format!(
                    "SELECT seq, line, prev_hash, hash FROM {schema}.audit \
                     WHERE replica = $1 ORDER BY seq"
                ),
                &[&replica],
            )
            .await
            .map_err(err)?;
        let mut expected = GENESIS_HASH.to_string();
        let mut next: i64 = 1;
        let mut problem = None;
        for row in rows {
            let (seq, line, prev, hash): (i64, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if let Err(why) = check_row(seq, next, &expected, &line, &prev, &hash) {
                problem = Some((next, why));
                break;
            }
            expected = hash;
            next += 1;
        }
        let last = next - 1;
        if problem.is_none() && (last != head_seq || expected != head_hash) {
            problem = Some((
                last + 1,
                format!("the chain ends at seq {last} but the registered head is seq {head_seq}"),
            ));
        }
        out.push(ChainReport {
            replica,
            lines: last.max(0) as u64,
            head: expected,
            problem,
        });
    }
    Ok(out)
}

fn check_row(
    seq: i64,
    next: i64,
    expected: &str,
    line: &str,
    prev: &str,
    hash: &str,
) -> Result<(), String> {
    if seq != next {
        return Err(format!("seq {next} is missing (the next row is seq {seq})"));
    }
    if prev != expected {
        return Err("prev_hash does not follow the row before (deleted or reordered)".into());
    }
    let (body, line_hash) = split_hash(line).ok_or("the line has no hash field")?;
    if line_hash != hash || chain_hash(expected, body) != hash {
        return Err("the hash does not match the line (edited)".into());
    }
    Ok(())
}

/// Every stored line, the chains merged by time (then replica, seq).
pub async fn lines_pg(pool: &Pool, schema: &str) -> Result<Vec<PgLine>, AuditError> {
    let c = pool.get().await.map_err(|e| pool_err("*", e))?;
    let rows = c
        .query(
            &format!("SELECT replica, seq, line FROM {schema}.audit ORDER BY ts, replica, seq"),
            &[],
        )
        .await
        .map_err(|e| db("*", "read", describe(&e)))?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// One stored line: its chain, its seq there, the JSONL text.
pub type PgLine = (String, i64, String);

/// Where `audit tail --follow` is in every chain: the last seq printed per replica.
#[derive(Debug, Default)]
pub struct PgFollower {
    schema: String,
    seen: std::collections::HashMap<String, i64>,
}

/// The last `n` lines of all chains merged by time (oldest first), and a
/// follower that starts right after them: both read in one snapshot (REPEATABLE
/// READ), so a line committed meanwhile is printed by the first poll, never twice
/// and never skipped.
pub async fn tail_pg(
    pool: &Pool,
    schema: &str,
    n: usize,
) -> Result<(Vec<PgLine>, PgFollower), AuditError> {
    let mut c = pool.get().await.map_err(|e| pool_err("*", e))?;
    let err = |e: tokio_postgres::Error| db("*", "tail", describe(&e));
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(err)?;
    let heads = tx
        .query(
            &format!("SELECT replica, head_seq FROM {schema}.audit_replicas"),
            &[],
        )
        .await
        .map_err(err)?;
    let limit = i64::try_from(n).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            &format!(
                "SELECT replica, seq, line FROM {schema}.audit \
                 ORDER BY ts DESC, replica DESC, seq DESC LIMIT $1"
            ),
            &[&limit],
        )
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    let mut lines: Vec<PgLine> = rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    lines.reverse();
    let follower = PgFollower {
        schema: schema.to_string(),
        seen: heads.into_iter().map(|h| (h.get(0), h.get(1))).collect(),
    };
    Ok((lines, follower))
}

impl PgFollower {
    /// Lines committed since the last call: each chain's in seq order, the
    /// chains merged by time within the call (a line of one replica that is
    /// older than one already printed from another still comes, late). Reads
    /// the small `audit_replicas` table, then only the chains that moved (by
    /// primary key).
    pub async fn poll(&mut self, pool: &Pool) -> Result<Vec<PgLine>, AuditError> {
        let s = &self.schema;
        let c = pool.get().await.map_err(|e| pool_err("*", e))?;
        let err = |e: tokio_postgres::Error| db("*", "follow", describe(&e));
        let heads = c
            .query(
                &format!("SELECT replica, head_seq FROM {s}.audit_replicas"),
                &[],
            )
            .await
            .map_err(err)?;
        let mut new: Vec<(String, String, i64, String)> = Vec::new();
        for h in heads {
            let (replica, head): (String, i64) = (h.get(0), h.get(1));
            let from = self.seen.get(&replica).copied().unwrap_or(0);
            if head <= from {
                continue;
            }
            // Rows up to the head read are committed (the head moves in their
            // transaction); later ones wait for the next poll.
            let rows = c
                .query(
                    &format!(
                        "SELECT seq, ts, line FROM {s}.audit \
                         WHERE replica = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
                    ),
                    &[&replica, &from, &head],
                )
                .await
                .map_err(err)?;
            for r in rows {
                new.push((r.get(1), replica.clone(), r.get(0), r.get(2)));
            }
            self.seen.insert(replica, head);
        }
        new.sort();
        Ok(new
            .into_iter()
            .map(|(_, replica, seq, line)| (replica, seq, line))
            .collect())
    }
}

/// Rows per statement when a file's chain is copied in.
const IMPORT_CHUNK: usize = 1000;

/// `keyward store import --audit FILE`: the file set's chain (`FILE.1 … FILE`),
/// checked line by line from the genesis hash as `audit verify` does, copied
/// into the database as chain `replica`, byte for byte (same lines, same
/// hashes), in one transaction. Refuses a file that does not verify (naming the
/// line) and a `replica` that exists. Returns the lines copied and the head.
pub async fn import_file_chain(
    pool: &Pool,
    schema: &str,
    replica: &str,
    path: &std::path::Path,
) -> Result<(u64, String), AuditError> {
    let bad = |file: &std::path::Path, line: u64, why: &str| {
        super::error::corrupt(file, format!("line {line}: {why}; nothing was imported"))
    };
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut prev = GENESIS_HASH.to_string();
    for raw in super::read::LogSet::open(path)?.lines() {
        let raw = raw?;
        let line =
            String::from_utf8(raw.bytes).map_err(|_| bad(&raw.file, raw.line, "not UTF-8"))?;
        if !raw.terminated {
            return Err(bad(&raw.file, raw.line, "unfinished (no newline)"));
        }
        let (body, hash) =
            split_hash(&line).ok_or_else(|| bad(&raw.file, raw.line, "no hash field"))?;
        if chain_hash(&prev, body) != hash {
            return Err(bad(
                &raw.file,
                raw.line,
                "the chain breaks here (audit verify)",
            ));
        }
        let ts = serde_json::from_str::<Event>(&line)
            .map_err(|_| bad(&raw.file, raw.line, "not an audit event"))?
            .ts;
        let hash = hash.to_string();
        rows.push((ts, line, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    let mut c = pool.get().await.map_err(|e| pool_err(replica, e))?;
    let err = |e: tokio_postgres::Error| db(replica, "import", describe(&e));
    let tx = c.transaction().await.map_err(err)?;
    // SECURITY: never appended to an existing chain (that would fork it).
    let added = tx
        .execute(
            &format!(
                "INSERT INTO {schema}.audit_replicas (replica, head_seq, head_hash) \
                 VALUES ($1, 0, $2) ON CONFLICT (replica) DO NOTHING"
            ),
            &[&replica, &GENESIS_HASH],
        )
        .await
        .map_err(err)?;
    if added == 0 {
        return Err(db(replica, "import", "a chain of that name exists"));
    }
    let mut seq: i64 = 0;
    for chunk in rows.chunks(IMPORT_CHUNK) {
        let seqs: Vec<i64> = (seq + 1..).take(chunk.len()).collect();
        seq += chunk.len() as i64;
        let col = |f: fn(&(String, String, String, String)) -> &str| -> Vec<&str> {
            chunk.iter().map(f).collect()
        };
        let (tss, lines, prevs, hashes) =
            (col(|r| &r.0), col(|r| &r.1), col(|r| &r.2), col(|r| &r.3));
        tx.execute(
            &format!(
                "INSERT INTO {schema}.audit (replica, seq, ts, line, prev_hash, hash) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::text[])"
            ),
            &[&replica, &seqs, &tss, &lines, &prevs, &hashes],
        )
        .await
        .map_err(err)?;
    }
    tx.execute(
        &format!(
            "UPDATE {schema}.audit_replicas SET head_seq = $2, head_hash = $3 WHERE replica = $1"
        ),
        &[&replica, &seq, &prev],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok((seq as u64, prev))
}
