//! `keyward audit …`: tail, query, verify and export the audit log (SPEC §2, §8),
//! from the file or, with the postgres store, from the database (SPEC §10); and
//! [`open_writer`], the audit writer of every CLI command that changes the store.

use super::CliError;
use crate::audit::{
    self, AuditError, AuditLog, Event, ExportFormat, Filter, LogSet, PgLine, GENESIS_HASH,
};
use crate::config::Config;
use clap::{Args, Subcommand, ValueEnum};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How often `tail --follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// `tail` without `-n`.
const DEFAULT_TAIL_LINES: usize = 10;
/// The host name in a CLI writer's chain id.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";
/// Placeholder for an absent field in the table.
const EMPTY_CELL: &str = "-";

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Print the last lines of the log; --follow keeps printing new ones.
    Tail {
        /// How many lines.
        #[arg(short = 'n', long = "lines", default_value_t = DEFAULT_TAIL_LINES)]
        n: usize,
        /// Keep printing lines as they are written (across rotations).
        #[arg(short, long)]
        follow: bool,
        /// Print the JSON lines as they are instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        src: Source,
    },
    /// Print the events that match every given filter, oldest first.
    Query {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print the JSON lines as they are instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        src: Source,
    },
    /// Check the hash chain; exit 1 and the first bad line on tamper.
    Verify {
        /// The last hash of deliberately deleted older files (the chain starts
        /// after it instead of at the genesis hash).
        #[arg(long, value_name = "HASH")]
        anchor: Option<String>,
        #[command(flatten)]
        src: Source,
    },
    /// Write the events to stdout for a SIEM.
    Export {
        #[arg(long, value_enum)]
        format: CliFormat,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        src: Source,
    },
}

#[derive(Args)]
pub struct Source {
    /// Read this log file instead of the configured history (every replica's
    /// chain in the database with `[store] backend = "postgres"`, else `[audit]
    /// path`); rotated `FILE.N` next to it are included.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct FilterArgs {
    /// Only events that used this secret name.
    #[arg(long, value_name = "NAME")]
    secret: Option<String>,
    /// Only this agent's events.
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
    /// Only this chain's events.
    #[arg(long, value_name = "NAME")]
    chain: Option<String>,
    /// Only this kind of event (inject, tunnel, deny, auth_fail, secret_set, …).
    #[arg(long, value_name = "KIND")]
    event: Option<String>,
    /// From this time on: RFC 3339 (2024-05-01T12:00:00Z) or an age (1h, 2d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time: RFC 3339 or an age.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this outcome.
    #[arg(long, value_parser = ["allowed", "denied", "error"])]
    outcome: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CliFormat {
    /// The lines exactly as on disk (still verifiable).
    Jsonl,
    /// ArcSight Common Event Format.
    Cef,
}

impl From<CliFormat> for ExportFormat {
    fn from(f: CliFormat) -> ExportFormat {
        match f {
            CliFormat::Jsonl => ExportFormat::Jsonl,
            CliFormat::Cef => ExportFormat::Cef,
        }
    }
}

impl FilterArgs {
    fn to_filter(&self) -> Result<Filter, CliError> {
        let now = time::OffsetDateTime::now_utc();
        let time = |s: &Option<String>| -> Result<_, CliError> {
            s.as_deref()
                .map(|t| audit::parse_time(t, now))
                .transpose()
                .map_err(user)
        };
        Ok(Filter {
            secret: self.secret.clone(),
            agent: self.agent.clone(),
            chain: self.chain.clone(),
            outcome: self.outcome.clone(),
            event: self.event.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
        })
    }
}

