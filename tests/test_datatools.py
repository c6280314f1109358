"""tl check-data, tl split and tl stats on tiny real folders, through the real CLI."""

from __future__ import annotations

import io
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, cli, make_image_folder, write_image
from tl.errors import TLError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40)}


def _broken_folder(root: Path) -> dict[str, str]:
    """A clean train/val folder plus one file of every awkward kind; {key: what check-data must say}."""
    make_image_folder(root, COLOURS, 4, mixed_modes=False)
    bad = root / "train" / "red"
    (bad / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg.getvalue()[:-10])  # the header survives: only a decode notices
    (bad / "notes.png").write_text("hello, this is not a picture\n")
    write_image(bad / "cmyk.jpg", (200, 40, 40), mode="CMYK", seed=1)
    Image.fromarray((np.arange(256).reshape(16, 16) * 200).astype(np.uint16)).save(bad / "deep.png")
    write_image(bad / "palette.gif", (200, 40, 40), mode="P", seed=2)
    write_image(bad / "alpha.png", (200, 40, 40), mode="RGBA", seed=3)
    shutil.copy(root / "train" / "green" / "img_0.jpg", root / "val" / "green" / "copy.jpg")
    (root / "train" / "red" / "README.txt").write_text("not read by tl")
    return {"train/red/empty.jpg": "empty file", "train/red/truncated.jpg": "truncated JPEG",
            "train/red/notes.png": "not an image: text"}


