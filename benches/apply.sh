#!/usr/bin/env bash
# Speed of deleting (issue 13): on identical synthetic stores, in one run,
#
#   engine     storegc apply --delete-with storegc  (storegc's own deleter)
#   nix-store  storegc apply --delete-with nix-store (batches to Nix)
#   gc         nix-store --gc                        (Nix's whole collector)
#   floor      one SQLite transaction deleting the planned rows
#              (storegc-floor --delete), then `rm -rf` of the same paths,
#              two in parallel: no liveness, no lock, no socket
#
# then the engine and `nix-store --gc` once more on the same store after
# `nix-store --optimise` (`.links` populated: every .drv is linked there,
# so the engine's `.links` pass and Nix's both have work). Targets: the
# engine at least 3x faster than `nix-store --gc`, at most 1.3x the floor.
#
# Every contestant runs on a fresh copy (`cp -a`, hard links kept) of one
# generated store at the same path, so all see the same bytes; `storegc
# plan --out` runs once, before the first copy. Each run must succeed
# (storegc: exit 0, no failures or errors in its report), or the script
# stops with exit 1 and names it: a failing command is never timed. After
# each run the valid set must equal the others' (all delete exactly Nix's
# dead set), or exit 1.
#
#   STOREGC_BENCH_PATHS=N   store size (default 200000; try 5000 first)
#   STOREGC_BENCH_SEED=S    synth seed (default 1)
#   STOREGC_BENCH_KEEP=1    keep the stores under target/bench-apply
#   benches/apply.sh [PATHS [SEED]] does the same.
#
# Logs and reports stay in target/bench-apply/. Needs nix-store, sqlite3,
# jq and GNU time (apt: nix-bin sqlite3 jq time) and about 3 GB of disk at
# 200,000 paths. Prints a Markdown table (wall and CPU seconds, CPU with
# children) and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=${STOREGC_BENCH_PATHS:-${1:-200000}}
seed=${STOREGC_BENCH_SEED:-${2:-1}}

for tool in nix-store sqlite3 jq /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "benches/apply.sh: $tool is missing (apt-get install nix-bin sqlite3 jq time)" >&2
    exit 2
  }
done

echo "building release binaries..." >&2
cargo build --release --quiet --bin storegc --bin storegc-synth --bin storegc-floor
bin=$PWD/target/release
work=$PWD/target/bench-apply
store=$work/s

die() {
  echo "benches/apply.sh: $*" >&2
  exit 1
}

# Store paths are read-only: make them writable before removing.
wipe() {
  if [ -e "$1" ]; then
    chmod -R u+w "$1" 2>/dev/null || true
    rm -rf "$1"
  fi
}
wipe "$work"
mkdir -p "$work"

echo "generating the store ($paths paths, seed $seed)..." >&2
"$bin/storegc-synth" --paths "$paths" --seed "$seed" "$store" >"$work/env" 2>"$work/synth.log" ||
  die "storegc-synth failed, see $work/synth.log"
set -a
# shellcheck disable=SC1091
. "$work/env"
set +a
db=$NIX_STATE_DIR/db/db.sqlite

# Runs a command under /usr/bin/time: stdout and stderr go to
# $work/NAME.out and .err, "WALL USER SYS KIB" to .time. A failure stops
# the script.
measure() {
  local name=$1
  shift
  sync
  /usr/bin/time -o "$work/$name.time" -f "%e %U %S %M" "$@" \
    >"$work/$name.out" 2>"$work/$name.err" || {
    tail -n 5 "$work/$name.err" >&2
    die "'$*' failed, see $work/$name.err"
  }
}

# A storegc report must name no failure and no error.
check_report() {
  jq -e '(.failed | length) == 0 and (.errors | length) == 0 and (.interrupted | not)' \
    "$work/$1.out" >/dev/null || die "$1: the report names failures or errors ($work/$1.out)"
}

# The valid paths, by basename, sorted; must equal the first run's.
check_valid() {
  sqlite3 "$db" "select path from ValidPaths" | sed "s|^$NIX_STORE_DIR/||" | sort >"$work/$1.valid"
  if [ -e "$work/want.valid" ]; then
    cmp -s "$work/want.valid" "$work/$1.valid" ||
      die "$1 left a different valid set than the first run (diff $work/{want,$1}.valid)"
  else
    cp "$work/$1.valid" "$work/want.valid"
  fi
}

# Replaces the store with a fresh copy of $1.
restore() {
  wipe "$store"
  cp -a "$1" "$store"
}

