#!/usr/bin/env bash
# Set up a virtual environment and run the test suite: the README's test command.
#   bash tests/run.sh            # all tests; Postgres/Slurm cases skip if those services are absent
#   bash tests/run.sh -k cli     # extra arguments go to pytest
#   bash tests/run.sh -m "not slow"   # leave out the tests that take more than a few seconds
# Environment: VENV (default .venv), PYTHON (default python3), SAEV_OPS_REQUIRE_SERVICES=1 to fail instead of skip,
# SAEV_OPS_LINT=1 to run ruff and mypy on saev_ops first (CI does; both must pass).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# torch==2.13.0 is pinned here (a CPU build is on this machine); pyproject accepts a range so clusters keep CUDA torch.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -e '.[test,hf,plot,serve]' 'torch==2.13.0'
if [ "${SAEV_OPS_LINT:-0}" = 1 ]; then
  "$VENV/bin/python" -m ruff check saev_ops
  "$VENV/bin/python" -m mypy saev_ops
fi
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
