"""Multi-label end to end: a generated set of colour patches (an image holds 1-3 of red/green/blue, labelled with
every colour present) written as PNGs and a CSV; training learns it, resumes exactly, keeps its thresholds in the
checkpoint, and predict-dir, predict, the API and eval say the same about the same images."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import RGB_CLASSES, ROOT, cli, read_metrics
from tl.inference import multilabel as scores
from tl.models.checkpoint import checkpoint_state, read_meta

ARGS = ("--arch", "resnet18", "--weights", "none", "--image-size", "32", "--num-workers", "0", "--batch-size", "16",
        "--log-every", "1000", "--epochs", "4", "--save-every-steps", "3", "--keep-states", "3", "--dropout", "0.2")


def make_patches(root: Path, count: int = 128, seed: int = 0) -> Path:
    """``root/img/NNN.png``: a grey 32 px image with 1-3 of its quadrants painted red, green or blue (each colour
    present with probability 0.4, at least one), and ``root/labels.csv`` naming every colour present, space-separated."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = [["path", "labels"]]
    for i in range(count):
        present = [c for c in RGB_CLASSES if pick.random() < 0.4] or [pick.choice(list(RGB_CLASSES))]
        corners = [(0, 0), (0, 16), (16, 0), (16, 16)]
        pick.shuffle(corners)
        pixels = np.full((32, 32, 3), 128.0)
        for colour, (y, x) in zip(present, corners):
            pixels[y:y + 16, x:x + 16] = RGB_CLASSES[colour]
        Image.fromarray(np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        rows.append([f"img/{i:03d}.png", " ".join(present)])
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root / "labels.csv"


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> Path:
    return make_patches(tmp_path_factory.mktemp("patches"))


@pytest.fixture(scope="module")
def reference(patches, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "run"
    result = cli("train", *ARGS, "--labels", patches, "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_average_precision_and_thresholds_by_hand():
    probs = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    truth = torch.tensor([1, 0, 1, 0, 0, 1])
    assert scores.average_precision(probs, truth) == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert scores.average_precision(probs, torch.zeros(6)) is None
    tied = torch.tensor([0.5, 0.5, 0.5, 0.5])  # one threshold: precision 1/2 at recall 1
    assert scores.average_precision(tied, torch.tensor([1, 0, 1, 0])) == pytest.approx(0.5)
    many = torch.tensor([[0.9, 0.2], [0.8, 0.1], [0.35, 0.3], [0.3, 0.9], [0.2, 0.4], [0.1, 0.6], [0.7, 0.2], [0.6, 0.1]])
    targets = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0], [0, 0], [1, 0], [0, 0]])
    thresholds = scores.fit_thresholds(many, targets)
    assert thresholds[0] == pytest.approx((0.2 + 0.1) / 2)  # F1 10/12 calling the top 7: halfway to the 8th score
    assert thresholds[1] == 0.5  # one positive: too few to fit, kept at 0.5
    f1 = scores.f1_scores(scores.decide(many, thresholds), targets)
    assert 0 < f1["f1_micro"] <= 1 and f1["exact_match"] == pytest.approx(5 / 8)


def test_balance_loss_weighs_each_classes_positives():
    from tl.training.multilabel import MultiLabelLoss, positive_weights

    weights = positive_weights([(0,), (0, 1), (0,), (0,), ()], 3)  # class 0 in 4 of 5 images, class 1 in 1, class 2 in none
    assert weights == pytest.approx([(1 / 4) ** 0.5, (4 / 1) ** 0.5, 1.0])
    logits, targets = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    plain = MultiLabelLoss()(logits, targets)
    weighted = MultiLabelLoss(torch.tensor(weights))(logits, targets)
    assert plain.shape == (2,) and torch.allclose(plain, torch.full((2,), 0.6931), atol=1e-4)
    assert weighted[0] == pytest.approx(0.6931 * (weights[0] + weights[1] + 1) / 3, abs=1e-4) and weighted[1] == pytest.approx(plain[1])


