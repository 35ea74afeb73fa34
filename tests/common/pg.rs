//! A throwaway PostgreSQL cluster for store tests: `initdb` in a temp dir, run as
//! the unprivileged `nobody` when the tests run as root (initdb refuses root), on
//! a free 127.0.0.1 port with password (SCRAM) authentication and `fsync=off`,
//! stopped on drop. Needs Debian's `postgresql` (initdb, pg_ctl) and its client
//! (psql, pg_dump); missing tools skip locally and fail under CI (`tools.rs`).
//!
//! [`Pg::start_with`] can turn TLS on (`ssl = on`, a server certificate for
//! 127.0.0.1/localhost signed by a test CA made here with rcgen, the key 0600 and
//! owned by the cluster's user) and make `pg_hba.conf` accept TLS connections only.

use super::tools;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The cluster's superuser (also keyward's user in the tests).
pub const USER: &str = "keyward";
/// The database keyward uses.
pub const DB: &str = "keyward";

/// Numbers the spool files of one test process.
static SPOOLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub struct Pg {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    bin: PathBuf,
    psql: PathBuf,
    pg_dump: PathBuf,
    tls: Tls,
}

/// How a test cluster speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `ssl = off` (the default cluster).
    Off,
    /// `ssl = on`; plain connections are still accepted.
    On,
    /// `ssl = on` and `hostssl`-only `pg_hba.conf`: a plain connection is refused.
    Required,
}

/// The server certificate and key, and the CA that signed them (PEM files in
/// the cluster's dir).
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
/// The test CA's certificate (what `[store] ca` names for verify-full).
const CA_CERT: &str = "db-ca.pem";

/// A server binary: on PATH, else Debian's versioned directory.
fn server_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = tools::find(name) {
        return Some(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of `nobody`, who runs the cluster when the tests run as root.
fn nobody() -> (u32, u32) {
    let name = std::ffi::CString::new("nobody").unwrap();
    // SAFETY: getpwnam with a NUL-terminated name; the record is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no user nobody");
    // SAFETY: pw is non-null and points at libc's static passwd record.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Pg {
    /// Starts a cluster with database `keyward`, or `None` (skipped) without the tools.
    pub fn start(test: &str) -> Option<Pg> {
        Pg::start_with(test, Tls::Off)
    }

    /// [`Pg::start`] with TLS as `tls` says.
    pub fn start_with(test: &str, tls: Tls) -> Option<Pg> {
        let initdb = match server_tool("initdb") {
            Some(p) => p,
            None => return tools::skip_or_fail("initdb (postgresql) not installed", test),
        };
        if server_tool("pg_ctl").is_none() {
            return tools::skip_or_fail("pg_ctl (postgresql) not installed", test);
        }
        let psql = tools::require("psql", test)?;
        let pg_dump = tools::require("pg_dump", test)?;
        let bin = initdb.parent().unwrap().to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let password = format!("pw-{}", hex::encode(rand::random::<[u8; 12]>()));
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        let pg = Pg {
            port: free_port(),
            password,
            bin,
            psql,
            pg_dump,
            dir,
            tls,
        };
        let data = pg.data_dir();
        let out = pg.as_owner(
            &initdb,
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--pwfile",
                pwfile.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls != Tls::Off {
            pg.make_server_cert();
        }
        if tls == Tls::Required {
            pg.hostssl_only();
        }
        pg.start_server();
        pg.psql(&format!("CREATE DATABASE {DB}"), "postgres");
        Some(pg)
    }

    /// A test CA and a server certificate it signs (SAN 127.0.0.1 and
    /// localhost); the key is 0600 and owned by the user the server runs as
    /// (PostgreSQL refuses a key others can read).
    fn make_server_cert(&self) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        use std::os::unix::fs::PermissionsExt;
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "keyward test database CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let dir = self.dir.path();
        std::fs::write(dir.join(CA_CERT), ca_cert.pem()).unwrap();
        std::fs::write(dir.join(SERVER_CERT), cert.pem()).unwrap();
        let key_path = dir.join(SERVER_KEY);
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(&key_path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Every `host` line of `pg_hba.conf` becomes `hostssl`.
    fn hostssl_only(&self) {
        let hba = self.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let out: Vec<String> = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => l.to_string(),
            })
            .collect();
        assert!(out.iter().any(|l| l.starts_with("hostssl ")), "{text}");
        // Written in place: the file keeps its owner (the cluster's user).
        std::fs::write(&hba, out.join("\n") + "\n").unwrap();
    }

    /// The test CA that signed the server certificate (TLS clusters only).
    pub fn ca_pem(&self) -> PathBuf {
        assert_ne!(self.tls, Tls::Off, "this cluster has no certificate");
        self.dir.path().join(CA_CERT)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn as_owner(&self, prog: &Path, args: &[&str]) -> Output {
        let mut c = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .arg(prog);
            c
        } else {
            Command::new(prog)
        };
        c.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// (Re)starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls != Tls::Off {
            let d = self.dir.path().display();
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={d}/{SERVER_CERT} -c ssl_key_file={d}/{SERVER_KEY}"
            ));
        }
        let log = self.dir.path().join("server.log");
        let out = self.as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (connections are cut).
    pub fn stop_server(&self) {
        let _ = self.as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// `postgres://keyward:PASSWORD@127.0.0.1:PORT/keyward`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DB}",
            self.password, self.port
        )
    }

    /// The URL without a password (give it through `password_file` or `$PGPASSWORD`).
    pub fn url_no_password(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DB}", self.port)
    }

    /// The `[store]` section for this cluster. Each section gets its own audit
    /// spool (the default, `data/audit-spool.jsonl`, is relative to the working
    /// directory, which concurrent tests share).
    pub fn store_toml(&self, schema: &str) -> String {
        let spool = self.dir.path().join(format!(
            "spool-{schema}-{}.jsonl",
            SPOOLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        self.store_toml_spool(schema, &spool.display().to_string())
    }

    /// The `[store]` section with the audit spool at `spool`.
    pub fn store_toml_spool(&self, schema: &str, spool: &str) -> String {
        format!(
            "\n[store]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{schema}\"\ntls = \"disable\"\nspool = \"{spool}\"\n",
            self.url()
        )
    }

    /// [`Pg::store_toml`] with `tls = "{tls}"` and, when given, `ca`.
    pub fn store_toml_tls(&self, schema: &str, tls: &str, ca: Option<&Path>) -> String {
        let mut text = self
            .store_toml(schema)
            .replace("tls = \"disable\"", &format!("tls = \"{tls}\""));
        if let Some(ca) = ca {
            text.push_str(&format!("ca = \"{}\"\n", ca.display()));
        }
        text
    }

    fn client(&self, prog: &Path) -> Command {
        let mut c = Command::new(prog);
        c.env("PGPASSWORD", &self.password)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .stdin(Stdio::null());
        c
    }

    /// Runs SQL (on database `db`), panics on error; returns unaligned output.
    pub fn psql(&self, sql: &str, db: &str) -> String {
        let out = self
            .client(&self.psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// SQL on keyward's database.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(sql, DB)
    }

    /// `pg_dump` of keyward's database (plain SQL).
    pub fn dump(&self) -> Vec<u8> {
        let out = self
            .client(&self.pg_dump)
            .args(["-d", DB])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop_server();
    }
}
