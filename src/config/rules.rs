//! Per-agent request rules (`rules = [{ provider = "github", allow = ["GET /repos/**"] }]`
//! in `[[chains]]` and `[[agents]]`): method + path globs a request to a provider
//! must match before any credential is attached. Pure functions over data,
//! table-tested without sockets.
//!
//! Glob syntax: the method is a token or `*` (any); the path is split on `/`, and
//! each pattern segment is a literal, `*` (exactly one non-empty segment) or `**`
//! (any number of segments, including none).

use super::schema::RuleConfig;
use percent_encoding::percent_decode_str;
use std::collections::HashMap;

/// Wildcard for one path segment / any method.
pub const ONE: &str = "*";
/// Wildcard for any number of path segments.
pub const ANY: &str = "**";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("rule {0:?}: expected \"METHOD /path/glob\"")]
    Shape(String),
    #[error("rule {0:?}: the method must be `*` or an upper-case HTTP method")]
    Method(String),
    #[error("rule {0:?}: the path must start with /")]
    Path(String),
}

/// One compiled `METHOD /path` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None` = any method.
    method: Option<String>,
    segments: Vec<String>,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let mut parts = text.split_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(RuleError::Shape(text.to_string()));
        };
        let method = if method == ONE {
            None
        } else if method.bytes().all(|b| b.is_ascii_uppercase()) {
            Some(method.to_string())
        } else {
            return Err(RuleError::Method(text.to_string()));
        };
        let Some(rest) = path.strip_prefix('/') else {
            return Err(RuleError::Path(text.to_string()));
        };
        Ok(Rule {
            method,
            segments: rest.split('/').map(str::to_string).collect(),
        })
    }

    /// Does `method path` match? `path` must already be split into decoded segments.
    fn matches(&self, method: &str, path: &[String]) -> bool {
        self.method.as_deref().is_none_or(|m| m == method) && glob(&self.segments, path)
    }
}

fn glob(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == ANY => (0..=path.len()).any(|skip| glob(rest, &path[skip..])),
        Some((p, rest)) => match path.split_first() {
            Some((seg, tail)) => {
                (if p == ONE { !seg.is_empty() } else { p == seg }) && glob(rest, tail)
            }
            None => false,
        },
    }
}

