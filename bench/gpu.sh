#!/usr/bin/env bash
# GPU benchmark for a lent GPU machine (no internet there): BERT-base built from its config,
# bf16 examples/s of hpo's loop against a plain loop, GPU utilisation from nvidia-smi, and the
# per-trial overhead of a short study through the real worker. See bench/gpu.py.
#
#   bash bench/gpu.sh                        # defaults: 8,000 synthetic examples, max_length 128, batch 32
#   bash bench/gpu.sh --train 4000 --repeats 2   # any bench/gpu.py option passes through
#   bash bench/gpu.sh --share 16             # part 3: 16 trials, one worker per GPU against --workers-per-gpu auto
#
# Needs hpo's own dependencies with a CUDA build of torch (pip install -e . on that machine, or a
# venv carried there); the demo packages are not needed. Prints Markdown tables for
# docs/benchmarks.md and, when $OUT is set (the device tool sets it), keeps a copy in $OUT/gpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
export HPO_CACHE_DIR="${HPO_CACHE_DIR:-$(mktemp -d)}"   # fresh tokenization cache, not the user's
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
else
    echo "gpu.sh: nvidia-smi not found: this is not a GPU machine (python bench/gpu.py --tiny checks the script on a CPU)" >&2
    exit 2
fi
python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
PY
log="${OUT:-.}/gpu.txt"
[ -n "${OUT:-}" ] || log="$(mktemp -t hpo-gpu-XXXX.txt)"
date -u +"%Y-%m-%d %H:%M UTC" | tee "$log"
python bench/gpu.py "$@" 2>&1 | grep -v -E "Map|Saving the dataset|Flattening|Generating|Casting|Writing model shards" | tee -a "$log"
echo "gpu.sh: results in $log"
