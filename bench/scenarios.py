#!/usr/bin/env python3
"""keyward scenarios, each run DIRECT (no proxy) and THROUGH keyward in the same run.

Called by bench/run.sh (which prepares the state dir, upstreams and config). Starts
keyward itself (own process group, stopped by PID), drives load with oha and two
small clients (SSE first byte; idle tunnels), and writes one JSON document.
All traffic is loopback; every phase is bounded in time."""
import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time

CLK = os.sysconf("SC_CLK_TCK")
A = None  # parsed args


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- process helpers -----------------------------------------------------------
def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK  # utime + stime (all threads)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def port_open(port):
    s = socket.socket()
    s.settimeout(0.3)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Keyward:
    def __init__(self):
        self.log = open(A.log, "ab")
        self.proc = subprocess.Popen([A.keyward, "serve", "--config", A.config],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        for _ in range(100):
            if port_open(A.port):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        sys.exit(f"keyward did not come up on :{A.port} (log {A.log})")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def proxy_auth():
    return "Basic " + base64.b64encode(A.proxy_user.encode()).decode()


# ---- oha -------------------------------------------------------------------------
def oha(url, c, secs, via=None, extra=(), warm=1.0):
    args = ["oha", "--no-tui", "--output-format", "json", "-c", str(c), "--cacert", A.ca]
    if via is not None:
        args += ["-x", f"http://127.0.0.1:{A.port}", "--proxy-header",
                 f"Proxy-Authorization: {proxy_auth()}"]
    args += list(extra)
    if warm:
        subprocess.run(args + ["-z", f"{warm}s", url], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, timeout=warm + 60)
    c0 = cpu_s(via.pid) if via else None
    p = subprocess.run(args + ["-z", f"{secs}s", url], capture_output=True, text=True,
                       timeout=secs + 120)
    c1 = cpu_s(via.pid) if via else None
    if p.returncode != 0:
        raise RuntimeError(f"oha failed: {p.stderr[-500:]}")
    d = json.loads(p.stdout)
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errs = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    total = d["summary"]["total"] or secs
    lat = d.get("latencyPercentiles", {})
    ms = lambda k: round(lat[k] * 1000, 4) if lat.get(k) is not None else None
    r = {
        "rps": round(ok / total, 1), "n_ok": ok,
        "n_non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
        "n_err": sum(errs.values()), "errors": errs,
        "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"),
        "c": c, "secs": secs,
    }
    if via:
        r["cpu_s"] = round(c1 - c0, 3)
        r["cpu_s_per_1k"] = round((c1 - c0) / (ok / 1000), 5) if ok else None
        r["rss_kib"] = rss_kib(via.pid)
    return r


def pair(name, url, c, secs, kw, extra=(), warm=1.0):
    """The same oha run direct and through keyward (direct first)."""
    d = oha(url, c, secs, None, extra, warm)
    k = oha(url, c, secs, kw, extra, warm)
    log(f"{name:10} direct rps={d['rps']:>9} p50={d['p50_ms']} p99={d['p99_ms']} | keyward rps={k['rps']:>9} "
        f"p50={k['p50_ms']} p99={k['p99_ms']} cpu/1k={k.get('cpu_s_per_1k')} err={k['n_err']} non2xx={k['n_non2xx']}")
    return {"direct": d, "keyward": k}


