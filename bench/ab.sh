#!/usr/bin/env bash
# bench/ab.sh -- A/B two keyward binaries on keep-alive c=16 (interleaved runs, medians),
# the way the hot-path changes in bench/notes.md were measured.
#
#   bench/ab.sh A_BIN B_BIN [rounds=3] [secs=6] [c=16]
#   MODE=syscalls bench/ab.sh BIN        # syscalls and context switches per request (perf)
#
# Needs the state bench/run.sh leaves in $KW_STATE (default $BENCH_DIR/keyward-state: config, vault, token)
# and the kit's nginx upstream on :8443 (../shared/bench/start.sh upstream).
# Loopback only. CPU = utime+stime of the keyward process per 1k requests.
set -euo pipefail
BENCH_DIR="${BENCH_DIR:-/tmp/kwbench}"
S="${KW_STATE:-$BENCH_DIR/keyward-state}"
KW_PORT="${KW_PORT:-3138}"
export PATH="$BENCH_DIR/tools/bin:$PATH"
[[ -s "$S/keyward.toml" ]] || { echo "no $S: run bench/run.sh once" >&2; exit 1; }
TOKEN="$(cat "$S/agent.token")"
AUTH="Proxy-Authorization: Basic $(printf 'bench-agent:%s' "$TOKEN" | base64 -w0)"
OHA=(oha --no-tui --cacert "$BENCH_DIR/certs/ca.crt" -x "http://127.0.0.1:$KW_PORT" --proxy-header "$AUTH")
URL=https://localhost:8443/

start() {  # start BIN -> sets PID
  cp "$1" "$S/kw-ab"
  "$S/kw-ab" serve --config "$S/keyward.toml" >"$S/kw-ab.log" 2>&1 &
  PID=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$KW_PORT") 2>/dev/null && return; sleep 0.1; done
  echo "keyward did not start (see $S/kw-ab.log)" >&2; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$PID/stat"; }
ok_count() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['statusCodeDistribution'].get('200',0))" "$1"; }

one() {  # one BIN SECS C -> "rps cpu_s_per_1k p50_ms"
  start "$1"
  "${OHA[@]}" -z 2s -c "$3" "$URL" >/dev/null
  local t0 t1; t0=$(cpu_ticks)
  "${OHA[@]}" -z "${2}s" -c "$3" --output-format json "$URL" >"$S/ab.json"
  t1=$(cpu_ticks); stop
  python3 - "$S/ab.json" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); ok = d['statusCodeDistribution'].get('200', 0)
ticks = int(sys.argv[3]) - int(sys.argv[2]); hz = int(sys.argv[4])
print(f"{ok / d['summary']['total']:.0f} {ticks / hz / ok * 1000:.4f} {d['latencyPercentiles']['p50'] * 1000:.3f}")
PY
}

if [[ "${MODE:-}" == syscalls ]]; then
  start "$1"
  "${OHA[@]}" -z 1s -c "${C:-16}" "$URL" >/dev/null
  ev=write,writev,flock,recvfrom,statx,futex,epoll_wait,sched_yield
  perf stat -x, -e "$(echo "$ev" | sed 's/\([a-z_]*\)/syscalls:sys_enter_\1/g'),context-switches" \
    -p "$PID" -o "$S/sc.txt" &
  SP=$!
  "${OHA[@]}" -z 5s -c "${C:-16}" --output-format json "$URL" >"$S/ab.json"
  kill -INT "$SP"; wait "$SP" 2>/dev/null || true; stop
  awk -F, -v ok="$(ok_count "$S/ab.json")" '/^[0-9]/{printf "%-34s %.2f per request\n", $3, $1/ok}' "$S/sc.txt"
  exit 0
fi

A=$1; B=$2; R=${3:-3}; SECS=${4:-6}; C=${5:-16}
out="$S/ab.out"; : >"$out"
for _ in $(seq "$R"); do
  for x in A B; do
    bin=$A; [[ $x == B ]] && bin=$B
    r="$(one "$bin" "$SECS" "$C")"; echo "$x $r" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for k in "AB":
    m = [r for r in rows if r[0] == k]
    med = lambda i: statistics.median(float(r[i]) for r in m)
    print(f"{k}: median rps {med(1):,.0f}  CPU s/1k req {med(2):.4f}  p50 {med(3):.3f} ms")
PY
