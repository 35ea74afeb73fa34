//! `audit query`: which events to return ([`Filter`], times as RFC 3339 or an
//! age), and the matching events of a log, oldest first.

use super::error::{corrupt, AuditError};
use super::event::Event;
use super::read::LogSet;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Which events to return. Every set field must match; `since` is inclusive,
/// `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub secret: Option<String>,
    pub agent: Option<String>,
    pub chain: Option<String>,
    pub outcome: Option<String>,
    pub event: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    pub fn matches(&self, ev: &Event) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        if !(eq(&self.secret, ev.secret.as_deref())
            && eq(&self.agent, ev.agent.as_deref())
            && eq(&self.chain, ev.chain.as_deref())
            && eq(&self.outcome, Some(ev.outcome.as_str()))
            && eq(&self.event, Some(ev.event.as_str())))
        {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(ts) = OffsetDateTime::parse(&ev.ts, &Rfc3339) else {
            return false;
        };
        self.since.is_none_or(|s| ts >= s) && self.until.is_none_or(|u| ts < u)
    }
}

/// `2024-05-01T12:00:00Z` (RFC 3339), or a duration before `now`: `90s`, `15m`,
/// `1h`, `2d`, `1w`.
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, AuditError> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let bad = || {
        AuditError::Filter(format!(
            "invalid time {s:?}: use RFC 3339 (2024-05-01T12:00:00Z) or an age like 1h, 2d"
        ))
    };
    let ago = humantime::parse_duration(s).map_err(|_| bad())?;
    let ago = time::Duration::try_from(ago).map_err(|_| bad())?;
    now.checked_sub(ago).ok_or_else(bad)
}

/// An event with the line it was read from.
#[derive(Debug, Clone)]
pub struct Record {
    pub line: String,
    pub event: Event,
}

/// Matching records of the whole file set, oldest first. A line that is not an
/// event yields an `Err` naming it; iteration can continue past it.
pub fn query_iter(
    path: &Path,
    filter: &Filter,
) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    Ok(query_set(LogSet::open(path)?, filter))
}

/// [`query_iter`] over an opened log.
pub fn query_set(set: LogSet, filter: &Filter) -> impl Iterator<Item = Result<Record, AuditError>> {
    let filter = filter.clone();
    set.lines().filter_map(move |raw| {
        let raw = match raw {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let where_ = || format!("{}:{}", raw.file.display(), raw.line);
        let Ok(line) = String::from_utf8(raw.bytes.clone()) else {
            return Some(Err(corrupt(
                &raw.file,
                format!("line {}: not UTF-8", raw.line),
            )));
        };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) if filter.matches(&event) => Some(Ok(Record { line, event })),
            Ok(_) => None,
            Err(e) => Some(Err(AuditError::Corrupt {
                path: where_(),
                message: format!("not an audit event: {e}"),
            })),
        }
    })
}

/// Matching events, oldest first; fails on the first unreadable line.
pub fn query(path: &Path, filter: &Filter) -> Result<Vec<Event>, AuditError> {
    query_iter(path, filter)?
        .map(|r| r.map(|rec| rec.event))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::testkit::ev;
    use crate::audit::AuditLog;

    #[test]
    fn query_filters_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open_path(&path).unwrap();
        let at = |ts: &str, mut e: Event| {
            e.ts = ts.into();
            e
        };
        log.record(at(
            "2024-05-01T10:00:00.000Z",
            ev("inject", "allowed", "a1", Some("OPENAI_API_KEY")),
        ))
        .unwrap();
        log.record(at(
            "2024-05-01T11:00:00.000Z",
            ev("deny", "denied", "a1", Some("SLACK_BOT_TOKEN")),
        ))
        .unwrap();
        let mut other_chain = ev("inject", "allowed", "a2", Some("OPENAI_API_KEY"));
        other_chain.chain = Some("billing".into());
        log.record(at("2024-05-01T12:00:00.000Z", other_chain))
            .unwrap();

        let count = |f: Filter| query(&path, &f).unwrap().len();
        assert_eq!(count(Filter::default()), 3);
        assert_eq!(
            count(Filter {
                secret: Some("OPENAI_API_KEY".into()),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                agent: Some("a1".into()),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                chain: Some("billing".into()),
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                outcome: Some("denied".into()),
                ..Filter::default()
            }),
            1
        );
        let now = OffsetDateTime::now_utc();
        let since = parse_time("2024-05-01T11:00:00Z", now).unwrap();
        let until = parse_time("2024-05-01T12:00:00Z", now).unwrap();
        assert_eq!(
            count(Filter {
                since: Some(since),
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                since: Some(since),
                until: Some(until),
                ..Filter::default()
            }),
            1
        );
        let recent = parse_time("1h", now).unwrap();
        assert_eq!(
            count(Filter {
                since: Some(recent),
                ..Filter::default()
            }),
            0
        );
        let events = query(
            &path,
            &Filter {
                agent: Some("a1".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(events[1].secret.as_deref(), Some("SLACK_BOT_TOKEN"));
        assert!(!events[1].hash.is_empty());
    }

    #[test]
    fn relative_and_absolute_times_parse() {
        let now = OffsetDateTime::parse("2024-05-02T00:00:00Z", &Rfc3339).unwrap();
        let t = parse_time("2d", now).unwrap();
        assert_eq!(
            t,
            OffsetDateTime::parse("2024-04-30T00:00:00Z", &Rfc3339).unwrap()
        );
        assert_eq!(
            parse_time("90m", now).unwrap(),
            now - time::Duration::minutes(90)
        );
        assert!(parse_time("2024-05-01T12:00:00+02:00", now).is_ok());
        assert!(matches!(
            parse_time("yesterday", now),
            Err(AuditError::Filter(_))
        ));
    }
}