def test_mixing_keeps_label_vectors_convex():
    from tl.training.multilabel import batch_mix

    torch.manual_seed(0)
    images, targets = torch.rand(4, 3, 8, 8), torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    for mix in (batch_mix(mixup=0.4, cutmix=0.0), batch_mix(mixup=0.0, cutmix=1.0)):
        mixed_images, mixed = mix(images, targets)
        assert mixed_images.shape == images.shape and mixed.shape == targets.shape
        lam = mixed[0, 0]  # image 0 (red) mixed with image 3 (red+green) rolled in
        assert 0 <= float(lam) <= 1 and torch.allclose(mixed[1], torch.tensor([1 - float(mixed[1, 1]), float(mixed[1, 1]), 0.0]))


def test_multilabel_run_learns_and_keeps_its_thresholds(reference, patches):
    metrics = read_metrics(reference)
    best = max(m["val_map"] for m in metrics)
    frequencies = []  # the mAP of a model that scores every image alike: each class's share of the val images
    for m in metrics[:1]:
        assert {"val_map", "val_f1_micro", "val_f1_macro", "val_exact_match"} <= set(m)
    rows = list(csv.DictReader(open(patches)))
    for colour in RGB_CLASSES:
        frequencies.append(sum(colour in row["labels"].split() for row in rows) / len(rows))
    assert best >= 0.8 > max(frequencies) + 0.25, (best, frequencies)
    meta = read_meta(reference / "best")
    assert meta["task"] == "multilabel" and len(meta["thresholds"]) == 3 and all(0 < t < 1 for t in meta["thresholds"])
    config = json.loads((reference / "config.json").read_text())["config"]
    assert config["run"]["select_by"] == "val_map" and config["data"]["dataset"] == "labels"


