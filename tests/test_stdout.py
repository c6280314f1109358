"""Unix manners: answers on stdout, progress and diagnostics on stderr, and ``--json`` that parses, on a real tiny run.

click's CliRunner keeps the two streams apart (``result.stdout``, ``result.stderr``); one test runs ``tl`` through a
real pipe as a shell would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, cli, make_image_folder

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdout")
    data = make_image_folder(root / "data", CLASSES, 2, splits=("train", "val", "test"))
    out = root / "run"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--batch-size", "6",
                 "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, data, result


def test_archs_through_a_pipe_and_as_json():
    piped = subprocess.run([sys.executable, "-m", "tl.cli", "archs", "resnet18"], cwd=ROOT, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    [row] = [line for line in piped.stdout.splitlines() if "resnet18" in line]  # what `tl archs | grep resnet18` keeps
    assert "11.7M" in row and "224" in row and "fc" in row
    assert "resnet18" not in piped.stderr and "\x1b[" not in piped.stdout  # no table and no colour codes elsewhere

    result = cli("archs", "resnet18", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"name": "resnet18", "params": 11_689_512, "input_size": 224, "head": "fc",
                                          "aux_heads": []}]
    assert "resnet18" not in result.stderr


def test_train_summary_and_check_data_on_stdout(run):
    _, data, result = run
    assert "tl train: done" in result.stdout and "tl train: done" not in result.stderr
    assert "epoch 1:" in result.stderr and "epoch 1:" not in result.stdout  # progress stays on stderr
    checked = cli("check-data", "--dataset", "imagefolder", "--data-dir", data)
    assert checked.exit_code == 0, checked.output
    assert "no problems" in checked.stdout and "no problems" not in checked.stderr


def test_predict_table_on_stdout_and_json_with_an_unreadable_file(run, tmp_path):
    out, data, _ = run
    good = [data / "val" / "red" / "img_0.jpg", data / "val" / "blue" / "img_1.png"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")

    result = cli("predict", *good, broken, "--checkpoint", out / "best")
    assert result.exit_code == 1, result.output + repr(result.exception)  # 1: one file could not be read
    assert all(str(path) in result.stdout for path in good) and "probability" in result.stdout
    assert "broken.jpg" in result.stderr and "broken.jpg" not in result.stdout
    assert "probability" not in result.stderr

    result = cli("predict", *good, broken, "--checkpoint", out / "best", "--top-k", "2", "--json")
    assert result.exit_code == 1, result.output + repr(result.exception)
    answers = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert [a["path"] for a in answers] == [str(p) for p in [*good, broken]]
    for answer in answers[:2]:
        assert answer["error"] is None and len(answer["top"]) == 2
        assert {t["label"] for t in answer["top"]} <= set(CLASSES)
        assert 1 >= answer["top"][0]["probability"] >= answer["top"][1]["probability"] >= 0
    assert answers[2]["top"] == [] and "broken.jpg" in answers[2]["error"]

    result = cli("predict", *good, "--checkpoint", out / "best", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 2


def test_predict_dir_summary_and_export_line_on_stdout(run, tmp_path):
    out, data, _ = run
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data / "val" / "red").iterdir()):
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken.jpg").write_bytes(b"not an image")
    result = cli("predict-dir", images, "--checkpoint", out / "best", "--out", tmp_path / "p.csv", "--num-workers", "0")
    assert result.exit_code == 1, result.output + repr(result.exception)
    assert "tl predict-dir: done" in result.stdout and "tl predict-dir: done" not in result.stderr
    assert "1 file(s) could not be read" in result.stderr and "could not be read" not in result.stdout

    result = cli("export", out / "best", "--to", tmp_path / "bundle")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "exported" in result.stdout and "exported" not in result.stderr


def test_eval_tables_on_stdout_and_json(run, tmp_path):
    out, _, _ = run
    written = tmp_path / ("a-folder-name-long-enough-that-an-80-column-table-would-wrap-it" * 2) / "eval.json"
    result = cli("eval", "--checkpoint", out / "best", "--num-workers", "0", "--out", written)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "top-1" in result.stdout and "per class" in result.stdout and "top-1" not in result.stderr
    assert any(str(written) in line for line in result.stdout.splitlines())  # piped, a long path stays on one line

    result = cli("eval", "--checkpoint", out / "best", "--split", "test", "--num-workers", "0", "--json",
                 "--out", tmp_path / "test.json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    metrics = json.loads(result.stdout)
    assert metrics == json.loads((tmp_path / "test.json").read_text())
    assert metrics["split"] == "test" and metrics["count"] == 6 and 0 <= metrics["top1"] <= 1


def test_doctor_facts_on_stdout_warnings_on_stderr():
    result = cli("doctor", "--num-workers", "512")  # more workers than any test machine has CPUs
    assert result.exit_code == 0, result.output
    assert "versions: python" in result.stdout and "versions" not in result.stderr
    assert "warning:" in result.stderr and "busy threads" in result.stderr and "warning" not in result.stdout
