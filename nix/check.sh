#!/usr/bin/env bash
# Checks the deployment files without nixpkgs or a network (nothing here
# builds them; CI machines cannot fetch nixpkgs):
#
#   1. every .nix file under nix/ parses: `nix-instantiate --parse` (it
#      also rejects undefined variables);
#   2. nix/tests/eval.nix evaluates the module, the nix-cache02 example
#      and the package against a stand-in for nixpkgs' lib (see there);
#   3. the systemd units pass `systemd-analyze verify`, run on copies whose
#      /usr/local paths point to this checkout's scripts and binary, with
#      the man page storegc generates on MANPATH; any message fails, since
#      verify exits 0 on unknown keys and bad values;
#   4. the shell scripts pass shellcheck, when it is installed;
#   5. when a nixpkgs tree is there ($STOREGC_NIXPKGS, else <nixpkgs> on
#      NIX_PATH), the nix-cache02 example evaluated by the real
#      <nixpkgs/nixos> module system (option types and all), and
#      `systemd-analyze verify` on the storegc units it renders (the store
#      paths their Exec lines name stubbed by executables in the temporary
#      store). Without one this is skipped with a line saying so.
#
# Nix runs against a store in a temporary folder, so /nix is never
# touched. The storegc binary: $STOREGC_BIN, else target/debug/storegc
# (built when missing). $STOREGC_EVAL_JSON, when set, receives the JSON
# that eval.nix prints (option names, the example's policy).
#
# Exit status: 0 all passed; 1 a check failed; 3 all checks that could run
# passed, but nix-instantiate or systemd-analyze is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failed=0
missing=()
fail() {
  echo "nix/check.sh: FAIL: $*" >&2
  failed=1
}

