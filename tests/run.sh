#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: installs Debian's
# nix-bin (the oracle the integration tests compare against) when
# nix-store is missing, then runs every test with Nix required.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nix-store >/dev/null 2>&1; then
  echo "tests/run.sh: nix-store not found; installing Debian's nix-bin" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nix-bin gcc libc6-dev sqlite3 >/dev/null
fi
for tool in gcc sqlite3; do
  command -v "$tool" >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc libc6-dev sqlite3 >/dev/null
  }
done

# tests/deploy_files.rs runs nix/check.sh: systemd-analyze verifies the
# units under nix/systemd, shellcheck lints the scripts they run.
for pkg in systemd-analyze:systemd shellcheck:shellcheck; do
  command -v "${pkg%%:*}" >/dev/null 2>&1 || {
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkg#*:}" >/dev/null
  }
done

# The integration tests fail, instead of skipping, when Nix is missing.
export STOREGC_REQUIRE_NIX=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets "$@" 2>&1 | tee "$log"
# One closing line for the whole run: the sums over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
