"""`tl prepare` writes a folder dataset as Arrow shards with tl's split, and `tl train --dataset hf:PREP` trains from it."""

from __future__ import annotations

import json

from PIL import Image

from tests.conftest import TINY, cli, read_metrics, write_image
from tl.config import DataConfig
from tl.data import flags

CLASSES = {"ants": (200, 60, 30), "bees": (230, 200, 40), "wasps": (40, 40, 40)}


def _flat_folder(root):
    """One folder per class (tl makes the split), mixed formats and sizes, one large photo, one damaged file."""
    for c, (name, colour) in enumerate(CLASSES.items()):
        for i in range(6):
            suffix = (".jpg", ".png", ".gif")[i % 3]
            write_image(root / name / f"img_{i}{suffix}", colour, size=24, mode="P" if suffix == ".gif" else "RGB", seed=10 * c + i)
    write_image(root / "bees" / "big.jpg", CLASSES["bees"], size=200)  # shrunk to --short-side
    (root / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_prepare_round_trip_and_train_from_it(tmp_path):
    import datasets

    root = _flat_folder(tmp_path / "photos")
    prep = tmp_path / "prep"
    result = cli("prepare", "--dataset", "imagefolder", "--data-dir", root, "--out", prep, "--short-side", "64",
                 "--val-fraction", "0.25", "--test-fraction", "0.2", "--seed", "3")
    assert result.exit_code == 0, result.output + repr(result.exception)
    unreadable = (prep / "unreadable.txt").read_text().splitlines()
    assert len(unreadable) == 1 and unreadable[0].startswith(str(root / "ants" / "broken.jpg"))

    loaded = datasets.load_from_disk(str(prep))
    # what tl train --seed 3 sees for the folder itself, split for split, less the damaged file
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), val_fraction=0.25, test_fraction=0.2)
    expected = {name: [label for path, label in data.samples if path.name != "broken.jpg"]
                for name, data in flags.splits(flags.build(cfg, seed=3))}
    assert sorted(loaded) == ["test", "train", "validation"]
    for tl_name, hf_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        split = loaded[hf_name]
        assert split.features["label"].names == sorted(CLASSES)
        assert split["label"] == expected[tl_name] and len(split) == len(expected[tl_name])
        for row in split:
            assert isinstance(row["image"], Image.Image) and row["image"].format == "JPEG"
            assert min(row["image"].size) <= 64 and row["image"].mode == "RGB"
    assert sum(map(len, expected.values())) == 3 * 6 + 1  # the big photo is in, the damaged file out

    again = cli("prepare", "--data-dir", root, "--out", prep)
    assert again.exit_code != 0 and "--overwrite" in again.exception.hint

    out = tmp_path / "run"
    trained = cli("train", *TINY, "--dataset", f"hf:{prep}", "--epochs", "1", "--out", out)
    assert trained.exit_code == 0, trained.output + repr(trained.exception)
    metrics = read_metrics(out)
    assert len(metrics) == 1 and metrics[0]["val_count"] == len(expected["val"])
    assert json.loads((out / "best" / "tl.json").read_text())["class_names"] == sorted(CLASSES)
