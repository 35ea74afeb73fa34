#!/usr/bin/env bash
# bench/jail.sh -- what `keyward run` adds (docs/benchmarks.md, section "Jail").
#
#   bench/jail.sh [N]        (root; KW_BIN=path to a release keyward; N requests per client)
#
# One node https upstream (bench.test -> 127.0.0.1:8543, keep-alive "ok"), one
# `keyward serve` with injection ON (provider bench for bench.test, a stored
# secret), and curl as the client, reusing one connection for all N URLs of a
# command line (`-w %{time_total}` per request). Modes:
#   host-connect   curl on the host, HTTPS_PROXY = keyward         (no jail)
#   jail-connect   curl in `keyward run`, HTTPS_PROXY = the jail's proxy port
#   transparent    curl in `keyward run` with --noproxy '*' (caught, SNI -> CONNECT)
# (c=16: 16 curls in one jail, one `keyward run` relaying them all.)
# c=1: p50/p99 of per-request time on the kept-alive connection, and of a new
# connection per request (connect + TLS + request). c=16: 16 curls at once, rps.
# Loopback only (the jailed curl reaches nothing else). Stops only what it started.
set -euo pipefail
N="${1:-2000}"
DIR="${BENCH_DIR:-/tmp/kwjailbench}"
KW="${KW_BIN:-${CARGO_TARGET_DIR:-$(dirname "$0")/../target}/release/keyward}"
PORT_UP=8543
PORT_KW=3158
rm -rf "$DIR"; mkdir -p "$DIR"; cd "$DIR"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

openssl req -x509 -newkey rsa:2048 -nodes -keyout upca.key -out upca.crt -days 2 \
  -subj /CN=bench-up-ca -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout up.key -out up.csr -subj /CN=bench.test 2>/dev/null
printf 'subjectAltName=DNS:bench.test\n' > san.ext
openssl x509 -req -in up.csr -CA upca.crt -CAkey upca.key -CAcreateserial -out up.crt \
  -days 2 -extfile san.ext 2>/dev/null
cat > up.js <<'JS'
const https = require('https'), fs = require('fs');
https.createServer({ key: fs.readFileSync('up.key'), cert: fs.readFileSync('up.crt') },
  (req, res) => { res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 }); res.end('ok'); })
  .listen(Number(process.argv[2]), '127.0.0.1');
JS
TOKEN="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf %s "$TOKEN" > token; chmod 600 token
cat > keyward.toml <<TOML
[proxy]
listen = "127.0.0.1:$PORT_KW"
[tls]
ca_cert = "$DIR/ca.pem"
ca_key = "$DIR/ca.key"
upstream_roots = "$DIR/upca.crt"
[vault]
path = "$DIR/vault.kw"
master_key_file = "$DIR/master.key"
[audit]
path = "$DIR/audit.jsonl"
[egress]
allow_private = ["127.0.0.0/8"]
ports = [443]
resolve = { "bench.test" = "127.0.0.1:$PORT_UP" }
[[providers]]
name = "bench"
hosts = ["bench.test"]
secret = "BENCH_KEY"
inject = { header = "authorization", value = "Bearer {secret}" }
[[agents]]
id = "bench-agent"
token_sha256 = "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"
TOML
printf 'sk-bench-%s' "$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" |
  "$KW" secret set BENCH_KEY --scope platform --config keyward.toml >/dev/null
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
node up.js "$PORT_UP" & pids+=($!)
KEYWARD_LOG=warn "$KW" serve --config keyward.toml 2>serve.log & pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT_KW") 2>/dev/null && break; sleep 0.1; done
cp ca.pem bundle.pem; chmod 644 bundle.pem; chmod 755 "$DIR"

# The client script: N requests on one connection (or one per request), times per line.
cat > client.sh <<'SH'
#!/bin/bash
# client.sh MODE keepalive|newconn N
mode=$1; kind=$2; n=$3
[ "$mode" = host-connect ] || [ "$(readlink /proc/self/ns/net)" != "$HOST_NS" ] || exit 99
args=(-s --cacert "${CA:-$SSL_CERT_FILE}" -w '\n%{time_total}\n')
[ "$mode" = transparent ] && args+=(--noproxy '*')
url=https://bench.test/x
if [ "$kind" = keepalive ]; then
  urls=(); for _ in $(seq "$n"); do urls+=("$url"); done
  curl "${args[@]}" "${urls[@]}" | grep -E '^[0-9.]+$'
elif [ "$kind" = newconn ]; then
  for _ in $(seq "$n"); do curl "${args[@]}" "$url"; done | grep -E '^[0-9.]+$'
else # c16: 16 keep-alive clients at once
  for _ in $(seq 16); do "$0" "$mode" keepalive "$n" > /dev/null & done
  wait
fi
SH
chmod 755 client.sh
export HOST_NS="$(readlink /proc/self/ns/net)"
run_mode() { # mode kind n
  local mode=$1; shift
  if [ "$mode" = host-connect ]; then
    HTTPS_PROXY="http://bench-agent:$TOKEN@127.0.0.1:$PORT_KW" CA="$DIR/ca.pem" ./client.sh "$mode" "$@"
  else
    # The same one-certificate CA file as on the host: curl parses the whole
    # system bundle of SSL_CERT_FILE at every start, which is not the jail's cost.
    CA="$DIR/bundle.pem" "$KW" --config keyward.toml run --agent bench-agent --token-file token \
      -- "$DIR/client.sh" "$mode" "$@"
  fi
}
stats() { sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]*1000, a[int(NR*0.99)]*1000}'; }
printf '| mode | c=1 keep-alive p50 / p99 ms | c=1 new connection p50 / p99 ms | c=16 keep-alive rps |\n|---|---:|---:|---:|\n'
for mode in host-connect jail-connect transparent; do
  log "$mode"
  ka="$(run_mode "$mode" keepalive "$N" | tail -n +2 | stats)"
  nc="$(run_mode "$mode" newconn $((N / 10)) | stats)"
  start=$(date +%s.%N)
  run_mode "$mode" c16 "$N"
  end=$(date +%s.%N)
  rps=$(awk -v s="$start" -v e="$end" -v n="$N" 'BEGIN {printf "%.0f", 16 * n / (e - s)}')
  read -r ka50 ka99 <<<"$ka"; read -r nc50 nc99 <<<"$nc"
  printf '| %s | %s / %s | %s / %s | %s |\n' "$mode" "$ka50" "$ka99" "$nc50" "$nc99" "$rps"
done
grep -c '"event"' audit.jsonl | sed 's/^/audit lines: /' >&2
