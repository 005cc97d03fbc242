#!/usr/bin/env bash
# The GPU check of the SGLang integration: real SGLang 0.5.23 servers with our backend, in under
# 10 minutes on one or two GPUs. Prerequisites on that machine: CUDA torch, `sglang[all]==0.5.23`
# with its kernels, and this package built (`pip install -e .` or `bash scripts/setup.sh`).
# Without them bench/serve.py prints "skipped: ... missing: ..." and this script exits 3.
#
# What it runs (generated dummy models, token ids only: nothing is downloaded):
#   1. MHA model, TP1: no L3 / SGLang `file` / ours with page_first (kernel IO) and
#      page_first_direct (direct IO); two passes of the same requests (the second after
#      /flush_cache, so it is served from L3), then ours restarted (server and node) for a
#      third pass that shows the NVMe hits survive;
#   2. MLA model, TP1: ours, two passes and a restart;
#   3. with two GPUs: ours at TP2 for both models (no restart).
# Each step has its own time limit; the figures, checks and logs land in $OUT (default
# bench/out/serve-gpu-check/<step>). Exit status: 0 all checks hold, 1 a check failed or a step
# ran out of time, 3 skipped (not a GPU SGLang environment).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/out/serve-gpu-check}
export PYTHONUNBUFFERED=1

GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
COMMON=(--clients 8 --rounds 3 --request-length 2048 --output-length 32 --passes 2
        --server-timeout 240 --request-timeout 120 --server-arg=--disable-cuda-graph)

status=0
step() {  # step NAME SECONDS ARGS...
  local name=$1 limit=$2; shift 2
  echo "=== $name (at most ${limit}s)"
  timeout --kill-after=20 "$limit" "$PY" bench/serve.py "${COMMON[@]}" --output "$OUT/$name" "$@"
  local rc=$?
  case $rc in
    0) ;;
    3) echo "=== $name: skipped"; exit 3 ;;
    124|137) echo "=== $name: ran out of time"; status=1 ;;
    *) echo "=== $name: exit $rc"; status=1 ;;
  esac
}

step mha-tp1 330 --models mha --tp 1 --backends none,file,mooncake --layouts page_first,page_first_direct --restart
step mla-tp1 120 --models mla --tp 1 --backends mooncake --layouts page_first --restart
if [ "$GPUS" -ge 2 ]; then
  step tp2 120 --models mha,mla --tp 2 --backends mooncake --layouts page_first --clients 4 --rounds 2
else
  echo "=== tp2: skipped (one GPU)"
fi
exit $status