echo "storegc plan --out..." >&2
measure plan "$bin/storegc" plan --format text --out "$work/plan.json"
jq -r '.delete[].path' "$work/plan.json" >"$work/planned.txt"
planned=$(wc -l <"$work/planned.txt")
[ "$planned" -gt 0 ] || die "the plan deletes nothing"
cp -a "$store" "$work/pristine"

# Every contestant runs on a fresh copy made the same way, so none gets
# the store as storegc-synth laid it out.
echo "engine: storegc apply --delete-with storegc ($planned paths)..." >&2
restore "$work/pristine"
measure engine "$bin/storegc" apply "$work/plan.json" --format json --delete-with storegc
check_report engine
check_valid engine

echo "nix-store backend: storegc apply --delete-with nix-store..." >&2
restore "$work/pristine"
measure nixstore "$bin/storegc" apply "$work/plan.json" --format json --delete-with nix-store
check_report nixstore
check_valid nixstore

echo "nix-store --gc..." >&2
restore "$work/pristine"
measure gc nix-store --gc
check_valid gc

echo "floor: one transaction, then rm -rf x2..." >&2
restore "$work/pristine"
measure floor bash -c '
  "$1" --delete "$2" "$3" &&
  xargs -a "$3" -d "\n" -P 2 -n 2000 rm -rf' floor "$bin/storegc-floor" "$db" "$work/planned.txt"
check_valid floor

echo "nix-store --optimise..." >&2
restore "$work/pristine"
measure optimise nix-store --optimise
links=$(find "$NIX_STORE_DIR/.links" -mindepth 1 -maxdepth 1 | wc -l)
[ "$links" -gt 0 ] || die "nix-store --optimise left .links empty"
wipe "$work/pristine"
cp -a "$store" "$work/pristine-opt"

echo "engine on the optimised store..." >&2
measure engine_opt "$bin/storegc" apply "$work/plan.json" --format json --delete-with storegc
check_report engine_opt
check_valid engine_opt
links_after=$(find "$NIX_STORE_DIR/.links" -mindepth 1 -maxdepth 1 | wc -l)

echo "nix-store --gc on the optimised store..." >&2
restore "$work/pristine-opt"
measure gc_opt nix-store --gc
check_valid gc_opt
gc_links_after=$(find "$NIX_STORE_DIR/.links" -mindepth 1 -maxdepth 1 | wc -l)
[ "$links_after" = "$gc_links_after" ] ||
  die ".links: $links_after entries left by the engine, $gc_links_after by nix-store --gc"

if [ "${STOREGC_BENCH_KEEP:-0}" != 1 ]; then
  wipe "$store"
  wipe "$work/pristine-opt"
fi

wall() { awk '{ print $1 }' "$work/$1.time"; }
cpu() { awk '{ printf "%.1f", $2 + $3 }' "$work/$1.time"; }
mib() { awk '{ printf "%d", $4 / 1024 }' "$work/$1.time"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) b = 0.001; printf "%.2f", a / b }'; }

echo
echo "$paths paths (seed $seed), $planned deleted; .links: $links entries, $links_after after"
echo
echo "| store | what | wall s | CPU s | peak MiB |"
echo "|---|---|---:|---:|---:|"
row() { echo "| $1 | $2 | $(wall "$3") | $(cpu "$3") | $(mib "$3") |"; }
row plain '`storegc plan --out` (once, before the copies)' plan
row plain '`storegc apply --delete-with storegc` (engine)' engine
row plain '`storegc apply --delete-with nix-store`' nixstore
row plain '`nix-store --gc`' gc
row plain 'floor: one SQL transaction, then `rm -rf` x2' floor
row optimised '`storegc apply --delete-with storegc` (engine)' engine_opt
row optimised '`nix-store --gc`' gc_opt
echo
r_gc=$(ratio "$(wall gc)" "$(wall engine)")
r_floor=$(ratio "$(wall engine)" "$(wall floor)")
r_nix=$(ratio "$(wall nixstore)" "$(wall engine)")
r_opt=$(ratio "$(wall gc_opt)" "$(wall engine_opt)")
verdict() { awk -v r="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? r >= t : r <= t; print ok ? "met" : "MISSED" }'; }
echo "- engine vs \`nix-store --gc\`: ${r_gc}x faster (target >= 3x: $(verdict "$r_gc" 3 '>='))"
echo "- engine vs the floor: ${r_floor}x the floor's time (target <= 1.3x: $(verdict "$r_floor" 1.3 '<='))"
echo "- engine vs the nix-store backend: ${r_nix}x faster"
echo "- optimised store: engine ${r_opt}x faster than \`nix-store --gc\`"
echo "- valid paths after every run: identical ($(wc -l <"$work/want.valid") paths)"
