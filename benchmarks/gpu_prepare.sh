#!/usr/bin/env bash
# Here, before a GPU lease: fetch the wheels the device machine lacks into .whl/ and check what travels.
#
#   bash benchmarks/gpu_prepare.sh        (or: make gpu-prepare)
#   XZ=1 bash benchmarks/gpu_prepare.sh   also recompresses wheels over 8 MiB with LZMA (pip installs them
#                                         as they are; polars' runtime shrinks from 51 to 31 MiB; ~4 min on 2 cores)
#
# The device machine has python3 3.12 with torch, torchvision, numpy, opencv-python-headless, matplotlib,
# pandas, rich, nvidia-ml-py, psutil, jinja2, pyyaml, pillow, requests, httpx and more, but no Ultralytics
# and no network. Ultralytics and what it needs beyond that travel as wheels, at the versions this
# checkout's .venv holds (the ones the tests ran with); benchmarks/gpu_run.sh installs them there.
# A re-run keeps wheels already fetched. Exits 1 if a wheel needs something missing, or if the tree that
# travels (git-tracked + untracked-not-ignored files + .whl) reaches the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_prepare: no $PY; run make install first (its versions are the ones fetched)" >&2; exit 2; }
PACKAGES="ultralytics ultralytics-thop ultralytics-platform polars polars-runtime-32"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
mkdir -p .whl
want=()
for name in $PACKAGES; do
    version=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name") || {
        echo "gpu_prepare: $name is not installed in $PY's environment" >&2; exit 2; }
    want+=("$name==$version")
done
# One version of each package (two stop pip's install on the device): drop wheels of other versions.
for whl in .whl/*.whl; do
    [ -e "$whl" ] || continue
    keep=0
    for spec in "${want[@]}"; do
        dist=$(echo "${spec%%==*}" | tr -- '-.' '__')
        case "$(basename "$whl")" in "${dist}-${spec##*==}-"*) keep=1 ;; esac
    done
    [ $keep = 1 ] || { echo "gpu_prepare: removing $whl (not a wanted version)"; rm -f "$whl"; }
done
# shellcheck disable=SC2086
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLATFORMS -d .whl "${want[@]}"
if [ "${XZ:-0}" = 1 ]; then
    "$PY" benchmarks/gpu_check.py --recompress-wheels
fi
ls -l .whl
"$PY" benchmarks/gpu_check.py --check-travel
