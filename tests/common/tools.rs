//! External programs a test drives (psql, chromium, nft, git-http-backend, wget,
//! go, node packages). On a developer machine a missing one skips the test with a
//! note; under CI (`KEYWARD_CI=1`, set by `.ci/run`, which installs them all) a
//! missing one fails the test, so a broken install can never pass as a skip.

use std::path::PathBuf;

/// True when `.ci/run` is driving the suite.
pub fn in_ci() -> bool {
    std::env::var_os("KEYWARD_CI").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The first `name` found on PATH (or an absolute path that exists).
pub fn find(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(name);
    if p.is_absolute() {
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|cand| cand.is_file())
}

/// `Some(path)` if the program is installed; otherwise skips (prints why and
/// returns `None`) or, under CI, panics naming what `.ci/run` failed to install.
pub fn require(name: &str, test: &str) -> Option<PathBuf> {
    match find(name) {
        Some(p) => Some(p),
        None => skip_or_fail(&format!("{name} not installed"), test),
    }
}

/// The one skip path: `None` with a note, or a failure under CI.
pub fn skip_or_fail<T>(why: &str, test: &str) -> Option<T> {
    if in_ci() {
        panic!("{test}: {why} (KEYWARD_CI is set: .ci/run must install it)");
    }
    eprintln!("skipped {test}: {why}");
    None
}
