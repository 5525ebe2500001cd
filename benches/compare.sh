#!/usr/bin/env bash
# End-to-end comparison on synthetic stores: `storegc plan` against
# `nix-store --gc --print-dead` (Nix 2.8, the oracle) and against a bare
# `sqlite3` scan of ValidPaths + Refs on the same database, in one run.
# Prints wall times, peak RSS and ratios. Stores are cached under
# target/bench-stores so later runs skip generation.
#
#   benches/compare.sh [PATHS...]      default: 200000
#   SKIP_NIX=1 benches/compare.sh 1000000   (no Nix run, no store files)
#
# Needs nix-store and sqlite3 (tests/run.sh installs them via apt).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-200000}")
for tool in nix-store sqlite3 /usr/bin/time; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "benches/compare.sh: installing nix-bin, sqlite3 and time via apt" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nix-bin sqlite3 time >/dev/null
    break
  }
done
cargo build --release --quiet --bin storegc --bin storegc-synth --bin storegc-floor
bin=target/release
cache=target/bench-stores
mkdir -p "$cache"

# Wall seconds and peak RSS (KiB) of a command, as "SECONDS KIB".
measure() {
  local f
  f=$(mktemp)
  /usr/bin/time -o "$f" -f "%e %M" "$@" >/dev/null 2>&1
  tail -n 1 "$f"
  rm -f "$f"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) b = 0.001; printf "%.1f", a / b }'; }

printf '%-10s %-28s %10s %10s\n' paths what seconds peak_MiB
for n in "${sizes[@]}"; do
  # Without Nix in the comparison, the store needs no files (only the
  # database and the roots), which keeps a million-path store cheap.
  files=""
  suffix=""
  if [ "${SKIP_NIX:-}" = 1 ]; then files="--no-files"; suffix="-nofiles"; fi
  root="$cache/store-$n$suffix"
  if [ ! -f "$root/.complete" ]; then
    rm -rf "$root"
    "$bin/storegc-synth" --paths "$n" --seed 1 --generations 5 --modelled-nar-sizes $files "$root" >/dev/null
    touch "$root/.complete"
  fi
  root=$(cd "$root" && pwd)
  export NIX_STORE_DIR=$root/nix/store NIX_STATE_DIR=$root/nix/var/nix \
    NIX_LOG_DIR=$root/nix/var/log/nix NIX_CONF_DIR=$root/etc NIX_REMOTE=
  db=$NIX_STATE_DIR/db/db.sqlite
  # Warm the page cache for everyone alike.
  cat "$db" >/dev/null

  read -r t_sql m_sql < <(measure sqlite3 "$db" "SELECT id, path, registrationTime, deriver, narSize, ultimate, sigs FROM ValidPaths; SELECT referrer, reference FROM Refs;")
  read -r t_floor m_floor < <(measure "$bin/storegc-floor" "$db")
  read -r t_gc m_gc < <(measure "$bin/storegc" plan --format paths)
  read -r t_gc1 m_gc1 < <(measure "$bin/storegc" --threads 1 plan --format paths)
  # The same with a policy using every part: closure list, select,
  # generations, auto roots, budget.
  readlink -f "$NIX_STATE_DIR/profiles/system" >"$root/closure-list.txt"
  cat >"$root/policy.toml" <<TOML
[protect]
closure-lists = ["$root/closure-list.txt"]
names = ["*-source"]
[select]
origin = "local"
older-than = "7d"
[[generations]]
profile = "profiles/system"
keep-newest = 2
[auto-roots]
older-than = "3d"
match = ["*/result", "*/result-*"]
[budget]
max-freed = "50GiB"
order = "oldest-first"
TOML
  read -r t_pol m_pol < <(measure "$bin/storegc" plan --policy "$root/policy.toml" --format paths)
  # Exactly what the timer and the NixOS module run: the plan file.
  read -r t_out m_out < <(measure "$bin/storegc" plan --policy "$root/policy.toml" --out "$cache/plan-$n.json")
  read -r t_json m_json < <(measure "$bin/storegc" plan --policy "$root/policy.toml" --format json)
  t_nix=skipped m_nix=0
  if [ "${SKIP_NIX:-}" != 1 ]; then
    read -r t_nix m_nix < <(measure nix-store --gc --print-dead)
  fi
  # The answers must agree, or the timing means nothing.
  if [ "${SKIP_NIX:-}" != 1 ]; then
    "$bin/storegc" plan --format paths | sort >"$cache/storegc-$n.txt"
    nix-store --gc --print-dead 2>/dev/null | sort >"$cache/nix-$n.txt"
    if ! cmp -s "$cache/storegc-$n.txt" "$cache/nix-$n.txt"; then
      echo "MISMATCH: storegc and nix-store --print-dead disagree on the $n-path store" >&2
      exit 1
    fi
  fi
  row() { printf '%-10s %-28s %10s %10s\n' "$n" "$1" "$2" "$(($3 / 1024))"; }
  row "sqlite3 scan" "$t_sql" "$m_sql"
  row "rusqlite floor" "$t_floor" "$m_floor"
  row "nix-store --print-dead" "$t_nix" "$m_nix"
  row "storegc plan" "$t_gc" "$m_gc"
  row "storegc plan --threads 1" "$t_gc1" "$m_gc1"
  row "storegc plan --policy" "$t_pol" "$m_pol"
  row "plan --policy --format json" "$t_json" "$m_json"
  row "plan --policy --out (timer)" "$t_out" "$m_out"
  vs_nix="Nix not run"
  [ "$t_nix" = skipped ] || vs_nix="storegc plan is $(ratio "$t_nix" "$t_gc")x faster than Nix"
  echo "ratio $n: $vs_nix;" \
    "$(ratio "$t_gc" "$t_sql")x the sqlite3 scan time; $(ratio "$t_gc" "$t_floor")x the rusqlite floor;" \
    "$(( m_gc * 1024 / n )) bytes peak RSS a path; $(ratio "$t_gc1" "$t_gc")x speed-up from threads;" \
    "the policy plan takes $(ratio "$t_pol" "$t_gc")x the plain one;" \
    "the timer's plan --out takes $(ratio "$t_out" "$t_json")x the JSON to stdout"
done
