#!/usr/bin/env bash
# The nightly run of storegc, shared by the NixOS module (nix/module.nix)
# and the plain systemd units (nix/systemd/storegc.service, and
# storegc-low-disk.service, which runs it every few minutes with
# `--only-if-available-below`):
#
#   1. storegc plan: writes plan-<ts>.json (for apply) and report-<ts>.md
#      (the plan as markdown) into the report directory;
#   2. storegc apply: re-checks that plan against the store as it is now
#      and deletes; its summary is appended to the report;
#   3. keeps the newest N plans and reports, and points latest.md at the
#      newest report.
#
# When plan finds nothing to do (`--only-if-available-below` and room
# enough), it writes no plan: nothing is applied and no report written.
#
# Configured by the environment; arguments go to `storegc plan`:
#   STOREGC_POLICY        policy file (required)
#   STOREGC_REPORT_DIR    where plans and reports go (required, must exist)
#   STOREGC_KEEP_REPORTS  how many plans and reports to keep (default 30)
#   STOREGC_MAX_PLAN_AGE  apply refuses an older plan (default 1h)
#   STOREGC_RUN_NAME      "nightly" (default) or another name, e.g.
#                         "low-disk": the files of any other run are named
#                         NAME-plan-*, NAME-report-*, NAME-latest.md, so
#                         each run keeps its own newest N
#   STOREGC_METRICS_DIR   when set, plan and apply write Prometheus metrics
#                         there: storegc-RUN-plan.prom, storegc-RUN-apply.prom
#                         (RUN: the run name), for node_exporter's textfile
#                         collector
#   STOREGC_DELETE_WITH   apply --delete-with (default: storegc's default)
#   STOREGC               the binary (default: storegc on PATH)
#
# Exit status: storegc's (0 done, 1 some deletions failed, 2 bad input);
# the reports are pruned in every case.
set -euo pipefail

storegc=${STOREGC:-storegc}
policy=${STOREGC_POLICY:?STOREGC_POLICY is not set}
reports=${STOREGC_REPORT_DIR:?STOREGC_REPORT_DIR is not set}
keep=${STOREGC_KEEP_REPORTS:-30}
max_age=${STOREGC_MAX_PLAN_AGE:-1h}
run=${STOREGC_RUN_NAME:-nightly}
metrics=${STOREGC_METRICS_DIR:-}
delete_with=()
[ -z "${STOREGC_DELETE_WITH:-}" ] || delete_with=(--delete-with "$STOREGC_DELETE_WITH")

case $run in
  nightly) prefix= ;;
  '' | *[!a-z0-9-]*) echo "storegc-nightly: STOREGC_RUN_NAME must be lower-case letters, digits and '-', not '$run'" >&2; exit 2 ;;
  *) prefix=$run- ;;
esac
case $keep in
  '' | *[!0-9]* | 0) echo "storegc-nightly: STOREGC_KEEP_REPORTS must be a positive number, not '$keep'" >&2; exit 2 ;;
esac

plan_metrics=()
apply_metrics=()
if [ -n "$metrics" ]; then
  plan_metrics=(--metrics "$metrics/storegc-$run-plan.prom")
  apply_metrics=(--metrics "$metrics/storegc-$run-apply.prom")
fi

# UTC, sortable: the names order the reports, and pruning relies on it.
ts=$(date -u +%Y%m%dT%H%M%SZ)
plan="$reports/${prefix}plan-$ts.json"
report="$reports/${prefix}report-$ts.md"
partial="$report.partial"

status=0
"$storegc" plan --policy "$policy" --out "$plan" --format markdown "${plan_metrics[@]}" "$@" > "$partial" || status=$?
if [ "$status" -eq 0 ] && [ ! -e "$plan" ]; then
  # Nothing to do (storegc said why on stderr): no apply, no report.
  rm -f -- "$partial"
elif [ "$status" -eq 0 ]; then
  {
    printf '\n## Apply\n\n'
    printf 'storegc apply %s --max-plan-age %s\n\n' "$(basename "$plan")" "$max_age"
    echo '```text'
  } >> "$partial"
  # The apply summary goes to the journal (stdout) and into the report.
  "$storegc" apply "$plan" --max-plan-age "$max_age" "${delete_with[@]}" "${apply_metrics[@]}" | tee -a "$partial" || status=$?
  {
    echo '```'
    [ "$status" -eq 0 ] || printf '\napply exited with status %s; see the journal.\n' "$status"
  } >> "$partial"
fi
if [ -s "$partial" ]; then
  mv -f -- "$partial" "$report"
  ln -sfn -- "$(basename "$report")" "$reports/${prefix}latest.md"
else
  rm -f -- "$partial"
fi

# Keep the newest $keep of each kind. Globs sort by name, so oldest first.
shopt -s nullglob
for kind in plan report; do
  files=("$reports/$prefix$kind"-*)
  excess=$((${#files[@]} - keep))
  if [ "$excess" -gt 0 ]; then
    rm -f -- "${files[@]:0:excess}"
  fi
done

exit "$status"
