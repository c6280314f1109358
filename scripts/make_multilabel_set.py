"""Build a real multi-label set from the bees/ants photos: each image is a 2x2 grid of 1-4 photos (the empty cells
grey), labelled with every species in it, as a label file for ``tl train --labels``.

    python scripts/make_multilabel_set.py ../shared/data/hymenoptera_data OUT [--train 400 --val 200 --seed 0]

Train images are made only from the photos of ``train/``, val images only from those of ``val/``, so no photo is in
both; ``OUT/labels.csv`` has ``path,labels,is_valid`` rows (labels separated by ``;``). About a third of the images
hold ants only, a third bees only, a third both. Each photo is centre-cropped square and resized to 224 px, so an
insect fills a quarter of the picture at most: harder than the single-photo task, as real multi-label photos are.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageOps

CELL = 224
CLASSES = ("ants", "bees")


def square(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        return ImageOps.fit(image, (CELL, CELL))


def compose(photos: list[Path]) -> Image.Image:
    canvas = Image.new("RGB", (2 * CELL, 2 * CELL), (124, 124, 124))
    for slot, photo in zip(((0, 0), (CELL, 0), (0, CELL), (CELL, CELL)), photos):
        canvas.paste(square(photo), slot)
    return canvas


def build(source: Path, out: Path, split: str, count: int, rng: random.Random) -> list[tuple[str, list[str], bool]]:
    pools = {name: sorted(p for p in (source / split / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
             for name in CLASSES}
    rows = []
    (out / split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        present = rng.choice([("ants",), ("bees",), ("ants", "bees")])
        tiles = rng.randint(len(present), 4)
        species = list(present) + [rng.choice(present) for _ in range(tiles - len(present))]
        rng.shuffle(species)
        photos = [rng.choice(pools[name]) for name in species]
        name = f"{split}/{i:04d}.jpg"
        compose(photos).save(out / name, quality=90)
        rows.append((name, sorted(present), split == "val"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="hymenoptera_data (train/ and val/ of ants and bees)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = build(args.source, args.out, "train", args.train, rng) + build(args.source, args.out, "val", args.val, rng)
    lines = ["path,labels,is_valid"] + [f"{path},{';'.join(labels)},{valid}" for path, labels, valid in rows]
    (args.out / "labels.csv").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} images, {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
