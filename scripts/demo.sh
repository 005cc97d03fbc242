#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the main job on the embedded single-host default:
#   1. `mooncake-hicache bench`: starts a private node (DRAM + NVMe under /var/tmp) and pushes a
#      KV-page workload through it from this process, verifying every page (about 10 s);
#   2. a one-minute replay of the bundled Mooncake conversation-trace sample, comparing DRAM-only,
#      DRAM+NVMe (each eviction policy) and SGLang's file backend (tables in bench/out/demo).
# The NVMe benchmark against fio is `.venv/bin/python bench/nvme_bench.py` (about 2 minutes).
#
# `bash scripts/demo.sh cluster` instead runs the three-node demo of the pooled tier
# (scripts/cluster_demo.py: three node processes on 127.0.0.1, a rank of one writes, a rank of
# another reads, one node killed and restarted; about 15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "cluster" ]; then
  shift
  exec .venv/bin/python scripts/cluster_demo.py "$@"
fi
.venv/bin/python -m mooncake_hicache bench "$@"
exec .venv/bin/python bench/replay.py bench/traces/conversation_sample.jsonl --max-requests 600 --output bench/out/demo
