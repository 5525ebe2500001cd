#!/usr/bin/env bash
# What the next nightly run would delete, planned as root when the CI job
# replaces a closure list (a systemd path unit starts this), for that job
# to post as its summary: the CI runner's own user cannot plan, since it
# can read neither every GC root nor the store database's shared memory.
#
#   storegc-preview CLOSURE_LIST... [-- PLAN_ARGS...]
#
# Writes $STOREGC_REPORT_DIR/preview.md (atomically): an HTML comment with
# the sha256 of each closure list as planned with, then the markdown plan,
# or storegc's error. Never deletes anything. If a list changes while
# planning, plans again (at most three times), so the hashes in the header
# are the ones the plan saw.
#   STOREGC_POLICY, STOREGC_REPORT_DIR, STOREGC: as for storegc-nightly.
set -euo pipefail

storegc=${STOREGC:-storegc}
policy=${STOREGC_POLICY:?STOREGC_POLICY is not set}
reports=${STOREGC_REPORT_DIR:?STOREGC_REPORT_DIR is not set}

lists=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  lists+=("$1")
  shift
done
[ $# -eq 0 ] || shift

hashes() {
  local list
  for list in "${lists[@]}"; do
    if [ -e "$list" ]; then
      printf '%s  %s\n' "$(sha256sum < "$list" | cut -d' ' -f1)" "$list"
    else
      printf 'missing  %s\n' "$list"
    fi
  done
}

out="$reports/preview.md.partial"
err="$reports/preview.err"
for _ in 1 2 3; do
  before=$(hashes)
  status=0
  "$storegc" plan --policy "$policy" --format markdown "$@" > "$out.body" 2> "$err" || status=$?
  after=$(hashes)
  [ "$before" != "$after" ] || break
done
{
  printf '<!-- storegc preview, closure lists planned with:\n%s\n-->\n\n' "$after"
  if [ "$status" -eq 0 ]; then
    cat -- "$out.body"
  else
    printf 'storegc plan failed (exit status %s):\n\n```text\n' "$status"
    cat -- "$err"
    printf '```\n'
  fi
} > "$out"
rm -f -- "$out.body" "$err"
mv -f -- "$out" "$reports/preview.md"
exit "$status"
