"""`tl eval` and temperature scaling: pure metric checks, then a real tiny run calibrated, evaluated and predicted."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import TINY, cli, make_image_folder, read_metrics
from tl.errors import TLError
from tl.inference.calibration import (
    MIN_CALIBRATION_IMAGES,
    calibrate_checkpoint,
    decide_temperature,
    expected_calibration_error,
    fit_temperature,
)
from tl.inference.evaluate import Split, classification_metrics, load_split
from tl.models.checkpoint import checkpoint_state, read_meta, update_meta


def _sampled(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is calibrated by construction: labels are drawn from it."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 1.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
    return logits, labels


def test_temperature_scaling_fixes_an_over_confident_model():
    logits, labels = _sampled()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    over = logits * 10
    before = expected_calibration_error(over.softmax(1), labels)
    temperature = fit_temperature(over, labels)
    after = expected_calibration_error((over / temperature).softmax(1), labels)
    assert temperature == pytest.approx(10.0, rel=0.1)
    assert before > 0.2 and after < 0.03 and after < before / 5


def _assert_consistent(record: dict) -> None:
    """A calibration record says what was done and why, and the numbers back it."""
    held = record["held_out"]
    improved = held is not None and held["nll_after"] < held["nll_before"] and held["ece_after"] < held["ece_before"]
    assert record["kept"] == improved
    if record["kept"]:
        assert record["temperature"] == record["fitted_temperature"] > 0 and "lowered" in record["reason"]
    else:
        assert record["temperature"] == 1.0 and record["ece_after"] == pytest.approx(record["ece_before"])
        assert ("too few" in record["reason"]) == (record["count"] < MIN_CALIBRATION_IMAGES)
        assert held is None or "did not lower" in record["reason"]


def test_temperature_is_kept_only_where_held_out_data_show_it_helps():
    logits, labels = _sampled(n=1000)
    over = decide_temperature(logits * 4, labels)  # over-confident by construction: T ~ 4 must be kept
    _assert_consistent(over)
    assert over["kept"] and over["temperature"] == pytest.approx(4.0, rel=0.15) and over["count"] == 1000
    assert over["ece_after"] < over["ece_before"] / 3 and over["held_out"]["ece_after"] < over["held_out"]["ece_before"] / 3
    tiny = decide_temperature(logits[:12] * 4, labels[:12])  # as over-confident, but 12 images cannot show it
    _assert_consistent(tiny)
    assert not tiny["kept"] and tiny["temperature"] == 1.0 and "too few" in tiny["reason"] and tiny["held_out"] is None


def test_expected_calibration_error_by_hand():
    labels = torch.tensor([0, 1, 0, 1])
    confident_right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(confident_right, labels) == pytest.approx(0.0)
    ninety = torch.tensor([[0.9, 0.1]] * 4)  # 90% sure of class 0, right half of the time
    assert expected_calibration_error(ninety, labels) == pytest.approx(0.4)


def test_classification_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0])
    metrics = classification_metrics(torch.nn.functional.one_hot(predicted, 3).float(), labels, ["a", "b", "c"])
    assert metrics["top1"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert metrics["per_class"][0] == {"class": "a", "precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    assert metrics["per_class"][1]["precision"] == pytest.approx(0.5) and metrics["per_class"][2]["f1"] == 0.0
    assert metrics["confusion_matrix"] == [[3, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert {(p["true"], p["predicted"]) for p in metrics["most_confused"]} == {("a", "b"), ("c", "a")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_image_folder(root / "data", {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}, 4,
                             splits=("train", "val", "test"))
    out = root / "run"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "2", "--batch-size", "6", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, data


def test_calibrate_eval_and_predict_agree(run, tmp_path):
    out, data = run
    weights_before = checkpoint_state(out / "best")
    val, _ = load_split(out / "best", Split.val)
    record = calibrate_checkpoint(out / "best", val)
    meta = read_meta(out / "best")
    _assert_consistent(record)
    assert meta["temperature"] == record["temperature"] and meta["calibration"] == record
    assert record["count"] == 12 and not record["kept"] and "too few" in record["reason"]  # 12 images never suffice
    # A temperature stored in the checkpoint must reach eval and predict alike: store one the test can see.
    update_meta(out / "best", temperature=2.0)
    meta = read_meta(out / "best")
    assert json.loads((out / "best" / "tl.json").read_text())["temperature"] == meta["temperature"] == 2.0  # both copies
    assert all(torch.equal(v, weights_before[k]) for k, v in checkpoint_state(out / "best").items())

    result = cli("eval", "--checkpoint", out / "best", "--split", "val", "--num-workers", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "eval.json").read_text())
    best = max(read_metrics(out), key=lambda m: (m["val_top1"], -m["val_loss"]))
    assert report["count"] == 12 and report["top1"] == pytest.approx(best["val_top1"])
    assert report["calibration"]["temperature"] == meta["temperature"] and report["calibration"]["ece_calibrated"] is not None
    assert [c["class"] for c in report["per_class"]] == ["blue", "green", "red"] and "balanced_accuracy" in report
    with open(out / "eval_confusion.csv", newline="") as handle:
        confusion = list(csv.reader(handle))
    assert confusion[0][1:] == ["blue", "green", "red"] and sum(int(v) for row in confusion[1:] for v in row[1:]) == 12

    preds, raw = tmp_path / "val.csv", tmp_path / "raw.csv"
    common = ("--checkpoint", out / "best", "--num-workers", "0", "--batch-size", "5")
    assert cli("predict-dir", data / "val", "--out", preds, *common).exit_code == 0
    assert cli("predict-dir", data / "val", "--out", raw, "--no-calibration", *common).exit_code == 0
    with open(preds, newline="") as a, open(raw, newline="") as b:
        rows, raw_rows = list(csv.DictReader(a)), list(csv.DictReader(b))
    accuracy = sum(r["label"] == r["path"].split("/")[0] for r in rows) / len(rows)
    assert accuracy == pytest.approx(report["top1"])  # prediction and evaluation are one preprocessing, one model
    assert [r["label"] for r in rows] == [r["label"] for r in raw_rows]  # a temperature never changes the argmax
    assert any(abs(float(r["confidence"]) - float(q["confidence"])) > 1e-4 for r, q in zip(rows, raw_rows))

    result = cli("eval", "--checkpoint", out / "best", "--split", "test", "--out", tmp_path / "test.json", "--num-workers", "0")
    assert result.exit_code == 0 and json.loads((tmp_path / "test.json").read_text())["count"] == 12
    assert (tmp_path / "test_confusion.csv").is_file()


def test_eval_bad_input(run, tmp_path):
    out, _ = run
    for args, message in (((tmp_path / "nowhere",), "does not exist"), ((out / "last" / "tl.json",), "is not a model.safetensors")):
        result = cli("eval", "--checkpoint", *args)
        assert isinstance(result.exception, TLError) and message in result.exception.message, result.output
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "model.safetensors").write_bytes((out / "best" / "model.safetensors").read_bytes())
    result = cli("eval", "--checkpoint", tmp_path / "lonely")
    assert isinstance(result.exception, TLError) and "no config.json" in result.exception.message


def test_eval_uses_the_split_the_run_trained_on(tmp_path):
    data = make_image_folder(tmp_path / "flat", {"red": (220, 30, 30), "blue": (30, 30, 220)}, 10, splits=("",))
    out = tmp_path / "run"
    assert cli("split", data, "--out", out, "--fractions", "0.6,0.2,0.2").exit_code == 0
    manifest = json.loads((out / "split.json").read_text())
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--batch-size", "4", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = cli("eval", "--checkpoint", out / "best", "--split", "test")
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "eval.json").read_text())
    assert report["count"] == len(manifest["splits"]["test"]) == 4  # the manifest's test images, not a new split


def test_eval_with_an_unreadable_image_writes_its_figures_and_exits_1(run, tmp_path):
    out, data = run
    test_image = sorted((data / "test" / "red").iterdir())[0]
    kept = test_image.read_bytes()
    try:
        test_image.write_bytes(b"\0" * len(kept))  # same size: the run's file list still holds
        result = cli("eval", "--checkpoint", out / "best", "--split", "test", "--out", tmp_path / "e.json", "--num-workers", "0")
        assert result.exit_code == 1, result.output + repr(result.exception)
        report = json.loads((tmp_path / "e.json").read_text())
        assert report["unreadable"] == 1 and report["count"] == 11
    finally:
        test_image.write_bytes(kept)
