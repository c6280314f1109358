"""End-to-end runs of the real `tl train` on tiny real data: outputs, accuracy, strategies, reproduce."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tests.conftest import TINY, cli, read_metrics
from tl.models.checkpoint import load_checkpoint, read_meta


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "synthetic"
    result = cli("train", *TINY, "--dataset", "synthetic", "--synthetic-classes", "4", "--synthetic-per-class", "40",
                 "--epochs", "3", "--lr", "0.003", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, result.output


def test_synthetic_run_learns(synthetic_run):
    out, _ = synthetic_run
    metrics = read_metrics(out)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    best = max(m["val_top1"] for m in metrics)
    assert best >= 0.8, f"4-class synthetic set should be learnt (chance is 0.25), got {best}"
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "train_images_per_s", "train_seconds"):
        assert key in metrics[0]


def test_run_writes_every_output(synthetic_run):
    out, output = synthetic_run
    for name in ("config.json", "metrics.jsonl", "best/model.safetensors", "best/tl.json", "last/model.safetensors", "last/tl.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["model"]["arch"] == "resnet18"
    assert config["versions"]["torch"] and config["data_fingerprint"].startswith("synthetic:")
    assert config["class_names"] == ["disc_0", "square_1", "triangle_2", "cross_3"]
    meta = read_meta(out / "best")
    assert meta["class_names"] == config["class_names"] and meta["input_size"] == 32 and meta["arch"] == "resnet18"
    assert len(meta["mean"]) == 3 and meta["metrics"]["val_top1"] == max(m["val_top1"] for m in read_metrics(out))
    with safe_open(str(out / "best" / "model.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["tl"])["class_names"] == config["class_names"]  # the file alone suffices
    assert "best val top-1" in output


def test_checkpoint_rebuilds_the_trained_model(synthetic_run):
    import torch

    from tl.models.checkpoint import checkpoint_state

    out, _ = synthetic_run
    model, meta = load_checkpoint(out / "best")
    saved = checkpoint_state(out / "best")
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_reproduce_gives_the_same_metrics(synthetic_run, tmp_path):
    out, _ = synthetic_run
    result = cli("reproduce", out, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output + repr(result.exception)
    first, again = read_metrics(out), read_metrics(tmp_path / "again")
    for a, b in zip(first, again):
        assert a["val_top1"] == b["val_top1"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_imagefolder_mixed_modes_run(image_folder, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", image_folder, "--epochs", "2",
                 "--batch-size", "6", "--out", out, "--head", "mlp", "--head-hidden", "16", "--dropout", "0.2")
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_metrics(out)
    assert metrics[-1]["val_count"] == 18
    assert read_meta(out / "best")["class_names"] == ["blue", "green", "red"]
    assert read_meta(out / "best")["head"]["kind"] == "mlp"


def test_gradual_unfreezes_the_backbone(tmp_path):
    import torch

    from tl.models.checkpoint import checkpoint_state

    out = tmp_path / "gradual"
    args = (*TINY, "--dataset", "synthetic", "--synthetic-per-class", "16", "--strategy", "gradual", "--unfreeze-epoch", "1")
    assert cli("train", *args, "--epochs", "2", "--out", out).exit_code == 0
    after_head_only = tmp_path / "head_only"
    assert cli("train", *args, "--epochs", "2", "--strategy", "linear", "--out", after_head_only).exit_code == 0
    gradual, linear = checkpoint_state(out / "last"), checkpoint_state(after_head_only / "last")
    from tl.models.architectures import build_model

    torch.manual_seed(0)
    assert not torch.equal(gradual["layer1.0.conv1.weight"], linear["layer1.0.conv1.weight"])  # backbone trained in epoch 2
    assert torch.equal(linear["layer1.0.bn1.running_mean"], build_model("resnet18", 4)[0].state_dict()["layer1.0.bn1.running_mean"])


def test_ema_plateau_and_early_stop(tmp_path):
    out = tmp_path / "ema"
    # A model that cannot change (frozen BatchNorm statistics, a rate of 1e-9) cannot improve val top-1 in epoch 2,
    # whatever the machine: the plateau cuts the rate then and, at --max-reductions 1, stops. (With BatchNorm statistics
    # drifting, an untrained model's top-1 on 16 images wanders and may rise several epochs in a row.)
    result = cli("train", *TINY, "--dataset", "synthetic", "--synthetic-per-class", "16", "--epochs", "6", "--ema", "0.9",
                 "--scheduler", "plateau", "--plateau-patience", "0", "--max-reductions", "1", "--lr", "1e-9",
                 "--freeze-bn", "--head-norm", "none", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_metrics(out)
    assert "ema_val_top1" in metrics[0] and (out / "ema" / "model.safetensors").is_file()
    assert [m["lr_reductions"] for m in metrics] == [0, 1]  # stopped after the first reduction


def test_config_errors_name_the_flag(tmp_path):
    result = cli("train", "--lr", "-1", "--out", tmp_path / "x")
    assert result.exit_code != 0 and "--lr" in str(result.exception)
    result = cli("train", "--dataset", "imagefolder", "--out", tmp_path / "x")
    assert "--data-dir" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_fp16_on_cpu_becomes_bf16(tmp_path):
    out = tmp_path / "fp16"
    result = cli("train", *TINY, "--dataset", "synthetic", "--synthetic-per-class", "8", "--epochs", "1",
                 "--mixed-precision", "fp16", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["mixed_precision"] == "bf16"


def test_missing_tracker_is_a_clear_error(tmp_path):
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed here")
    result = cli("train", *TINY, "--log-with", "tensorboard", "--out", tmp_path / "tb")
    assert "pip install tensorboard" in str(result.exception)


def test_existing_run_is_not_overwritten(synthetic_run):
    out, _ = synthetic_run
    before = (out / "metrics.jsonl").read_text()
    result = cli("train", *TINY, "--epochs", "1", "--out", out)
    assert "already holds a run" in str(result.exception) and "--overwrite" in result.exception.hint
    assert (out / "metrics.jsonl").read_text() == before


def test_unreadable_images_are_skipped_and_counted(image_folder, tmp_path):
    (image_folder / "train" / "red" / "empty.jpg").write_bytes(b"")
    (image_folder / "train" / "green" / "notes.png").write_text("not an image")
    (image_folder / "val" / "blue" / "truncated.jpg").write_bytes((image_folder / "val" / "blue" / "img_0.jpg").read_bytes()[:40])
    out = tmp_path / "bad"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", image_folder, "--epochs", "1",
                 "--batch-size", "4", "--augment", "none", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = read_metrics(out)[0]
    assert metrics["val_unreadable"] == 1 and metrics["val_count"] == 18
    assert metrics["train_unreadable"] <= 2  # drop_last may leave one out of the epoch


def test_strict_turns_unreadable_images_into_an_error(image_folder, tmp_path):
    (image_folder / "val" / "red" / "empty.jpg").write_bytes(b"")  # val: never dropped by drop_last
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", image_folder, "--epochs", "1",
                 "--batch-size", "4", "--strict", "--out", tmp_path / "strict")
    assert "--strict" in str(result.exception) and "unreadable" in str(result.exception)


def test_the_plateau_watches_the_select_by_metric():
    from tl.training.run import watched_metric

    metrics = {"val_top1": 1.0, "val_loss": 0.25, "val_balanced_accuracy": 0.5}
    assert watched_metric(metrics, "val_top1") == 1.0
    assert watched_metric(metrics, "val_loss") == -0.25  # a lower loss is an improvement
    assert watched_metric(metrics, "val_balanced_accuracy") == 0.5


def test_a_plateau_state_recorded_under_val_top1_resumes_watching_val_loss():
    """States saved before the plateau recorded its metric watched val top-1; resumed with --select-by val_loss it
    must start over from the best epoch's loss, not compare losses with an accuracy of 0.85 and cut every epoch."""
    from tl.training.optim import Plateau

    old_state = {"factor": 0.2, "patience": 1, "max_reductions": 2, "best": 0.85, "bad_epochs": 0, "reductions": 0, "multiplier": 1.0}
    plateau = Plateau(**old_state)
    assert plateau.watching == "val_top1"
    plateau.watch("val_loss", -0.6)
    assert [plateau.update(-loss) for loss in (0.5, 0.4, 0.3, 0.2)] == [False] * 4 and not plateau.exhausted
    same = Plateau(**old_state)
    same.watch("val_top1", 0.5)  # the metric it recorded: kept as it was
    assert same.best == 0.85


def test_calibration_reuses_the_best_epochs_own_val_logits(synthetic_run):
    """The temperature is decided on the logits the best epoch was evaluated with (no second pass over val): its
    NLL at T = 1 is that epoch's val loss."""
    out, _ = synthetic_run
    best = max(read_metrics(out), key=lambda m: (m["val_top1"], -m["val_loss"]))
    record = read_meta(out / "best")["calibration"]
    assert record["count"] == best["val_count"] and record["logits_from"] == "the best epoch's evaluation"
    assert record["nll_before"] == pytest.approx(best["val_loss"], rel=1e-5)
