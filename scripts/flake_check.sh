#!/usr/bin/env bash
# flake_check.sh N [pytest args]: run the chosen tests N times (each a fresh `bash scripts/test.sh`, so each gets its
# own ROS domain) and print every test that failed or errored, with how many of the N runs it failed in.
# Exit 0 iff no run failed. TURBOPI_ROS_DISTRO picks the distro as for test.sh.
#   bash scripts/flake_check.sh 3 test/test_node_rates.py test/test_node_bad_input.py
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:?usage: flake_check.sh N [pytest args]}
shift
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "flake_check: N must be a positive integer, got '$runs'" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$SECONDS
for i in $(seq 1 "$runs"); do
  echo "== flake_check: run $i of $runs (ROS 2 ${TURBOPI_ROS_DISTRO:-kilted}): pytest $* =="
  t0=$SECONDS
  bash scripts/test.sh -q -p no:cacheprovider --junitxml="$out/run$i.xml" "$@"
  echo "== flake_check: run $i exit $? in $((SECONDS - t0)) s =="
done
"$(bash -c 'source scripts/distro.sh >/dev/null; echo $VENV')/bin/python" - "$out" "$runs" "$((SECONDS - start))" <<'PY'
import collections, pathlib, sys
import xml.etree.ElementTree as ET

out, runs, seconds = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
failed, counts, missing = collections.Counter(), collections.Counter(), []
for i in range(1, runs + 1):
    path = out / f"run{i}.xml"
    if not path.exists():
        missing.append(i)  # pytest died before writing its report: a failed run
        continue
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        counts["tests"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed[name] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
print(f"flake_check: {runs} runs, {counts['tests']} test results ({counts['skipped']} skipped) in {seconds} s")
for i in missing:
    print(f"flake_check: run {i} wrote no report (pytest did not finish)")
for name, n in sorted(failed.items()):
    print(f"  failed {n}/{runs}: {name}")
print(f"flake_check: {len(failed)} test(s) failed at least once" if failed or missing else
      "flake_check: 0 failures")
sys.exit(1 if failed or missing else 0)
PY
