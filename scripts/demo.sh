#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job: the NVMe benchmark against fio and a
# one-file-per-page baseline, on a temporary file under /var/tmp. Extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python bench/nvme_bench.py "$@"
