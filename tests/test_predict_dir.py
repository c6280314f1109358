"""`tl predict-dir` and its CSV when things go wrong: an --out that cannot be written, a full disk, a CSV damaged
in the middle, Ctrl-C and SIGTERM, broken links. The rows a user has are never lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli, read_rows, rows_so_far, stop_predict_dir, train_tiny_run, write_image
from tl.errors import TLError
from tl.inference.predictions_csv import read_done

HEADER = ["path", "label", "confidence", "p_blue", "p_green", "p_red", "error"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("predict_dir"))


def _images(root: Path, count: int) -> Path:
    for i in range(count):
        write_image(root / f"img_{i:03d}.png", (200, 40 * (i % 5), 30), size=8, seed=i)
    return root


def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path):
    images = _images(tmp_path / "images", 2)
    (tmp_path / "folder").mkdir()
    missing_model = tmp_path / "no_checkpoint"  # the --out problem must be found first: no model is loaded
    cases = [
        (("--out", tmp_path / "folder", "--overwrite"), "is a folder"),
        (("--out", tmp_path / "folder", "--resume"), "is a folder"),
        (("--out", images / "img_000.png" / "p.csv"), f"cannot create its folder ({images / 'img_000.png'} is a file)"),
    ]
    if Path("/dev/full").exists():
        cases.append((("--out", "/dev/full", "--overwrite"), "is not a regular file"))
    if Path("/sys/kernel").is_dir():  # no file can be created there, not even by root
        cases.append((("--out", "/sys/p.csv"), "cannot write /sys/p.csv"))
    for args, message in cases:
        result = cli("predict-dir", images, "--checkpoint", missing_model, *args)
        assert isinstance(result.exception, TLError) and message in result.exception.message, (args, result.output, result.exception)
        assert result.exception.hint
    assert not list((tmp_path / "folder").iterdir())


def test_read_done_cuts_only_a_damaged_last_row(tmp_path):
    good = "path,label,confidence,p_blue,p_green,p_red,error\n1.jpg,red,0.5,0.2,0.3,0.5,\n"
    out = tmp_path / "p.csv"
    for tail, paths in [("2.jpg,red,0.", ()), ('"2.jp', ()), ('"new\nli', ["new\nline.png"]), ('"new\nline.png",red,0.9', ["new\nline.png"])]:
        out.write_text(good + tail, newline="")
        assert read_done(out, HEADER, paths) == ({"1.jpg"}, 0, len(good.encode())), tail
    middle = [
        '"2.jpg"x,red,0.5,0.2,0.3,0.5,\n3.jpg,red,0.5,0.2,0.3,0.5,my note\n',  # a stray character after a quote
        '2.jpg,"red,0.5,0.2,0.3,0.5,\n3.jpg,red,0.5,0.2,0.3,0.5,my note\n',  # a quote never closed: it swallows the rest
        '"2.jpg,red,0.5,0.2,0.3,0.5,\n3.jpg,red,0.5,0.2,0.3,0.5,my note\n',  # the same in the path, no such file name
        '"2.jpg"x,red,0.5,0.2,0.3,0.5,\n',  # damaged, but a complete line: not what a kill leaves
    ]
    for tail in middle:
        out.write_text(good + tail, newline="")
        with pytest.raises(TLError, match=r"row 2 of .* \(line 3\) is not valid CSV") as caught:
            read_done(out, HEADER, ["new\nline.png"])
        assert "--overwrite" in caught.value.hint


def test_resume_leaves_a_csv_damaged_in_the_middle_untouched(run, tmp_path):
    images = _images(tmp_path / "images", 4)
    out = tmp_path / "p.csv"
    out.write_text("path,label,confidence,p_blue,p_green,p_red,error\nimg_000.png,red,0.5,0.2,0.3,0.5,\n"
                   '"img_001.png"x,red,0.5,0.2,0.3,0.5,\nimg_002.png,blue,0.9,0.9,0.05,0.05,my note\n', newline="")
    before = out.read_bytes()
    result = cli("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--resume", "--num-workers", "0")
    assert isinstance(result.exception, TLError) and "row 2 of" in result.exception.message, result.output
    assert out.read_bytes() == before


def test_a_failed_write_keeps_a_valid_csv_that_resumes(run, tmp_path):
    """A full disk, for real: the file size limit (RLIMIT_FSIZE) makes a write fail part-way through a row."""
    import resource

    images = _images(tmp_path / "images", 24)
    out = tmp_path / "p.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--num-workers", "0", "--batch-size", "1", "--out", str(out)]

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (400, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "tl.predict_dir", *args], capture_output=True, text=True, env=env,
                            preexec_fn=limit_file_size, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"error: cannot write {out} (File too large)" in result.stderr and "--resume" in result.stderr
    rows = read_rows(out)  # parses: complete rows only, each a whole batch
    assert 1 <= len(rows) < 24 and out.read_bytes().endswith(b"\n") and all(r["label"] for r in rows)
    assert not out.with_name("p.csv.inflight").exists()  # no decoder crashed: the next run does not suspect one
    resumed = cli("predict-dir", *args[:-1], out, "--resume")
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert [r["path"] for r in read_rows(out)] == [f"img_{i:03d}.png" for i in range(24)]
    assert read_rows(out)[: len(rows)] == rows


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_leaves_no_in_flight_marker(run, tmp_path, stop):
    images = _images(tmp_path / "images", 80)
    out = tmp_path / "p.csv"
    stopped = stop_predict_dir(stop, [images, "--checkpoint", run / "best", "--num-workers", "0", "--batch-size", "1", "--out", out], out)
    stderr = stopped.stderr
    assert stopped.returncode != 0 and 3 <= rows_so_far(out) < 80, stderr[-2000:]
    assert not out.with_name("p.csv.inflight").exists(), stderr[-2000:]  # a clean stop, not a decoder crash
    assert "Traceback" not in stderr, stderr[-2000:]


def test_a_broken_link_is_an_error_row(run, tmp_path):
    images = _images(tmp_path / "images", 2)
    os.symlink(tmp_path / "gone.jpg", images / "b_dangling.jpg")
    os.symlink(tmp_path / "gone.txt", images / "notes.txt")  # not named like an image: not listed, as before
    out = tmp_path / "p.csv"
    result = cli("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--num-workers", "0")
    assert result.exit_code == 1, result.output + repr(result.exception)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["b_dangling.jpg", "img_000.png", "img_001.png"]
    assert rows[0]["label"] == "" and "broken link" in rows[0]["error"] and "gone.jpg" in rows[0]["error"]
    assert "1 file(s) could not be read" in result.output
