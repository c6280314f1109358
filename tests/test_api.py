"""The Python API on real tiny runs: tl.train -> Run, tl.load -> Classifier, predict / predict_dir / plot, TLError."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import tl
from tests.conftest import ROOT, make_image_folder, write_image

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TINY = dict(arch="resnet18", weights="none", image_size=32, num_workers=0, batch_size=6, epochs=2, log_every=1000)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("api") / "data", CLASSES, 4)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> tl.Run:
    return tl.train(dataset="imagefolder", data_dir=data, out=tmp_path_factory.mktemp("api") / "run", progress=False, **TINY)


def test_train_returns_the_run(run):
    assert run.checkpoint == run.out / "best" and (run.checkpoint / "model.safetensors").is_file()
    assert [m["epoch"] for m in run.metrics] == [1, 2]
    assert 0.0 <= run.best["val_top1"] <= 1.0
    assert run.best["val_top1"] == max(m["val_top1"] for m in run.metrics)


def test_train_without_progress_prints_nothing(data, tmp_path, capfd):
    tl.train(dataset="imagefolder", data_dir=data, out=tmp_path / "quiet", progress=False, **{**TINY, "epochs": 1})
    out, err = capfd.readouterr()
    assert out == "" and "epoch 1" not in err
    tl.train(data_dir=data, out=tmp_path / "inferred", progress=False, **{**TINY, "epochs": 1})  # the dataset inferred
    out, err = capfd.readouterr()
    assert out == "" and "inferred" not in err and "epoch 1" not in err


def test_load_accepts_run_folder_checkpoint_and_file(run):
    for path in (run.out, run.checkpoint, run.checkpoint / "model.safetensors"):
        clf = tl.load(path)
        assert clf.class_names == sorted(CLASSES) and not clf.model.training


def test_predict_one_many_and_unreadable(run, data, tmp_path):
    clf = tl.load(run.checkpoint)
    files = sorted((data / "val" / "red").iterdir())
    one = clf.predict(files[0])
    assert isinstance(one, tl.Prediction) and one.error is None and one.label in CLASSES
    assert one.confidence == pytest.approx(max(one.probs.values())) and sum(one.probs.values()) == pytest.approx(1.0, abs=1e-4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    pil = Image.open(files[0])
    import torchvision

    tensor = torchvision.io.decode_image(str(write_image(tmp_path / "t.png", (220, 30, 30), size=20)))
    answers = clf.predict([files[0], broken, pil, tensor])
    assert [bool(a.error) for a in answers] == [False, True, False, False]
    assert answers[1].label == "" and "broken.jpg" in answers[1].error
    assert answers[2].label == answers[0].label  # the PIL image of the same file: the same answer
    assert answers[2].probs == pytest.approx(answers[0].probs, abs=2e-3)
    assert clf.predict(files[0], min_confidence=one.confidence).label == one.label  # reaching the threshold is enough
    above = min(1.0, one.confidence + 1e-4)
    cautious = clf.predict(files[0], min_confidence=above, unknown_label="none-of-these")
    assert cautious.label == ("none-of-these" if one.confidence < above else one.label)
    assert cautious.probs == pytest.approx(one.probs) and cautious.error is None
    with pytest.raises(tl.TLError, match="one of the model's classes"):
        clf.predict(files[0], min_confidence=0.5, unknown_label="red")


def test_predict_agrees_with_predict_dir(run, data, tmp_path):
    clf = tl.load(run.out)
    images = data / "val"
    out = tmp_path / "preds.csv"
    summary = clf.predict_dir(images, out, progress=False)
    assert summary.predicted == summary.total == 12 and summary.failed == 0
    with open(out, newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    files = sorted(images.rglob("*.*"))
    for file, prediction in zip(files, clf.predict(files)):
        row = rows[file.relative_to(images).as_posix()]
        assert prediction.label == row["label"]
        assert prediction.confidence == pytest.approx(float(row["confidence"]), abs=1e-4)


def test_errors_are_tlerrors_not_exits(run, tmp_path):
    with pytest.raises(tl.TLError, match="does not exist"):
        tl.load(tmp_path / "missing")
    with pytest.raises(tl.TLError, match="unknown option 'lrr'") as error:
        tl.train(lrr=0.1, out=tmp_path / "x")
    assert "lr" in error.value.hint
    with pytest.raises(tl.TLError, match="--epochs"):
        tl.train(epochs=0, out=tmp_path / "x")
    with pytest.raises(tl.TLError, match=r"inputs\[0\]: cannot predict a int"):  # a programming error, not a row
        tl.load(run.out).predict([3])


def test_pictures_are_figures(run, data):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    assert isinstance(tl.plot(run), Figure)
    figure = tl.load(run.checkpoint).show_predictions([*sorted((data / "val" / "red").iterdir())[:2], Image.new("RGB", (20, 20))])
    assert isinstance(figure, Figure) and len([ax for ax in figure.axes if ax.images]) == 3


def test_import_tl_stays_light():
    """`import tl` must not import torch: the CLI's start-up and `tl --help` depend on it."""
    code = "import sys, tl; assert 'torch' not in sys.modules, 'torch imported'; print(tl.TLError.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "TLError", result.stderr


