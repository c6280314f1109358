"""No file can stop a run: damaged files in six formats through the decoder training and prediction use, end to end,
and a decoder that crashes on purpose (predict-dir --resume must then lose only that file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, cli, make_image_folder, read_metrics, read_rows, train_tiny_run, write_image
from tests.fuzz_corpus import FORMATS, write_corpus

CLASSES = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return write_corpus(tmp_path_factory.mktemp("fuzz"), per_format=500, seed=0)


def test_no_damaged_file_crashes_or_hangs_the_decoder(corpus):
    """3,000 damaged files, each decoded by tl.data.decode.read_image in a child process: a crash names its file."""
    from tl.data.isolated_decode import OK, UNREADABLE, decode_each_in_child

    outcomes = decode_each_in_child(corpus, timeout=120)
    assert len(outcomes) == len(corpus) == 500 * len(FORMATS)
    bad = {Path(p).name: o for p, o in outcomes.items() if o.status not in (OK, UNREADABLE)}
    assert not bad, f"{len(bad)} file(s) crashed, hung or raised a non-TLError, e.g. {list(bad.items())[:5]}"
    per_format = Counter((Path(p).name.split("-")[0], o.status) for p, o in outcomes.items())
    for fmt in FORMATS:  # the corpus really is damaged, and not so badly that nothing decodes
        assert per_format[(fmt, UNREADABLE)] > 0 and per_format[(fmt, OK)] > 0, (fmt, per_format)
    for p, o in outcomes.items():  # decompression bombs are refused from the header, with the reason
        name = Path(p).name
        if name.endswith(("-bomb.png", "-bomb.jpg", "-bomb.gif", "-bomb.bmp", "-bomb.tif")):
            assert o.status == UNREADABLE and "too many pixels" in o.detail, (name, o)


def test_pixel_limit_follows_pil_and_is_one_line(tmp_path):
    from PIL import Image

    from tl.data.check import probe_file
    from tl.data.decode import read_image
    from tl.errors import TLError

    path = write_image(tmp_path / "big.png", (10, 200, 10), size=64)
    before = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 64 * 64 - 1
        with pytest.raises(TLError, match="too many pixels") as error:
            read_image(path)
        assert "\n" not in error.value.message and "MAX_IMAGE_PIXELS" in error.value.hint
        Image.MAX_IMAGE_PIXELS = 64 * 64
        assert tuple(read_image(path).size) == (64, 64)
        Image.MAX_IMAGE_PIXELS = 1000  # PIL itself refuses above twice the limit: tl names the limit, not PIL's double
        with pytest.raises(TLError, match="limit of 1,000;"):
            read_image(path)
        assert "limit of 1,000;" in probe_file(str(path), decode=True)["problem"]  # tl check-data's words too
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _sample(corpus: list[Path], per_format: int) -> list[Path]:
    """Files of every format and every kind of damage."""
    return [p for p in corpus if int(p.name.split("-")[1]) < per_format]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("fuzzrun"))



def test_predict_dir_over_damaged_files_writes_a_row_each(run, corpus, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in _sample(corpus, 14):  # 14 per format: two of each kind of damage
        shutil.copy(path, images / path.name)
    write_image(images / "good.png", (220, 30, 30), size=20)
    out = tmp_path / "preds.csv"
    result = subprocess.run([sys.executable, "-m", "tl.predict_dir", images, "--checkpoint", run / "best", "--out", out],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1, result.stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == 14 * len(FORMATS) + 1
    failed = [r for r in rows if r["error"]]
    assert failed and all(not r["label"] for r in failed)
    assert all(r["label"] in CLASSES for r in rows if not r["error"])
    assert next(r for r in rows if r["path"] == "good.png")["label"] in CLASSES
    assert not (tmp_path / "preds.csv.inflight").exists()


def test_train_with_damaged_files_mixed_in_finishes_and_counts_them(corpus, tmp_path):
    data = make_image_folder(tmp_path / "data", CLASSES, 4)
    mixed = _sample(corpus, 3)
    for k, path in enumerate(mixed):
        shutil.copy(path, data / "train" / list(CLASSES)[k % 3] / path.name)
    out = tmp_path / "run"
    result = cli("train", *TINY, "--dataset", "imagefolder", "--data-dir", data, "--epochs", "1", "--batch-size", "4",
                 "--out", out, "--cache-images", "off")
    assert result.exit_code == 0, result.output + repr(result.exception)
    from tl.data.decode import read_image
    from tl.errors import TLError

    def unreadable(path: Path) -> bool:
        try:
            read_image(path)
            return False
        except TLError:
            return True

    expected = sum(unreadable(p) for p in mixed)
    assert expected > 0
    metrics = read_metrics(out)[-1]
    # drop_last leaves at most batch-size - 1 = 3 images out of the epoch
    seen = metrics["train_unreadable"]
    assert expected - 3 <= seen <= expected, (seen, expected)


CRASHING_DECODER = textwrap.dedent("""
    # Loaded at start-up (sitecustomize): a decoder that kills the process on files named *CRASHME*, as a native bug would.
    import os, signal
    import tl.data.decode

    _real = tl.data.decode.read_image

    def read_image(path, *args, **kwargs):
        if "CRASHME" in str(path):
            os.kill(os.getpid(), signal.SIGSEGV)
        return _real(path, *args, **kwargs)

    tl.data.decode.read_image = read_image
