#!/usr/bin/env python3
"""The scale bench's clients (bench/scale.sh). Loopback only.

  fill    --admin URL --token T --prefix S_ --from A --to B   PUT secrets A..B-1
  rotate  --admin URL --token T --names N1,N2.. --rate R --seconds S --out F
  load    --proxy HOST:PORT --user AGENT:TOKEN --ca PEM --target HOST:PORT --seconds S --out F

Each writes a JSON summary (latencies in ms: p50/p99/max, count) to --out (or stdout).
`load` is one closed-loop keep-alive connection (c=1) through the proxy's CONNECT
tunnel, so every request's own latency is seen; `rotate` PUTs a new value to a
random name of --names at --rate per second on its own keep-alive connection."""
import argparse
import base64
import http.client
import json
import os
import random
import ssl
import sys
import time


def summary(lat_ms, extra=None):
    lat = sorted(lat_ms)
    def pct(p):
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 3)
    out = {"count": len(lat), "p50": pct(50), "p99": pct(99), "p999": pct(99.9),
           "max": round(lat[-1], 3) if lat else None,
           "over_ms": {str(t): sum(1 for v in lat if v > t) for t in (5, 20, 50)}}
    out.update(extra or {})
    return out


def write(out, data):
    text = json.dumps(data)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


def admin_conn(url):
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=60)


def put(conn, token, scope, name, value):
    body = json.dumps({"value": value})
    t = time.perf_counter()
    conn.request("PUT", f"/v1/secrets/{scope}/{name}", body=body,
                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status not in (200, 201):
        raise SystemExit(f"PUT {scope}/{name}: HTTP {r.status}")
    return (time.perf_counter() - t) * 1000


def value():
    return "sk-scale-" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")


def cmd_fill(a):
    conn = admin_conn(a.admin)
    lat = [put(conn, a.token, a.scope, f"{a.prefix}{i:05d}", value()) for i in range(a.start, a.to)]
    # The PUT cost at this size: the last (up to) 100 writes.
    write(a.out, summary(lat[-100:], {"filled": a.to - a.start}))


def cmd_rotate(a):
    conn = admin_conn(a.admin)
    names = a.names.split(",")
    lat, end = [], time.monotonic() + a.seconds
    gap = 1.0 / a.rate
    nxt = time.monotonic()
    while time.monotonic() < end:
        lat.append(put(conn, a.token, a.scope, random.choice(names), value()))
        nxt += gap
        time.sleep(max(0.0, nxt - time.monotonic()))
    write(a.out, summary(lat))


def cmd_load(a):
    phost, pport = a.proxy.split(":")
    thost, tport = a.target.split(":")
    ctx = ssl.create_default_context(cafile=a.ca)
    auth = base64.b64encode(a.user.encode()).decode()
    conn = http.client.HTTPSConnection(phost, int(pport), context=ctx, timeout=60)
    conn.set_tunnel(thost, int(tport), headers={"Proxy-Authorization": f"Basic {auth}"})
    def once():
        conn.request("GET", "/echo")
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or b"[REDACTED]" in body:
            raise SystemExit(f"unexpected answer: HTTP {r.status}")
    for _ in range(50):  # warm up: tunnel, leaf, pool, automaton
        once()
    lat, errors = [], 0
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        once()
        lat.append((time.perf_counter() - t) * 1000)
    write(a.out, summary(lat, {"errors": errors}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("fill", "rotate"):
        p = sub.add_parser(name)
        p.add_argument("--admin", required=True)
        p.add_argument("--token", required=True)
        p.add_argument("--scope", default="platform")
        p.add_argument("--out")
    f = sub.choices["fill"]
    f.add_argument("--prefix", default="S_")
    f.add_argument("--from", dest="start", type=int, required=True)
    f.add_argument("--to", type=int, required=True)
    r = sub.choices["rotate"]
    r.add_argument("--names", required=True)
    r.add_argument("--rate", type=float, default=2.0)
    r.add_argument("--seconds", type=float, required=True)
    l = sub.add_parser("load")
    for k in ("--proxy", "--user", "--ca", "--target"):
        l.add_argument(k, required=True)
    l.add_argument("--seconds", type=float, required=True)
    l.add_argument("--out")
    a = ap.parse_args()
    {"fill": cmd_fill, "rotate": cmd_rotate, "load": cmd_load}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