def test_check_data_reports_every_kind_of_bad_file(tmp_path):
    expected = _broken_folder(tmp_path / "data")
    assert Image.open(tmp_path / "data/train/red/deep.png").mode == "I;16"
    result = cli("check-data", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--num-workers", "0")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    for key, reason in expected.items():
        assert any(line.startswith(f"unreadable {key}: {reason}") for line in lines), (key, result.stdout)
    assert "CMYK (CMYK)" not in result.stdout
    for mode in ("CMYK 1", "16-bit (I;16) 1", "palette (P) 1", "RGBA 1"):
        assert mode in result.stdout, mode
    assert "duplicate  train/green/img_0.jpg = val/green/copy.jpg: same image in train and val" in result.stdout
    assert "train/red/README.txt" in result.stdout  # a file tl silently skips is a note, not a problem
    assert "3 problem(s)" not in result.stdout and "4 problem(s)" in result.stdout
    quick = cli("check-data", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--num-workers", "0", "--quick")
    assert quick.exit_code == 1 and "truncated.jpg" not in quick.stdout and "copy.jpg" in quick.stdout


def test_check_data_clean_folder_exits_0(tmp_path):
    make_image_folder(tmp_path / "data", COLOURS, 3)
    result = cli("check-data", "--dataset", "imagefolder", "--data-dir", tmp_path / "data", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert "no problems" in result.stdout and "│ red   │     3 │   3 │" in result.stdout
    synthetic = cli("check-data", "--dataset", "synthetic", "--num-workers", "0")
    assert synthetic.exit_code == 0 and "width    min 32  median 32  max 32" in synthetic.stdout


def _flat(root: Path, per_class: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            write_image(root / name / f"{i}.png", (60 * c, 100, 200 - 60 * c), seed=c * 100 + i)
    return root


def test_split_manifest_is_stratified_seeded_and_readable(tmp_path):
    from tl.data.splits import split_with_manifest

    source = _flat(tmp_path / "flat", {"a": 8, "b": 12, "c": 4})
    args = ("split", source, "--fractions", "0.5,0.25,0.25", "--seed", "7")
    assert cli(*args, "--out", tmp_path / "one").exit_code == 0
    assert cli(*args, "--out", tmp_path / "two").exit_code == 0
    one = json.loads((tmp_path / "one/split.json").read_text())
    assert one == json.loads((tmp_path / "two/split.json").read_text())  # same seed, same split
    for name, n in {"a": 8, "b": 12, "c": 4}.items():
        shares = [sum(k.startswith(name + "/") for k in one["splits"][p]) for p in ("train", "val", "test")]
        assert shares == [n // 2, n // 4, n // 4], (name, shares)
    assert cli(*args[:-1], "8", "--out", tmp_path / "other").exit_code == 0
    assert json.loads((tmp_path / "other/split.json").read_text())["splits"] != one["splits"]
    keys = sorted(k for part in one["splits"].values() for k in part)
    parts = split_with_manifest(keys, [0] * len(keys), val_fraction=0.5, test_fraction=0.0, seed=0,
                                manifest=tmp_path / "one/split.json")
    assert {p: sorted(keys[i] for i in idx) for p, idx in parts.items()} == {p: sorted(v) for p, v in one["splits"].items()}
    again = cli(*args, "--out", tmp_path / "one")  # in-process the TLError surfaces; `tl` prints it as one line, exit 2
    assert isinstance(again.exception, TLError) and "--overwrite" in again.exception.hint
    bad = cli("split", source, "--out", tmp_path / "bad", "--fractions", "0.5,0.6")
    assert isinstance(bad.exception, TLError) and bad.exception.message.startswith("--fractions:")
    assert cli("split", source, "--out", tmp_path / "three", "--fractions", "0.5,0.25,0.25", "--seed", "7", "--materialize",
               "--overwrite").exit_code == 0


def test_materialized_split_trains_with_its_own_stats(tmp_path):
    source = _flat(tmp_path / "flat", {"a": 6, "b": 6})
    result = cli("split", source, "--out", tmp_path / "split", "--fractions", "0.5,0.25,0.25", "--materialize")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "split/test").iterdir()) == ["a", "b"]
    assert (tmp_path / "split/train/a").iterdir().__next__().is_symlink()
    stats = cli("stats", "--dataset", "imagefolder", "--data-dir", tmp_path / "split", "--size", "16", "--num-workers", "0")
    assert stats.exit_code == 0, stats.output
    flags = shlex.split(stats.stdout.strip().splitlines()[-1])
    run = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", tmp_path / "split", "--epochs", "1",
              "--out", tmp_path / "run", *flags)
    assert run.exit_code == 0, run.output
    saved = json.loads((tmp_path / "run/config.json").read_text())
    config = saved.get("config", saved)["data"]
    assert config["mean"] == pytest.approx([float(v) for v in flags[1].split(",")])


def test_stats_match_analytic_values(tmp_path):
    from tl.training.options import parse_option

    c1, c2 = np.array([200, 100, 0]), np.array([0, 100, 250])
    for name in ("x", "y"):
        (tmp_path / "train" / name).mkdir(parents=True)
    for i, size in enumerate((20, 40, 33)):  # three of colour 1 (any size: resize and crop keep a flat colour), one of colour 2
        Image.new("RGB", (size, size + 7), tuple(int(v) for v in c1)).save(tmp_path / f"train/x/{i}.png")
    Image.new("RGB", (24, 24), tuple(int(v) for v in c2)).save(tmp_path / "train/y/0.png")
    for name in ("x", "y"):
        write_image(tmp_path / "val" / name / "0.png", (255, 255, 255))  # val must not count
    result = cli("stats", "--dataset", "imagefolder", "--data-dir", tmp_path, "--size", "16", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    values = dict(zip(("--mean", "--std"), shlex.split(line)[1::2]))
    mean, std = parse_option("mean", values["--mean"]), parse_option("std", values["--std"])  # as tl train parses them
    x1, x2 = c1 / 255, c2 / 255
    expected_mean = (3 * x1 + x2) / 4
    expected_std = np.sqrt((3 * x1**2 + x2**2) / 4 - expected_mean**2)
    assert np.allclose(mean, expected_mean, atol=1e-3) and np.allclose(std, expected_std, atol=1e-3), line
    (tmp_path / "train/y/broken.png").write_bytes(b"\x89PNG\r\n")  # an unreadable one: left out, and said by exit 1
    partial = cli("stats", "--dataset", "imagefolder", "--data-dir", tmp_path, "--size", "16", "--num-workers", "0")
    assert partial.exit_code == 1 and partial.stdout.strip().splitlines()[-1] == line, partial.output
