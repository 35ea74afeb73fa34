//! Reading the log: a consistent snapshot of the file set ([`LogSet`]), its
//! lines in chain order ([`RawLines`]), the last lines (`tail`, and the chain
//! head the writer continues from), and following new lines across rotations.

use super::encode::split_hash;
use super::error::{corrupt, io_err, AuditError};
use super::files::{file_id, lock_path, rotated_files, FileId, LockGuard, STDOUT_PATH};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How far back from the end we read to find the last line (longer lines are refused).
const MAX_LINE_BYTES: u64 = 1024 * 1024;
/// Chunk size for reading a file backwards.
const TAIL_CHUNK_BYTES: u64 = 64 * 1024;

/// The rotated files and the live file, opened together under a shared lock so
/// that a concurrent rotation cannot make us skip or repeat a file. Each file is
/// read only up to the length it had then: later appends are not part of the
/// snapshot.
///
/// The readers (`verify_set`, `query_set`, `export_set`, [`LogSet::tail`],
/// [`LogSet::follow`]) take a `LogSet` rather than a path, so a command opens the
/// log once and another store can stand in for the files.
pub struct LogSet {
    /// The live file's path (`PATH`).
    path: PathBuf,
    files: Vec<(PathBuf, File, u64)>,
}

impl LogSet {
    pub fn open(path: &Path) -> Result<LogSet, AuditError> {
        if path == Path::new(STDOUT_PATH) {
            return Err(AuditError::Stdout);
        }
        // Readers never create the lock file (the log may be on a read-only copy).
        let lock = File::open(lock_path(path)).ok();
        let _held = match &lock {
            Some(l) => LockGuard::shared(l).ok(),
            None => None,
        };
        let mut files = Vec::new();
        let mut names: Vec<PathBuf> = rotated_files(path)?.into_iter().map(|(_, p)| p).collect();
        names.push(path.to_path_buf());
        for name in names {
            let file = File::open(&name).map_err(io_err(&name))?;
            let len = file.metadata().map_err(io_err(&name))?.len();
            files.push((name, file, len));
        }
        Ok(LogSet {
            path: path.to_path_buf(),
            files,
        })
    }

    /// The files in chain order (oldest rotated first, live file last).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _, _)| p.clone()).collect()
    }

    /// Every line of the snapshot, in order.
    pub fn lines(self) -> RawLines {
        RawLines {
            files: self.files.into(),
            current: None,
        }
    }

    /// The last `n` lines of the snapshot (newest last), as they are on disk.
    pub fn tail(&self, n: usize) -> Result<Vec<String>, AuditError> {
        let mut out: VecDeque<String> = VecDeque::new();
        for (name, file, len) in self.files.iter().rev() {
            if out.len() >= n {
                break;
            }
            let got = tail_lines(file, *len, n - out.len()).map_err(io_err(name))?;
            for line in got.lines.into_iter().rev() {
                out.push_front(String::from_utf8_lossy(&line).into_owned());
            }
        }
        Ok(out.into())
    }

    /// A [`Follower`] that continues exactly where the snapshot ends.
    pub fn follow(&self) -> Result<Follower, AuditError> {
        let mut follower = Follower::empty(&self.path);
        if let Some((name, file, len)) = self.files.last() {
            let meta = file.metadata().map_err(io_err(name))?;
            follower.id = file_id(&meta);
            follower.file = Some(file.try_clone().map_err(io_err(name))?);
            follower.offset = *len;
        }
        Ok(follower)
    }
}

/// One line as it is on disk.
#[derive(Debug, Clone)]
pub struct RawLine {
    pub file: PathBuf,
    /// 1-based, within `file`.
    pub line: u64,
    /// The bytes without the newline.
    pub bytes: Vec<u8>,
    /// False for a final line with no newline (an unfinished write).
    pub terminated: bool,
}

pub struct RawLines {
    files: VecDeque<(PathBuf, File, u64)>,
    current: Option<(PathBuf, BufReader<io::Take<File>>, u64)>,
}

