#!/usr/bin/env bash
# One command on a CUDA machine: learner samples/s per mode (head / lora / full) with bf16
# autocast and torch.compile, at sequence lengths 64 and 128, plus predict throughput, as a
# short table. On a CPU it runs with reduced sizes. Arguments go to bench/perf/gpu.py
# (--help). Needs a CUDA build of torch in the environment (make install TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m bench.perf.gpu "$@"
