#!/usr/bin/env python3
"""Merge bench/scenarios.py output and the kit's bench_rounds.sh results into
bench/results/<date>.json, docs/benchmarks.md (tables + targets) and a bar chart
(docs/benchmarks.svg, plain SVG, no dependencies)."""
import argparse
import json
import os
import statistics
import time
from collections import defaultdict

DISPLAY = {"direct": "direct (no proxy)", "candidate": "keyward", "hudsucker": "hudsucker 0.25",
           "squid": "squid 5.7 ssl-bump", "proxypy": "proxy.py 2.4.10", "node": "http-mitm-proxy 1.1.0",
           "mitm": "mitmdump 11.0.2"}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def peer_medians(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    g = defaultdict(list)
    for r in rows:
        g[(r["name"], r["mode"], r["c"])].append(r)
    out = {}
    for (name, mode, c), rs in g.items():
        out.setdefault(name, {})[f"{mode}_c{c}"] = {
            "rounds": len(rs), "rps": med([r["rps"] for r in rs]), "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]), "cpu_s_per_1k": med([r.get("cpu_s_per_1k") for r in rs]),
            "errors": sum(r["n_err"] + r["n_non2xx"] for r in rs),
            "rps_all": [r["rps"] for r in rs]}
    return out


def f(x, nd=3):
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def svg_chart(peers, sc, path):
    """Two panels of horizontal bars: rps relative to direct, keep-alive and new connection."""
    panels = []
    if peers:
        for key, title in (("keepalive_c16", "keep-alive c=16: rps × direct"),
                           ("newconn_c16", "new connection per request c=16: rps × direct")):
            d = peers.get("direct", {}).get(key, {}).get("rps")
            bars = [(DISPLAY.get(n, n), ratio(v[key]["rps"], d)) for n, v in peers.items()
                    if n != "direct" and key in v and d]
            panels.append((title, sorted(bars, key=lambda b: -(b[1] or 0))))
    else:
        bars = []
        for key, label in (("keepalive", "keep-alive c=16"), ("c1", "c=1"), ("newconn", "new conn c=16"),
                           ("down_1m", "1 MiB down"), ("up_1m", "1 MiB up")):
            if key in sc:
                bars.append((label, ratio(sc[key]["keyward"]["rps"], sc[key]["direct"]["rps"])))
        panels.append(("keyward: rps × direct (same run)", bars))
    W, bh, left = 760, 22, 210
    H = sum(40 + bh * len(b) for _, b in panels) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    y = 10
    for title, bars in panels:
        out.append(f'<text x="10" y="{y + 16}" font-weight="bold" font-size="13">{title}</text>')
        y += 28
        mx = max([b or 0 for _, b in bars] + [1.0])
        scale = (W - left - 80) / mx
        x1 = left + scale * 1.0
        for name, v in bars:
            color = "#d9480f" if name == "keyward" else "#4c6ef5"
            w = (v or 0) * scale
            out.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{name}</text>')
            out.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{bh - 6}" fill="{color}"/>')
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 15}">{f(v)}×</text>')
            y += bh
        out.append(f'<line x1="{x1:.1f}" x2="{x1:.1f}" y1="{y - bh * len(bars)}" y2="{y}" stroke="#333" '
                   f'stroke-dasharray="3,3"/><text x="{x1 + 3:.1f}" y="{y + 10}" font-size="10">direct = 1.0</text>')
        y += 12
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def sections(text):
    """The page's "## " sections as (heading, text) pairs, in order."""
    out, cur = [], None
    for line in text.splitlines():
        if line.startswith("## "):
            cur = [line]
            out.append((line.strip(), cur))
        elif cur is not None:
            cur.append(line)
    return [(h, "\n".join(body).rstrip()) for h, body in out]


