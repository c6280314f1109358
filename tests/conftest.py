"""Shared test helpers: tiny real data written in real on-disk formats, and a way to run the real CLI."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
MODES = ("RGB", "L", "P", "RGBA")  # real folders mix these; every loader must hand out RGB


def write_image(path: Path, colour: tuple[int, int, int], size: int = 16, mode: str = "RGB", seed: int = 0) -> Path:
    """A small noisy image of one dominant colour, saved in ``mode`` with the format the suffix implies."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode) if mode != "RGB" else Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_image_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int, *,
                      splits=("train", "val"), size: int = 16, mixed_modes: bool = True) -> Path:
    """``root/<split>/<class>/img_N.png`` (some GIF/JPEG, in several colour modes), like torchvision's test helper."""
    for split_index, split in enumerate(splits):
        for class_index, (name, colour) in enumerate(classes.items()):
            for i in range(per_class):
                mode = MODES[i % len(MODES)] if mixed_modes else "RGB"
                suffix = {"P": ".gif", "RGB": ".jpg"}.get(mode, ".png")
                write_image(root / split / name / f"img_{i}{suffix}", colour, size, mode,
                            seed=1000 * split_index + 100 * class_index + i)
    return root


@pytest.fixture(autouse=True)
def _caplog_hears_tl(request):
    """caplog listens on the root logger, and tl's logger does not propagate there once a command set it up (its
    own handler prints each line once): a test that asks for caplog gets its handler on tl's logger as well."""
    if "caplog" not in request.fixturenames:
        yield
        return
    handler, logger = request.getfixturevalue("caplog").handler, logging.getLogger("tl")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}, 6)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def cli(*args: str):
    """Invoke the real `tl` Typer app in-process; returns the click Result (exit_code, output)."""
    from typer.testing import CliRunner

    from tl.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


TINY = ("--arch", "resnet18", "--weights", "none", "--image-size", "32", "--num-workers", "0", "--batch-size", "16", "--log-every", "1000")

RGB_CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def train_tiny_run(root: Path) -> Path:
    """A real 1-epoch resnet18 run on a 3-class folder of tiny images (ROOT/run): the checkpoint prediction tests use."""
    data = make_image_folder(root / "data", RGB_CLASSES, 4)
    out = root / "run"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--batch-size", "6", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    """A predictions CSV as dicts (surrogate-free UTF-8, as predict-dir writes it)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


PREDICT_DIR_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def rows_so_far(path: Path) -> int:
    """Rows a running predict-dir has written to its CSV (or journal) so far; 0 before it exists or has a header."""
    import csv

    try:
        return len(read_rows(path))
    except (FileNotFoundError, csv.Error):
        return 0


def stop_predict_dir(signal_number: int, args: list, rows_file: Path, *, whole_group: bool = False):
    """Run ``python -m tl.predict_dir ARGS`` as a program, send it ``signal_number`` once ``rows_file`` holds 3 rows
    (to its whole process group, loader workers included, as a terminal or SLURM does, with ``whole_group``), and
    wait for it to end: its ``subprocess.CompletedProcess``."""
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "tl.predict_dir", *map(str, args)], env=PREDICT_DIR_ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=whole_group)
    try:
        deadline = time.monotonic() + 120
        while rows_so_far(rows_file) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(process.pid, signal_number) if whole_group else process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
