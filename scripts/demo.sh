#!/usr/bin/env bash
# Set up .venv if needed, then fine-tune a resnet18 on tl's built-in synthetic shapes (about a minute on a 2-core CPU).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
out="${1:-runs/demo}"
tl train --arch resnet18 --dataset synthetic --synthetic-classes 6 --synthetic-per-class 64 --image-size 32 \
    --optimizer adamw --lr 0.003 --epochs 4 --batch-size 32 --out "$out" --overwrite
echo
echo "Results are in $out/: best/ and last/ checkpoints (model.safetensors + tl.json), metrics.jsonl, config.json."
echo "Next: tl train --help, tl archs, and the recipes in README.md."
