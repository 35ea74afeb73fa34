//! The vault watcher: polls a reload function and logs what happens, a failure
//! that persists once (never a value: errors name paths and records only).
//! `app.rs` runs it with `State::refresh_vault`; tests with a bare store's reload.

use super::error::VaultError;
use std::time::Duration;
use tokio::sync::watch;

/// Calls `reload` every `every` (the first time at once) until `stop` changes or
/// its sender is dropped; `on_change` runs after each reload that loaded something.
pub async fn watch<R, C>(
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut reload: R,
    mut on_change: C,
) where
    R: FnMut() -> Result<bool, VaultError>,
    C: FnMut(),
{
    let mut tick = tokio::time::interval(every);
    let mut failures = ReloadFailures::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match reload() {
            Ok(changed) => {
                if changed {
                    on_change();
                    tracing::info!("vault reloaded");
                }
                if failures.recovered() {
                    tracing::info!("vault readable again");
                }
            }
            Err(e) => {
                if failures.failed(e.to_string()) {
                    tracing::warn!(error = %e, "vault reload failed; keeping the last good vault");
                }
            }
        }
    }
}

/// The last reload failure, so that a failure that persists is logged once (not
/// every poll) and a different failure or a recovery is logged when it happens.
#[derive(Debug, Default)]
struct ReloadFailures {
    last: Option<String>,
}

impl ReloadFailures {
    /// Records a failure; true when it differs from the one before (log it).
    fn failed(&mut self, error: String) -> bool {
        if self.last.as_deref() == Some(error.as_str()) {
            return false;
        }
        self.last = Some(error);
        true
    }

    /// Records a success; true when it ends a run of failures.
    fn recovered(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_failure_is_logged_once_until_it_changes_or_recovers() {
        let mut f = ReloadFailures::default();
        assert!(!f.recovered(), "nothing to recover from");
        assert!(f.failed("bad mac".into()));
        assert!(
            !f.failed("bad mac".into()),
            "the same failure again is quiet"
        );
        assert!(f.failed("truncated".into()), "a different failure is news");
        assert!(f.recovered());
        assert!(!f.recovered());
        assert!(
            f.failed("truncated".into()),
            "after a success it is news again"
        );
    }
}