def kept_sections(path, new_text):
    """The old page's sections whose heading the new text does not have."""
    if not os.path.exists(path):
        return []
    def key(h):  # "## Peers (kit ..., run-X.jsonl)" is the same section in every run
        return h.split(" (")[0]
    have = {key(h) for h, _ in sections(new_text)}
    return [body + "\n" for h, body in sections(open(path).read()) if key(h) not in have]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", required=True)
    ap.add_argument("--peers")
    ap.add_argument("--commit", default="")
    ap.add_argument("--uptime-after", default="")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-svg", required=True)
    ap.add_argument("--notes", help="markdown appended as the last section (bench/notes.md)")
    a = ap.parse_args()
    sc = json.load(open(a.scenarios))
    peers = peer_medians(a.peers) if a.peers else {}

    ka, c1, nc = sc["keepalive"], sc["c1"], sc["newconn"]
    kit = lambda n, k, f_: (peers.get(n, {}).get(k) or {}).get(f_)
    t = []  # (target, value text, met)

    def target(name, value, limit, ok, detail):
        t.append({"target": name, "value": value, "limit": limit, "met": bool(ok) if ok is not None else None,
                  "detail": detail})

    r_ka_own = ratio(ka["keyward"]["rps"], ka["direct"]["rps"])
    r_ka_kit = ratio(kit("candidate", "keepalive_c16", "rps"), kit("direct", "keepalive_c16", "rps"))
    r_ka = r_ka_kit if r_ka_kit is not None else r_ka_own
    target("keep-alive c=16 ≥ 0.6× direct", r_ka, 0.6, r_ka is not None and r_ka >= 0.6,
           f"scenario run {f(r_ka_own)}×" + (f"; kit medians {f(r_ka_kit)}×" if r_ka_kit is not None else ""))
    r_hud = ratio(kit("candidate", "keepalive_c16", "rps"), kit("hudsucker", "keepalive_c16", "rps"))
    target("keep-alive c=16 ≥ 1.5× hudsucker", r_hud, 1.5, None if r_hud is None else r_hud >= 1.5,
           "kit medians" if r_hud is not None else "needs --peers")
    cpu = ka["keyward"].get("cpu_s_per_1k")
    cpu_kit = kit("candidate", "keepalive_c16", "cpu_s_per_1k")
    target("CPU ≤ 0.03 s per 1k requests", cpu, 0.03, cpu is not None and cpu <= 0.03,
           "keep-alive c=16, keyward process" + (f"; kit medians {f(cpu_kit, 4)}" if cpu_kit is not None else ""))
    added = round(c1["keyward"]["p50_ms"] - c1["direct"]["p50_ms"], 4)
    added_kit = None
    if kit("candidate", "keepalive_c1", "p50_ms") is not None:
        added_kit = round(kit("candidate", "keepalive_c1", "p50_ms") - kit("direct", "keepalive_c1", "p50_ms"), 4)
    target("c=1 added p50 ≤ 0.05 ms", added, 0.05, added <= 0.05,
           f"p50 {c1['direct']['p50_ms']} → {c1['keyward']['p50_ms']} ms; p99 {c1['direct']['p99_ms']} → "
           f"{c1['keyward']['p99_ms']} ms" + (f"; kit medians +{added_kit} ms" if added_kit is not None else ""))
    s50, s0 = sc["sse"]["delay50"], sc["sse"]["delay0"]
    target("SSE first-event ratio ≤ 1.1", s50["ttfe_ratio"], 1.1, s50["ttfe_ratio"] <= 1.1,
           f"first event 50 ms after the request (LLM-like): {s50['direct']['ttfe_p50_ms']} → "
           f"{s50['keyward']['ttfe_p50_ms']} ms; immediate first event: {s0['direct']['ttfe_p50_ms']} → "
           f"{s0['keyward']['ttfe_p50_ms']} ms ({f(s0['ttfe_ratio'])}×, +{s0['ttfe_added_ms']} ms)")
    r_sq = ratio(kit("candidate", "newconn_c16", "rps"), kit("squid", "newconn_c16", "rps"))
    target("new connection rate ≥ 1.5× squid", r_sq, 1.5, None if r_sq is None else r_sq >= 1.5,
           (f"kit medians {f(kit('candidate', 'newconn_c16', 'rps'))} vs {f(kit('squid', 'newconn_c16', 'rps'))} rps"
            if r_sq is not None else "needs --peers") +
           f"; scenario run {f(nc['keyward']['rps'])} rps = {f(ratio(nc['keyward']['rps'], nc['direct']['rps']))}× direct")
    tun = sc.get("tunnels", [])
    worst = max((x["rss_per_tunnel_kib"] for x in tun), default=None)
    target("≤ 64 KiB RSS per idle intercepted tunnel", worst, 64, worst is not None and worst <= 64,
           "; ".join(f"{x['opened']}/{x['n']} tunnels: {x['rss_per_tunnel_kib']} KiB each, "
                     f"{x['during']['rps']} rps served meanwhile ({x['during']['n_err']} errors), "
                     f"{x.get('probe_early', '?')} answered after {x.get('early_idle_s', '?')} s idle, "
                     f"{x['probe_after_hold']} after {x['hold_s']} s idle" for x in tun))

    doc = {"date": time.strftime("%Y-%m-%d"), "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commit": a.commit, "machine": {"nproc": os.cpu_count(), "loadavg_before": sc.get("uptime_before"),
                                           "loadavg_after_scenarios": sc.get("uptime_after"),
                                           "uptime_after_all": a.uptime_after},
           "scenarios": sc, "peers_medians": peers, "peers_source": os.path.basename(a.peers) if a.peers else None,
           "targets": t}
    os.makedirs(os.path.dirname(a.out_json), exist_ok=True)
    json.dump(doc, open(a.out_json, "w"), indent=1)
    svg_chart(peers, sc, a.out_svg)

    L = ["# keyward benchmarks", "",
         f"Generated by `bench/run.sh{' --peers' if peers else ''}` on {doc['generated']} (keyward `{a.commit}`), "
         f"{os.cpu_count()} cores, loopback only. Load average before / after: `{sc.get('uptime_before')}` / "
         f"`{a.uptime_after.split('load average:')[-1].strip()}`. Raw data: "
         f"[`bench/results/{os.path.basename(a.out_json)}`](../bench/results/{os.path.basename(a.out_json)}).",
         "",
         "Every number below comes from one run; each scenario also ran **direct** (client → nginx, no proxy) "
         "in the same run, so compare ratios, not absolute values (±15% run-to-run noise on this shared "
         "2-core machine; oha, nginx and the proxy share the cores). keyward runs with injection ON: "
         "a provider for `localhost`, a stored secret, an authenticated agent, so every request is "
         "authenticated, resolved, injected, audited (one fsync-free `write` per request) and its response "
         "passes the redactor.", "",
         "## Targets", "", "| target | value | met | detail |", "|---|---:|:---:|---|"]
    for x in t:
        m = "—" if x["met"] is None else ("yes" if x["met"] else "**no**")
        L.append(f"| {x['target']} | {f(x['value'], 4)} | {m} | {x['detail']} |")
    L += ["", "## Scenarios (keyward vs direct, same run)", "",
          "| scenario | direct | keyward | × direct | keyward CPU s/1k req |", "|---|---:|---:|---:|---:|"]
    def row(label, key, unit="rps", mul=1.0):
        d, k = sc[key]["direct"], sc[key]["keyward"]
        L.append(f"| {label} | {f(d['rps'] * mul, 1)} {unit} | {f(k['rps'] * mul, 1)} {unit} | "
                 f"{f(ratio(k['rps'], d['rps']))} | {f(k.get('cpu_s_per_1k'), 4)} |")
    row("1. keep-alive c=16, 3-byte body", "keepalive")
    row("2. c=1 keep-alive", "c1")
    L.append(f"| 2. c=1 latency p50 / p99 | {c1['direct']['p50_ms']} / {c1['direct']['p99_ms']} ms | "
             f"{c1['keyward']['p50_ms']} / {c1['keyward']['p99_ms']} ms | +{added} ms p50 | |")
    row("3. new connection per request c=16", "newconn")
    for key, lab in (("delay0", "immediate first event"), ("delay50", "first event after 50 ms")):
        s = sc["sse"][key]
        L.append(f"| 4. SSE first event p50 ({lab}) | {s['direct']['ttfe_p50_ms']} ms | {s['keyward']['ttfe_p50_ms']} ms "
                 f"| {f(s['ttfe_ratio'])} (time) | |")
    row("5. 1 MiB download c=4", "down_1m", "MiB/s")
    row("5. 1 MiB upload c=4", "up_1m", "MiB/s")
    for x in tun:
        L.append(f"| 6. {x['n']} idle intercepted tunnels | | {x['rss_per_tunnel_kib']} KiB RSS each "
                 f"({x['rss_base_kib']} → {x['rss_held_kib']} KiB) | | |")
    L.append(f"| 7. CPU per 1k requests (keep-alive c=16) | | {f(cpu, 4)} s | | |")
    if peers:
        L += ["", f"## Peers (kit `bench_rounds.sh`, medians of {max(v.get('rounds', 0) for p in peers.values() for v in p.values())} rounds, "
              f"`{doc['peers_source']}`)", "",
              "| proxy | keep-alive rps c=16 | × direct | × hudsucker | p50 ms c=1 | p99 ms c=16 | CPU s/1k c=16 "
              "| new-conn rps c=16 | × direct | × squid | CPU s/1k new-conn |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        dk, dn = kit("direct", "keepalive_c16", "rps"), kit("direct", "newconn_c16", "rps")
        hk, sn = kit("hudsucker", "keepalive_c16", "rps"), kit("squid", "newconn_c16", "rps")
        order = ["direct", "candidate"] + sorted(
            (n for n in peers if n not in ("direct", "candidate")),
            key=lambda n: -(kit(n, "keepalive_c16", "rps") or 0))
        for n in order:
            if n not in peers:
                continue
            k, c1k, nk = (peers[n].get(x, {}) for x in ("keepalive_c16", "keepalive_c1", "newconn_c16"))
            name = f"**{DISPLAY.get(n, n)}**" if n == "candidate" else DISPLAY.get(n, n)
            L.append(f"| {name} | {f(k.get('rps'), 0)} | {f(ratio(k.get('rps'), dk))} | {f(ratio(k.get('rps'), hk))} | "
                     f"{f(c1k.get('p50_ms'), 3)} | {f(k.get('p99_ms'), 3)} | {f(k.get('cpu_s_per_1k'), 4)} | "
                     f"{f(nk.get('rps'), 0)} | {f(ratio(nk.get('rps'), dn))} | {f(ratio(nk.get('rps'), sn))} | "
                     f"{f(nk.get('cpu_s_per_1k'), 3)} |")
    L += ["", f"![rps relative to direct]({os.path.basename(a.out_svg)})", "",
          "## How to reproduce", "",
          "```sh",
          "../shared/bench/install.sh && ../shared/bench/gen_certs.sh   # oha, nginx, peers (once)",
          "bench/run.sh            # keyward scenarios only (~3 min)",
          "bench/run.sh --peers    # + the kit's peers in the same run (ROUNDS=3, ~15 min)",
          "```", "",
          "Scenario details: `bench/run.sh` (setup), `bench/scenarios.py` (load), `bench/sse_upstream.py` "
          "(the streaming upstream), `bench/report.py` (this page). SSE: a keep-alive tunnel, 2-event stream, "
          "first event either immediately or 50 ms after the request, then 20 ms later the second; the client "
          "times the first `data:` byte. Idle tunnels: CONNECT + TLS + one request each, then held idle; "
          "RSS growth of the keyward process divided by the tunnels, an oha c=16 run meanwhile, "
          "and a request on 100 of them after the idle period.", ""]
    if a.notes and os.path.exists(a.notes):
        L += [open(a.notes).read().rstrip(), ""]
    # Sections other scripts write into this page (bench/scale.sh, store_pg.sh,
    # jail.sh, ...) are kept: every "## " section of the old page that this
    # report neither generates nor has in the notes is carried over, in order.
    L += kept_sections(a.out_md, "\n".join(L))
    open(a.out_md, "w").write("\n".join(L))
    print("\n".join(L))


if __name__ == "__main__":
    main()
