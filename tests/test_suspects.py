"""tl suspects: labels flipped on purpose come out on top, and a file filed under two classes is listed first."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, cli, make_image_folder
from tl.errors import TLError
from tl.inference.suspects import COLUMNS, cross_fit, stratified_folds

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
FLIPS = {"red/img_0.jpg": "green", "green/img_1.jpg": "blue", "blue/img_2.jpg": "red"}  # file -> the wrong class it goes to


@pytest.fixture(scope="module")
def flipped_run(tmp_path_factory):
    """8 images per colour in train (3 of them moved to a wrong class) and 4 in val; one red file also copied
    into green. One epoch of a tiny resnet18 from random weights."""
    root = tmp_path_factory.mktemp("suspects")
    data = make_image_folder(root / "data", COLOURS, 8, mixed_modes=False)
    for val_file in (data / "val").rglob("img_[4-7].jpg"):
        val_file.unlink()
    flipped = []
    for source, wrong in FLIPS.items():
        moved = data / "train" / wrong / f"flipped_{Path(source).name}"
        shutil.move(data / "train" / source, moved)
        flipped.append(str(moved))
    shutil.copy(data / "train" / "red" / "img_3.jpg", data / "train" / "green" / "copy_of_red_3.jpg")
    out = root / "run"
    result = cli("train", *TINY, "--weights", "none", "--batch-size", "8", "--dataset", "imagefolder", "--data-dir", data,
                 "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, data, flipped


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cross_fit_scores_each_point_by_heads_that_never_saw_it():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 16) * 6
    labels = torch.arange(3).repeat_interleave(20)
    features = centres[labels] + torch.randn(60, 16, generator=generator)
    given = labels.clone()
    given[[0, 25, 50]] = torch.tensor([1, 2, 0])  # three wrong labels
    probs = cross_fit(features, given, 3, folds=5)
    p_given = probs.gather(1, given[:, None]).flatten()
    assert set(p_given.argsort()[:3].tolist()) == {0, 25, 50}
    assert probs.argmax(1)[[0, 25, 50]].tolist() == [0, 1, 2]  # the labels they really have
    folds = stratified_folds(given, 5)
    assert all((folds[given == c] == k).sum() == 4 for c in range(3) for k in range(5))  # 20 per class, dealt evenly


def test_flipped_labels_come_out_on_top_and_duplicates_first(flipped_run, tmp_path):
    run, data, flipped = flipped_run
    out = tmp_path / "suspects.csv"
    result = cli("suspects", run, "--top", "5", "--out", out, "--num-workers", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    with open(out, newline="") as handle:
        assert next(csv.reader(handle)) == COLUMNS
    rows = _rows(out)
    copies = {str(data / "train" / "red" / "img_3.jpg"), str(data / "train" / "green" / "copy_of_red_3.jpg")}
    assert {row["path"] for row in rows[:2]} == copies and all("same file as" in row["note"] for row in rows[:2])
    ranked = rows[2:]
    assert len(ranked) == 5 and all(row["split"] == "train" for row in ranked)
    # separable colours, each scored by a head fit without it: every flipped label among the 5 most doubted
    assert set(flipped) <= {row["path"] for row in ranked}
    p_given = [float(row["p_given"]) for row in ranked]
    assert p_given == sorted(p_given)
    assert (out.with_suffix(".png")).is_file() == _has_matplotlib()


def test_val_split_and_bad_flags(flipped_run, tmp_path):
    run, _, _ = flipped_run
    result = cli("suspects", run / "best", "--split", "val", "--folds", "3", "--top", "100", "--out", tmp_path / "v.csv",
                 "--num-workers", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = _rows(tmp_path / "v.csv")
    assert [row for row in rows if not row["note"]] and all(row["split"] == "val" for row in rows if not row["note"])
    assert len([row for row in rows if not row["note"]]) == 12  # every readable val image, ranked
    result = cli("suspects", run, "--folds", "1")
    assert isinstance(result.exception, TLError) and "--folds" in result.exception.message


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
