#!/usr/bin/env python3
"""bench/scale_writes.py -- vault write cost against vault size (issue 16 item 2).

For each size N (default 10, 1000, 10000, 100000) in a fresh state dir:
  1. `keyward secret import` of N secrets (JSONL on stdin): wall time;
  2. `keyward serve` with the admin API; RSS once it is ready;
  3. PUTS sequential admin PUTs (each a rotation of a random existing secret, one
     keep-alive connection): p50/p99 latency; RSS after them;
  4. stops the server it started (by PID).
Prints a markdown table (for docs/benchmarks.md, "Scale: vault writes") and writes
bench/results/scale_writes-<date>.json. Loopback only.

  python3 bench/scale_writes.py [--bin target/release/keyward] [--sizes 10,1000] [--puts 300]
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_TIMEOUT_S = 120
IMPORT_TIMEOUT_S = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def run_size(binary, n, puts, keep):
    state = tempfile.mkdtemp(prefix=f"kw-scale-{n}-")
    token = secrets.token_hex(16)
    admin_port, proxy_port = free_port(), free_port()
    cfg = os.path.join(state, "keyward.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[proxy]\nlisten = "127.0.0.1:{proxy_port}"\n'
            f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n'
            f'tokens = [{{ name = "bench", sha256 = "{hashlib.sha256(token.encode()).hexdigest()}", '
            f'permissions = ["secrets:read", "secrets:manage"] }}]\n'
            f'[tls]\nca_cert = "{state}/certs/ca.pem"\nca_key = "{state}/certs/ca.key"\n'
            f'[vault]\npath = "{state}/data/vault.kw"\nmaster_key_file = "{state}/certs/master.key"\n'
            f'[audit]\npath = "{state}/data/audit.jsonl"\n'
        )
    names = [f"S{i:06d}" for i in range(n)]
    lines = "".join(
        json.dumps({"name": nm, "value": "sk-" + secrets.token_hex(20)}) + "\n" for nm in names
    )
    t0 = time.perf_counter()
    imp = subprocess.run(
        [binary, "--config", cfg, "secret", "import"],
        input=lines.encode(),
        capture_output=True,
        timeout=IMPORT_TIMEOUT_S,
    )
    import_s = time.perf_counter() - t0
    if imp.returncode != 0:
        sys.exit(f"import of {n} failed: {imp.stderr.decode()}")
    vault_bytes = os.path.getsize(f"{state}/data/vault.kw")
    srv = subprocess.Popen(
        [binary, "--config", cfg, "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.perf_counter()
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > READY_TIMEOUT_S or srv.poll() is not None:
                sys.exit(f"keyward did not get ready with {n} secrets")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t0
        rss_ready = rss_kib(srv.pid)
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=30)
        hdr = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        lat = []
        for i in range(puts):
            body = json.dumps({"value": "sk-" + secrets.token_hex(20)})
            name = random.choice(names)
            t = time.perf_counter()
            conn.request("PUT", f"/v1/secrets/platform/{name}", body=body, headers=hdr)
            r = conn.getresponse()
            r.read()
            lat.append((time.perf_counter() - t) * 1000)
            if r.status != 200:
                sys.exit(f"PUT {name} -> {r.status}")
        rss_after = rss_kib(srv.pid)
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
    return {
        "secrets": n,
        "import_s": round(import_s, 3),
        "vault_mib": round(vault_bytes / 2**20, 2),
        "ready_s": round(ready_s, 3),
        "put_p50_ms": round(statistics.median(lat), 2),
        "put_p99_ms": round(pct(lat, 99), 2),
        "puts": puts,
        "rss_ready_mib": round(rss_ready / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap.add_argument("--bin", default=os.path.join(tgt, "release", "keyward"))
    ap.add_argument("--sizes", default="10,1000,10000,100000")
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the state dirs")
    a = ap.parse_args()
    rows = [run_size(a.bin, int(n), a.puts, a.keep) for n in a.sizes.split(",")]
    print("| secrets | import | vault file | ready after | PUT p50 | PUT p99 | RSS ready | RSS after PUTs |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['secrets']:,} | {r['import_s']:.2f} s | {r['vault_mib']} MiB | {r['ready_s']:.2f} s "
            f"| {r['put_p50_ms']} ms | {r['put_p99_ms']} ms | {r['rss_ready_mib']} MiB | {r['rss_after_mib']} MiB |"
        )
    out = os.path.join(REPO, "bench", "results", f"scale_writes-{time.strftime('%Y-%m-%d')}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"puts": a.puts, "rows": rows}, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