pub fn run(cmd: AuditCmd, cfg: &Config) -> Result<u8, CliError> {
    // Every command reads the log through one snapshot of its file set.
    let open = |src: &Source| -> Result<LogSet, Fail> {
        let path = src.file.as_deref().unwrap_or(&cfg.audit.path);
        Ok(LogSet::open(path)?)
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match cmd {
        AuditCmd::Tail {
            n,
            follow,
            json,
            src,
        } if src.file.is_none() && on_db(cfg) => tail_db(cfg, n, follow, json, &mut out),
        AuditCmd::Tail {
            n,
            follow,
            json,
            src,
        } => open(&src).and_then(|log| tail(&log, n, follow, json, &mut out)),
        AuditCmd::Query { filter, json, src } => {
            let format = if json { Output::Json } else { Output::Table };
            let filter = filter.to_filter()?;
            if src.file.is_none() && on_db(cfg) {
                emit_db(cfg, &filter, format, &mut out)
            } else {
                open(&src).and_then(|log| emit(log, &filter, format, &mut out))
            }
        }
        AuditCmd::Verify { anchor, src }
            if src.file.is_none() && anchor.is_none() && on_db(cfg) =>
        {
            verify_db(cfg, &mut out)
        }
        AuditCmd::Verify { anchor, src } => {
            open(&src).and_then(|log| verify(log, anchor.as_deref(), &mut out))
        }
        AuditCmd::Export {
            format,
            filter,
            src,
        } => {
            let format = match ExportFormat::from(format) {
                ExportFormat::Jsonl => Output::Json,
                ExportFormat::Cef => Output::Cef,
            };
            let filter = filter.to_filter()?;
            if src.file.is_none() && on_db(cfg) {
                emit_db(cfg, &filter, format, &mut out)
            } else {
                open(&src).and_then(|log| emit(log, &filter, format, &mut out))
            }
        }
    };
    let flushed = out.flush();
    match (result, flushed) {
        // `keyward audit … | head`: the reader left; that is not an error.
        (Err(Fail::Write(e)), _) | (Ok(_), Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            Ok(0)
        }
        (Err(Fail::Write(e)), _) | (Ok(_), Err(e)) => {
            Err(CliError::Internal(format!("cannot write to stdout: {e}")))
        }
        (Err(Fail::Cli(e)), _) => Err(e),
        (Ok(code), Ok(())) => Ok(code),
    }
}

/// Writing our own output failed, or the command did.
enum Fail {
    Write(io::Error),
    Cli(CliError),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Write(e)
    }
}

impl From<CliError> for Fail {
    fn from(e: CliError) -> Fail {
        Fail::Cli(e)
    }
}

impl From<AuditError> for Fail {
    fn from(e: AuditError) -> Fail {
        Fail::Cli(user(e))
    }
}

/// Maps library errors to exit codes: what an operator can fix is a user error.
fn user(e: AuditError) -> CliError {
    match &e {
        AuditError::Io { source, .. }
            if !matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            CliError::Internal(e.to_string())
        }
        _ => CliError::User(e.to_string()),
    }
}

fn verify(log: LogSet, anchor: Option<&str>, out: &mut dyn Write) -> Result<u8, Fail> {
    let report = audit::verify_set(log, anchor.unwrap_or(GENESIS_HASH))?;
    let files = report.files.len();
    match &report.problem {
        None => {
            writeln!(
                out,
                "ok: {} lines in {files} file(s), head {}",
                report.lines, report.head
            )?;
            Ok(0)
        }
        Some(t) => {
            writeln!(
                out,
                "tampered: line {} of {}: {} ({} lines before it verified)",
                t.line,
                t.file.display(),
                t.reason,
                report.lines
            )?;
            Ok(1)
        }
    }
}

/// With the PostgreSQL store the history is the database's (every replica's
/// chain); `--file` still reads a file (the local mirror, an export).
fn on_db(cfg: &Config) -> bool {
    cfg.store.backend == crate::config::store::Backend::Postgres
}

/// A pool on the configured database, on a runtime of this command's own.
fn db_pool(cfg: &Config) -> Result<(tokio::runtime::Runtime, deadpool_postgres::Pool), Fail> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Cli(CliError::Internal(format!("cannot start a runtime: {e}"))))?;
    let pool = {
        let _g = rt.enter();
        crate::vault::postgres::connect::Target::from_config(&cfg.store)
            .and_then(|t| t.pool())
            .map_err(|e| Fail::Cli(CliError::User(e.to_string())))?
    };
    Ok((rt, pool))
}

/// The audit writer of a CLI command that changes the store. With the file
/// store: `[audit] path`, as always. With the postgres store: the same file as a
/// mirror, and a chain of this command run's own in the database
/// (`cli-HOST-PID-RANDOM`, registered by its first line), written through
/// [`audit::PgSink::start_strict`]: no spool, so a line the database does not
/// take is an error and the caller undoes its change (fail closed, as with the
/// file). `audit verify` covers these chains, `audit query` shows them.
pub fn open_writer(cfg: &Config) -> Result<AuditLog, AuditError> {
    let log = AuditLog::open(&cfg.audit)?;
    if !on_db(cfg) {
        return Ok(log);
    }
    let store = &cfg.store;
    let make_pool = || {
        crate::vault::postgres::connect::Target::from_config(store)
            .and_then(|t| t.pool())
            .map_err(|e| e.to_string())
    };
    let sink = audit::PgSink::start_strict(make_pool, &store.schema, &cli_replica())?;
    Ok(log.with_db(sink))
}

