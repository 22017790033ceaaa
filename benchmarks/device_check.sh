#!/usr/bin/env bash
# Everything issue 11 asks of a GPU host, in one command of about 7 minutes (a lent host: 16 cores, one H200):
# the CUDA tests of the batch feed, training end to end on the GPU, and the loader benchmark with 8 and 16 threads.
#   bash benchmarks/device_wheels.sh    # here, once: the wheels the host lacks, into .whl/ (git-ignored)
#   device run: command "bash benchmarks/device_check.sh", carry [".whl"], timeout_s 560
# Logs and JSON land in $OUT (the device tool brings back at most 8 files: these are 8). Locally, as a rehearsal on the CPU:
#   OUT=/tmp/dc DEVICE=cpu GIB=1 D_SAE=1024 STEPS=8 SAES=1 bash benchmarks/device_check.sh
# Each step has a time limit of its own and the script goes on after a failed step, so one stuck step cannot cost
# the others; the exit status is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/saev-device-check}"
DEVICE="${DEVICE:-cuda}"
GIB="${GIB:-8}"
D_SAE="${D_SAE:-16384}"
STEPS="${STEPS:-60}"
SAES="${SAES:-1,16}"
DATA="${DATA:-$PWD/.bench/device-data}"  # on the disk, not /tmp (memory-backed in some sandboxes)
mkdir -p "$OUT" "$DATA"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/saev-site \
    .whl/*.whl || { echo "device_check: installing .whl failed" >&2; exit 100; }
  export PYTHONPATH="$PYTHONPATH:/tmp/saev-site"
fi
failed=0
step() {  # step NAME LIMIT_S COMMAND...: run it with a limit, its output to the screen and $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
}
step env 60 python3 -c "import os, platform, torch; print(platform.python_version(), 'torch', torch.__version__, \
'cores', os.cpu_count(), 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
step host 30 bash -c "nproc; free -g; df -h '$DATA'; stat -f -c 'file system of the data: %T' '$DATA'; uname -r; \
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true"
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_feed.py tests/test_rowmap.py tests/test_loaders.py
step generate 150 python3 benchmarks/loaders.py --gib "$GIB" --keep "$DATA" --generate-only
step train_e2e 150 python3 benchmarks/train_e2e.py --device "$DEVICE" --d-sae "$D_SAE" --gib "$GIB" --steps "$STEPS" \
  --saes "$SAES" --keep "$DATA" --json "$OUT/train_e2e.json"
step loaders 240 python3 benchmarks/loaders.py --gib "$GIB" --epochs 3 --keep "$DATA" \
  --only shuffled:all,shuffled:all:16,shuffled:patches,ordered:all --json "$OUT/loaders.json"
echo "device_check: $failed step(s) failed"
exit "$failed"
