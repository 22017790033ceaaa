#!/usr/bin/env bash
# The wheels a lent GPU host's Python lacks, downloaded here into .whl/ (git-ignored) for benchmarks/device_check.sh.
#   bash benchmarks/device_wheels.sh              # versions from .venv when it exists (what the tests ran on)
# The host runs Python 3.12 with torch, numpy, scipy, pillow, click, rich, pyyaml, safetensors and cloudpickle of its
# own and reaches no package index; these are saev-ops' other imports (pure Python or cp312 manylinux builds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${PY_VERSION:-3.12}"
names=(sqlalchemy alembic mako lmdb submitit pydantic pydantic-core annotated-types typing-inspection typing-extensions)
specs=()
for n in "${names[@]}"; do
  v=""
  if [ -x .venv/bin/python ]; then
    v=$(.venv/bin/python -m pip show "$n" 2>/dev/null | sed -n 's/^Version: //p')
  fi
  specs+=("$n${v:+==$v}")
done
rm -rf .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${specs[@]}"
ls .whl
