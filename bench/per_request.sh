#!/usr/bin/env bash
# bench/per_request.sh -- load-independent per-request cost of keyward vs the kit's
# hudsucker peer: userland instructions per request (valgrind callgrind, the proxy
# process only, counters zeroed after a warm-up) and syscalls per request (strace -c -f).
#
#   bench/per_request.sh keyward [BIN]     # keyward over $KW_STATE (bench/run.sh's state dir,
#                                          # default $BENCH_DIR/keyward-state; port $KW_PORT)
#   bench/per_request.sh hudsucker         # $BENCH_DIR/target/release/hudsucker-peer
#   N=2000 C=4 URL_PATH=/ TOOL=callgrind|strace bench/per_request.sh ...
#
# Needs oha ($BENCH_DIR/tools/bin), the kit's nginx upstream on :8443 (and :8445 for
# URL_PATH=/1m, which bench/run.sh starts). Loopback only; stops only what it started.
set -euo pipefail
BENCH_DIR="${BENCH_DIR:-/tmp/kwbench}"
export PATH="$BENCH_DIR/tools/bin:$PATH"
WHO="${1:?usage: $0 keyward [BIN] | hudsucker}"
N="${N:-2000}"; C="${C:-4}"; TOOL="${TOOL:-callgrind}"; URL_PATH="${URL_PATH:-/}"
UPORT="${UPORT:-8443}"
OUT="$BENCH_DIR/per-request"; mkdir -p "$OUT"
CA="$BENCH_DIR/certs/ca.crt"
case "$WHO" in
  keyward)
    S="${KW_STATE:-$BENCH_DIR/keyward-state}"
    BIN="${2:-$S/keyward}"
    PORT="${KW_PORT:-3138}"
    TOKEN="$(cat "$S/agent.token")"
    AUTH=(--proxy-header "Proxy-Authorization: Basic $(printf 'bench-agent:%s' "$TOKEN" | base64 -w0)")
    CMD=("$BIN" serve --config "$S/keyward.toml") ;;
  hudsucker)
    BIN="${2:-$BENCH_DIR/target/release/hudsucker-peer}"
    PORT=8083
    AUTH=()
    CMD=("$BIN" "127.0.0.1:$PORT" "$CA" "$BENCH_DIR/certs/ca.key" "$CA") ;;
  *) echo "unknown proxy $WHO" >&2; exit 1 ;;
esac
OHA=(oha --no-tui --cacert "$CA" -x "http://127.0.0.1:$PORT" "${AUTH[@]}")
URL="https://localhost:$UPORT$URL_PATH"
tag="$WHO-$(date +%H%M%S)"
if [[ $TOOL == callgrind ]]; then
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$tag.cg" --dump-instr=no \
    "${CMD[@]}" >"$OUT/$tag.log" 2>&1 &
else
  strace -c -f -o "$OUT/$tag.strace" "${CMD[@]}" >"$OUT/$tag.log" 2>&1 &
fi
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
# Warm-up: leaf minted, pools and caches filled, code paths touched.
"${OHA[@]}" -n 200 -c "$C" "$URL" >/dev/null
if [[ $TOOL == callgrind ]]; then
  callgrind_control -z "$PID" >/dev/null
  "${OHA[@]}" -n "$N" -c "$C" --output-format json "$URL" >"$OUT/$tag.oha.json"
  callgrind_control -d "$PID" >/dev/null
  sleep 1
  kill "$PID"; wait "$PID" 2>/dev/null || true
  trap - EXIT
  dump="$(ls -1 "$OUT/$tag.cg".* 2>/dev/null | grep -v '\.cg$' | sort -V | head -n 1)"
  # awk reads to the end: an early exit would SIGPIPE callgrind_annotate and, with
  # pipefail, end the script here.
  total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",","",$1); t=$1} END {print t}')"
  ok="$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['statusCodeDistribution'].get('200',0))" "$OUT/$tag.oha.json")"
  echo "$WHO: $total instructions / $ok requests = $((total / ok)) per request ($dump)"
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | head -n 60 >"$OUT/$tag.top.txt"
  echo "top inclusive: $OUT/$tag.top.txt"
else
  "${OHA[@]}" -n "$N" -c "$C" --output-format json "$URL" >"$OUT/$tag.oha.json"
  # Stop the traced proxy (strace's child, by PID); strace then writes its summary.
  kill "$(pgrep -P "$PID" | head -n 1)" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  trap - EXIT
  ok="$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['statusCodeDistribution'].get('200',0))" "$OUT/$tag.oha.json")"
  # Includes the warm-up's requests: per request over N + 200.
  awk -v n="$((ok + 200))" 'NR>2 && $NF !~ /^-/ && $NF != "total" && NF>=5 {printf "%-16s %8.2f per request\n", $NF, $4/n}' \
    "$OUT/$tag.strace" | sort -k2 -nr | head -n 15
fi