def test_multilabel_resume_after_sigkill_is_exact(reference, patches, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen([sys.executable, "-m", "tl.train", *ARGS, "--labels", str(patches), "--out", str(out), "--resume", "auto"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "state" / "step-00000009").is_dir():  # epoch 2 of 4 (6 steps an epoch): mid-run
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait()
    result = cli("train", *ARGS, "--labels", patches, "--out", out, "--resume", "auto")
    assert result.exit_code == 0, result.output + repr(result.exception)
    got, want = read_metrics(out), read_metrics(reference)
    assert [m["epoch"] for m in got] == [1, 2, 3, 4]
    for a, b in zip(got, want):
        for key in ("train_loss", "val_loss", "val_map", "val_f1_micro", "val_exact_match"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    final, expected = checkpoint_state(out / "last"), checkpoint_state(reference / "last")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert read_meta(out / "best")["thresholds"] == read_meta(reference / "best")["thresholds"]


def test_predict_dir_predict_api_and_eval_agree(reference, patches, tmp_path):
    import tl

    val = json.loads((reference / "split.json").read_text())["splits"]["val"][:6]
    folder = tmp_path / "some"
    folder.mkdir()
    for key in val:
        (folder / Path(key).name).write_bytes((patches.parent / key).read_bytes())
    common = ("--checkpoint", reference / "best", "--precision", "fp32")
    result = cli("predict-dir", folder, *common, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in csv.DictReader(open(tmp_path / "p.csv"))}
    assert list(next(iter(rows.values()))) == ["path", "labels", "p_blue", "p_green", "p_red", "error"]
    thresholds = read_meta(reference / "best")["thresholds"]
    for name, row in rows.items():
        probs = [float(row[f"p_{c}"]) for c in ("blue", "green", "red")]
        assert row["labels"] == ";".join(c for c, p, t in zip(("blue", "green", "red"), probs, thresholds) if p >= t)
    files = sorted(folder.iterdir())
    printed = cli("predict", *files, "--checkpoint", reference / "best", "--json")
    assert printed.exit_code == 0, printed.output
    answers = json.loads(printed.stdout)
    clf = tl.load(reference)
    for answer, prediction, path in zip(answers, clf.predict(files), files):
        assert answer["labels"] == prediction.labels == (rows[path.name]["labels"].split(";") if rows[path.name]["labels"] else [])
        assert prediction.probs["red"] == pytest.approx(float(rows[path.name]["p_red"]), abs=2e-2)  # bf16 vs fp32
    everyone = cli("predict-dir", folder, *common, "--out", tmp_path / "all.csv", "--threshold", "0.0")
    assert everyone.exit_code == 0 and all(r["labels"] == "blue;green;red" for r in csv.DictReader(open(tmp_path / "all.csv")))
    evaluated = cli("eval", "--checkpoint", reference / "best", "--precision", "fp32", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    best = json.loads((reference / "best" / "tl.json").read_text())["metrics"]
    assert report["map"] == pytest.approx(best["val_map"], abs=1e-6) and report["count"] == best["val_count"]
    assert [row["threshold"] for row in report["per_class"]] == pytest.approx(thresholds)
    assert "confusion" in report["note"] and "confusion_matrix" not in report


def test_check_data_lists_every_bad_row_and_the_unlabelled_images(patches, tmp_path):
    rows = patches.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows[:20] + [rows[3].replace("img/", "img/../img/").split(",")[0] + ",red", rows[5], "img/nope.png,red"]) + "\n")
    result = cli("check-data", "--labels", bad, "--data-dir", patches.parent)
    assert result.exit_code == 1, result.output
    assert "missing" in result.stdout and "nope.png does not exist" in result.stdout
    assert "duplicate" in result.stdout and "line 23" in result.stdout  # rows[5] again
    clean = cli("check-data", "--labels", patches, "--quick")
    assert clean.exit_code == 0, clean.output
    assert "multi-label: 128 rows, 3 classes" in clean.stdout and "no problems" in clean.stdout
    row = next(line for line in clean.stdout.splitlines() if line.strip("│ ").startswith("total"))
    assert sum(int(n) for n in re.findall(r"\d+", row)) == 128, row  # images, not labels (several per image)
    subset = tmp_path / "subset.csv"
    subset.write_text("\n".join(rows[:60]) + "\n")  # the other 69 images of the folder have no row
    partial = cli("check-data", "--labels", subset, "--data-dir", patches.parent, "--quick")
    assert partial.exit_code == 1 and "69 image(s)" in partial.stdout


def test_split_counts_each_image_once_in_its_total(patches, tmp_path):
    result = cli("split", patches.parent, "--labels", patches, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("total"))
    assert sum(int(n) for n in re.findall(r"\d+", row)) == 128, row  # 128 images, more labels


def test_prepare_writes_a_sequence_of_class_labels_that_trains_multilabel(patches, tmp_path):
    import datasets

    prepared = cli("prepare", "--labels", patches, "--out", tmp_path / "prep", "--short-side", "32")
    assert prepared.exit_code == 0, prepared.output
    train = datasets.load_from_disk(str(tmp_path / "prep"))["train"]
    assert train.features["label"].feature.names == ["blue", "green", "red"]
    result = cli("train", "--arch", "resnet18", "--weights", "none", "--image-size", "32", "--num-workers", "0",
                 "--dataset", f"hf:{tmp_path / 'prep'}", "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "task: multilabel" in result.output and "val_map" in read_metrics(tmp_path / "run")[0]
    shown = cli("show-batch", "--labels", patches, "--arch", "resnet18", "--image-size", "32", "--n", "4", "--out", tmp_path / "b.png")
    assert shown.exit_code == 0 and (tmp_path / "b.png").is_file()
    single = cli("train", "--arch", "resnet18", "--labels", patches, "--task", "single", "--epochs", "1", "--out", tmp_path / "s")
    from tl.errors import TLError

    assert isinstance(single.exception, TLError) and "--task single" in str(single.exception)
