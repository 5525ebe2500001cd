#!/usr/bin/env bash
# tests/install-nix-2.26.sh [PREFIX]
#
# The second oracle: Debian 13 (trixie)'s Nix 2.26.3, made runnable on this
# Debian 12 machine without installing anything from trixie into the system.
# Prints the bin folder (holding nix-store, nix-build, ...) on stdout.
#
# PREFIX defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/storegc/nix-2.26.3; a
# prefix that is already there and answers `nix-store --version` with 2.26.3
# (in a throw-away store) is reused as it is.
#
# How: a private apt configuration (its own sources list naming trixie on
# the host's own Debian mirror, its own lists, cache and an empty dpkg
# status, none of the system's apt.conf.d) downloads nix-bin and the library
# packages it depends on (followed through Depends, library packages only);
# `dpkg -x` unpacks them into a staging folder; the nix binary gets the
# prefix's trixie ld-linux as interpreter and the prefix's lib folder as
# DT_RPATH (patchelf, from the host's apt when missing); nix-store etc. are
# symlinks to it (nix dispatches on argv[0]). The staging folder replaces
# PREFIX only once it has passed the checks.
#
# STOREGC_DEBIAN_MIRROR overrides the mirror (default: the host's bookworm
# mirror from `apt-cache policy`, else http://deb.debian.org/debian).
set -euo pipefail

VERSION=2.26.3
say() { echo "install-nix-2.26: $*" >&2; }
die() { say "error: $*"; exit 1; }

PREFIX=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/storegc/nix-$VERSION}
mkdir -p "$(dirname "$PREFIX")"
PREFIX=$(realpath -m -- "$PREFIX")
case $PREFIX in / | *[[:space:]:]*) die "unusable prefix '$PREFIX'" ;; esac

# `nix-store --version` of bin folder $1, run in a throw-away store (even
# --version opens, and creates, the store it is pointed at).
version_of() {
  local bin=$1 t out
  t=$(mktemp -d "${TMPDIR:-/tmp}/nix226-check.XXXXXX")
  mkdir -p "$t/etc" "$t/home"
  printf 'sandbox = false\nbuild-users-group =\nsubstituters =\n' >"$t/etc/nix.conf"
  out=$(env -u NIX_CONFIG -u NIX_PATH -u NIX_USER_CONF_FILES HOME="$t/home" NIX_REMOTE= \
    XDG_CONFIG_HOME="$t/home" XDG_CONFIG_DIRS="$t/etc" \
    NIX_STORE_DIR="$t/nix/store" NIX_STATE_DIR="$t/nix/var/nix" \
    NIX_LOG_DIR="$t/nix/var/log/nix" NIX_CONF_DIR="$t/etc" \
    "$bin/nix-store" --version 2>&1) || out="failed: $out"
  rm -rf "$t"
  echo "$out"
}

if [ -f "$PREFIX/.storegc-nix" ] && [ "$(version_of "$PREFIX/bin")" = "nix-store (Nix) $VERSION" ]; then
  echo "$PREFIX/bin"
  exit 0
fi
if [ -e "$PREFIX" ] && [ ! -f "$PREFIX/.storegc-nix" ] && [ -n "$(ls -A "$PREFIX")" ]; then
  die "$PREFIX is not empty and was not made by this script"
fi
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 is supported"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v patchelf >/dev/null 2>&1; then
  say "installing patchelf from the host's apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq patchelf >/dev/null
fi

# shellcheck source=/dev/null
host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mirror=${STOREGC_DEBIAN_MIRROR:-$(apt-cache policy 2>/dev/null |
  awk -v s="$host_suite/main" '$3 == s && $4 == "amd64" { print $2; exit }')}
