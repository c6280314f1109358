"""The per-image loop as a tutorial writes it, as a whole program: the baseline of ``bench.py predict --whole-process``.

    python scripts/benchmarks/per_image_loop.py IMAGES CHECKPOINT OUT.csv

Every image under IMAGES, one at a time: PIL open, Resize/CenterCrop/ToTensor/Normalize, unsqueeze, an fp32
forward pass, softmax, one CSV row (path, label, one probability per class). The model is the checkpoint's
torchvision architecture with its head and weights, rebuilt by ``tl.models.checkpoint.load_checkpoint``
(a tutorial builds the same model by hand). Its wall time from start to exit is what a user waits for.
"""

import csv
import sys
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

from tl.models.checkpoint import load_checkpoint

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def main(images: Path, checkpoint: Path, out: Path) -> None:
    model, meta = load_checkpoint(checkpoint)
    model.eval()
    transform = T.Compose([T.Resize(meta["resize_size"]), T.CenterCrop(meta["input_size"]), T.ToTensor(),
                           T.Normalize(meta["mean"], meta["std"])])
    names = meta["class_names"]
    files = sorted(path for path in images.rglob("*") if path.suffix.lower() in EXTENSIONS
                   and not any(part.startswith(".") for part in path.relative_to(images).parts))  # as predict-dir lists them
    with open(out, "w", newline="") as handle, torch.no_grad():
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *(f"p_{name}" for name in names)])
        for path in files:
            image = Image.open(path).convert("RGB")
            probs = model(transform(image).unsqueeze(0)).softmax(1)[0].tolist()
            writer.writerow([str(path), names[max(range(len(probs)), key=probs.__getitem__)], *(f"{p:.6f}" for p in probs)])


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