/// `cli-HOSTNAME-PID-RANDOM`: a chain per command run (two runs at once never
/// share a head; the random part keeps a reused pid apart).
fn cli_replica() -> String {
    let host = std::fs::read_to_string(HOSTNAME_FILE)
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyward".into());
    format!(
        "cli-{host}-{}-{}",
        std::process::id(),
        crate::ids::request_id()
    )
}

/// `keyward store import --audit FILE`: the file's chain into the database as a
/// chain of its own (`import-NAME-RANDOM`), checked first; returns what to print.
pub fn import_chain(cfg: &Config, file: &std::path::Path) -> Result<String, CliError> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    let replica = format!("import-{name}-{}", crate::ids::request_id());
    let (rt, pool) = db_pool(cfg).map_err(|f| match f {
        Fail::Cli(e) => e,
        Fail::Write(e) => CliError::Internal(e.to_string()),
    })?;
    let (lines, head) = rt
        .block_on(audit::import_file_chain(
            &pool,
            &cfg.store.schema,
            &replica,
            file,
        ))
        .map_err(user)?;
    Ok(format!(
        "imported {lines} audit lines from {} as chain {replica} (head {head})",
        file.display()
    ))
}

/// `tail` over the database: the last `n` lines of every chain merged by time;
/// `--follow` then polls every [`FOLLOW_POLL`] for lines committed since (each
/// chain in order). A database that goes away is reported once and polled on.
fn tail_db(
    cfg: &Config,
    n: usize,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, Fail> {
    let (rt, pool) = db_pool(cfg)?;
    let (lines, mut follower) = rt.block_on(audit::tail_pg(&pool, &cfg.store.schema, n))?;
    print_lines(&texts(lines), json, out)?;
    out.flush()?;
    if !follow {
        return Ok(0);
    }
    let mut down = false;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        match rt.block_on(follower.poll(&pool)) {
            Ok(lines) => {
                if std::mem::take(&mut down) {
                    eprintln!("keyward: the database is back; following");
                }
                if !lines.is_empty() {
                    print_lines(&texts(lines), json, out)?;
                    out.flush()?;
                }
            }
            Err(e) if !down => {
                down = true;
                eprintln!("keyward: {e}; still following");
            }
            Err(_) => {}
        }
    }
}

fn texts(lines: Vec<PgLine>) -> Vec<String> {
    lines.into_iter().map(|(_, _, line)| line).collect()
}

/// `query` and `export` over the database: every replica's lines merged by time
/// (docs/store.md "Audit"); unreadable lines are reported and make the exit code 1.
fn emit_db(cfg: &Config, filter: &Filter, format: Output, out: &mut dyn Write) -> Result<u8, Fail> {
    let (rt, pool) = db_pool(cfg)?;
    let lines = rt.block_on(audit::lines_pg(&pool, &cfg.store.schema))?;
    let mut table = Table::new();
    let mut skipped = 0u64;
    for (replica, seq, line) in lines {
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            eprintln!("keyward: skipped: replica {replica} seq {seq} is not an audit event");
            skipped += 1;
            continue;
        };
        if !filter.matches(&event) {
            continue;
        }
        match format {
            Output::Json => writeln!(out, "{line}")?,
            Output::Cef => writeln!(out, "{}", audit::to_cef(&event))?,
            Output::Table => table.push(&event),
        }
    }
    if format == Output::Table {
        table.print(out)?;
    }
    if skipped > 0 {
        eprintln!("keyward: {skipped} unreadable line(s) skipped; run `keyward audit verify`");
        return Ok(1);
    }
    Ok(0)
}

/// `audit verify` with `[store] backend = "postgres"`: every replica's chain in
/// the database (docs/store.md "Audit"); exit 1 when any is broken.
fn verify_db(cfg: &Config, out: &mut dyn Write) -> Result<u8, Fail> {
    let (rt, pool) = db_pool(cfg)?;
    let reports = rt.block_on(audit::verify_pg(&pool, &cfg.store.schema))?;
    let mut bad = 0;
    for r in &reports {
        match &r.problem {
            None => writeln!(
                out,
                "ok: replica {}: {} lines, head {}",
                r.replica, r.lines, r.head
            )?,
            Some((seq, why)) => {
                bad += 1;
                writeln!(
                    out,
                    "tampered: replica {} seq {seq}: {why} ({} lines before it verified)",
                    r.replica, r.lines
                )?;
            }
        }
    }
    if reports.is_empty() {
        writeln!(out, "ok: no audit chains in the database yet")?;
    }
    Ok(u8::from(bad > 0))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Cef,
}

