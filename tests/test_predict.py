"""`tl predict-dir` / `tl predict` on a real tiny checkpoint: messy folders, streaming, resume after a kill, two processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, cli, make_image_folder, read_rows, train_tiny_run, write_image

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("predict"))



def messy_folder(root: Path) -> tuple[set[str], set[str]]:
    """Every kind of file a real folder holds; returns (readable, unreadable) relative paths."""
    good = {
        "plain.jpg": "RGB", "grey.png": "L", "alpha.png": "RGBA", "palette.gif": "P", "upper.JPG": "RGB",
        "nested/deeper/mixed.Png": "RGB", "comma, name.jpg": "RGB", 'quote"d.jpg': "RGB", "=SUM(A1).png": "RGB",
        "-minus.png": "RGB", "@at.png": "RGB", "+plus.png": "RGB", "new\nline.png": "RGB",
    }
    for i, (name, mode) in enumerate(good.items()):
        write_image(root / name, (200, 40 * (i % 5), 30), size=12 + i, mode=mode, seed=i)
    Image.new("CMYK", (20, 14), (10, 200, 30, 0)).save(root / "cmyk.jpg")
    Image.fromarray((np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 250)).save(root / "deep16.png")
    good |= {"cmyk.jpg": "CMYK", "deep16.png": "I;16"}
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((root / "plain.jpg").read_bytes()[:60])
    (root / "nested" / "notes.png").write_text("not an image at all")
    (root / "readme.txt").write_text("ignored: not an image extension")
    write_image(root / ".hidden" / "skip.jpg", (1, 2, 3))
    os.symlink(root, root / "nested" / "loop")  # a symlink loop must not hang the scan
    return set(good), {"empty.jpg", "truncated.jpg", "nested/notes.png"}


def test_messy_folder_gives_one_row_per_file(run, tmp_path):
    good, bad = messy_folder(tmp_path / "images")
    out = tmp_path / "preds.csv"
    result = cli("predict-dir", tmp_path / "images", "--checkpoint", run / "best", "--out", out, "--batch-size", "4",
                 "--num-workers", "0")
    assert result.exit_code == 1, result.output + repr(result.exception)  # 1: some files failed
    assert "3 file(s) could not be read" in result.output
    rows = read_rows(out)
    paths = [r["path"][1:] if r["path"].startswith("'") else r["path"] for r in rows]
    assert len(paths) == len(set(paths)) and set(paths) == good | bad
    assert paths == sorted(paths, key=lambda p: [*Path(p).parts])  # the stable sorted order of the scan
    assert list(rows[0])[:3] == ["path", "label", "confidence"] and list(rows[0])[-1] == "error"
    threaded = tmp_path / "threaded.csv"  # the default on the CPU: a thread pool decodes whole chunks between model batches
    assert cli("predict-dir", tmp_path / "images", "--checkpoint", run / "best", "--out", threaded, "--batch-size", "4").exit_code == 1
    assert [(r["path"], r["label"], r["error"]) for r in read_rows(threaded)] == [(r["path"], r["label"], r["error"]) for r in rows]
    assert [c for c in rows[0] if c.startswith("p_")] == ["p_blue", "p_green", "p_red"]  # checkpoint order
    for row, path in zip(rows, paths):
        if path in bad:
            assert row["label"] == "" and row["error"], row
            continue
        probs = [float(row[f"p_{c}"]) for c in ("blue", "green", "red")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4) and row["error"] == ""
        assert row["label"] in CLASSES and float(row["confidence"]) == max(probs)
    for name in ("=SUM(A1).png", "-minus.png", "@at.png", "+plus.png"):
        assert f"'{name}" in [r["path"] for r in rows]  # no spreadsheet formulas
    assert "UnidentifiedImageError" in next(r["error"] for r, p in zip(rows, paths) if p == "nested/notes.png")


def _count_rows(path: Path) -> int:
    try:
        return max(0, len(read_rows(path)))
    except (FileNotFoundError, csv.Error):
        return 0


def test_kill_then_resume_finishes_the_same_csv(run, tmp_path):
    images = tmp_path / "images"
    for i in range(120):
        write_image(images / f"{i // 40}" / f"img_{i:03d}.png", list(CLASSES.values())[i % 3], size=8, seed=i)
    out = tmp_path / "preds.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--num-workers", "0", "--batch-size", "16", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tl.predict_dir", *args[:-3], "--batch-size", "1", "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _count_rows(out) < 5 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    written = _count_rows(out)
    assert 5 <= written < 120, f"the run should have been killed part-way, it wrote {written} rows"  # rows were streamed
    with open(out, "a") as handle:
        handle.write("2/img_119.png,red,0.9")  # a row cut off mid-write by the kill: must be dropped
    assert "--resume" in cli("predict-dir", *args, out).exception.hint  # an existing --out needs --resume or --overwrite
    result = cli("predict-dir", *args, out, "--resume")
    assert result.exit_code == 0, result.output + repr(result.exception)
    fresh = tmp_path / "fresh.csv"
    assert cli("predict-dir", *args, fresh).exit_code == 0
    resumed, expected = read_rows(out), read_rows(fresh)
    assert [r["path"] for r in resumed] == [r["path"] for r in expected] and len(expected) == 120
    assert [r["label"] for r in resumed] == [r["label"] for r in expected]


@pytest.mark.slow
def test_two_processes_write_the_same_csv_as_one(run, tmp_path):
    images = tmp_path / "images"
    for i in range(13):  # odd, with batch 2 on 2 processes: the last step is padded and must not repeat a row
        write_image(images / f"img_{i:02d}.png", list(CLASSES.values())[i % 3], size=10, seed=i)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    single, double = tmp_path / "one.csv", tmp_path / "two.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--batch-size", "2", "--num-workers", "0"]
    assert cli("predict-dir", *args, "--out", single).exit_code == 1
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "tl.predict_dir", *args[:-2], "--out", str(double)]  # default: decoding threads
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert result.returncode != 0, result.stderr[-3000:]  # exit 1 (broken.jpg); the launcher then prints its own traceback
    assert 'tl/predict' not in result.stderr, result.stderr[-3000:]  # but none of tl's code raised
    one, two = read_rows(single), read_rows(double)
    assert [r["path"] for r in two] == [r["path"] for r in one] and len(one) == 14
    for a, b in zip(one, two):
        assert a["label"] == b["label"] and a["error"] == b["error"]
        assert float(a["p_red"] or 0) == pytest.approx(float(b["p_red"] or 0), abs=1e-4)
    assert result.stdout.count("tl predict-dir: done") + result.stderr.count("tl predict-dir: done") == 1


def test_top_k_label_names_tta_and_predict(run, tmp_path):
    from tl.errors import TLError

    images = make_image_folder(tmp_path / "data", CLASSES, 2, splits=("val",)) / "val"
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"red": "Rouge", "green": "=Vert"}))
    out = tmp_path / "top.csv"
    result = cli("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--top-k", "2", "--label-names", names,
                 "--tta", "--num-workers", "0")
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = read_rows(out)
    assert list(rows[0]) == ["path", "label", "confidence", "label_1", "prob_1", "label_2", "prob_2", "error"]
    assert {r["label"] for r in rows} <= {"Rouge", "'=Vert", "blue"} and len(rows) == 6
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) and r["label"] == r["label_1"] for r in rows)
    csv_names = tmp_path / "names.csv"
    csv_names.write_text("class,name\nblue,Bleu\n")
    result = cli("predict", images / "red" / "img_0.jpg", images / "blue" / "img_1.png", "--checkpoint", run / "best",
                 "--label-names", csv_names)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "img_0.jpg" in result.output and "Bleu" in result.output and "probability" in result.output
    for bad, says in (({"red": None}, "the name None"), ({"red": "Same", "green": "Same"}, "two classes the name 'Same'"),
                      (["Rouge", 3], "the name 3")):
        names.write_text(json.dumps(bad))
        result = cli("predict-dir", images, "--checkpoint", run / "best", "--out", tmp_path / "bad.csv", "--label-names", names)
        assert isinstance(result.exception, TLError) and says in str(result.exception), result.output
        assert not (tmp_path / "bad.csv").exists()


def test_bad_input_is_one_line_error(run, tmp_path):
    from tl.errors import TLError

    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", (1, 2, 3))
    (tmp_path / "empty_ckpt").mkdir()
    cases = [
        (("predict-dir", tmp_path / "nowhere", "--checkpoint", run / "best"), "is not a folder"),
        (("predict-dir", tmp_path / "images", "--checkpoint", tmp_path / "empty_ckpt"), "no checkpoint at"),
        (("predict-dir", tmp_path / "images", "--arch", "resnet_18"), "unknown architecture"),
        (("predict-dir", tmp_path / "images"), "no model given"),
        (("predict", tmp_path / "missing.jpg", "--checkpoint", run / "best"), "no such file"),
    ]
    for args, message in cases:
        result = cli(*args, "--out", tmp_path / "x.csv") if args[0] == "predict-dir" else cli(*args)
        assert isinstance(result.exception, TLError) and message in result.exception.message, (args, result.output)
        assert result.exception.hint
    result = subprocess.run([sys.executable, "-m", "tl.predict_dir", str(tmp_path / "images"), "--arch", "resnet_18",
                             "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "did you mean resnet18" in result.stderr


def test_tl_predict_dir_and_module_list_the_same_options():
    import re

    env = {**os.environ, "COLUMNS": "200"}
    via_tl, via_module = (subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True, cwd=ROOT,
                                         env=env, timeout=60) for args in (("tl.cli", "predict-dir"), ("tl.predict_dir",)))
    options = set(re.findall(r"--[a-z][a-z0-9-]+", via_tl.stdout))
    assert {"--out", "--checkpoint", "--arch", "--weights", "--top-k", "--resume", "--tta", "--no-calibration", "--label-names"} <= options
    assert options == set(re.findall(r"--[a-z][a-z0-9-]+", via_module.stdout))


def test_batch_normalize_matches_the_eval_transform():
    """Workers send uint8 crops and the batch is normalised where the model runs: same numbers as eval_transform."""
    import torch

    from tl.data.transforms import BatchNormalize, eval_pixels, eval_transform

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    reference = eval_transform(size=24, resize=28, mean=mean, std=std)(image)
    pixels = eval_pixels(size=24, resize=28)(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 24, 24)
    normalized = BatchNormalize(mean, std)(pixels[None], channels_last=True)
    assert normalized.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(normalized[0], reference, atol=1e-5)


def test_precision_auto_stays_close_to_fp32(run, tmp_path):
    """auto is bf16 on CPUs with native bf16 (fp32 elsewhere): probabilities within a bf16 rounding of fp32."""
    from tl.runtime import cpu_has_native_bf16

    data = run.parent / "data" / "val"
    common = ("--checkpoint", run / "best", "--num-workers", "0")
    assert cli("predict-dir", data, "--out", tmp_path / "auto.csv", *common).exit_code == 0
    assert cli("predict-dir", data, "--out", tmp_path / "fp32.csv", "--precision", "fp32", *common).exit_code == 0
    auto, exact = read_rows(tmp_path / "auto.csv"), read_rows(tmp_path / "fp32.csv")
    assert [r["path"] for r in auto] == [r["path"] for r in exact] and len(auto) == 12
    gaps = [abs(float(a[k]) - float(b[k])) for a, b in zip(auto, exact) for k in a if k.startswith("p_")]
    assert max(gaps) < 0.03
    if not cpu_has_native_bf16():
        assert max(gaps) < 1e-5  # auto is fp32 here