mirror=${mirror:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
say "trixie from $mirror"

work=$(mktemp -d "${TMPDIR:-/tmp}/nix226-install.XXXXXX")
stage=""
trap 'rm -rf "$work"; [ -z "$stage" ] || rm -rf "$stage"' EXIT
chmod 755 "$work"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts" "$work/debs"
: >"$work/status"
echo "deb [signed-by=$keyring] $mirror trixie main" >"$work/sources.list"
cat >"$work/apt.conf" <<EOF
Dir::Etc::Main "/dev/null";
Dir::Etc::Parts "$work/parts";
Dir::Etc::SourceList "$work/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "/dev/null";
Dir::State "$work";
Dir::State::Lists "$work/lists";
Dir::State::status "$work/status";
Dir::Cache "$work/cache";
Dir::Log "$work";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
EOF
# The host's proxy settings still apply.
apt-config dump 2>/dev/null | grep -iE '^Acquire::(https?|ftp)::proxy ' >>"$work/apt.conf" || true
export APT_CONFIG=$work/apt.conf
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
  chown _apt "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
fi
apt-get -q update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; die "apt-get update failed"; }

candidate=$(apt-cache policy nix-bin | awk '/Candidate:/ { print $2 }')
case $candidate in "$VERSION"+*) ;; *) die "trixie's nix-bin is '$candidate', not $VERSION" ;; esac

# nix-bin plus the library packages it needs, breadth first through Depends
# and Pre-Depends (every alternative; tools such as perl or curl are not
# needed by the binary and are left out).
declare -A seen=([nix-bin]=1)
queue=(nix-bin)
while [ ${#queue[@]} -gt 0 ]; do
  pkg=${queue[0]}
  queue=("${queue[@]:1}")
  for dep in $(apt-cache depends --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances "$pkg" |
    awk '$1 ~ /^\|?(Pre)?Depends:$/ && $2 !~ /^</ { print $2 }'); do
    case $dep in lib*[0-9]* | zlib1g) ;; *) continue ;; esac
    [ -z "${seen[$dep]:-}" ] || continue
    seen[$dep]=1
    queue+=("$dep")
  done
done
say "downloading ${#seen[@]} packages"
(cd "$work/debs" && apt-get -q download "${!seen[@]}" >"$work/download.log" 2>&1) ||
  { cat "$work/download.log" >&2; die "apt-get download failed"; }

stage=$(mktemp -d "$PREFIX.stage.XXXXXX")
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$stage"
  # shellcheck disable=SC2016 # dpkg-deb's own ${field} syntax
  dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$stage/packages.txt"
done
lib=usr/lib/x86_64-linux-gnu
if [ ! -x "$stage/$lib/ld-linux-x86-64.so.2" ] || [ ! -x "$stage/usr/bin/nix" ]; then
  die "nix or trixie's ld-linux missing after unpacking"
fi

# Every shared library must resolve inside the prefix, none from the host.
"$stage/$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$stage/$lib" \
  --list "$stage/usr/bin/nix" >"$work/libs.txt" 2>&1 ||
  { cat "$work/libs.txt" >&2; die "nix's libraries do not resolve"; }
if grep -v linux-vdso "$work/libs.txt" | grep -vqF "=> $stage/"; then
  grep -v linux-vdso "$work/libs.txt" | grep -vF "=> $stage/" >&2
  die "libraries resolved outside the prefix (above)"
fi

mkdir "$stage/bin"
cp "$stage/usr/bin/nix" "$stage/bin/nix"
patchelf --set-interpreter "$PREFIX/$lib/ld-linux-x86-64.so.2" \
  --force-rpath --set-rpath "$PREFIX/$lib" "$stage/bin/nix"
for name in nix-build nix-channel nix-collect-garbage nix-copy-closure nix-daemon \
  nix-env nix-hash nix-instantiate nix-prefetch-url nix-shell nix-store; do
  ln -s nix "$stage/bin/$name"
done
echo "$VERSION" >"$stage/.storegc-nix"

old=""
if [ -e "$PREFIX" ]; then
  old=$(mktemp -u "$PREFIX.old.XXXXXX")
  mv "$PREFIX" "$old"
fi
mv "$stage" "$PREFIX"
stage=""
got=$(version_of "$PREFIX/bin")
if [ "$got" != "nix-store (Nix) $VERSION" ]; then
  rm -rf "$PREFIX"
  [ -z "$old" ] || mv "$old" "$PREFIX"
  die "installed nix-store says: $got"
fi
[ -z "$old" ] || rm -rf "$old"
say "installed $PREFIX ($(du -sh "$PREFIX" | cut -f1))"
echo "$PREFIX/bin"
