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

# STOREGC_NIX picks the Nix the integration tests compare against: 2.8
# (Debian 12's nix-bin, on PATH), 2.26 (Debian 13's nix-bin 2.26.3, which
# tests/install-nix-2.26.sh unpacks into a cache folder), or both (the
# default, as CI runs): every test with 2.8, then again with 2.26 the test
# binaries that run Nix.
case ${STOREGC_NIX:=both} in
  2.8 | 2.26 | both) ;;
  *) echo "tests/run.sh: STOREGC_NIX must be 2.8, 2.26 or both, not '$STOREGC_NIX'" >&2; exit 2 ;;
esac
nix226=""
if [ "$STOREGC_NIX" != 2.8 ]; then
  nix226=$(tests/install-nix-2.26.sh)
fi

# The integration tests fail, instead of skipping, when Nix is missing.
export STOREGC_REQUIRE_NIX=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
if [ "$STOREGC_NIX" != 2.26 ]; then
  echo "tests/run.sh: every test, against $(nix-store --version 2>/dev/null || echo 'nix-store on PATH')" >&2
  (unset STOREGC_NIX_BIN; cargo test --no-fail-fast --all-targets "$@") 2>&1 | tee -a "$log" || status=1
fi
if [ -n "$nix226" ]; then
  if [ "$STOREGC_NIX" = both ]; then
    # Only the test files that run Nix.
    targets=()
    while read -r f; do
      targets+=(--test "$(basename "$f" .rs)")
    done < <(grep -l 'nix_available(\|"nix-store"' tests/*.rs)
  else
    targets=(--all-targets)
  fi
  echo "tests/run.sh: ${targets[*]} against Nix 2.26 in $nix226" >&2
  PATH="$nix226:$PATH" STOREGC_NIX_BIN="$nix226" cargo test --no-fail-fast "${targets[@]}" "$@" 2>&1 |
    tee -a "$log" || status=1
fi
# One closing line for the whole run: the sums over every test binary of
# every run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

# No helper a test started may outlive the suite: any process whose
# command line or working folder lies in the tests' temp folders
# (storegc-nix-* under the temp dir) fails the run, named.
tmp="${TMPDIR:-/tmp}"
tmp="${tmp%/}"
leaked=0
for p in /proc/[0-9]*; do
  pid="${p#/proc/}"
  [ "$pid" = "$$" ] && continue
  cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  cwd=$(readlink "$p/cwd" 2>/dev/null) || cwd=""
  case "$cmd $cwd" in
    *"$tmp"/storegc-nix-*)
      echo "tests/run.sh: process $pid left running by the tests: $cmd (cwd $cwd)" >&2
      leaked=1 ;;
  esac
done
[ "$leaked" -eq 0 ] || exit 1
exit "$status"
