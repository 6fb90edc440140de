#!/usr/bin/env bash
# Run pytest in the venv; "no tests collected" (exit 5) is a failure, not a pass.
set -uo pipefail
VENV="$1"; shift
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [[ $rc == 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
