#!/usr/bin/env bash
# Sparse database ids: `storegc plan` on a synthetic store whose
# ValidPaths ids are spread up to MAX (a host with years of churn) against
# the same store with dense ids. Memory and time must not depend on the
# highest id: the sparse run must stay within 1.2x of the dense one.
# Prints wall times, peak RSS (best of three runs each) and the ratios.
#
#   benches/sparse.sh [PATHS [MAX]]    default: 1000000 50000000
#
# Stores are written without files (database and roots only) and cached
# under target/bench-stores. Needs /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
max=${2:-50000000}
cargo build --release --quiet --bin storegc --bin storegc-synth
bin=target/release
cache=target/bench-stores
mkdir -p "$cache"

# Best wall seconds and lowest peak RSS (KiB) over three runs, "SECONDS KIB".
measure() {
  local f best_t="" best_m=""
  f=$(mktemp)
  for _ in 1 2 3; do
    /usr/bin/time -o "$f" -f "%e %M" "$@" >/dev/null 2>&1
    read -r t m < <(tail -n 1 "$f")
    if [ -z "$best_t" ] || awk -v a="$t" -v b="$best_t" 'BEGIN { exit !(a < b) }'; then best_t=$t; fi
    if [ -z "$best_m" ] || [ "$m" -lt "$best_m" ]; then best_m=$m; fi
  done
  rm -f "$f"
  echo "$best_t $best_m"
}

run() {
  local root=$1 ids=$2
  if [ ! -f "$root/.complete" ]; then
    rm -rf "$root"
    "$bin/storegc-synth" --paths "$n" --seed 1 --generations 5 --modelled-nar-sizes --no-files \
      --sparse-ids "$ids" "$root" >/dev/null
    touch "$root/.complete"
  fi
  root=$(cd "$root" && pwd)
  (
    export NIX_STORE_DIR=$root/nix/store NIX_STATE_DIR=$root/nix/var/nix \
      NIX_LOG_DIR=$root/nix/var/log/nix NIX_CONF_DIR=$root/etc NIX_REMOTE=
    cat "$NIX_STATE_DIR/db/db.sqlite" >/dev/null
    measure "$bin/storegc" plan --format paths
  )
}

read -r t_d m_d < <(run "$cache/store-$n-nofiles" 0)
read -r t_s m_s < <(run "$cache/store-$n-sparse-$max" "$max")
printf '%-10s %-24s %10s %10s\n' paths ids seconds peak_MiB
printf '%-10s %-24s %10s %10d\n' "$n" "dense (1..$n)" "$t_d" $((m_d / 1024))
printf '%-10s %-24s %10s %10d\n' "$n" "sparse (up to $max)" "$t_s" $((m_s / 1024))
awk -v td="$t_d" -v ts="$t_s" -v md="$m_d" -v ms="$m_s" 'BEGIN {
  if (td == 0) td = 0.001
  printf "sparse/dense: time %.2fx, peak RSS %.2fx (limit 1.2x)\n", ts / td, ms / md
  exit !(ts / td <= 1.2 && ms / md <= 1.2)
}'
