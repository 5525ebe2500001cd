#!/usr/bin/env bash
# Speed of `storegc apply` against `nix-store --gc` (issue 4: deleting the
# ~170,000 dead paths of a 200,000-path store may take at most 1.3x what
# `nix-store --gc` takes for the same paths on the same store).
#
# Generates two identical synthetic stores (storegc-synth, same seed, same
# "now", with files), then on one runs `storegc plan --out` and `storegc
# apply`, on the other `nix-store --gc`; checks both leave the same valid
# paths, and prints both times and their ratio. Logs (`apply -v`, Nix's
# output) stay in target/bench-apply/ for a look at where the time goes.
#
# Not measured: the synthetic store's .links is empty (no optimise-store),
# while every `nix-store --delete` call ends by scanning .links ("deleting
# unused links..."); on an optimised store each apply batch pays that scan
# once, `nix-store --gc` once in all.
#
#   benches/apply.sh [PATHS [SEED]]      default: 200000 1
#
# Exit 0 when both stores end with the same valid set (whatever the
# ratio), 1 when they differ. Needs nix-store and sqlite3 (apt: nix-bin
# sqlite3) and about 2 GB of disk under target/ while it runs; the stores
# are removed at the end unless STOREGC_BENCH_KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=${1:-200000}
seed=${2:-1}
target_ratio=1.3

for tool in nix-store sqlite3 /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "benches/apply.sh: $tool is missing (apt-get install nix-bin sqlite3 time)" >&2
    exit 2
  }
done

echo "building release binaries..." >&2
cargo build --release --quiet --bin storegc --bin storegc-synth
bin=$PWD/target/release
work=$PWD/target/bench-apply

# Store paths are read-only: make them writable before removing.
wipe() {
  if [ -e "$1" ]; then
    chmod -R u+w "$1" 2>/dev/null || true
    rm -rf "$1"
  fi
}
wipe "$work"
mkdir -p "$work"

# Both stores from the same seed and the same clock.
now=$(date +%s)
for s in apply gc; do
  echo "generating the '$s' store ($paths paths, seed $seed)..." >&2
  "$bin/storegc-synth" --paths "$paths" --seed "$seed" --now "$now" "$work/$s" \
    >"$work/$s.env" 2>"$work/$s.synth.log"
done
sync

# Runs "$@" with store $1's environment (a subshell).
in_store() {
  local s=$1
  shift
  (
    set -a
    # shellcheck disable=SC1090
    . "$work/$s.env"
    set +a
    "$@"
  )
}

# Runs a command under /usr/bin/time: stdout and stderr go to
# $work/NAME.out and .err, "WALL CPU KIB" to .time: wall seconds, CPU
# seconds (user + system, children included: apply's nix-store calls
# count) and peak RSS. On a shared machine the wall time of deleting is
# mostly waiting for the disk, so CPU time is the steadier comparison.
measure() {
  local name=$1
  shift
  /usr/bin/time -o "$work/$name.time" -f "%e %U %S %M" "$@" \
    >"$work/$name.out" 2>"$work/$name.err" || {
    echo "benches/apply.sh: '$*' failed, see $work/$name.err" >&2
    tail -n 5 "$work/$name.err" >&2
    exit 1
  }
}

# The valid paths of store $1, by basename, sorted.
valid_set() {
  in_store "$1" sh -c \
    'sqlite3 "$NIX_STATE_DIR/db/db.sqlite" "select path from ValidPaths" | sed "s|^$NIX_STORE_DIR/||" | sort'
}

echo "nix-store --gc..." >&2
in_store gc measure gc nix-store --gc
echo "storegc plan --out..." >&2
in_store apply measure plan "$bin/storegc" plan --format text --out "$work/plan.json"
echo "storegc apply..." >&2
in_store apply measure apply "$bin/storegc" -v apply "$work/plan.json"
cpu() { awk -v u="$1" -v s="$2" 'BEGIN { printf "%.1f", u + s }'; }
read -r gc_s gc_u gc_sys gc_kib <"$work/gc.time"
read -r plan_s plan_u plan_sys plan_kib <"$work/plan.time"
read -r apply_s apply_u apply_sys apply_kib <"$work/apply.time"
gc_cpu=$(cpu "$gc_u" "$gc_sys")
plan_cpu=$(cpu "$plan_u" "$plan_sys")
apply_cpu=$(cpu "$apply_u" "$apply_sys")
# Tracing colours the log; plain text for grep.
sed 's/\x1b\[[0-9;]*m//g' "$work/apply.err" >"$work/apply.log"

valid_set apply >"$work/apply.valid"
valid_set gc >"$work/gc.valid"
same=yes
cmp -s "$work/apply.valid" "$work/gc.valid" || same=no

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) b = 0.001; printf "%.2f", a / b }'; }
planned=$(grep -m1 -o 'to delete: [0-9]* paths' "$work/plan.out" | grep -o '[0-9]*' || echo '?')
batches=$(grep -m1 -o 'batches=[0-9]*' "$work/apply.log" | grep -o '[0-9]*$' || echo '?')
gc_deleted=$(grep -m1 -o '^[0-9]* store paths deleted' "$work/gc.out" "$work/gc.err" 2>/dev/null |
  head -n1 | grep -o '[0-9]* store' | grep -o '[0-9]*' || echo '?')
r_apply=$(ratio "$apply_s" "$gc_s")
r_apply_cpu=$(ratio "$apply_cpu" "$gc_cpu")
both_s=$(awk -v a="$plan_s" -v b="$apply_s" 'BEGIN { print a + b }')
both_cpu=$(awk -v a="$plan_cpu" -v b="$apply_cpu" 'BEGIN { print a + b }')
r_both=$(ratio "$both_s" "$gc_s")
r_both_cpu=$(ratio "$both_cpu" "$gc_cpu")
verdict=$(awk -v r="$r_apply" -v t="$target_ratio" 'BEGIN { print (r <= t) ? "within" : "OVER" }')

printf '\n%-22s %s (seed %s)\n' "store:" "$paths paths" "$seed"
printf '%-22s %s paths in %s batches; nix-store --gc deleted %s\n' \
  "storegc plan deletes:" "$planned" "$batches" "$gc_deleted"
printf '%-22s %9s %9s %9s\n' "" "wall s" "CPU s" "peak MiB"
row() { printf '%-22s %9.1f %9.1f %9d  %s\n' "$1" "$2" "$3" $(($4 / 1024)) "$5"; }
row "nix-store --gc:" "$gc_s" "$gc_cpu" "$gc_kib" ""
row "storegc plan:" "$plan_s" "$plan_cpu" "$plan_kib" ""
row "storegc apply:" "$apply_s" "$apply_cpu" "$apply_kib" \
  "${r_apply}x wall, ${r_apply_cpu}x CPU of nix-store --gc (target <= ${target_ratio}x: $verdict)"
printf '%-22s %9.1f %9.1f %9s  %s\n' "plan + apply:" "$both_s" "$both_cpu" "" \
  "${r_both}x wall, ${r_both_cpu}x CPU"
if [ "${STOREGC_BENCH_KEEP:-0}" != 1 ]; then
  wipe "$work/apply"
  wipe "$work/gc"
fi
if [ "$same" = yes ]; then
  printf '%-22s identical (%d paths)\n' "valid paths after:" "$(wc -l <"$work/apply.valid")"
else
  printf '%-22s DIFFERENT: %d after apply, %d after nix-store --gc (diff %s/{apply,gc}.valid)\n' \
    "valid paths after:" "$(wc -l <"$work/apply.valid")" "$(wc -l <"$work/gc.valid")" "$work"
  exit 1
fi