impl Iterator for RawLines {
    type Item = Result<RawLine, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let (path, file, len) = self.files.pop_front()?;
                self.current = Some((path, BufReader::new(file.take(len)), 0));
            }
            let (path, reader, line_no) = self.current.as_mut()?;
            let mut bytes = Vec::new();
            match reader.read_until(b'\n', &mut bytes) {
                Err(e) => {
                    let err = io_err(path)(e);
                    self.current = None;
                    return Some(Err(err));
                }
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {
                    *line_no += 1;
                    let terminated = bytes.last() == Some(&b'\n');
                    if terminated {
                        bytes.pop();
                    }
                    return Some(Ok(RawLine {
                        file: path.clone(),
                        line: *line_no,
                        bytes,
                        terminated,
                    }));
                }
            }
        }
    }
}

/// The hash of the last line of the live file, or of the newest rotated file
/// when the live one is empty; `None` for a log with no lines at all.
pub(super) fn chain_head(
    path: &Path,
    live: &File,
    live_len: u64,
) -> Result<Option<String>, AuditError> {
    if live_len > 0 {
        return last_hash(path, live, live_len).map(Some);
    }
    for (_, rotated) in rotated_files(path)?.iter().rev() {
        let f = File::open(rotated).map_err(io_err(rotated))?;
        let len = f.metadata().map_err(io_err(rotated))?.len();
        if len > 0 {
            return last_hash(rotated, &f, len).map(Some);
        }
    }
    Ok(None)
}

fn last_hash(path: &Path, file: &File, len: u64) -> Result<String, AuditError> {
    let lines = tail_lines(file, len, 1).map_err(io_err(path))?;
    let unfinished = "ends with an unfinished line; run `keyward audit verify`";
    let Some(last) = lines.last() else {
        return Err(corrupt(path, unfinished));
    };
    if lines.partial_end {
        return Err(corrupt(path, unfinished));
    }
    let text = std::str::from_utf8(last).map_err(|_| corrupt(path, "last line is not UTF-8"))?;
    split_hash(text).map(|(_, h)| h.to_string()).ok_or_else(|| {
        corrupt(
            path,
            "last line has no trailing hash; run `keyward audit verify`",
        )
    })
}

/// The last complete lines of a file, read backwards from `len`.
struct TailLines {
    lines: Vec<Vec<u8>>,
    /// The file does not end with a newline (an unfinished write).
    partial_end: bool,
}

impl TailLines {
    fn last(&self) -> Option<&Vec<u8>> {
        self.lines.last()
    }
}

/// Reads backwards until `n` complete lines (without their newline) are in hand,
/// the start of the file, or `MAX_LINE_BYTES` per wanted line.
fn tail_lines(mut file: &File, len: u64, n: usize) -> io::Result<TailLines> {
    let budget = MAX_LINE_BYTES.saturating_mul(n.max(1) as u64);
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    while pos > 0 && bytecount(&buf, b'\n') <= n && (buf.len() as u64) < budget {
        let step = TAIL_CHUNK_BYTES.min(pos);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let end = buf
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let partial_end = end != buf.len();
    let mut lines: Vec<Vec<u8>> = buf[..end]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    lines.pop(); // the empty piece after the final newline
    if pos > 0 && !lines.is_empty() {
        lines.remove(0); // may start mid-line
    }
    let keep = lines.len().saturating_sub(n);
    lines.drain(..keep);
    Ok(TailLines { lines, partial_end })
}

fn bytecount(buf: &[u8], b: u8) -> usize {
    buf.iter().filter(|&&x| x == b).count()
}

/// The last `n` lines of the file set (newest last), as they are on disk.
pub fn tail(path: &Path, n: usize) -> Result<Vec<String>, AuditError> {
    LogSet::open(path)?.tail(n)
}

/// `tail`, plus a `Follower` that continues exactly where the tail ended.
pub fn tail_and_follow(path: &Path, n: usize) -> Result<(Vec<String>, Follower), AuditError> {
    let set = LogSet::open(path)?;
    Ok((set.tail(n)?, set.follow()?))
}

/// Follows the live file like `tail -f`, across rotations.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    id: Option<FileId>,
    offset: u64,
    pending: Vec<u8>,
}

