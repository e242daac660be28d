#!/usr/bin/env bash
# On the device machine (python3 with torch, no Ultralytics, no network), from the tree's root:
#
#   bash benchmarks/gpu_run.sh [gpu_check.py arguments]
#
# Installs the wheels benchmarks/gpu_prepare.sh fetched (carried as .whl), runs yoloprof from the tree
# (PYTHONPATH: torchrun's ranks inherit it) and runs the GPU check. With OUT set, the check keeps
# $OUT/gpu_check.json and $OUT/records.tar.gz current after every stage, and its output goes to
# $OUT/gpu_check.log as it is printed: a run stopped at its time limit still returns what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_run: no .whl/*.whl: run benchmarks/gpu_prepare.sh here, carry .whl" >&2; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run: installing the wheels failed" >&2; exit 3; }
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export YOLOPROF_CACHE=${YOLOPROF_CACHE:-/tmp/yoloprof-cache}
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export YOLO_CONFIG_DIR=$YOLOPROF_CACHE/ultralytics MPLCONFIGDIR=$YOLOPROF_CACHE/matplotlib
mkdir -p "$YOLO_CONFIG_DIR" "$MPLCONFIGDIR"
echo "gpu_run: wheels installed in $(( $(date +%s) - t0 )) s; $(python3 -c 'import torch, ultralytics, yoloprof; print("torch", torch.__version__, "ultralytics", ultralytics.__version__, "yoloprof from", yoloprof.__file__)')"
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
log=/dev/null
[ -n "${OUT:-}" ] && log=$OUT/gpu_check.log
python3 benchmarks/gpu_check.py --out runs/gpu-check "$@" 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
echo "gpu_run: gpu_check exited $code after $(( $(date +%s) - t0 )) s in all"
exit "$code"