# ---- SSE first byte ----------------------------------------------------------------
def tls_ctx():
    ctx = ssl.create_default_context(cafile=A.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(4096)
        if not d:
            raise ConnectionError("closed while reading head")
        buf += d
    return buf


def sse_run(via_proxy, delay_ms, n_req, gap_ms=20):
    port = A.sse_port
    s = socket.create_connection(("127.0.0.1", A.port if via_proxy else port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if via_proxy:
        s.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n"
                  f"Proxy-Authorization: {proxy_auth()}\r\n\r\n".encode())
        head = read_head(s)
        if b" 200" not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"CONNECT refused: {head[:200]!r}")
    ss = tls_ctx().wrap_socket(s, server_hostname="localhost")
    req = (f"GET /sse?delay={delay_ms}&n=2&gap={gap_ms} HTTP/1.1\r\nHost: localhost:{port}\r\n"
           f"Accept: text/event-stream\r\nAuthorization: Bearer dummy\r\n\r\n").encode()
    ttfb, ttfe = [], []
    for i in range(n_req + 5):
        t0 = time.perf_counter()
        ss.sendall(req)
        buf, tb, te = b"", None, None
        while True:
            d = ss.recv(65536)
            now = time.perf_counter()
            if not d:
                raise ConnectionError("stream closed early")
            if tb is None:
                tb = now
            buf += d
            if te is None and b"data:" in buf:
                te = now
            if buf.endswith(b"\r\n0\r\n\r\n"):
                break
        if b" 200" not in buf.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"SSE status: {buf[:200]!r}")
        if i >= 5:  # warm-up
            ttfb.append((tb - t0) * 1000)
            ttfe.append((te - t0) * 1000)
    ss.close()
    q = lambda xs, p: round(sorted(xs)[min(len(xs) - 1, int(p * len(xs)))], 4)
    return {"n": n_req, "delay_ms": delay_ms, "ttfb_p50_ms": q(ttfb, 0.5), "ttfe_p50_ms": q(ttfe, 0.5),
            "ttfe_p99_ms": q(ttfe, 0.99), "ttfe_mean_ms": round(statistics.mean(ttfe), 4)}