""")


@pytest.mark.parametrize("workers", [-1, 1], ids=["decode-threads", "worker-process"])
def test_resume_after_a_decoder_crash_loses_only_that_file(run, tmp_path, workers):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHING_DECODER)
    images = tmp_path / "images"
    for i in range(30):
        write_image(images / f"img_{i:02d}.png", (30, 200, 40), size=20, seed=i)
    write_image(images / "img_17_CRASHME.png", (30, 200, 40), size=20)
    out = tmp_path / "preds.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    command = [sys.executable, "-m", "tl.predict_dir", images, "--checkpoint", run / "best", "--out", out,
               "--batch-size", "4", "--num-workers", str(workers)]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    assert first.returncode != 0
    if workers > 0:  # a worker process died: the main process says how to carry on, in one line
        assert first.returncode == 2 and "--resume" in first.stderr and "Traceback" not in first.stderr, first.stderr[-2000:]
    else:  # the decoding thread took the whole process down
        assert first.returncode == -11, first.stderr[-2000:]
    assert (tmp_path / "preds.csv.inflight").exists()
    before = read_rows(out) if out.exists() else []
    assert len(before) < 31

    second = subprocess.run(command + ["--resume"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert second.returncode == 1, second.stderr[-2000:]
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in images.iterdir())
    culprit = [r for r in rows if r["error"]]
    assert [r["path"] for r in culprit] == ["img_17_CRASHME.png"]
    assert "the decoder crashed on this file" in culprit[0]["error"]
    assert rows[:len(before)] == before  # nothing already written was lost or changed
    assert not (tmp_path / "preds.csv.inflight").exists()


def test_reduced_size_jpeg_decoding_of_damaged_files_agrees_with_full_decoding(corpus):
    """The JPEGs again, decoded at the smallest DCT scale their size allows (what training's crops and predict-dir's
    resize ask for on big photos): no crash or hang, and each file is readable exactly when the full decode can read
    it (a scaled decode that fails falls back to the full-size decoders)."""
    from tl.data.isolated_decode import OK, UNREADABLE, decode_each_in_child

    jpegs = [path for path in corpus if path.suffix == ".jpg"]
    full = decode_each_in_child(jpegs, timeout=120)
    reduced = decode_each_in_child(jpegs, timeout=120, min_short_side=8)
    bad = {Path(p).name: o for p, o in reduced.items() if o.status not in (OK, UNREADABLE)}
    assert not bad, f"{len(bad)} file(s) crashed, hung or raised a non-TLError, e.g. {list(bad.items())[:5]}"
    differ = [Path(p).name for p in jpegs if (full[str(p)].status == OK) != (reduced[str(p)].status == OK)]
    assert not differ, f"{len(differ)} file(s) readable at one size and not the other, e.g. {differ[:5]}"
