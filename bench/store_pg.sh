#!/usr/bin/env bash
# bench/store_pg.sh -- the PostgreSQL store measured (issue 17 "Measured").
#
#   bench/store_pg.sh [--no-build] [--quick] [-- extra args for bench/store_pg.py]
#   (KW_BIN=path measures that keyward binary instead of the fresh release build)
#
# 1. builds keyward --release (nice) unless --no-build;
# 2. runs bench/store_pg.py, which starts (in one temp dir, all loopback, all stopped
#    at the end by PID) a throwaway PostgreSQL cluster as `nobody`, an nginx and a
#    Python TLS echo upstream and keyward replicas, and measures:
#      rps   injected keep-alive rps + CPU s/1k requests, file vs postgres store,
#            audit on, alternating rounds (oha c=16);
#      put   admin PUT p50/p99, cold start and the full-resync time at 100 and
#            100,000 secrets (filled with `keyward secret import`);
#      prop  propagation delay replica A -> replica B, 200 samples, oha load on B;
# 3. writes bench/results/store-pg-<date>.json (--quick: 1k secrets, few samples,
#    to /tmp, for validating the script).
# Needs Debian's postgresql (initdb, pg_ctl, psql, pg_stat_statements), nginx,
# openssl and oha (../shared/bench/install.sh puts it in $BENCH_DIR/tools/bin).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/kwbench}"
export PATH="$BENCH_DIR/tools/bin:$HOME/.cargo/bin:$PATH:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)"
BUILD=1; QUICK=0; EXTRA=()
while (($#)); do
  case "$1" in
    --no-build) BUILD=0 ;;
    --quick) QUICK=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--no-build] [--quick] [-- store_pg.py args]" >&2; exit 1 ;;
  esac
  shift
done
command -v oha >/dev/null || { echo "error: oha missing: run ../shared/bench/install.sh" >&2; exit 1; }
command -v nginx >/dev/null || { echo "error: nginx missing" >&2; exit 1; }
command -v initdb >/dev/null || { echo "error: PostgreSQL missing (apt-get install postgresql)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
if [[ $BUILD == 1 ]]; then
  echo "[$(date +%H:%M:%S)] cargo build --release (nice)" >&2
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build --release --quiet)
fi
BIN="${KW_BIN:-$TARGET/release/keyward}"
COMMIT="$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo -dirty)"
if [[ $QUICK == 1 ]]; then
  OUT="/tmp/store-pg-quick-$(date +%Y%m%d-%H%M%S).json"
  ARGS=(--rounds 2 --rps-secs 3 --sizes 100,1000 --puts 100 --resync-samples 5 --samples 20 --prop-load-secs 60)
else
  OUT="$REPO/bench/results/store-pg-$(date +%Y-%m-%d).json"
  ARGS=()
fi
python3 "$REPO/bench/store_pg.py" --bin "$BIN" --commit "$COMMIT" --out "$OUT" "${ARGS[@]}" "${EXTRA[@]}"
