"""A --data-dir without --dataset is read as the folder it is, never as the built-in synthetic set.

Real tiny folders in each layout, the real CLI; the trap this guards: `tl train --data-dir photos` trained on the
synthetic shapes (disc/square/...) because --dataset defaulted to synthetic and the folder was ignored.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY, cli, make_image_folder
from tl.data.infer import infer_dataset
from tl.errors import TLError
from tl.models.checkpoint import read_meta

INFERRED = "data: --dataset {} (inferred from --data-dir; pass --dataset to choose)"
INSECTS = {"ants": (200, 60, 20), "bees": (230, 210, 30)}


def _save_to_disk(folder, *, as_dict: bool) -> None:
    import datasets
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(80 * (i % 2), 80 * (i % 2) + 120, (12, 12, 3), dtype=np.uint8)) for i in range(12)]
    split = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(12)]}, features=features)
    (datasets.DatasetDict({"train": split}) if as_dict else split).save_to_disk(str(folder))


def test_train_with_only_a_data_dir_trains_on_that_folder(tmp_path):
    data = make_image_folder(tmp_path / "insects", INSECTS, 4)
    out = tmp_path / "run"
    result = cli("train", *TINY, "--data-dir", data, "--epochs", "1", "--batch-size", "4", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert INFERRED.format("imagefolder") in result.stderr
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["data"]["dataset"] == "imagefolder"  # what resume, tl eval and tl reproduce read back
    assert record["class_names"] == read_meta(out / "best")["class_names"] == ["ants", "bees"]
    evaluated = cli("eval", "--checkpoint", out / "best", "--num-workers", "0", "--json")
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    assert json.loads(evaluated.stdout)["split"] == "val"


def test_each_layout_is_recognised(tmp_path):
    for as_dict, name in ((True, "dict"), (False, "one")):
        _save_to_disk(tmp_path / name, as_dict=as_dict)
        assert infer_dataset(tmp_path / name) == f"hf:{tmp_path / name}"
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    assert infer_dataset(tmp_path / "cifar") == infer_dataset(tmp_path / "cifar" / "cifar-10-batches-py") == "cifar10"
    for layout in ("caltech101/101_ObjectCategories", "101_ObjectCategories"):  # as tl.data.public.caltech_root finds it
        (tmp_path / layout / "accordion").mkdir(parents=True)
        assert infer_dataset(tmp_path / layout.split("/")[0]) == "caltech101"
    assert infer_dataset(tmp_path / "101_ObjectCategories") == "caltech101"
    assert infer_dataset(tmp_path / "missing") == infer_dataset(make_image_folder(tmp_path / "f", INSECTS, 1)) == "imagefolder"


def test_hf_save_to_disk_folder_is_read_as_hf(tmp_path):
    _save_to_disk(tmp_path / "prepared", as_dict=True)
    result = cli("check-data", "--data-dir", tmp_path / "prepared", "--num-workers", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert INFERRED.format(f"hf:{tmp_path / 'prepared'}") in result.stderr
    assert "2 classes" in result.stdout
    printed = cli("train", "--print-config", "--data-dir", tmp_path / "prepared")
    assert f"dataset: hf:{tmp_path / 'prepared'}" in printed.stdout


def test_a_missing_folder_is_the_imagefolder_error(tmp_path):
    result = cli("train", *TINY, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert isinstance(result.exception, TLError) and "is not a folder" in result.exception.message, repr(result.exception)


def test_explicit_synthetic_keeps_synthetic_and_warns(tmp_path):
    data = make_image_folder(tmp_path / "insects", INSECTS, 1)
    result = cli("train", "--print-config", "--dataset", "synthetic", "--data-dir", data)
    assert result.exit_code == 0, result.output
    assert "dataset: synthetic" in result.stdout and "inferred" not in result.stderr
    assert f"warning: --data-dir {data} is ignored with --dataset synthetic" in result.stderr


def test_without_a_data_dir_it_stays_synthetic():
    result = cli("train", "--print-config")
    assert result.exit_code == 0 and "dataset: synthetic" in result.stdout
    assert "inferred" not in result.stderr and "ignored" not in result.stderr


@pytest.mark.parametrize("recipe, expected", [("data_dir: {data}\n", "imagefolder"),
                                              ("dataset: caltech101\ndata_dir: {data}\n", "caltech101")])
def test_a_recipe_data_dir_is_inferred_and_a_recipe_dataset_kept(tmp_path, recipe, expected):
    data = make_image_folder(tmp_path / "insects", INSECTS, 1)
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.format(data=data))
    result = cli("train", "--print-config", "--config", path)
    assert result.exit_code == 0, result.output
    assert f"dataset: {expected}" in result.stdout
    assert ("inferred" in result.stderr) == (expected == "imagefolder")


def test_a_printed_recipe_with_a_folder_given_now_reads_the_folder(tmp_path):
    """README's workflow: `tl train --print-config ... > my-recipe.yaml` writes `dataset: synthetic` (the default);
    `tl train --config my-recipe.yaml --data-dir PHOTOS` must read the photos, not the synthetic set."""
    data = make_image_folder(tmp_path / "insects", INSECTS, 1)
    recipe = tmp_path / "my-recipe.yaml"
    printed = cli("train", "--print-config", "--arch", "resnet18")
    assert printed.exit_code == 0 and "dataset: synthetic" in printed.stdout
    recipe.write_text(printed.stdout)
    result = cli("train", "--print-config", "--config", recipe, "--data-dir", data)
    assert result.exit_code == 0, result.output
    assert "dataset: imagefolder" in result.stdout and "inferred" in result.stderr and "ignored" not in result.stderr
    explicit = cli("train", "--print-config", "--config", recipe, "--data-dir", data, "--dataset", "synthetic")
    assert "dataset: synthetic" in explicit.stdout and "ignored" in explicit.stderr