# Evaluates nix/example-nix-cache02.nix with <nixpkgs/nixos> from $1, in
# the temporary store set up below (so store paths lie under $tmp), writes
# the storegc units' text into $tmp/nixos-units, gives every store path an
# Exec line names a stub executable, and verifies the units. The runner
# instance's unit is NixOS's own (it needs the runner's module and
# settings), so closureListRunners is emptied here; the stand-in
# evaluation (eval.nix) checks that part.
real_nixos() {
  local repo=$PWD units=$tmp/nixos-units path
  local names=()
  [ -n "${NIX_STORE_DIR:-}" ] || return 1
  mkdir -p "$units"
  printf '%s\n' \
    '{ lib, ... }:' \
    '{' \
    "  imports = [ $repo/nix/example-nix-cache02.nix ];" \
    '  boot.isContainer = true;' \
    '  system.stateVersion = lib.trivial.release;' \
    '  services.storegc.closureListRunners = lib.mkForce [ ];' \
    '}' > "$tmp/nixos.nix"
  printf '%s\n' \
    '{ nixos }: let' \
    '  sys = import (nixos + "/nixos") { configuration = CONFIG; };' \
    '  lib = sys.pkgs.lib;' \
    '  units = lib.filterAttrs (n: _: lib.hasPrefix "storegc" n) sys.config.systemd.units;' \
    'in lib.mapAttrs (_: u: u.text) units' | sed "s|CONFIG|$tmp/nixos.nix|" > "$tmp/units.nix"
  nix-instantiate --eval --strict --json --arg nixos "$1" "$tmp/units.nix" > "$tmp/nixos-units.json" || return 1
  python3 -c '
import json, os, sys
units = json.load(open(sys.argv[1]))
assert units, "no storegc unit rendered"
for name, text in units.items():
    with open(os.path.join(sys.argv[2], name), "w") as f:
        f.write(text)
' "$tmp/nixos-units.json" "$units" || return 1
  while IFS= read -r path; do
    case $path in
      "$NIX_STORE_DIR"/*)
        mkdir -p "$(dirname "$path")"
        printf '#!/bin/sh\n' > "$path"
        chmod +x "$path"
        ;;
    esac
  done < <(grep -ho '^Exec[A-Za-z]*=[^ ]*' "$units"/* | sed 's/^Exec[A-Za-z]*=[-@:+!]*//' | sort -u)
  for path in "$units"/*; do
    names+=("$(basename "$path")")
  done
  if (cd "$units" && MANPATH=$tmp/man SYSTEMD_LOG_COLOR=0 \
    systemd-analyze verify --man=no "${names[@]}") > "$tmp/nixos-verify.log" 2>&1 \
    && [ ! -s "$tmp/nixos-verify.log" ]; then
    echo "nix/check.sh: real <nixpkgs/nixos>: systemd-analyze verify: ${names[*]}"
  else
    cat "$tmp/nixos-verify.log" >&2
    return 1
  fi
}

# 1 and 2: Nix, in a throw-away store.
if command -v nix-instantiate >/dev/null 2>&1; then
  export NIX_STORE_DIR=$tmp/nix/store NIX_STATE_DIR=$tmp/nix/var/nix
  export NIX_LOG_DIR=$tmp/nix/var/log/nix NIX_CONF_DIR=$tmp/etc NIX_REMOTE=
  export XDG_CONFIG_HOME=$tmp/config XDG_CACHE_HOME=$tmp/cache
  mkdir -p "$NIX_CONF_DIR" && : > "$NIX_CONF_DIR/nix.conf"
  count=0
  while IFS= read -r -d '' file; do
    count=$((count + 1))
    nix-instantiate --parse "$file" > /dev/null || fail "$file does not parse"
  done < <(find nix -name '*.nix' -print0 | sort -z)
  [ "$count" -gt 0 ] || fail "no .nix file under nix/"
  echo "nix/check.sh: parsed $count .nix files"
  if nix-instantiate --eval --strict --json nix/tests/eval.nix > "$tmp/eval.json"; then
    echo "nix/check.sh: nix/tests/eval.nix: all checks hold"
    [ -z "${STOREGC_EVAL_JSON:-}" ] || cp "$tmp/eval.json" "$STOREGC_EVAL_JSON"
  else
    fail "nix/tests/eval.nix"
  fi
else
  missing+=(nix-instantiate)
fi

# 3: systemd units.
if command -v systemd-analyze >/dev/null 2>&1; then
  bin=${STOREGC_BIN:-target/debug/storegc}
  if [ ! -x "$bin" ]; then
    cargo build --quiet --bin storegc
  fi
  mkdir -p "$tmp/root/bin" "$tmp/root/libexec" "$tmp/man/man1" "$tmp/units"
  ln -s "$(realpath "$bin")" "$tmp/root/bin/storegc"
  cp nix/storegc-nightly.sh "$tmp/root/libexec/storegc-nightly"
  cp nix/storegc-preview.sh "$tmp/root/libexec/storegc-preview"
  "$bin" man > "$tmp/man/man1/storegc.1"
  units=()
  for unit in nix/systemd/*.service nix/systemd/*.timer nix/systemd/*.path; do
    sed -e "s|/usr/local/bin/storegc|$tmp/root/bin/storegc|g" \
      -e "s|/usr/local/libexec/storegc/|$tmp/root/libexec/|g" \
      "$unit" > "$tmp/units/$(basename "$unit")"
    units+=("$(basename "$unit")")
  done
  # Documentation=man:storegc(1) is checked with man when it is there.
  man_flag=()
  command -v man >/dev/null 2>&1 || man_flag=(--man=no)
  if (cd "$tmp/units" && MANPATH=$tmp/man SYSTEMD_LOG_COLOR=0 \
    systemd-analyze verify "${man_flag[@]}" "${units[@]}") > "$tmp/verify.log" 2>&1 \
    && [ ! -s "$tmp/verify.log" ]; then
    echo "nix/check.sh: systemd-analyze verify: ${units[*]}"
  else
    sed "s|$tmp/units/|nix/systemd/|g" "$tmp/verify.log" >&2
    fail "systemd-analyze verify"
  fi
else
  missing+=(systemd-analyze)
fi

# 4: shell scripts.
if command -v shellcheck >/dev/null 2>&1; then
  if shellcheck nix/*.sh; then
    echo "nix/check.sh: shellcheck nix/*.sh"
  else
    fail "shellcheck"
  fi
else
  echo "nix/check.sh: note: shellcheck not installed; scripts not linted" >&2
fi

# 5: the real NixOS module system.
nixpkgs=${STOREGC_NIXPKGS:-}
if [ -z "$nixpkgs" ] && command -v nix-instantiate >/dev/null 2>&1; then
  nixpkgs=$(nix-instantiate --find-file nixpkgs 2>/dev/null) || nixpkgs=
fi
if [ -z "$nixpkgs" ]; then
  echo "nix/check.sh: skipped: the example under the real <nixpkgs/nixos> (no nixpkgs tree: set STOREGC_NIXPKGS or put nixpkgs on NIX_PATH)"
elif ! command -v nix-instantiate >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "nix/check.sh: skipped: the example under the real <nixpkgs/nixos> (needs nix-instantiate and systemd-analyze)"
elif [ ! -e "$nixpkgs/nixos" ]; then
  fail "no nixos/ in the nixpkgs tree $nixpkgs"
else
  nixpkgs=$(realpath "$nixpkgs")
  real_nixos "$nixpkgs" || fail "the example under the real <nixpkgs/nixos> ($nixpkgs)"
fi

if [ "$failed" -ne 0 ]; then
  exit 1
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "nix/check.sh: not checked, missing: ${missing[*]}" >&2
  exit 3
fi
echo "nix/check.sh: all passed"