/// `query` and `export`: every matching event; unreadable lines are reported on
/// stderr and make the exit code 1, without stopping the stream.
fn emit(log: LogSet, filter: &Filter, format: Output, out: &mut dyn Write) -> Result<u8, Fail> {
    let mut table = Table::new();
    let mut skipped = 0u64;
    for rec in audit::query_set(log, filter) {
        let rec = match rec {
            Ok(r) => r,
            Err(e @ AuditError::Corrupt { .. }) => {
                eprintln!("keyward: skipped: {e}");
                skipped += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        match format {
            Output::Json => writeln!(out, "{}", rec.line)?,
            Output::Cef => writeln!(out, "{}", audit::to_cef(&rec.event))?,
            Output::Table => table.push(&rec.event),
        }
    }
    if format == Output::Table {
        table.print(out)?;
    }
    if skipped > 0 {
        eprintln!("keyward: {skipped} unreadable line(s) skipped; run `keyward audit verify`");
        return Ok(1);
    }
    Ok(0)
}

fn tail(log: &LogSet, n: usize, follow: bool, json: bool, out: &mut dyn Write) -> Result<u8, Fail> {
    print_lines(&log.tail(n)?, json, out)?;
    out.flush()?;
    if !follow {
        return Ok(0);
    }
    let mut follower = log.follow()?;
    loop {
        std::thread::sleep(FOLLOW_POLL);
        let lines = follower.poll()?;
        if !lines.is_empty() {
            print_lines(&lines, json, out)?;
            out.flush()?;
        }
    }
}

fn print_lines(lines: &[String], json: bool, out: &mut dyn Write) -> io::Result<()> {
    if json {
        for l in lines {
            writeln!(out, "{l}")?;
        }
        return Ok(());
    }
    let mut table = Table::new();
    for l in lines {
        match serde_json::from_str::<Event>(l) {
            Ok(ev) => table.push(&ev),
            Err(_) => eprintln!("keyward: skipped a line that is not an audit event"),
        }
    }
    table.print(out)
}

const COLUMNS: [&str; 12] = [
    "TS",
    "EVENT",
    "OUTCOME",
    "AGENT",
    "CHAIN",
    "SECRET",
    "SCOPE",
    "TIER",
    "METHOD",
    "HOST",
    "PATH",
    "STATUS/REASON",
];

/// A plain aligned table; the last column is not padded.
struct Table {
    rows: Vec<[String; COLUMNS.len()]>,
}

impl Table {
    fn new() -> Table {
        Table { rows: Vec::new() }
    }

    fn push(&mut self, ev: &Event) {
        let cell = |v: &Option<String>| {
            v.as_deref()
                .map(printable)
                .unwrap_or_else(|| EMPTY_CELL.into())
        };
        let status = match (ev.status, &ev.reason) {
            (Some(s), Some(r)) => format!("{s} {}", printable(r)),
            (Some(s), None) => s.to_string(),
            (None, Some(r)) => printable(r),
            (None, None) => EMPTY_CELL.into(),
        };
        self.rows.push([
            printable(&ev.ts),
            printable(ev.event.as_str()),
            printable(ev.outcome.as_str()),
            cell(&ev.agent),
            cell(&ev.chain),
            cell(&ev.secret),
            cell(&ev.scope),
            cell(&ev.tier),
            cell(&ev.method),
            cell(&ev.host),
            cell(&ev.path),
            status,
        ]);
    }

    fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut widths = COLUMNS.map(|c| c.chars().count());
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let header = COLUMNS.map(String::from);
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == COLUMNS.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// SECURITY: fields come from agents (paths, hosts); control characters would
/// let a log line rewrite the operator's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{EventKind, Outcome};

    #[test]
    fn table_aligns_and_neutralises_control_characters() {
        let mut t = Table::new();
        let mut ev = Event::new(EventKind::Deny, Outcome::Denied);
        ev.ts = "2024-05-01T10:00:00.000Z".into();
        ev.path = Some("/x\u{1b}[2J".into());
        ev.status = Some(403);
        ev.reason = Some("host_not_allowed".into());
        t.push(&ev);
        let mut out = Vec::new();
        t.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{1b}'));
        assert!(text.contains("/x?[2J"), "{text}");
        assert!(text.contains("403 host_not_allowed"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("EVENT"), lines[1].find("deny"));
    }
}
