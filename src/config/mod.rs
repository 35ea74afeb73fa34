//! The configuration file (SPEC §3): loading, embedded defaults, and validation
//! whose errors name the file, the line and the key. The serde structs are in
//! `schema`, the built-in providers in `catalog`, request rules in `rules`.

pub mod catalog;
pub mod rules;
mod schema;
pub mod store;

pub use schema::*;
pub use store::{Backend, DbTls, DbUrl, StoreConfig};

use std::path::Path;

/// Where `--config` points when it is not given and this file exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/keyward.toml";
/// Name of the pseudo-file used in messages about the embedded defaults.
pub const EMBEDDED_NAME: &str = "<embedded defaults>";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

impl Config {
    /// `--config PATH` if given, else `config/keyward.toml` if present, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::from_file(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Config::parse(&text, &file)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses and validates TOML text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            // The key the bad value sits under (`proxy.listen`), as the
            // validation messages below name theirs.
            let key = e.path().to_string();
            let e = e.into_inner();
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            let message = readable(e.message().trim_end());
            let message = if key == "." || key.contains('?') {
                message.to_string()
            } else {
                format!("{key}: {message}")
            };
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                message,
            }
        })?;
        cfg.validate(text, file)?;
        Ok(cfg)
    }

    /// Where a file's messages point: the file name, or the embedded-defaults label.
    pub fn source_name(&self) -> String {
        self.source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| EMBEDDED_NAME.into())
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let fail = |needle: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: find_line(text, needle, Occurrence::First),
            message,
        };
        // A duplicate is reported where it is defined again, not at the original.
        let duplicate = |needle: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            line: find_line(text, needle, Occurrence::Last),
            message,
        };
        if let Err((key, message)) = self.store.check() {
            return Err(fail(key, message));
        }
        if self.tls.upstream_roots.is_empty() {
            return Err(fail(
                "upstream_roots",
                "tls.upstream_roots: must be \"system\" or a PEM path".into(),
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(fail(
                "max_connections",
                "proxy.max_connections: must be at least 1".into(),
            ));
        }
        if self.proxy.workers > MAX_WORKERS {
            return Err(fail(
                "workers",
                format!("proxy.workers: at most {MAX_WORKERS} (0 = one per core)"),
            ));
        }
        match (&self.proxy.transparent_listen, &self.proxy.transparent_agent) {
            (Some(_), None) => {
                return Err(fail(
                    "transparent_listen",
                    "proxy.transparent_listen: set proxy.transparent_agent to the agent \
                     its connections act as"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(fail(
                    "transparent_agent",
                    "proxy.transparent_agent: only used with proxy.transparent_listen; set it or remove this"
                        .into(),
                ))
            }
            _ => {}
        }
        for (i, host) in self.egress.allow.iter().enumerate() {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(':') {
                return Err(fail(
                    host,
                    format!("egress.allow[{i}]: {host:?} is not a host or a \"*.suffix\" glob"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.providers {
            if !names.insert(p.name.as_str()) {
                return Err(duplicate(
                    &p.name,
                    format!("providers: duplicate provider name {:?}", p.name),
                ));
            }
            if !valid_secret_name(&p.secret) {
                return Err(fail(
                    &p.secret,
                    format!(
                        "providers.{}.secret: {:?} must match ^[A-Z_][A-Z0-9_]*$",
                        p.name, p.secret
                    ),
                ));
            }
            if p.hosts.is_empty() {
                return Err(fail(
                    &p.name,
                    format!("providers.{}.hosts: at least one host", p.name),
                ));
            }
            match &p.sign {
                None if p.inject.is_none() => {
                    return Err(fail(
                        &p.name,
                        format!("providers.{}: needs `inject` or `sign`", p.name),
                    ))
                }
                Some(SignConfig::Hmac(h)) => {
                    if h.hmac != "sha256" {
                        return Err(fail(
                            &h.hmac,
                            format!(
                                "providers.{}.sign.hmac: only \"sha256\" is supported",
                                p.name
                            ),
                        ));
                    }
                    let names = std::iter::once(&h.header).chain(h.timestamp_header.iter());
                    for name in names {
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(fail(
                                name,
                                format!("providers.{}.sign: invalid header name {name:?}", p.name),
                            ));
                        }
                    }
                    if !h.format.contains("{hex}") && !h.format.contains("{base64}") {
                        return Err(fail(
                            &h.format,
                            format!(
                                "providers.{}.sign.format: must contain {{hex}} or {{base64}}",
                                p.name
                            ),
                        ));
                    }
                }
                Some(SignConfig::AwsSigv4 { aws_sigv4 }) => {
                    let ok = |s: &str| {
                        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    };
                    if !ok(&aws_sigv4.service) || !ok(&aws_sigv4.region) {
                        return Err(fail(
                            &p.name,
                            format!(
                                "providers.{}.sign.aws_sigv4: service and region must be plain names",
                                p.name
                            ),
                        ));
                    }
                }
                None => {}
            }
            let Some(inject) = &p.inject else { continue };
            let template = match inject {
                InjectConfig::Header { header, value } => {
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(fail(
                            header,
                            format!("providers.{}.inject.header: invalid header name", p.name),
                        ));
                    }
                    value.as_str()
                }
                InjectConfig::Basic { basic } => {
                    if basic.user.contains("{secret}") || basic.password.contains("{secret}") {
                        ""
                    } else {
                        "missing"
                    }
                }
                InjectConfig::Query { query } => {
                    if query.is_empty() {
                        "missing"
                    } else {
                        ""
                    }
                }
                InjectConfig::PathPrefix { path_prefix } => {
                    if !path_prefix.starts_with('/') {
                        return Err(fail(
                            path_prefix,
                            format!("providers.{}.inject.path_prefix: must start with /", p.name),
                        ));
                    }
                    path_prefix.as_str()
                }
            };
            if template == "missing" || (!template.is_empty() && !template.contains("{secret}")) {
                // On the template's own line (a `{secrt}` typo), when it has one.
                let (needle, shown) = match inject {
                    InjectConfig::Header { value, .. } => (value.as_str(), format!(" {value:?}")),
                    InjectConfig::PathPrefix { path_prefix } => {
                        (path_prefix.as_str(), format!(" {path_prefix:?}"))
                    }
                    InjectConfig::Basic { basic } if !basic.user.is_empty() => {
                        (basic.user.as_str(), String::new())
                    }
                    _ => (p.name.as_str(), String::new()),
                };
                return Err(fail(
                    needle,
                    format!(
                        "providers.{}.inject: the template{shown} must contain {{secret}}",
                        p.name
                    ),
                ));
            }
        }
        let mut chains = std::collections::HashSet::new();
        for c in &self.chains {
            if !chains.insert(c.name.as_str()) {
                return Err(duplicate(
                    &c.name,
                    format!("chains: duplicate chain {:?}", c.name),
                ));
            }
            for s in c.secrets.iter().flatten() {
                if !valid_secret_name(s) {
                    return Err(fail(
                        s,
                        format!(
                            "chains.{}.secrets: {s:?} must match ^[A-Z_][A-Z0-9_]*$",
                            c.name
                        ),
                    ));
                }
            }
        }
        let mut agents = std::collections::HashSet::new();
        for a in &self.agents {
            if !agents.insert(a.id.as_str()) {
                return Err(duplicate(
                    &a.id,
                    format!("agents: duplicate agent id {:?}", a.id),
                ));
            }
            if !valid_agent_id(&a.id) {
                return Err(fail(
                    &a.id,
                    format!("agents.{}.id: use letters, digits, '-', '_', '.'", a.id),
                ));
            }
            if a.token_sha256.len() != 64
                || !a
                    .token_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(fail(
                    &a.token_sha256,
                    format!(
                        "agents.{}.token_sha256: must be 64 lowercase hex characters",
                        a.id
                    ),
                ));
            }
            if let Some(chain) = &a.chain {
                if !chains.contains(chain.as_str()) {
                    return Err(fail(
                        chain,
                        format!("agents.{}.chain: no chain named {chain:?}", a.id),
                    ));
                }
            }
            for (secret, tier) in &a.pins {
                if !TIERS.contains(&tier.as_str()) {
                    return Err(fail(
                        tier,
                        format!(
                            "agents.{}.use.{secret}: tier {tier:?} is not one of {}",
                            a.id,
                            TIERS.join(", ")
                        ),
                    ));
                }
            }
        }
        let known: std::collections::HashSet<String> =
            crate::config::catalog::merged(&self.providers)
                .into_iter()
                .map(|p| p.name)
                .collect();
        let levels = self
            .chains
            .iter()
            .map(|c| ("chains", &c.name, &c.rules))
            .chain(self.agents.iter().map(|a| ("agents", &a.id, &a.rules)));
        for (level, name, rules) in levels {
            for r in rules {
                if !known.contains(&r.provider) {
                    return Err(fail(
                        &r.provider,
                        format!("{level}.{name}.rules: no provider named {:?}", r.provider),
                    ));
                }
                for text in &r.allow {
                    if let Err(e) = crate::config::rules::Rule::parse(text) {
                        return Err(fail(text, format!("{level}.{name}.rules: {e}")));
                    }
                }
            }
        }
        for t in &self.admin.tokens {
            for p in &t.permissions {
                if !ADMIN_PERMISSIONS.contains(&p.as_str()) {
                    return Err(fail(
                        p,
                        format!(
                            "admin.tokens.{}.permissions: {p:?} is not one of {}",
                            t.name,
                            ADMIN_PERMISSIONS.join(", ")
                        ),
                    ));
                }
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(fail(
                    &t.sha256,
                    format!("admin.tokens.{}.sha256: must be 64 hex characters", t.name),
                ));
            }
        }
        Ok(())
    }
}

/// serde's message for a table that fits no form of an untagged enum names a
/// Rust type; say instead which forms the key takes (SPEC §3).
fn readable(message: &str) -> &str {
    match message {
        "data did not match any variant of untagged enum InjectConfig" => {
            "not an inject form: use { header = \"…\", value = \"…{secret}…\" }, \
             { basic = { user = \"{secret}\" } }, { query = \"key\" } or \
             { path_prefix = \"/bot{secret}\" }"
        }
        "data did not match any variant of untagged enum SignConfig" => {
            "not a sign form: use { hmac = \"sha256\", header = \"…\" } or \
             { aws_sigv4 = { service = \"…\", region = \"…\" } }"
        }
        other => other,
    }
}

/// Agent ids appear in URLs (`http://ID:TOKEN@…`) and audit lines: keep them plain.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Which occurrence [`find_line`] reports.
#[derive(Clone, Copy)]
enum Occurrence {
    First,
    Last,
}

/// Best-effort line of `needle` (for semantic errors): the value as a quoted TOML
/// string if it appears so (`"triage"` is not found inside `"triage-x"`), else the
/// bare text; line 1 when it is not in the file (a default).
fn find_line(text: &str, needle: &str, which: Occurrence) -> usize {
    let find = |n: &str| match which {
        Occurrence::First => text.find(n),
        Occurrence::Last => text.rfind(n),
    };
    find(&format!("\"{needle}\""))
        .or_else(|| find(needle))
        .map(|o| line_of(text, o))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.proxy.listen.port(), 3128);
        assert_eq!(c.egress.ports, vec![443]);
        assert_eq!(c.proxy.max_body_bytes.0, 64 << 20);
    }

    #[test]
    fn reload_names_the_sections_only_a_restart_applies() {
        let old = Config::parse("", "t.toml").unwrap();
        let same = Config::parse("[egress]\nallow = [\"pypi.org\"]\n", "t.toml").unwrap();
        assert!(old.restart_only_changes(&same).is_empty());
        let new = Config::parse(
            "[proxy]\nidle_timeout = \"5s\"\n[audit]\nrotate_bytes = 1000\n\
             [tls]\nupstream_roots = \"roots.pem\"\n[admin]\nlisten = \"127.0.0.1:9\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            vec!["[proxy]", "[tls]", "[audit]", "admin.listen"]
        );
    }

    #[test]
    fn semantic_errors_point_at_the_exact_value_and_the_duplicate() {
        let sha =
            "token_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
        let text = format!(
            "[[chains]]\nname = \"triage-x\"\n\n[[agents]]\nid = \"a1\"\n{sha}chain = \"triage\"\n"
        );
        let text = text.as_str();
        let err = Config::parse(text, "k.toml").unwrap_err().to_string();
        assert!(err.starts_with("k.toml:7:"), "{err}");
        let text = format!("[[agents]]\nid = \"a1\"\n{sha}\n[[agents]]\nid = \"a1\"\n{sha}");
        let err = Config::parse(&text, "k.toml").unwrap_err().to_string();
        assert!(err.starts_with("k.toml:6:"), "{err}");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err =
            Config::parse("[proxy]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "k.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("k.toml:3:"), "{msg}");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn type_error_names_the_key_path() {
        let err = Config::parse("[proxy]\n\nlisten = 3128\n", "k.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("k.toml:3: proxy.listen: "), "{msg}");
        let err = Config::parse("[egress]\nports = [443, \"x\"]\n", "k.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("k.toml:2: egress.ports[1]: "),
            "{err}"
        );
        let err = Config::parse("[proxy]\nbogus = 1\n", "k.toml").unwrap_err();
        assert!(err.to_string().starts_with("k.toml:2: "), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn template_typo_is_reported_on_the_template_line() {
        let text = "[[providers]]\nname = \"x\"\nhosts = [\"x.example\"]\nsecret = \"X\"\n\
                    inject = { header = \"authorization\", value = \"Bearer {secrt}\" }\n";
        let err = Config::parse(text, "k.toml").unwrap_err().to_string();
        assert!(err.starts_with("k.toml:5: providers.x.inject: "), "{err}");
        assert!(
            err.contains("\"Bearer {secrt}\" must contain {secret}"),
            "{err}"
        );
    }

    #[test]
    fn allow_private_takes_a_bare_address_as_its_own_network() {
        let c = Config::parse(
            "[egress]\nallow_private = [\"127.0.0.1\", \"::1\", \"10.0.0.0/8\"]\n",
            "k.toml",
        )
        .unwrap();
        let nets: Vec<String> = c
            .egress
            .allow_private
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["127.0.0.1/32", "::1/128", "10.0.0.0/8"]);
        let err = Config::parse("[egress]\nallow_private = [\"localhost\"]\n", "k.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("k.toml:2: egress.allow_private: \"localhost\" is not"),
            "{err}"
        );
    }

    #[test]
    fn a_misspelt_inject_or_sign_table_lists_the_forms() {
        let head = "[[providers]]\nname = \"x\"\nhosts = [\"x.example\"]\nsecret = \"X\"\n";
        let err = Config::parse(
            &format!("{head}inject = {{ heder = \"x\", value = \"{{secret}}\" }}\n"),
            "k.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("k.toml:5: providers[0].inject: not an inject form: use { header"),
            "{err}"
        );
        let err = Config::parse(&format!("{head}sign = {{ hmak = \"sha256\" }}\n"), "k.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("k.toml:5: providers[0].sign: not a sign form"),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_rejected_with_line() {
        let err = Config::parse("[proxy]\n\nidle_timeout = \"soon\"\n", "k.toml").unwrap_err();
        assert!(err.to_string().starts_with("k.toml:3:"), "{err}");
    }

    #[test]
    fn workers_default_to_one_per_core_and_are_bounded() {
        assert_eq!(Config::parse("", "k.toml").unwrap().proxy.workers, 0);
        let ok = Config::parse("[proxy]\nworkers = 3\n", "k.toml").unwrap();
        assert_eq!(ok.proxy.workers, 3);
        let err = Config::parse("[proxy]\nworkers = 100000\n", "k.toml").unwrap_err();
        assert!(err.to_string().contains("k.toml:2:"), "{err}");
        assert!(err.to_string().contains("proxy.workers"), "{err}");
    }

    #[test]
    fn agent_with_unknown_chain_is_rejected() {
        let text = "[[agents]]\nid = \"a\"\ntoken_sha256 = \"".to_string()
            + &"0".repeat(64)
            + "\"\nchain = \"nope\"\n";
        let err = Config::parse(&text, "k.toml").unwrap_err();
        assert!(err.to_string().contains("k.toml:4:"), "{err}");
    }

    #[test]
    fn inject_schemes_parse() {
        let text = r#"
[[providers]]
name = "a"
hosts = ["a.example"]
secret = "A"
inject = { header = "authorization", value = "Bearer {secret}" }
[[providers]]
name = "b"
hosts = ["b.example"]
secret = "B"
inject = { basic = { user = "{secret}" } }
[[providers]]
name = "c"
hosts = ["c.example"]
secret = "C"
inject = { query = "key" }
[[providers]]
name = "d"
hosts = ["d.example"]
secret = "D"
inject = { path_prefix = "/bot{secret}" }
"#;
        let c = Config::parse(text, "k.toml").unwrap();
        assert!(matches!(
            c.providers[3].inject,
            Some(InjectConfig::PathPrefix { .. })
        ));
        assert!(matches!(
            c.providers[1].inject,
            Some(InjectConfig::Basic { .. })
        ));
    }

    #[test]
    fn unknown_admin_permission_is_rejected() {
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntokens = [{{ name = \"ops\", sha256 = \"{}\", permissions = [\"secret:read\"] }}]\n",
            "0".repeat(64)
        );
        let err = Config::parse(&text, "k.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("k.toml:3:") && err.contains("secret:read"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("64MiB"), Some(64 << 20));
        assert_eq!(ByteSize::parse("12"), Some(12));
        assert_eq!(ByteSize::parse("1TiB"), None);
    }
}
