#!/usr/bin/env python3
"""Writes bench/scale.sh's results: a JSON copy and the "Scale: redaction under
rotation" section of docs/benchmarks.md (replaced in place, the rest untouched)."""
import argparse
import json
import os
import platform
import time

HEAD = "## Scale: redaction under rotation"


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def ms(r, k):
    v = r.get(k)
    return "–" if v is None else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--rate", required=True)
    ap.add_argument("--seconds", required=True)
    ap.add_argument("--uptime", default="")
    ap.add_argument("--prio", default="0")
    ap.add_argument("--notes", help="markdown appended to the section (the analysis)")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    os.makedirs(os.path.dirname(a.out_json), exist_ok=True)
    with open(a.out_json, "w") as f:
        json.dump({"commit": a.commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "machine": machine(), "prio": a.prio, "rate": a.rate, "seconds": a.seconds,
                   "uptime": a.uptime, "rows": rows}, f, indent=1)
    by = {(r["size"], r["agent"], r["phase"]): r for r in rows}
    lines = [HEAD, "",
             f"`bench/scale.sh` on {time.strftime('%Y-%m-%d', time.gmtime())}, commit {a.commit}, "
             f"{machine()} (shared with other builds; `uptime` after: {a.uptime.strip()}; "
             f"keyward, upstream and clients at nice {a.prio}).",
             f"One closed-loop keep-alive client (c=1) through the proxy, 1 KiB answers scanned in "
             f"full; each phase {a.seconds} s; *rotating* = {a.rate} admin-API PUTs a second of a "
             f"random in-scope secret. `unscoped`: no secrets list, every vault secret is in its "
             f"redaction set; `scoped`: 21 names. Latencies in ms; RSS = keyward's peak in the phase; "
             f"fill PUT = p50 of the last 100 PUTs that filled the vault to its size.", "",
             "| vault | agent | steady p50 / p99 / max | rotating p50 / p99 / max | rotating: requests, > 20 ms, > 50 ms | RSS MiB steady / rotating | PUT p50 fill / rotating |",
             "|---:|---|---|---|---|---|---|"]
    sizes = sorted({r["size"] for r in rows})
    for size in sizes:
        for agent in ("unscoped", "scoped"):
            s, r = by.get((size, agent, "steady")), by.get((size, agent, "rotating"))
            if not s or not r:
                continue
            sq, rq = s["request"], r["request"]
            lines.append(f"| {size} | {agent} | {ms(sq,'p50')} / {ms(sq,'p99')} / {ms(sq,'max')} | "
                         f"{ms(rq,'p50')} / {ms(rq,'p99')} / {ms(rq,'max')} | "
                         f"{rq['count']}, {rq.get('over_ms', {}).get('20', '–')}, {rq.get('over_ms', {}).get('50', '–')} | "
                         f"{s['rss_mib']} / {r['rss_mib']} | "
                         f"{ms(r['fill_put'],'p50')} / {ms(r['rotate_put'],'p50')} |")
    lines.append("")
    big = max(sizes) if sizes else None
    s, r = by.get((big, "unscoped", "steady")), by.get((big, "unscoped", "rotating"))
    if s and r:
        sp99, rq = s["request"]["p99"], r["request"]
        bound = max(3 * sp99, sp99 + 2)
        ok = lambda c: "met" if c else "**not met**"
        lines += [f"Targets (issue 16), unscoped agent over {big} secrets, {a.rate} rotations/s:", "",
                  f"- request p99 ≤ max(3 × steady p99, steady p99 + 2 ms) = {bound:.2f} ms: "
                  f"{rq['p99']:.2f} ms, {ok(rq['p99'] <= bound)}",
                  f"- no request over 50 ms: max {rq['max']:.2f} ms, {ok(rq['max'] <= 50)}",
                  f"- RSS ≤ 200 MiB: {r['rss_mib']} MiB, {ok(r['rss_mib'] <= 200)}",
                  f"- admin PUT p50 ≤ 20 ms (during rotation): {r['rotate_put']['p50']:.2f} ms, "
                  f"{ok(r['rotate_put']['p50'] <= 20)}", ""]
    if a.notes and os.path.exists(a.notes):
        lines += [open(a.notes).read().rstrip("\n"), ""]
    section = "\n".join(lines)
    text = open(a.out_md).read() if os.path.exists(a.out_md) else ""
    if HEAD in text:
        start = text.index(HEAD)
        nxt = text.find("\n## ", start + len(HEAD))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(a.out_md, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