/// Splits a request path into percent-decoded segments. `None` when the path is
/// ambiguous: a `.`/`..` segment or an encoded `/` (the upstream might normalise
/// it into a path the rules never saw).
pub fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for raw in rest.split('/') {
        let seg = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
        if seg == "." || seg == ".." || seg.contains('/') || seg.contains('\\') {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

/// The rules one level (a chain or an agent) sets, by provider name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    by_provider: HashMap<String, Vec<Rule>>,
}

impl Rules {
    /// Compiles config rules; entries for the same provider add up.
    pub fn compile(cfg: &[RuleConfig]) -> Result<Rules, RuleError> {
        let mut by_provider: HashMap<String, Vec<Rule>> = HashMap::new();
        for r in cfg {
            let entry = by_provider.entry(r.provider.clone()).or_default();
            for text in &r.allow {
                entry.push(Rule::parse(text)?);
            }
        }
        Ok(Rules { by_provider })
    }

    /// `None` when this level sets no rules for `provider` (no limit); else whether
    /// any rule matches.
    pub fn allows(&self, provider: &str, method: &str, path: Option<&[String]>) -> Option<bool> {
        let rules = self.by_provider.get(provider)?;
        Some(path.is_some_and(|p| rules.iter().any(|r| r.matches(method, p))))
    }

    pub fn is_empty(&self) -> bool {
        self.by_provider.is_empty()
    }
}

/// A request no rule allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{method} {path} to provider {provider} is not allowed by the {level}'s request rules")]
pub struct NotAllowed {
    pub provider: String,
    pub method: String,
    pub path: String,
    /// `chain` or `agent`.
    pub level: &'static str,
}

/// Both levels apply: a level with rules for `provider` must allow the request.
pub fn check(
    chain: Option<&Rules>,
    agent: &Rules,
    provider: &str,
    method: &str,
    path: &str,
) -> Result<(), NotAllowed> {
    let segs = segments(path);
    for (level, rules) in [("chain", chain), ("agent", Some(agent))] {
        let Some(rules) = rules else { continue };
        if rules.allows(provider, method, segs.as_deref()) == Some(false) {
            return Err(NotAllowed {
                provider: provider.to_string(),
                method: method.to_string(),
                path: path.to_string(),
                level,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(provider: &str, allow: &[&str]) -> Rules {
        Rules::compile(&[RuleConfig {
            provider: provider.into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }])
        .unwrap()
    }

    #[test]
    fn glob_table() {
        let gh = rules("github", &["GET /repos/**", "POST /repos/*/*/issues"]);
        let cases: &[(&str, &str, bool)] = &[
            ("GET", "/repos/acme/app", true),
            ("GET", "/repos", true),
            ("GET", "/repos/a/b/c/d/e", true),
            ("GET", "/user", false),
            ("GET", "/reposx/a", false),
            ("POST", "/repos/acme/app/issues", true),
            ("POST", "/repos/acme/app/pulls", false),
            ("POST", "/repos/acme/issues", false),
            ("POST", "/repos/acme/app/issues/1", false),
            ("POST", "/repos//app/issues", false),
            ("DELETE", "/repos/acme/app", false),
            ("get", "/repos/acme/app", false),
            // traversal and encoded slashes never match
            ("GET", "/repos/../user", false),
            ("GET", "/repos/%2e%2e/user", false),
            ("POST", "/repos/a%2Fb/c/issues", false),
            ("GET", "/repos/acme%20x/app", true),
        ];
        for (m, p, want) in cases {
            let got = check(None, &gh, "github", m, p).is_ok();
            assert_eq!(got, *want, "{m} {p}");
        }
    }

    #[test]
    fn any_method_and_trailing_globs() {
        let r = rules("x", &["* /v1/*/models", "GET /**"]);
        assert!(check(None, &r, "x", "PATCH", "/v1/a/models").is_ok());
        assert!(check(None, &r, "x", "PATCH", "/v1/a/b/models").is_err());
        assert!(check(None, &r, "x", "GET", "/").is_ok());
        assert!(check(None, &r, "x", "GET", "/a/b").is_ok());
        let mid = rules("x", &["GET /a/**/z"]);
        assert!(check(None, &mid, "x", "GET", "/a/z").is_ok());
        assert!(check(None, &mid, "x", "GET", "/a/b/c/z").is_ok());
        assert!(check(None, &mid, "x", "GET", "/a/b/c").is_err());
    }

    #[test]
    fn levels_combine() {
        let chain = rules("github", &["GET /**"]);
        let agent = rules("github", &["* /repos/**"]);
        let none = Rules::default();
        /// (chain rules, agent rules, provider, method, path, expected level refusing)
        type Row<'a> = (
            Option<&'a Rules>,
            &'a Rules,
            &'a str,
            &'a str,
            &'a str,
            Result<(), &'a str>,
        );
        let table: &[Row] = &[
            // both levels: intersection
            (Some(&chain), &agent, "github", "GET", "/repos/a", Ok(())),
            (
                Some(&chain),
                &agent,
                "github",
                "POST",
                "/repos/a",
                Err("chain"),
            ),
            (Some(&chain), &agent, "github", "GET", "/user", Err("agent")),
            // only one level has rules
            (Some(&chain), &none, "github", "POST", "/x", Err("chain")),
            (None, &agent, "github", "GET", "/user", Err("agent")),
            (Some(&none), &none, "github", "DELETE", "/x", Ok(())),
            // rules for another provider do not limit this one
            (Some(&chain), &agent, "openai", "POST", "/v1/chat", Ok(())),
        ];
        for (c, a, p, m, path, want) in table {
            let got = check(*c, a, p, m, path).map_err(|e| e.level);
            assert_eq!(got, *want, "{p} {m} {path}");
        }
    }

    #[test]
    fn bad_rules_are_rejected() {
        for bad in ["GET", "GET repos", "get /x", "GET /x extra", ""] {
            assert!(Rule::parse(bad).is_err(), "{bad}");
        }
        assert!(Rule::parse("* /").is_ok());
    }
}