def sse(kw, n_req):
    out = {}
    for delay in (0, 50):
        n = n_req if delay == 0 else max(20, n_req // 4)
        d = sse_run(False, delay, n)
        k = sse_run(True, delay, n)
        out[f"delay{delay}"] = {"direct": d, "keyward": k,
                                "ttfe_ratio": round(k["ttfe_p50_ms"] / d["ttfe_p50_ms"], 3),
                                "ttfe_added_ms": round(k["ttfe_p50_ms"] - d["ttfe_p50_ms"], 4)}
        log(f"sse delay={delay}ms first event p50 direct={d['ttfe_p50_ms']}ms keyward={k['ttfe_p50_ms']}ms "
            f"(p99 {d['ttfe_p99_ms']} / {k['ttfe_p99_ms']})")
    return out


# ---- idle tunnels ------------------------------------------------------------------
async def open_tunnel(sem, ctx, results):
    async with sem:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", A.port), 10)
            w.write(f"CONNECT localhost:8443 HTTP/1.1\r\nHost: localhost:8443\r\n"
                    f"Proxy-Authorization: {proxy_auth()}\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            if b" 200" not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head[:80])
            await asyncio.wait_for(w.start_tls(ctx, server_hostname="localhost"), 10)
            if not await request(r, w):
                raise RuntimeError("first request failed")
            results.append((r, w))
        except Exception as e:  # counted, not fatal
            results.append(e)


async def request(r, w):
    try:
        w.write(b"GET / HTTP/1.1\r\nHost: localhost:8443\r\n\r\n")
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        n, chunked = 0, False
        for h in head.split(b"\r\n"):
            if h.lower().startswith(b"content-length:"):
                n = int(h.split(b":", 1)[1])
            if h.lower().startswith(b"transfer-encoding:") and b"chunked" in h.lower():
                chunked = True
        if chunked:  # keyward drops content-length (the redactor may change the length)
            await asyncio.wait_for(r.readuntil(b"\r\n0\r\n\r\n"), 10)
        elif n:
            await asyncio.wait_for(r.readexactly(n), 10)
        return b" 200" in head.split(b"\r\n", 1)[0]
    except Exception:
        return False


async def tunnels_async(kw, n, hold_s):
    ctx = tls_ctx()
    base = rss_kib(kw.pid)
    sem = asyncio.Semaphore(64)
    res = []
    t0 = time.monotonic()
    await asyncio.gather(*(open_tunnel(sem, ctx, res) for _ in range(n)))
    open_s = time.monotonic() - t0
    ok = [x for x in res if isinstance(x, tuple)]
    errs = [repr(x)[:120] for x in res if not isinstance(x, tuple)]
    await asyncio.sleep(2)
    held = rss_kib(kw.pid)
    # New requests while the tunnels are held: keep-alive c=16 for a few seconds.
    loop = asyncio.get_running_loop()
    during = await loop.run_in_executor(None, lambda: oha(A.url_small, 16, 3, kw, warm=0.5))
    # Do held tunnels still serve a request: shortly after opening (100 of them),
    # and after idling for hold_s (100 others)?
    step = max(1, len(ok) // 200)
    early_idle = round(time.monotonic() - t0 - open_s, 1)
    early = await asyncio.gather(*(request(r, w) for r, w in ok[::step][0:200:2]))
    rest = hold_s - (time.monotonic() - t0 - open_s)
    if rest > 0:
        await asyncio.sleep(rest)
    probes = await asyncio.gather(*(request(r, w) for r, w in ok[::step][1:200:2]))
    for r, w in ok:
        w.close()
    await asyncio.sleep(0.5)
    out = {
        "n": n, "opened": len(ok), "failed": len(errs), "errors": sorted(set(errs))[:5],
        "open_s": round(open_s, 2), "rss_base_kib": base, "rss_held_kib": held,
        "rss_per_tunnel_kib": round((held - base) / max(1, len(ok)), 2),
        "during": {k: during[k] for k in ("rps", "n_err", "n_non2xx", "p50_ms", "p99_ms")},
        "hold_s": hold_s, "probe_after_hold": f"{sum(probes)}/{len(probes)}",
        "early_idle_s": early_idle, "probe_early": f"{sum(early)}/{len(early)}",
    }
    log(f"tunnels n={n}: opened {len(ok)} in {open_s:.1f}s, RSS {base}->{held} KiB "
        f"({out['rss_per_tunnel_kib']} KiB/tunnel); during: rps={during['rps']} err={during['n_err']}; "
        f"probes after {early_idle}s idle: {out['probe_early']}, after {hold_s}s idle: {out['probe_after_hold']}")
    return out


def full_scenarios(res, kw, q, secs, c1_secs, big_secs):
    res["keepalive"] = pair("keepalive", A.url_small, 16, secs, kw, warm=2)
    res["c1"] = pair("c=1", A.url_small, 1, c1_secs, kw)
    res["newconn"] = pair("newconn", A.url_small, 16, secs, kw, extra=["--disable-keepalive"])
    res["sse"] = sse(kw, 100 if q else 300)
    big = f"https://localhost:{A.extra_port}"
    res["down_1m"] = pair("1MiB down", big + "/1m", 4, big_secs, kw)
    res["up_1m"] = pair("1MiB up", big + "/up", 4, big_secs, kw,
                        extra=["-m", "POST", "-D", A.body, "-T", "application/octet-stream"])


def main():
    global A
    ap = argparse.ArgumentParser()
    for k in ("keyward", "config", "proxy-user", "ca", "body", "log", "out"):
        ap.add_argument("--" + k, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--extra-port", type=int, required=True)
    ap.add_argument("--sse-port", type=int, required=True)
    ap.add_argument("--tunnels", default="1000")
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--only", default="", help="tunnels: run only scenario 6")
    A = ap.parse_args()
    A.url_small = "https://localhost:8443/"
    q = A.quick == 1
    secs, c1_secs, big_secs = (4, 3, 4) if q else (10, 5, 8)
    res = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "uptime_before": open("/proc/loadavg").read().strip(),
           "nproc": os.cpu_count(), "oha": subprocess.run(["oha", "--version"], capture_output=True,
                                                          text=True).stdout.strip()}
    kw = Keyward()
    try:
        res["rss_start_kib"] = rss_kib(kw.pid)
        if A.only == "tunnels":
            oha(A.url_small, 16, 2, kw, warm=0)  # warm pools and caches as the full run does
        else:
            full_scenarios(res, kw, q, secs, c1_secs, big_secs)
        res["tunnels"] = []
        for n in [int(x) for x in A.tunnels.split()]:
            res["tunnels"].append(asyncio.run(tunnels_async(kw, n, 15 if q else 30)))
            time.sleep(2)
        res["keyward_alive"] = kw.alive()
        res["rss_end_kib"] = rss_kib(kw.pid)
    finally:
        kw.stop()
    res["uptime_after"] = open("/proc/loadavg").read().strip()
    with open(A.out, "w") as f:
        json.dump(res, f, indent=1)
    log(f"scenarios -> {A.out}")


if __name__ == "__main__":
    main()
