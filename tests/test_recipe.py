"""The default recipe: its choices by data and photo size, explicit options winning, and older runs keeping theirs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, make_image_folder, read_metrics
from tl.config import TrainConfig
from tl.training import recipe
from tl.training.options import resolve, to_config

TINY_NO_RECIPE_FLAGS = ("--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--num-workers", "0",
                        "--log-every", "1000")


@pytest.mark.parametrize("images, epochs, batch", [(40, 5, 16), (999, 5, 16), (1000, 4, 32), (9999, 4, 32), (10000, 3, 32), (50000, 3, 32)])
def test_choices_by_data_size(images, epochs, batch):
    chosen = recipe.choose(images, photo_side=500, input_size=224)
    assert (chosen["epochs"], chosen["batch_size"]) == (epochs, batch)


@pytest.mark.parametrize("side, crop", [(128, 0.5), (223, 0.5), (224, 0.35), (2000, 0.35), (None, 0.35)])
def test_crops_by_photo_size(side, crop):
    assert recipe.choose(300, photo_side=side, input_size=224)["crop_scale_min"] == crop


def test_only_what_no_option_set_is_chosen_and_the_line_says_which():
    cfg = to_config(resolve({"dataset": "synthetic", "batch_size": 8}))
    filled, chosen, line = recipe.apply(cfg, train_images=300, photo_side=128, input_size=224)
    assert filled.data.batch_size == 8 and "batch_size" not in chosen  # explicit wins
    assert (filled.run.epochs, filled.data.crop_scale_min) == (5, 0.5) and set(chosen) == {"epochs", "crop_scale_min"}
    assert line.startswith(f"recipe {recipe.VERSION}: 300 train images, photos ~128 px: 5 epochs") and "--batch-size" not in line
    explicit = to_config(resolve({"dataset": "synthetic", "batch_size": 8, "epochs": 2, "crop_scale_min": 0.25}))
    assert recipe.apply(explicit, train_images=300, photo_side=128, input_size=224) == (explicit, {}, "")


def test_a_record_without_a_recipe_means_the_old_fixed_defaults():
    cfg = TrainConfig.from_dict({"data": {"dataset": "synthetic"}, "run": {"epochs": 2}})  # written before the recipe
    old = recipe.recorded(cfg, {"config": {"run": {"epochs": 2}}, "resolved": {}})
    assert (old.run.epochs, old.data.batch_size, old.data.crop_scale_min) == (2, 32, 0.25)
    record = {"config": {"run": {"epochs": 4}, "data": {"batch_size": 16, "crop_scale_min": 0.5}}, "resolved": {"recipe": {"version": 2}}}
    again = recipe.recorded(TrainConfig.from_dict({"data": {"dataset": "synthetic"}}), record)  # resume: what that run chose
    assert (again.run.epochs, again.data.batch_size, again.data.crop_scale_min) == (4, 16, 0.5)


def test_photo_side_reads_headers(tmp_path):
    from tl.data.datasets import ImageFiles

    folder = make_image_folder(tmp_path / "d", {"a": (200, 0, 0), "b": (0, 200, 0)}, 3, splits=("train",), size=40, mixed_modes=False)
    files = ImageFiles([(p, 0) for p in sorted(folder.rglob("*.jpg"))], ["a", "b"])
    assert recipe.photo_side(files) == 40
    assert recipe.photo_side([]) is None


def test_train_records_the_recipe_and_reproduce_keeps_an_older_one(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": (220, 30, 30), "b": (30, 40, 220)}, 4, size=24, mixed_modes=False)
    out = tmp_path / "run"
    result = cli("train", *TINY_NO_RECIPE_FLAGS, "--data-dir", data, "--batch-size", "4", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads((out / "config.json").read_text())
    # 8 train images of 24 px, smaller than the 32 px input: 5 epochs, milder crops; --batch-size as given
    assert record["resolved"]["recipe"] == {"version": recipe.VERSION, "chosen": {"epochs": 5, "crop_scale_min": 0.5}}
    assert (record["config"]["run"]["epochs"], record["config"]["data"]["batch_size"]) == (5, 4)
    assert len(read_metrics(out)) == 5

    # The same run as an older tl recorded it: no recipe, and options that version did not write (or were fixed)
    del record["resolved"]["recipe"]
    record["config"]["run"]["epochs"] = 1
    del record["config"]["data"]["batch_size"], record["config"]["data"]["crop_scale_min"]
    (out / "config.json").write_text(json.dumps(record))
    result = cli("reproduce", out, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output + repr(result.exception)
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (again["config"]["data"]["batch_size"], again["config"]["data"]["crop_scale_min"]) == (32, 0.25)
    assert again["resolved"]["recipe"]["chosen"] == {} and len(read_metrics(tmp_path / "again")) == 1
