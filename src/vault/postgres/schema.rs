//! The schema keyward owns: versioned migrations, applied in one transaction under
//! a transaction-level advisory lock (replicas starting together wait for each
//! other; a killed one releases it), and the one `meta` row created with the first
//! data key. Table list and meaning: docs/store.md.

/// Advisory-lock key space of keyward (xor'ed with a hash of the schema name).
const LOCK_BASE: i64 = 0x6b65_7977_6172_6400;

/// Migration N is `MIGRATIONS[N-1]`; `{s}` is the (validated) schema name.
/// Never edit a shipped migration: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the vault (records sealed exactly as in the file), agents, the generation.
    r#"
CREATE TABLE {s}.meta (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation  bigint  NOT NULL CHECK (generation >= 0),
    key_id      text    NOT NULL,
    kdf         text,
    data_key    text    NOT NULL,
    seal_epoch  bigint  NOT NULL,
    seal_count  bigint  NOT NULL
);
CREATE TABLE {s}.records (
    scope             text    NOT NULL,
    name              text    NOT NULL,
    id                text    NOT NULL UNIQUE,
    version           bigint  NOT NULL CHECK (version >= 1),
    hint              text    NOT NULL,
    description       text,
    hosts             text[]  NOT NULL,
    created           text    NOT NULL,
    updated           text    NOT NULL,
    last_rotated      text    NOT NULL,
    rotate_every_secs bigint,
    kind              text    NOT NULL,
    public            text    NOT NULL,
    sealed            text    NOT NULL,
    generation        bigint  NOT NULL,
    PRIMARY KEY (scope, name)
);
CREATE TABLE {s}.agents (
    id          text   PRIMARY KEY,
    record      text   NOT NULL,
    mac         text   NOT NULL,
    generation  bigint NOT NULL
);
"#,
    // 2: OAuth2 access tokens shared between replicas (sealed; one refresh at a
    // time under pg_advisory_xact_lock keyed by the secret).
    r#"
CREATE TABLE {s}.oauth_tokens (
    scope    text   NOT NULL,
    name     text   NOT NULL,
    version  bigint NOT NULL,
    written  bigint,
    expires  bigint NOT NULL,
    sealed   text   NOT NULL,
    PRIMARY KEY (scope, name)
);
"#,
    // 3: the audit log (docs/store.md "Audit"): one hash chain per replica; the
    // registered head moves in the same transaction as the rows it covers.
    r#"
CREATE TABLE {s}.audit_replicas (
    replica     text        PRIMARY KEY,
    head_seq    bigint      NOT NULL CHECK (head_seq >= 0),
    head_hash   text        NOT NULL,
    registered  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.audit (
    replica    text   NOT NULL REFERENCES {s}.audit_replicas (replica),
    seq        bigint NOT NULL CHECK (seq >= 1),
    ts         text   NOT NULL,
    line       text   NOT NULL,
    prev_hash  text   NOT NULL,
    hash       text   NOT NULL,
    PRIMARY KEY (replica, seq)
);
CREATE INDEX audit_ts ON {s}.audit (ts);
"#,
    // 4: the table digest (postgres/digest.rs): XOR of keyed per-row leaves over
    // records and agents, and its MAC with the generation. NULL only until the
    // opening keyward (it has the key) computes it in the same transaction.
    r#"
ALTER TABLE {s}.meta ADD COLUMN row_digest text, ADD COLUMN digest_mac text;
"#,
];

/// The schema version this keyward writes.
pub fn latest() -> i32 {
    MIGRATIONS.len() as i32
}

/// The advisory-lock key for `schema` (FNV-1a, stable across builds).
pub fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    LOCK_BASE ^ (h as i64)
}

pub fn create_schema(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         );"
    )
}

pub fn migration(s: &str, n: usize) -> Option<String> {
    MIGRATIONS
        .get(n.checked_sub(1)?)
        .map(|m| m.replace("{s}", s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_per_schema_and_migrations_name_it() {
        assert_ne!(lock_key("keyward"), lock_key("other"));
        assert_eq!(lock_key("keyward"), lock_key("keyward"));
        let m = migration("kw", 1).unwrap();
        assert!(m.contains("kw.records") && !m.contains("{s}"));
        assert!(migration("kw", 0).is_none());
        assert!(migration("kw", MIGRATIONS.len() + 1).is_none());
    }
}
