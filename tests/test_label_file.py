"""Label files (``--labels FILE.csv``): reading, their errors, the splits, and a single-label CSV training exactly as
the same images in class folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import RGB_CLASSES, TINY, cli, make_image_folder, read_metrics
from tl.config import DataConfig
from tl.data import labelled
from tl.data.label_file import read_label_file
from tl.data.multilabel_split import iterative_split
from tl.errors import TLError
from tl.models.checkpoint import checkpoint_state


def _flat(tmp_path: Path, per_class: int = 6) -> Path:
    """``root/<class>/img_N.*`` (one folder of class folders)."""
    made = make_image_folder(tmp_path / "made", RGB_CLASSES, per_class, splits=("all",))
    return made / "all"


def _csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(row) for row in rows) + "\n")
    return path


def _rows_of(root: Path) -> list[list[str]]:
    return [[p.relative_to(root).as_posix(), p.parent.name] for p in sorted(root.rglob("img_*"))]


def test_relative_and_absolute_paths_and_a_split_column(tmp_path):
    root = _flat(tmp_path)
    rows = _rows_of(root)
    rows[0][0] = str(root / rows[0][0])  # absolute
    table_file = _csv(tmp_path / "labels.csv", [["filename", "label", "split"]] +
                      [[p, label, "val" if i % 3 == 0 else "train"] for i, (p, label) in enumerate(rows)])
    table = read_label_file(table_file, root)
    assert not table.problems and not table.multilabel and table.classes == sorted(RGB_CLASSES)
    assert table.rows[0].path == root / rows[0][0] and all(row.path.is_file() for row in table.rows)
    _, classes, samples = labelled.parts(DataConfig(dataset="labels", labels=str(table_file), data_dir=str(root)), seed=0)
    assert len(samples["val"]) == 6 and len(samples["train"]) == 12 and not samples["test"]
    assert {p.name for p, _ in samples["val"]} == {Path(r[0]).name for i, r in enumerate(rows) if i % 3 == 0}


def test_is_valid_column_and_paths_relative_to_the_csv_folder(tmp_path):
    root = _flat(tmp_path)
    table_file = _csv(root / "labels.csv", [["image", "label", "is_valid"]] +
                      [[p, label, "True" if i % 2 else "False"] for i, (p, label) in enumerate(_rows_of(root))])
    _, _, samples = labelled.parts(DataConfig(dataset="labels", labels=str(table_file)), seed=0)  # no --data-dir
    assert len(samples["val"]) == 9 and len(samples["train"]) == 9


@pytest.mark.parametrize("problem, expected", [
    ("missing", "does not exist"),
    ("duplicate", "listed again"),
    ("unlabelled", "has no label"),
    ("split", "is not train/val/test"),
])
def test_bad_rows_are_one_line_naming_the_line(tmp_path, problem, expected):
    root = _flat(tmp_path)
    rows = [[p, label, "train"] for p, label in _rows_of(root)]
    if problem == "missing":
        rows[3][0] = "red/nope.png"
    elif problem == "duplicate":
        rows.append(list(rows[2]))
    elif problem == "unlabelled":
        rows[4][1] = ""
    else:
        rows[5][2] = "holdout"
    table_file = _csv(tmp_path / "labels.csv", [["path", "label", "split"]] + rows)
    assert list(read_label_file(table_file, root).problems) == [problem]
    with pytest.raises(TLError, match=expected) as error:
        labelled.parts(DataConfig(dataset="labels", labels=str(table_file), data_dir=str(root)), seed=0)
    assert "line" in error.value.message and error.value.hint


def test_an_unknown_label_for_a_run_is_refused(tmp_path):
    """The classes are fixed when a run starts (its split.json): an edited CSV naming a new one is refused."""
    root = _flat(tmp_path)
    rows = _rows_of(root)
    table_file = _csv(tmp_path / "labels.csv", [["path", "label"]] + rows)
    cfg = DataConfig(dataset="labels", labels=str(table_file), data_dir=str(root))
    manifest = tmp_path / "run" / "split.json"
    labelled.parts(cfg, seed=0, manifest=manifest)
    assert json.loads(manifest.read_text())["label_classes"] == sorted(RGB_CLASSES)
    rows[1][1] = "purple"
    _csv(table_file, [["path", "label"]] + rows)
    with pytest.raises(TLError, match="'purple', which is not one of the run's 3 classes"):
        labelled.parts(cfg, seed=0, manifest=manifest)


def test_several_labels_per_cell_and_zero_one_columns_are_multilabel(tmp_path):
    root = _flat(tmp_path, per_class=2)
    files = [p for p, _ in _rows_of(root)]
    for sep in (";", "|", " "):
        table = read_label_file(_csv(tmp_path / "sep.csv", [["path", "tags"], [files[0], f"red{sep}blue"], [files[1], "green"]]), root)
        assert table.multilabel and table.rows[0].labels == ("red", "blue") and table.classes == ["blue", "green", "red"]
    onehot = read_label_file(_csv(tmp_path / "onehot.csv", [["path", "red", "green", "blue"], [files[0], "1", "0", "1"],
                                                           [files[1], "0", "0", "0"]]), root)
    assert onehot.multilabel and onehot.rows[0].labels == ("red", "blue") and onehot.rows[1].labels == ()
    assert not onehot.problems  # an image of none of the classes is fine in a multi-label set


@pytest.mark.parametrize("fractions", [(0.6, 0.2, 0.2), (0.7, 0.15, 0.15), (0.8, 0.1, 0.1)])
def test_iterative_split_keeps_every_class_in_every_split(fractions):
    import random

    rng = random.Random(1)
    labels = [tuple(sorted(rng.sample(range(6), rng.randint(1, 3)))) for _ in range(120)]
    labels += [(6,), (6, 0), (6,), (7, 1), (7,)]  # two rare classes: 3 and 2 images
    shares = dict(zip(("train", "val", "test"), fractions))
    parts = iterative_split(labels, shares, seed=0)
    assert sorted(i for part in parts.values() for i in part) == list(range(len(labels)))
    for name, part in parts.items():
        present = {c for i in part for c in labels[i]}
        assert present >= set(range(7)), (name, present)  # class 6 (3 images) reaches every split
    assert {c for i in parts["train"] + parts["val"] for c in labels[i]} >= {7}
    assert abs(len(parts["val"]) - shares["val"] * len(labels)) <= 4 and parts == iterative_split(labels, shares, seed=0)


def test_single_label_csv_trains_the_same_model_as_class_folders(tmp_path):
    """Same images, same seed: the split, the batches and so every weight are the same."""
    root = _flat(tmp_path)
    table_file = _csv(tmp_path / "rows.csv", [["path", "label"]] + list(reversed(_rows_of(root))))  # row order must not matter
    common = (*TINY, "--epochs", "1", "--augment", "none", "--val-fraction", "0.34")
    folders = cli("train", *common, "--data-dir", root, "--out", tmp_path / "folders")
    assert folders.exit_code == 0, folders.output + repr(folders.exception)
    from_csv = cli("train", *common, "--labels", table_file, "--data-dir", root, "--out", tmp_path / "csv")
    assert from_csv.exit_code == 0, from_csv.output + repr(from_csv.exception)
    config = json.loads((tmp_path / "csv" / "config.json").read_text())["config"]["data"]
    assert config["dataset"] == "labels" and config["labels"] == str(table_file)
    a, b = checkpoint_state(tmp_path / "folders" / "last"), checkpoint_state(tmp_path / "csv" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "folders")[0]["val_loss"] == read_metrics(tmp_path / "csv")[0]["val_loss"]


def test_tl_split_pins_a_label_files_split_for_train(tmp_path):
    root = _flat(tmp_path)
    table_file = _csv(tmp_path / "labels.csv", [["path", "label"]] + _rows_of(root))
    result = cli("split", root, "--labels", table_file, "--out", tmp_path / "run", "--fractions", "0.5,0.25,0.25", "--seed", "3")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "split.json").read_text())
    assert record["pinned_by"] == "tl split" and len(record["splits"]["test"]) == 6
    cfg = DataConfig(dataset="labels", labels=str(table_file), data_dir=str(root))  # other fractions and seed: the pinned split wins
    _, _, samples = labelled.parts(cfg, seed=0, manifest=tmp_path / "run" / "split.json")
    assert sorted(p.relative_to(root).as_posix() for p, _ in samples["test"]) == sorted(record["splits"]["test"])
    again = cli("split", root, "--labels", table_file, "--out", tmp_path / "run")
    assert again.exit_code != 0 and "exists" in str(again.exception)
