#!/usr/bin/env bash
# docs/run.png: the watched 2-rank CPU run of tests/test_run_watch.py (about 4 minutes here), its run.html
# taken by headless Chromium.   bash benchmarks/run_picture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf /tmp/rw
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_run_watch.py --basetemp=/tmp/rw
.venv/bin/yoloprof report /tmp/rw/watched0/run
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1100,1000 \
  --screenshot=docs/run.png file:///tmp/rw/watched0/run/yoloprof/run.html
