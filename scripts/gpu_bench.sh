#!/usr/bin/env bash
# Issue 16's device check as one prepared script: `scripts/bench.py gpu` on a lent GPU machine.
#
#   here, before asking for a machine:   bash scripts/gpu_bench.sh fetch
#       downloads the wheels the GPU machine's image lacks (Hugging Face datasets, dill, multiprocess; Python 3.12)
#       into .gpu_wheels/ (git-ignored), from the package registry this machine reaches
#   on the machine (the device tool's run, carry [".gpu_wheels"], timeout_s 600):   bash scripts/gpu_bench.sh run
#       installs them into the image's python3 (its torch, torchvision and accelerate are used as they are), then
#       runs `bench.py gpu` (resnet50, 224 px, bf16, channels_last, batch 256; generated photos, tl prepare's
#       shards) and writes gpu.json, gpu.log and nvidia-smi.txt to $OUT (runs/bench without one). Without the
#       wheels the bench still runs and feeds tl's pipeline from the image folder, and says so.
# Measured on the CPU here (tiny model) by tests/test_bench.py; the GPU path has not run yet.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu_wheels
case "${1:-run}" in
  fetch)
    PYTHON=${PYTHON:-.venv/bin/python}
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
      -d "$WHEELS" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19  # the versions tested here
    ls -l "$WHEELS"
    ;;
  run)
    PYTHON=${PYTHON:-python3}
    OUT=${OUT:-runs/bench}
    mkdir -p "$OUT"
    if [ -d "$WHEELS" ]; then  # with their dependencies where the image can satisfy them, else as they are
      "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" datasets \
        || "$PYTHON" -m pip install -q --no-deps --no-index --find-links "$WHEELS" datasets dill multiprocess \
        || echo "gpu_bench: could not install the carried wheels; tl's pipeline will read the image folder" >&2
    fi
    { nvidia-smi; df -h /dev/shm; } > "$OUT/nvidia-smi.txt" 2>&1 || true  # loader workers share batches through /dev/shm
    export PYTHONPATH="$PWD" HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    "$PYTHON" -c "import torch, torchvision, accelerate; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
    "$PYTHON" scripts/bench.py gpu --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
    ;;
  *)
    echo "usage: bash scripts/gpu_bench.sh fetch|run" >&2
    exit 2
    ;;
esac
