#!/usr/bin/env bash
# One prepared run for a lent CUDA machine, under 8 minutes (docs/distributed.md, "The GPU run"):
# learner samples/s, activation memory per sample and predict texts/s per mode (head / lora /
# full) at 64 and 128 tokens for MiniLM and a BERT-base-sized encoder (bf16 autocast; gradient
# checkpointing and torch.compile cells), 1 vs N GPUs through the DDP trainer when N > 1, and the
# continual BANKING77 run in lora mode; results.json + results.md in bench/results/gpu/.
#   bash bench/gpu.sh                    # CUDA: everything at its default sizes
#   bash bench/gpu.sh --tiny --out-dir /tmp/gpu   # CPU, CI sizes: every section, a smoke test
# Without CUDA and --tiny it runs the learner grid at reduced sizes. Arguments go to
# bench/perf/gpu.py (--help). Needs a CUDA build of torch (make install TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m bench.perf.gpu "$@"
