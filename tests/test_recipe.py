"""The default recipe: its choices by data size, explicit options winning, and older runs keeping theirs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, make_image_folder, read_metrics
from tl.config import TrainConfig
from tl.training import recipe
from tl.training.options import resolve, to_config

TINY_NO_RECIPE_FLAGS = ("--arch", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--num-workers", "0",
                        "--log-every", "1000")


@pytest.mark.parametrize("images, epochs, batch", [(40, 3, 16), (999, 3, 16), (1000, 4, 32), (9999, 4, 32), (10000, 3, 32), (50000, 3, 32)])
def test_choices_by_data_size(images, epochs, batch):
    assert recipe.choose(images) == {"epochs": epochs, "batch_size": batch}


def test_only_what_no_option_set_is_chosen_and_the_line_says_which():
    cfg = to_config(resolve({"dataset": "synthetic", "batch_size": 8}))
    filled, chosen, line = recipe.apply(cfg, train_images=300)
    assert filled.data.batch_size == 8 and chosen == {"epochs": 3} and filled.run.epochs == 3  # explicit wins
    assert line == f"recipe {recipe.VERSION}: 300 train images: 3 epochs (set --epochs to choose)"
    explicit = to_config(resolve({"dataset": "synthetic", "batch_size": 8, "epochs": 2}))
    assert recipe.apply(explicit, train_images=300) == (explicit, {}, "")


def test_a_printed_recipe_leaves_the_choice_to_the_recipe(tmp_path):
    printed = cli("train", "--dataset", "synthetic", "--print-config")
    assert printed.exit_code == 0 and "epochs: null" in printed.output and "batch_size: null" in printed.output
    (tmp_path / "r.yaml").write_text(printed.output)
    cfg = to_config(resolve({}, tmp_path / "r.yaml"))
    assert (cfg.run.epochs, cfg.data.batch_size) == (None, None)


def test_a_record_without_a_recipe_means_the_old_fixed_defaults():
    cfg = TrainConfig.from_dict({"data": {"dataset": "synthetic"}, "run": {"epochs": 2}})  # written before the recipe
    old = recipe.recorded(cfg, {"config": {"run": {"epochs": 2}}, "resolved": {}})
    assert (old.run.epochs, old.data.batch_size) == (2, 32)
    assert recipe.recorded(TrainConfig.from_dict({}), {"config": {}}).run.epochs == 10
    record = {"config": {"run": {"epochs": 4}, "data": {"batch_size": 16}}, "resolved": {"recipe": {"version": 2}}}
    again = recipe.recorded(TrainConfig.from_dict({"data": {"dataset": "synthetic"}}), record)  # resume: what that run chose
    assert (again.run.epochs, again.data.batch_size) == (4, 16)


def test_train_records_the_recipe_and_reproduce_keeps_an_older_one(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": (220, 30, 30), "b": (30, 40, 220)}, 4, size=24, mixed_modes=False)
    out = tmp_path / "run"
    result = cli("train", *TINY_NO_RECIPE_FLAGS, "--data-dir", data, "--batch-size", "4", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads((out / "config.json").read_text())
    # 8 train images: 3 epochs; --batch-size as given
    assert record["resolved"]["recipe"] == {"version": recipe.VERSION, "chosen": {"epochs": 3}}
    assert (record["config"]["run"]["epochs"], record["config"]["data"]["batch_size"]) == (3, 4)
    assert len(read_metrics(out)) == 3

    # The same run as an older tl recorded it: no recipe, and options that version did not write (or were fixed)
    del record["resolved"]["recipe"]
    record["config"]["run"]["epochs"] = 1
    del record["config"]["data"]["batch_size"]
    (out / "config.json").write_text(json.dumps(record))
    result = cli("reproduce", out, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output + repr(result.exception)
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["config"]["data"]["batch_size"] == 32
    assert again["resolved"]["recipe"]["chosen"] == {} and len(read_metrics(tmp_path / "again")) == 1


@pytest.mark.parametrize("sides, size", [([128] * 9, 128), ([100, 128, 90], 128), ([150] * 3, 160), ([96], 96), ([168], 192),
                                         ([169], None), ([500, 375], None), ([95], None), ([32] * 5, None), ([], None)])
def test_small_photos_get_their_own_input_size(sides, size):  # sides: a sample of the photos' long sides
    assert recipe.photo_input_size(sides, 224) == size


def test_the_input_size_is_chosen_only_when_none_was_given():
    cfg = to_config(resolve({"dataset": "synthetic", "epochs": 2, "batch_size": 8}))
    filled, chosen, line = recipe.apply(cfg, train_images=300, long_sides=[120, 128, 130], default_size=224)
    assert chosen == {"image_size": 128} and filled.data.image_size == 128
    assert line == f"recipe {recipe.VERSION}: 300 train images of ~128 px: input 128 px (not 224) (set --image-size to choose)"
    given = to_config(resolve({"dataset": "synthetic", "epochs": 2, "batch_size": 8, "image_size": 224}))
    assert recipe.apply(given, train_images=300, long_sides=[128], default_size=224) == (given, {}, "")
    assert recipe.apply(cfg, train_images=300, long_sides=[128], default_size=None) == (cfg, {}, "")  # cannot take it
    # resume: the size a run chose stands; a run that chose none (or an older recipe) keeps the architecture's
    chose = {"config": {"data": {"image_size": 128}}, "resolved": {"recipe": {"version": 3, "chosen": {"image_size": 128}}}}
    assert recipe.recorded(cfg, chose).data.image_size == 128
    reproduced = {"config": {"data": {"image_size": 128}}, "resolved": {"recipe": {"version": 3, "chosen": {}}}}  # tl reproduce's
    assert recipe.recorded(cfg, reproduced).data.image_size == 128
    assert recipe.recorded(cfg, {"config": {}, "resolved": {"recipe": {"version": 2, "chosen": {}}}}).data.image_size is None
    assert recipe.photo_input_size([128], 299) is None  # larger networks keep their input: not measured


def test_the_recipe_chooses_only_sizes_the_architecture_trains_at():
    from tl.models.architectures import trains_at_size

    assert trains_at_size("squeezenet1_0", 128) and trains_at_size("mobilenet_v3_small", 96)
    assert not trains_at_size("inception_v3", 128)  # its auxiliary head, which runs in training only, needs ~299 px
    assert not trains_at_size("vit_b_16", 128) and not trains_at_size("mypkg.models:net", 128)  # a custom one: not guessed


def test_small_photos_train_at_their_size_and_an_older_run_reproduces_at_its_own(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": (220, 30, 30), "b": (30, 40, 220)}, 4, size=100, mixed_modes=False)
    flags = ("--arch", "mobilenet_v3_small", "--weights", "none", "--num-workers", "0", "--log-every", "1000", "--epochs", "1",
             "--batch-size", "4")
    out = tmp_path / "run"
    result = cli("train", *flags, "--data-dir", data, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "train images of ~100 px: input 128 px (not 224)" in result.output
    record = json.loads((out / "config.json").read_text())
    assert record["resolved"]["recipe"]["chosen"] == {"image_size": 128}
    assert record["config"]["data"]["image_size"] == 128 and record["resolved"]["image_size"] == 128
    # The same run as recipe 2 recorded it (no size chosen): reproduced at the architecture's size, not today's choice
    record["resolved"]["recipe"] = {"version": 2, "chosen": {}}
    record["config"]["data"]["image_size"] = None
    (out / "config.json").write_text(json.dumps(record))
    result = cli("reproduce", out, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output + repr(result.exception)
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["resolved"]["image_size"] == 224 and again["resolved"]["recipe"]["chosen"] == {}
