#!/usr/bin/env bash
# The prepared GPU check (issue 11 item 15), <= 8 minutes on one CUDA GPU: the extraction benchmark
# (end-to-end vs pure model; the extractor runs bf16 autocast, channels_last and pinned-memory loading on
# CUDA), then benchmarks/gpu_check.py: fp32 vs bf16 autocast vs + channels_last, pinned vs pageable copies,
# the out-of-memory halving under a memory cap, and one training step of every MIL model. Prints figures only.
# On a machine without CUDA it says so and exits 0.
#   bash benchmarks/gpu_check.sh            (PYTHON=/path/to/python to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); nothing to measure."
  echo "gpu_check: run it on a CUDA machine: bash benchmarks/gpu_check.sh"
  exit 0
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
start=$SECONDS
status=0
echo "== extraction benchmark (end-to-end vs pure model) =="
timeout 270 "$PYTHON" benchmarks/extract_throughput.py --device cuda --grid 45 --vit-patches 2025 --repeats 2 \
  || { echo "gpu_check: extraction benchmark failed or ran past 270 s (rc $?)"; status=1; }
echo "== precision, memory layout, pinned memory, OOM halving, training steps =="
timeout 180 "$PYTHON" benchmarks/gpu_check.py || { echo "gpu_check: gpu_check.py failed or ran past 180 s (rc $?)"; status=1; }
echo "gpu_check: done in $((SECONDS - start)) s (status $status)"
exit $status
