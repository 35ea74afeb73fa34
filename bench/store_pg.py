#!/usr/bin/env python3
"""bench/store_pg.py -- the PostgreSQL store measured (issue 17 "Measured").

Everything on loopback, in one temp dir, stopped at the end (by PID):
  * a throwaway PostgreSQL cluster (initdb + pg_ctl as `nobody` when run as root,
    a free 127.0.0.1 port, SCRAM password, pg_stat_statements loaded);
  * an nginx upstream (TLS, "ok\\n") for oha and a Python TLS echo upstream that
    answers sha256(Authorization)[:16] (so a probe sees which secret version was
    injected without the value crossing the redactor);
  * keyward replicas (`keyward serve`) from the given release binary.

Phases (--phases, default all):
  rps     injected keep-alive rps and keyward CPU s per 1k requests (oha c=16),
          file store vs postgres store, audit on, alternating, --rounds rounds;
  put     admin PUT p50/p99 at each --sizes (fresh schema per size, filled with
          `keyward secret import`), plus cold start (spawn -> /readyz 200) and the
          full-resync time (a replica B's reaction to one change on A, no load);
  prop    propagation delay A -> B, --samples samples, while oha loads B.
Writes the JSON to --out. Loopback only; every load is bounded in time.

  python3 bench/store_pg.py --bin target/release/keyward [--sizes 100,100000] ...
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

READY_TIMEOUT_S = 600  # a cold start at 100k secrets on a loaded machine
IMPORT_TIMEOUT_S = 1200
PROBE_TIMEOUT_S = 10  # one propagation sample gives up after this
OHA_TIMEOUT_PAD_S = 120
CLK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary_ms(xs):
    return {
        "n": len(xs),
        "p50_ms": round(statistics.median(xs), 2),
        "p90_ms": round(pct(xs, 90), 2),
        "p99_ms": round(pct(xs, 99), 2),
        "max_ms": round(max(xs), 2),
    }


class Procs:
    """What this run started: stopped in reverse order, by PID (process group)."""

    def __init__(self):
        self.procs = []

    def spawn(self, args, logpath, env=None):
        lf = open(logpath, "ab")
        p = subprocess.Popen(args, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=20):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


# ---- PostgreSQL (as tests/common/pg.rs) ----------------------------------------------
def pg_bin():
    dirs = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.isdir(f"/usr/lib/postgresql/{d}/bin"))
    if not dirs:
        sys.exit("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
    return f"/usr/lib/postgresql/{dirs[-1]}/bin"


class Pg:
    USER = "keyward"
    DB = "keyward"

    def __init__(self, root, fsync):
        self.dir = os.path.join(root, "pg")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o777)
        self.bin = pg_bin()
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(12)
        pwfile = os.path.join(self.dir, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        os.chmod(pwfile, 0o644)
        self.data = os.path.join(self.dir, "data")
        self.owner(["initdb", "-D", self.data, "-U", self.USER, "--auth=scram-sha-256",
                    "--pwfile", pwfile, "-E", "UTF8", "--no-sync"])
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                f"-c shared_preload_libraries=pg_stat_statements -c max_connections=100")
        if not fsync:
            opts += " -c fsync=off -c full_page_writes=off"
        self.owner(["pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "server.log"),
                    "-w", "start"])
        self.started = True
        self.psql("CREATE DATABASE keyward", db="postgres")
        self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def owner(self, args):
        prog = [os.path.join(self.bin, args[0])] + args[1:]
        if os.geteuid() == 0:
            prog = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] + prog
        r = subprocess.run(prog, cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            sys.exit(f"{args[0]} failed: {r.stderr}{r.stdout}")
        return r

    def url(self):
        return f"postgres://{self.USER}:{self.password}@127.0.0.1:{self.port}/{self.DB}"

    def psql(self, sql, db=None):
        env = dict(os.environ, PGPASSWORD=self.password)
        r = subprocess.run([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", self.USER, "-d", db or self.DB, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                           env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"psql: {r.stderr}")
        return r.stdout

    def cpu_s(self):
        """CPU seconds of the postmaster and its live children (backends, walwriter, ...)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            root = int(f.readline())
        total = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(pid) == root or int(rest[1]) == root:
                total += (int(rest[11]) + int(rest[12])) / CLK
        return total

    def stop(self):
        if getattr(self, "started", False):
            subprocess.run((["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                            if os.geteuid() == 0 else []) +
                           [os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120)
            self.started = False


# ---- upstreams --------------------------------------------------------------------------
def make_certs(d):
    def run(*a):
        subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=store-pg-up-ca", "-keyout", "up-ca.key", "-out", "up-ca.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "up.key", "-out", "up.csr")
    with open(os.path.join(d, "up.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "up.csr", "-CA", "up-ca.pem", "-CAkey", "up-ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "up.ext", "-out", "up.pem")


def start_nginx(procs, d, port):
    nd = os.path.join(d, "nginx")
    os.makedirs(os.path.join(nd, "tmp"))
    conf = os.path.join(nd, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
master_process on;
worker_processes 1;
pid {nd}/nginx.pid;
error_log {nd}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {nd}/tmp/body; proxy_temp_path {nd}/tmp/proxy;
  fastcgi_temp_path {nd}/tmp/fastcgi; uwsgi_temp_path {nd}/tmp/uwsgi; scgi_temp_path {nd}/tmp/scgi;
  keepalive_requests 10000000; keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name localhost;
    ssl_certificate {d}/up.pem; ssl_certificate_key {d}/up.key;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
""")
    return procs.spawn(["nginx", "-c", conf, "-e", f"{nd}/error.log"], os.path.join(nd, "nginx.log"))


ECHO_SERVER = r'''
import hashlib, http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = hashlib.sha256((self.headers.get("authorization") or "").encode()).hexdigest()[:16].encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
'''


def start_echo(procs, d, port):
    path = os.path.join(d, "echo_upstream.py")
    with open(path, "w") as f:
        f.write(ECHO_SERVER)
    return procs.spawn([sys.executable, path, str(port), f"{d}/up.pem", f"{d}/up.key"], os.path.join(d, "echo.log"))


def wait_port(port, proc, what):
    for _ in range(200):
        if port_open(port):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"{what} did not listen on :{port}")


# ---- keyward ------------------------------------------------------------------------------
class Bench:
    def __init__(self, a):
        self.a = a
        self.root = tempfile.mkdtemp(prefix="kw-store-pg-")
        os.chmod(self.root, 0o755)
        self.procs = Procs()
        self.pg = None
        self.agent_token = secrets.token_hex(16)
        self.admin_token = secrets.token_hex(16)
        self.up_port = free_port()
        self.echo_port = free_port()
        self.replicas = 0

    # configs ----------------------------------------------------------------
    def config(self, name, backend, schema=None):
        """A state dir sharing CA, master key and upstreams; returns (path, proxy, admin)."""
        d = self.root
        proxy, admin = free_port(), free_port()
        sd = os.path.join(d, name)
        os.makedirs(sd, exist_ok=True)
        sha = lambda t: hashlib.sha256(t.encode()).hexdigest()
        text = f"""# generated by bench/store_pg.py
[proxy]
listen = "127.0.0.1:{proxy}"
[admin]
listen = "127.0.0.1:{admin}"
[[admin.tokens]]
name = "bench"
sha256 = "{sha(self.admin_token)}"
permissions = ["secrets:read", "secrets:manage"]
[tls]
ca_cert = "{d}/ca.pem"
ca_key = "{d}/ca.key"
upstream_roots = "{d}/up-ca.pem"
[vault]
path = "{sd}/vault.kw"
master_key_file = "{d}/master.key"
[audit]
path = "{sd}/audit.jsonl"
[egress]
allow = []
allow_private = ["127.0.0.0/8"]
ports = [{self.up_port}, {self.echo_port}]

[[providers]]
name = "bench"
hosts = ["localhost"]
secret = "BENCH_KEY"
inject = {{ header = "authorization", value = "Bearer {{secret}}" }}

[[agents]]
id = "bench-agent"
token_sha256 = "{sha(self.agent_token)}"
secrets = ["BENCH_KEY"]   # its redaction set: one secret, not the whole vault
"""
        if backend == "postgres":
            text += (f'\n[store]\nbackend = "postgres"\nurl = "{self.pg.url()}"\nschema = "{schema}"\n'
                     f'tls = "disable"\nspool = "{sd}/audit-spool.jsonl"\n')
        path = os.path.join(sd, "keyward.toml")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return {"path": path, "proxy": proxy, "admin": admin, "name": name, "backend": backend, "dir": sd}

    def cli(self, cfg, args, stdin=None, timeout=IMPORT_TIMEOUT_S):
        r = subprocess.run([self.a.bin, "--config", cfg["path"]] + args, input=stdin, capture_output=True,
                           timeout=timeout)
        if r.returncode != 0:
            sys.exit(f"keyward {' '.join(args)} ({cfg['name']}) failed: {r.stderr.decode(errors='replace')}")
        return r

    def set_bench_key(self, cfg, value):
        self.cli(cfg, ["secret", "set", "BENCH_KEY", "--scope", "platform"], stdin=value.encode())

    def import_n(self, cfg, n):
        """Fills an empty store with n secrets (BENCH_KEY and n-1 others): `keyward secret import` into a
        vault file, then `keyward store import --vault` (records copied still sealed).
        Returns (secret import s, store import s)."""
        file_cfg = self.config(cfg["name"] + "-fill", "file")
        lines = json.dumps({"name": "BENCH_KEY", "value": "sk-bench-" + secrets.token_hex(16)}) + "\n"
        lines += "".join(json.dumps({"name": f"S{i:06d}", "value": "sk-" + secrets.token_hex(20)}) + "\n"
                         for i in range(n - 1))
        t0 = time.perf_counter()
        self.cli(file_cfg, ["secret", "import"], stdin=lines.encode())
        t1 = time.perf_counter()
        self.cli(cfg, ["store", "import", "--vault", f"{file_cfg['dir']}/vault.kw"])
        return t1 - t0, time.perf_counter() - t1

    def serve(self, cfg):
        self.replicas += 1
        env = dict(os.environ, KEYWARD_REPLICA_ID=f"bench-{cfg['name']}-{self.replicas}")
        t0 = time.perf_counter()
        p = self.procs.spawn([self.a.bin, "serve", "--config", cfg["path"]], os.path.join(cfg["dir"], "serve.log"),
                             env=env)
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", cfg["admin"], timeout=5)
                c.request("GET", "/readyz")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    break
            except OSError:
                pass
            if p.poll() is not None:
                sys.exit(f"keyward serve ({cfg['name']}) exited: see {cfg['dir']}/serve.log")
            if time.perf_counter() - t0 > READY_TIMEOUT_S:
                sys.exit(f"keyward serve ({cfg['name']}) not ready after {READY_TIMEOUT_S} s")
            time.sleep(0.01)
        ready_s = time.perf_counter() - t0
        wait_port(cfg["proxy"], p, "keyward proxy")
        return p, ready_s

    def admin_conn(self, cfg):
        return http.client.HTTPConnection("127.0.0.1", cfg["admin"], timeout=60)

    def put(self, conn, name, value):
        hdr = {"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"}
        conn.request("PUT", f"/v1/secrets/platform/{name}", body=json.dumps({"value": value}), headers=hdr)
        r = conn.getresponse()
        body = r.read()
        if r.status not in (200, 201):
            raise RuntimeError(f"PUT {name} -> {r.status} {body[:200]!r}")
        return json.loads(body)

    def proxy_auth(self):
        return "Basic " + base64.b64encode(f"bench-agent:{self.agent_token}".encode()).decode()

    def oha_args(self, cfg, c):
        return ["oha", "--no-tui", "--output-format", "json", "-c", str(c), "--cacert", f"{self.root}/ca.pem",
                "-x", f"http://127.0.0.1:{cfg['proxy']}", "--proxy-header", f"Proxy-Authorization: {self.proxy_auth()}"]

    def oha(self, cfg, proc, c, secs, warm=1.0):
        url = f"https://localhost:{self.up_port}/"
        args = self.oha_args(cfg, c)
        if warm:
            subprocess.run(args + ["-z", f"{warm}s", url], capture_output=True, timeout=warm + OHA_TIMEOUT_PAD_S)
        c0, g0 = cpu_s(proc.pid), self.pg.cpu_s()
        t0 = time.perf_counter()
        p = subprocess.run(args + ["-z", f"{secs}s", url], capture_output=True, text=True,
                           timeout=secs + OHA_TIMEOUT_PAD_S)
        c1, g1 = cpu_s(proc.pid), self.pg.cpu_s()
        if p.returncode != 0:
            raise RuntimeError(f"oha failed: {p.stderr[-500:]}")
        d = json.loads(p.stdout)
        codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
        ok = sum(v for k, v in codes.items() if 200 <= k < 300)
        total = d["summary"]["total"] or (time.perf_counter() - t0)
        lat = d.get("latencyPercentiles", {})
        return {
            "rps": round(ok / total, 1), "n_ok": ok,
            "n_non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
            "n_err": sum(v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"),
            "errors": {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"},
            "p50_ms": round(lat["p50"] * 1000, 3) if lat.get("p50") is not None else None,
            "p99_ms": round(lat["p99"] * 1000, 3) if lat.get("p99") is not None else None,
            "cpu_s": round(c1 - c0, 3),
            "cpu_s_per_1k": round((c1 - c0) / (ok / 1000), 5) if ok else None,
            "rss_mib": rss_mib(proc.pid),
            # The database's CPU in the same window (its backends serve this replica).
            "pg_cpu_s_per_1k": round((g1 - g0) / (ok / 1000), 5) if ok else None,
        }

    def probe_conn(self, cfg):
        ctx = ssl.create_default_context(cafile=f"{self.root}/ca.pem")
        c = http.client.HTTPSConnection("127.0.0.1", cfg["proxy"], context=ctx, timeout=30)
        c.set_tunnel("localhost", self.echo_port, headers={"Proxy-Authorization": self.proxy_auth()})
        return c

    def probe(self, conn):
        conn.request("GET", "/v")
        r = conn.getresponse()
        body = r.read().decode()
        if r.status != 200:
            raise RuntimeError(f"probe -> {r.status} {body[:200]}")
        return body

    # phases ---------------------------------------------------------------------
    def phase_rps(self):
        a = self.a
        file_cfg = self.config("rps-file", "file")
        pg_cfg = self.config("rps-pg", "postgres", "rps")
        value = "sk-bench-" + secrets.token_hex(16)
        self.set_bench_key(file_cfg, value)
        self.set_bench_key(pg_cfg, value)
        runs = {"file": [], "postgres": []}
        self.pg.psql("SELECT pg_stat_statements_reset()")
        order = ["file", "postgres"]
        for rnd in range(a.rounds):
            for backend in (order if rnd % 2 == 0 else order[::-1]):
                cfg = file_cfg if backend == "file" else pg_cfg
                p, ready = self.serve(cfg)
                try:
                    r = self.oha(cfg, p, 16, a.rps_secs)
                finally:
                    self.procs.stop(p)
                r["round"] = rnd
                runs[backend].append(r)
                log(f"rps round {rnd} {backend}: {r['rps']} rps, cpu/1k {r['cpu_s_per_1k']} s (pg {r['pg_cpu_s_per_1k']}), "
                    f"p50 {r['p50_ms']} ms, err {r['n_err']} {list(r['errors'])[:2]}, non2xx {r['n_non2xx']}")
        med = {b: {"rps": statistics.median(x["rps"] for x in v),
                   "cpu_s_per_1k": statistics.median(x["cpu_s_per_1k"] or 0 for x in v),
                   "pg_cpu_s_per_1k": statistics.median(x["pg_cpu_s_per_1k"] or 0 for x in v),
                   "p50_ms": statistics.median(x["p50_ms"] or 0 for x in v)} for b, v in runs.items()}
        audit_rows = self.pg.psql("SELECT count(*) FROM rps.audit").strip()
        return {"runs": runs, "median": med, "pg_audit_rows": int(audit_rows),
                "top_statements": self.top_statements(),
                "ratio_rps": round(med["postgres"]["rps"] / med["file"]["rps"], 3),
                "ratio_cpu_per_1k": round(med["postgres"]["cpu_s_per_1k"] / med["file"]["cpu_s_per_1k"], 3)}

    def phase_put(self):
        a = self.a
        rows = []
        for n in [int(x) for x in a.sizes.split(",")]:
            schema = f"n{n}"
            cfg_a = self.config(f"put-{n}-a", "postgres", schema)
            cfg_b = self.config(f"put-{n}-b", "postgres", schema)
            file_s, import_s = self.import_n(cfg_a, n)
            log(f"{n} secrets: secret import (file) {file_s:.2f} s, store import {import_s:.2f} s")
            self.pg.psql("SELECT pg_stat_statements_reset()")
            pa, ready_a = self.serve(cfg_a)
            log(f"{n} secrets: cold start (spawn -> /readyz 200) {ready_a:.2f} s, rss {rss_mib(pa.pid)} MiB")
            row = {"secrets": n, "file_import_s": round(file_s, 3), "store_import_s": round(import_s, 3), "cold_start_s": round(ready_a, 3),
                   "rss_ready_mib": rss_mib(pa.pid)}
            try:
                conn = self.admin_conn(cfg_a)
                names = [f"S{i:06d}" for i in range(n - 1)]
                lat = []
                deadline = time.perf_counter() + a.put_max_secs
                for i in range(a.puts):
                    t = time.perf_counter()
                    self.put(conn, random.choice(names), "sk-" + secrets.token_hex(20))
                    lat.append((time.perf_counter() - t) * 1000)
                    if time.perf_counter() > deadline:
                        break
                row["put"] = summary_ms(lat)
                row["rss_after_puts_mib"] = rss_mib(pa.pid)
                log(f"{n} secrets: PUT {row['put']}")
                row["top_statements"] = self.top_statements()
                # Full resync: replica B reacts to one change on A (each load reads everything).
                pb, ready_b = self.serve(cfg_b)
                row["cold_start_b_s"] = round(ready_b, 3)
                pconn = self.probe_conn(cfg_b)
                delays, sent = [], []
                for i in range(a.resync_samples):
                    value = "sk-bench-" + secrets.token_hex(16)
                    want = hashlib.sha256(f"Bearer {value}".encode()).hexdigest()[:16]
                    t_sent = time.perf_counter()
                    self.put(conn, "BENCH_KEY", value)
                    t = time.perf_counter()
                    delays.append(self.wait_value(pconn, want, t))
                    sent.append(delays[-1] + (t - t_sent) * 1000)
                    time.sleep(random.uniform(0.05, 0.3))
                pconn.close()  # an open tunnel would hold B's graceful shutdown
                row["resync_b"] = summary_ms(delays)  # from A's PUT response
                row["resync_b_from_put_sent"] = summary_ms(sent)
                log(f"{n} secrets: change on A in effect on B after {row['resync_b']} (from the PUT's "
                    f"response; from its request: {row['resync_b_from_put_sent']})")
                self.procs.stop(pb)
            finally:
                self.procs.stop(pa)
            rows.append(row)
        return rows

    def wait_value(self, pconn, want, t0):
        while True:
            got = self.probe(pconn)
            now = time.perf_counter()
            if got == want:
                return (now - t0) * 1000
            if now - t0 > PROBE_TIMEOUT_S:
                raise RuntimeError("the new value did not reach replica B within the probe timeout")
            time.sleep(0.001)

    def top_statements(self):
        out = self.pg.psql(
            "SELECT calls, rows, round(mean_exec_time::numeric, 3), round(total_exec_time::numeric, 1), "
            "regexp_replace(regexp_replace(query, '\\s+', ' ', 'g'), '^(.{60}).*(.{50})$', '\\1 … \\2') "
            "FROM pg_stat_statements "
            "ORDER BY total_exec_time DESC LIMIT 8")
        rows = []
        for line in out.strip().splitlines():
            calls, nrows, mean, total, q = line.split("|", 4)
            rows.append({"calls": int(calls), "rows": int(nrows), "mean_ms": float(mean), "total_ms": float(total), "query": q})
        return rows

    def phase_prop(self):
        a = self.a
        cfg_a = self.config("prop-a", "postgres", "prop")
        cfg_b = self.config("prop-b", "postgres", "prop")
        self.import_n(cfg_a, a.prop_secrets)
        pa, _ = self.serve(cfg_a)
        pb, _ = self.serve(cfg_b)
        url = f"https://localhost:{self.up_port}/"
        load_secs = a.prop_load_secs
        c0 = cpu_s(pb.pid)
        load = subprocess.Popen(self.oha_args(cfg_b, a.prop_load_c) + ["-z", f"{load_secs}s", url],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.procs.procs.append(load)
        try:
            time.sleep(1.0)
            conn = self.admin_conn(cfg_a)
            pconn = self.probe_conn(cfg_b)
            t_first = time.perf_counter()
            from_commit, from_start, put_ms = [], [], []
            for i in range(a.samples):
                if load.poll() is not None:
                    log(f"prop: the oha load ended after {i} samples (raise --prop-load-secs)")
                    break
                value = "sk-bench-" + secrets.token_hex(16)
                want = hashlib.sha256(f"Bearer {value}".encode()).hexdigest()[:16]
                t_start = time.perf_counter()
                self.put(conn, "BENCH_KEY", value)
                t_done = time.perf_counter()
                d = self.wait_value(pconn, want, t_done)
                from_commit.append(d)
                from_start.append(d + (t_done - t_start) * 1000)
                put_ms.append((t_done - t_start) * 1000)
                time.sleep(random.uniform(0.0, 0.1))  # decorrelate from the 250 ms poll and 500 ms resync
            t_end = time.perf_counter()
            pconn.close()
            c1 = cpu_s(pb.pid)
        finally:
            if load.poll() is None:
                load.send_signal(signal.SIGINT)  # oha prints its summary on Ctrl-C
            try:
                load.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.procs.stop(load, timeout=5)
        res = {"secrets": a.prop_secrets, "load_c": a.prop_load_c,
               "from_put_response": summary_ms(from_commit), "from_put_sent": summary_ms(from_start),
               "put_on_a": summary_ms(put_ms), "b_cpu_s": round(c1 - c0, 2),
               "sampling_s": round(t_end - t_first, 1)}
        out = load.stdout.read() if load.stdout else ""
        try:
            d = json.loads(out)
            res["load_rps_on_b"] = round(d["summary"]["requestsPerSec"], 1)
        except (ValueError, KeyError, TypeError):
            res["load_rps_on_b"] = None  # oha stopped by signal before it printed
        log(f"prop: {res}")
        self.procs.stop(pb)
        self.procs.stop(pa)
        return res

    def run(self):
        a = self.a
        res = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "nproc": os.cpu_count(),
               "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
               "commit": a.commit, "pg_fsync": not a.pg_fsync_off, "phases": {}}
        try:
            make_certs(self.root)
            self.pg = Pg(self.root, fsync=not a.pg_fsync_off)
            res["postgres"] = self.pg.psql("SHOW server_version").strip()
            ng = start_nginx(self.procs, self.root, self.up_port)
            ec = start_echo(self.procs, self.root, self.echo_port)
            wait_port(self.up_port, ng, "nginx")
            wait_port(self.echo_port, ec, "echo upstream")
            for ph in a.phases.split(","):
                log(f"== phase {ph}  ({subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()})")
                try:
                    res["phases"][ph] = getattr(self, f"phase_{ph}")()
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, ZeroDivisionError) as e:
                    log(f"phase {ph} failed: {e!r}")
                    res["phases"][ph] = {"error": repr(e)}
        finally:
            res["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            self.procs.stop_all()
            if self.pg:
                self.pg.stop()
            if a.keep:
                log(f"kept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        return res


def main():
    ap = argparse.ArgumentParser()
    tgt = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--bin", default=os.path.join(tgt, "release", "keyward"))
    ap.add_argument("--phases", default="rps,put,prop")
    ap.add_argument("--rounds", type=int, default=4, help="rps: rounds (each runs file and postgres)")
    ap.add_argument("--rps-secs", type=float, default=10)
    ap.add_argument("--sizes", default="100,100000")
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--put-max-secs", type=float, default=180, help="stop the PUT loop after this")
    ap.add_argument("--resync-samples", type=int, default=20)
    ap.add_argument("--samples", type=int, default=200, help="prop: samples")
    ap.add_argument("--prop-secrets", type=int, default=100)
    ap.add_argument("--prop-load-c", type=int, default=16)
    ap.add_argument("--prop-load-secs", type=int, default=300)
    ap.add_argument("--pg-fsync-off", action="store_true")
    ap.add_argument("--commit", default="")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    res = Bench(a).run()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