def test_recipe_file_and_overrides_resolve_like_the_command_line(tmp_path):
    """A YAML recipe plus flags gives the same config as the equivalent command line; a bad key is one line."""
    from tl.training.options import defaults, read_recipe, resolve, to_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("arch: squeezenet1_0\nlr: 0.05\nhead: mlp\nhead_hidden: 64\nmean: [0.5, 0.5, 0.5]\noptim:\n  scheduler: plateau\n")
    from_file = to_config(resolve({"lr": 0.01, "epochs": 2}, recipe))
    from_flags = to_config(resolve({"arch": "squeezenet1_0", "lr": 0.01, "head": "mlp", "head_hidden": 64,
                                    "mean": "0.5,0.5,0.5", "scheduler": "plateau", "epochs": 2}))
    assert from_file == from_flags and from_file.optim.lr == 0.01 and from_file.model.head_hidden == 64
    assert set(defaults()) == set(read_recipe(_printed_config(tmp_path)))  # --print-config is a complete recipe
    recipe.write_text("lr: 0.1\nhead_hiden: 3\n")
    with pytest.raises(tl.TLError) as error:
        read_recipe(recipe)
    assert "head_hiden" in error.value.message and "head_hidden" in error.value.hint


def _printed_config(tmp_path: Path) -> Path:
    result = subprocess.run([sys.executable, "-m", "tl.train", "--print-config", "--lr", "0.02", "--arch", "squeezenet1_0"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "printed.yaml"
    path.write_text(result.stdout)
    return path


def test_cli_config_file_with_overrides_and_a_previous_run(run, tmp_path):
    """`tl train --config` takes a recipe or a run's config.json; flags on the command line win; config.json records it."""
    import json

    from tests.conftest import cli

    out = tmp_path / "again"
    result = cli("train", "--config", run.out / "config.json", "--out", out, "--epochs", "1", "--lr", "0.002")
    assert result.exit_code == 0, result.output
    first, second = (json.loads((p / "config.json").read_text())["config"] for p in (run.out, out))
    assert second["optim"]["lr"] == 0.002 and second["run"]["epochs"] == 1 and second["run"]["out"] == str(out)
    assert second["model"] == first["model"] and second["data"] == first["data"]


def test_weights_default_and_the_from_scratch_warning(data, tmp_path):
    from tl.config import DataConfig, ModelConfig, TrainConfig

    real = TrainConfig(data=DataConfig(dataset="imagefolder", data_dir=str(data)))
    synthetic, custom = TrainConfig(), TrainConfig(model=ModelConfig(arch="my_pkg.models:build"))
    assert (real.model.weights, synthetic.model.weights, custom.model.weights) == ("DEFAULT", "none", "none")
    from tests.conftest import cli

    folder = cli("train", "--dataset", "imagefolder", "--data-dir", data, "--weights", "none", "--arch", "resnet18",
                 "--image-size", "32", "--epochs", "1", "--num-workers", "0", "--out", tmp_path / "scratch")
    assert folder.exit_code == 0 and "from random weights" in folder.stderr and "--weights DEFAULT" in folder.stderr
    demo = cli("train", "--dataset", "synthetic", "--synthetic-classes", "2", "--synthetic-per-class", "4", "--arch", "resnet18",
               "--image-size", "32", "--epochs", "1", "--num-workers", "0", "--out", tmp_path / "demo")
    assert demo.exit_code == 0 and "random weights" not in demo.stderr


@pytest.mark.parametrize("recipe", sorted((ROOT / "scripts" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid(recipe):
    from tl.training.options import read_recipe, resolve, to_config

    options = read_recipe(recipe)
    cfg = to_config(resolve({"data_dir": "somewhere"}, recipe))
    assert options and all(getattr(getattr(cfg, section), name) == value or name == "weights"
                           for name, value in options.items() for section in ("data", "model", "finetune", "optim", "run")
                           if hasattr(getattr(cfg, section), name))


def test_recipe_values_are_typed_and_print_config_keeps_auto(tmp_path):
    """YAML reads 1e-3 as a string and people write "false": both become their field's type; nonsense is one line."""
    from tl.training.options import read_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text('lr: 1e-3\noptim:\n  weight-decay: 5e-4\nchannels_last: "false"\nepochs: "3"\n')
    assert read_recipe(recipe) == {"lr": 0.001, "weight_decay": 0.0005, "channels_last": False, "epochs": 3}
    for text, message in (("lr: fast\n", "lr must be a number"), ("true: 1\n", "is not an option name")):
        recipe.write_text(text)
        with pytest.raises(tl.TLError, match=message):
            read_recipe(recipe)
    printed = read_recipe(_printed_config(tmp_path))
    assert printed["weights"] == "auto" and printed["lr"] == 0.02 and printed["arch"] == "squeezenet1_0"
