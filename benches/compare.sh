#!/usr/bin/env bash
# End-to-end comparison on synthetic stores: `storegc plan` against
# `nix-store --gc --print-dead` (Nix 2.8, the oracle) and against a bare
# `sqlite3` scan of ValidPaths + Refs on the same database, in one run.
# Prints wall times, peak RSS and ratios. Stores are cached under
# target/bench-stores so later runs skip generation.
#
#   benches/compare.sh [PATHS...]      default: 200000
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
cargo build --release --quiet --bin storegc --bin storegc-synth
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
  root="$cache/store-$n"
  if [ ! -f "$root/.complete" ]; then
    rm -rf "$root"
    "$bin/storegc-synth" --paths "$n" --seed 1 --generations 5 "$root" >/dev/null
    touch "$root/.complete"
  fi
  root=$(cd "$root" && pwd)
  export NIX_STORE_DIR=$root/nix/store NIX_STATE_DIR=$root/nix/var/nix \
    NIX_LOG_DIR=$root/nix/var/log/nix NIX_CONF_DIR=$root/etc NIX_REMOTE=
  db=$NIX_STATE_DIR/db/db.sqlite
  # Warm the page cache for everyone alike.
  cat "$db" >/dev/null

  read -r t_sql m_sql < <(measure sqlite3 "$db" "SELECT id, path, registrationTime, deriver, narSize, ultimate, sigs FROM ValidPaths; SELECT referrer, reference FROM Refs;")
  read -r t_gc m_gc < <(measure "$bin/storegc" plan --format paths)
  read -r t_nix m_nix < <(measure nix-store --gc --print-dead)
  # The answers must agree, or the timing means nothing.
  "$bin/storegc" plan --format paths | sort >"$cache/storegc-$n.txt"
  nix-store --gc --print-dead 2>/dev/null | sort >"$cache/nix-$n.txt"
  if ! cmp -s "$cache/storegc-$n.txt" "$cache/nix-$n.txt"; then
    echo "MISMATCH: storegc and nix-store --print-dead disagree on the $n-path store" >&2
    exit 1
  fi
  printf '%-10s %-28s %10s %10s\n' "$n" "sqlite3 scan" "$t_sql" "$((m_sql / 1024))"
  printf '%-10s %-28s %10s %10s\n' "$n" "nix-store --print-dead" "$t_nix" "$((m_nix / 1024))"
  printf '%-10s %-28s %10s %10s\n' "$n" "storegc plan" "$t_gc" "$((m_gc / 1024))"
  echo "ratio $n: storegc is $(ratio "$t_nix" "$t_gc")x faster than Nix; $(ratio "$t_gc" "$t_sql")x the sqlite3 scan time"
done
