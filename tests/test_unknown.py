"""None of these: --min-confidence turns unsure rows into `unknown`, and tl eval says which threshold buys what accuracy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, cli
from tl.errors import TLError
from tl.inference.evaluate import RISK_THRESHOLDS, risk_coverage, threshold_for
from tl.inference.predictions_csv import csv_row

CONFIDENCE = torch.tensor([0.55, 0.6, 0.7, 0.8, 0.9, 0.95])  # float32, as eval computes them
CORRECT = torch.tensor([False, True, False, True, True, True])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import make_image_folder

    root = tmp_path_factory.mktemp("unknown")
    data = make_image_folder(root / "data", {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}, 6)
    out = root / "run"
    result = cli("train", *TINY, "--weights", "none", "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, data


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_row_below_the_threshold_is_unknown_with_its_probabilities():
    names = ["cat", "dog"]
    assert csv_row("a.jpg", [0.3, 0.7], names, 0, "", min_confidence=0.8) == ["a.jpg", "unknown", "0.700000", "0.300000", "0.700000", ""]
    assert csv_row("a.jpg", [0.3, 0.7], names, 0, "", min_confidence=0.7, unknown_label="other")[1] == "dog"  # reaching it is enough
    assert csv_row("a.jpg", [0.3, 0.7], names, 1, "", min_confidence=0.9, unknown_label="other")[1:] == ["other", "0.700000", "dog", "0.700000", ""]


def test_risk_coverage_and_the_lowest_threshold_for_a_target():
    rows = {row["threshold"]: row for row in risk_coverage(CONFIDENCE, CORRECT)}
    assert list(rows) == list(RISK_THRESHOLDS)
    assert (rows[0.5]["kept"], rows[0.5]["accuracy"]) == (6, pytest.approx(4 / 6))
    assert (rows[0.7]["kept"], rows[0.7]["accuracy"]) == (3, 1.0)  # float32 0.7 is 0.69999998: below 0.7, as predict-dir sees it
    assert (rows[0.99]["kept"], rows[0.99]["coverage"], rows[0.99]["accuracy"]) == (0, 0.0, None)
    found = threshold_for(CONFIDENCE, CORRECT, 0.75)
    assert (found["threshold"], found["kept"], found["accuracy"]) == (0.6, 5, pytest.approx(0.8))
    assert threshold_for(CONFIDENCE, CORRECT, 1.0)["threshold"] == 0.8  # 0.6999 would keep the wrong 0.7 one
    assert threshold_for(CONFIDENCE, torch.ones(6, dtype=torch.bool), 0.99)["threshold"] == 0.0  # every image reaches it already
    assert threshold_for(CONFIDENCE, torch.zeros(6, dtype=torch.bool), 0.5)["threshold"] is None


def test_predict_dir_min_confidence_relabels_only_the_unsure_rows(run, tmp_path):
    out, data = run
    images = data / "val"
    plain, unsure = tmp_path / "plain.csv", tmp_path / "unsure.csv"
    assert cli("predict-dir", images, "--checkpoint", out / "best", "--out", plain).exit_code == 0
    before = _rows(plain)
    confidences = sorted(float(row["confidence"]) for row in before)
    threshold = (confidences[0] + confidences[-1]) / 2
    assert confidences[0] < confidences[-1]
    result = cli("predict-dir", images, "--checkpoint", out / "best", "--out", unsure, "--min-confidence", threshold,
                 "--unknown-label", "none-of-these")
    assert result.exit_code == 0, result.output + repr(result.exception)
    after = _rows(unsure)
    assert [row["path"] for row in after] == [row["path"] for row in before]
    for old, new in zip(before, after):
        assert {k: v for k, v in new.items() if k != "label"} == {k: v for k, v in old.items() if k != "label"}
        assert new["label"] == ("none-of-these" if float(old["confidence"]) < threshold else old["label"])
    assert {"none-of-these"} < {row["label"] for row in after}


def test_predict_json_says_unknown_and_bad_flags_are_refused(run):
    out, data = run
    files = [data / "val" / "red" / "img_0.jpg", data / "val" / "blue" / "img_1.png"]
    plain = json.loads(cli("predict", *files, "--checkpoint", out / "best", "--json").stdout)
    tops = [answer["top"][0]["probability"] for answer in plain]
    assert [answer["label"] for answer in plain] == [answer["top"][0]["label"] for answer in plain]
    if tops[0] != tops[1]:
        result = cli("predict", *files, "--checkpoint", out / "best", "--json", "--min-confidence", sum(tops) / 2)
        labels = [answer["label"] for answer in json.loads(result.stdout)]
        assert labels.count("unknown") == 1 and labels[tops.index(min(tops))] == "unknown"
    for args, flag in ((("--min-confidence", "1.5"), "--min-confidence"), (("--min-confidence", "0.5", "--unknown-label", "red"), "--unknown-label")):
        result = cli("predict-dir", data / "val", "--checkpoint", out / "best", "--out", data / "x.csv", *args)
        assert isinstance(result.exception, TLError) and result.exception.message.startswith(flag)


def test_eval_reports_risk_coverage_and_the_threshold_for_a_target(run, tmp_path):
    out, _ = run
    report = tmp_path / "eval.json"
    result = cli("eval", "--checkpoint", out / "best", "--out", report, "--target-accuracy", "0.9")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "risk-coverage" in result.stdout and "--min-confidence" in result.stdout
    written = json.loads(report.read_text())
    rows = written["risk_coverage"]
    assert [row["threshold"] for row in rows] == list(RISK_THRESHOLDS)
    assert [row["kept"] for row in rows] == sorted((row["kept"] for row in rows), reverse=True)
    assert all(row["coverage"] == pytest.approx(row["kept"] / written["count"]) for row in rows)
    target = written["target_accuracy"]
    assert target["target"] == 0.9
    assert target["threshold"] is None or (target["accuracy"] >= 0.9 and 0 < target["kept"] <= written["count"])
    assert ("no --min-confidence reaches" in result.stdout) == (target["threshold"] is None)