impl Follower {
    fn empty(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            file: None,
            id: None,
            offset: 0,
            pending: Vec::new(),
        }
    }

    /// Starts at the current end of the live file.
    pub fn at_end(path: &Path) -> Result<Follower, AuditError> {
        if path == Path::new(STDOUT_PATH) {
            return Err(AuditError::Stdout);
        }
        let mut f = Follower::empty(path);
        if let Ok(file) = File::open(path) {
            let meta = file.metadata().map_err(io_err(path))?;
            f.offset = meta.len();
            f.id = file_id(&meta);
            f.file = Some(file);
        }
        Ok(f)
    }

    /// Complete lines appended since the last call.
    pub fn poll(&mut self) -> Result<Vec<String>, AuditError> {
        let mut out = self.drain()?;
        let on_disk = std::fs::metadata(&self.path).ok();
        let replaced = match (&on_disk, self.file.is_some()) {
            (Some(m), true) => file_id(m) != self.id,
            (Some(_), false) => true,
            (None, _) => false,
        };
        if replaced {
            // Our file was rotated away (we drained it above). Several rotations
            // may have happened since the last poll: read every file that came
            // after ours, then stay on the live one. The set is opened under the
            // shared lock, so no rotation slips between listing and opening.
            let set = match LogSet::open(&self.path) {
                Ok(set) => set,
                Err(AuditError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            let mut files = set.files;
            let ours = files.iter().position(|(_, f, _)| {
                self.id.is_some() && f.metadata().ok().and_then(|m| file_id(&m)) == self.id
            });
            let skip = ours.map(|i| i + 1).unwrap_or(files.len().saturating_sub(1));
            for (_, file, _) in files.drain(..).skip(skip) {
                self.id = file.metadata().ok().and_then(|m| file_id(&m));
                self.file = Some(file);
                self.offset = 0;
                self.pending.clear();
                out.extend(self.drain()?);
            }
        }
        Ok(out)
    }

    fn drain(&mut self) -> Result<Vec<String>, AuditError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(&self.path))?;
        let mut buf = Vec::new();
        let n = file.read_to_end(&mut buf).map_err(io_err(&self.path))?;
        self.offset += n as u64;
        self.pending.extend_from_slice(&buf);
        let mut out = Vec::new();
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            out.push(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::ev;
    use crate::audit::{rotated_files, AuditLog, Event};

    #[test]
    fn tail_spans_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_rotating(&path, 700).unwrap();
        for i in 0..12 {
            log.record(ev("inject", "allowed", &format!("agent-{i}"), None))
                .unwrap();
        }
        assert!(!rotated_files(&path).unwrap().is_empty());
        let lines = tail(&path, 5).unwrap();
        assert_eq!(lines.len(), 5);
        for (k, line) in lines.iter().enumerate() {
            let e: Event = serde_json::from_str(line).unwrap();
            assert_eq!(e.agent.unwrap(), format!("agent-{}", 7 + k));
        }
        assert_eq!(tail(&path, 100).unwrap().len(), 12);
    }

    #[test]
    fn follower_sees_appends_and_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_rotating(&path, 500).unwrap();
        log.record(ev("inject", "allowed", "before", None)).unwrap();
        let mut f = Follower::at_end(&path).unwrap();
        assert!(f.poll().unwrap().is_empty());
        let mut seen = Vec::new();
        for i in 0..10 {
            log.record(ev("inject", "allowed", &format!("n{i}"), None))
                .unwrap();
            seen.extend(f.poll().unwrap());
        }
        // Several rotations between two polls lose nothing.
        let before = rotated_files(&path).unwrap().len();
        for i in 10..30 {
            log.record(ev("inject", "allowed", &format!("n{i}"), None))
                .unwrap();
        }
        assert!(rotated_files(&path).unwrap().len() >= before + 3);
        seen.extend(f.poll().unwrap());
        let agents: Vec<String> = seen
            .iter()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().agent.unwrap())
            .collect();
        assert_eq!(agents, (0..30).map(|i| format!("n{i}")).collect::<Vec<_>>());
    }
}
