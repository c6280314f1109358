"""`tl predict-dir` at cluster scale, on a real tiny checkpoint and the real CLI: --shard K/N merged by
`tl merge-predictions` into the very bytes one process writes (CSV and Parquet), --files lists, SIGUSR1 (exit 75,
then --resume), a Parquet run killed and resumed, and two processes with all of it."""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PREDICT_DIR_ENV, cli, read_rows, rows_so_far, stop_predict_dir, train_tiny_run, write_image
from tl.errors import TLError
from tl.inference.shards import Shard, parse_shard

ENV = PREDICT_DIR_ENV


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """23 tiny images in three folders (and one that is not an image: an error row in a shard)."""
    root = tmp_path_factory.mktemp("images")
    for i in range(23):
        write_image(root / f"d{i % 3}" / f"img_{i:02d}.png", (200, 40 * (i % 5), 30), size=8, seed=i)
    (root / "d1" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root


def _predict(images: Path, run: Path, out: Path, *args: str):
    return cli("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--num-workers", "0", *args)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_four_shards_merge_into_the_bytes_of_one_process(run, images, tmp_path, suffix):
    single = tmp_path / f"single{suffix}"
    assert _predict(images, run, single).exit_code == 1  # broken.jpg
    shards = [tmp_path / f"part-{k}{suffix}" for k in range(4)]
    for k in (2, 0, 3, 1):
        result = _predict(images, run, shards[k], "--shard", f"{k}/4")
        assert result.exit_code == (1 if k == 1 else 0), result.output + repr(result.exception)  # broken.jpg is in block 1
    order = shards[:]
    random.Random(0).shuffle(order)  # the shards know their K: the order of the arguments does not matter
    merged = tmp_path / f"merged{suffix}"
    result = cli("merge-predictions", *order, "--out", merged)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"merged 4 shards, 24 rows: {merged}" in result.output
    assert merged.read_bytes() == single.read_bytes()
    if suffix == ".csv":
        rows = read_rows(merged)
        assert len(rows) == 24 and [r["path"] for r in rows][:2] == ["d0/img_00.png", "d0/img_03.png"]
        return
    import datasets
    import pyarrow.parquet as pq

    table = pq.read_table(merged)
    assert [str(t) for t in table.schema.types] == ["string", "string", "double", "double", "double", "double", "string"]
    loaded = datasets.load_dataset("parquet", data_files=str(merged), cache_dir=str(tmp_path / "hf"))["train"]
    assert loaded.num_rows == 24 and loaded.features["p_red"].dtype == "float64"
    broken = next(row for row in loaded if row["path"] == "d1/broken.jpg")
    assert broken["label"] is None and broken["p_red"] is None and "UnidentifiedImageError" in broken["error"]
    good = next(row for row in loaded if row["path"] == "d0/img_00.png")
    assert good["p_red"] + good["p_green"] + good["p_blue"] == pytest.approx(1.0, abs=1e-5)


@pytest.fixture
def csv_shards(run, images, tmp_path) -> list[Path]:
    shards = [tmp_path / f"p{k}.csv" for k in range(3)]
    for k, out in enumerate(shards):
        assert _predict(images, run, out, "--shard", f"{k}/3").exit_code in (0, 1)
    return shards


def _refused(*args) -> str:
    """The TLError's message (the program prints it as one line and exits 2: see test_shard_argument_errors)."""
    result = cli(*args)
    assert isinstance(result.exception, TLError) and result.exception.hint, result.output + repr(result.exception)
    return result.exception.message


def test_merge_refuses_shards_missing_repeated_or_unfinished(csv_shards, tmp_path):
    p0, p1, p2 = csv_shards
    out = tmp_path / "all.csv"
    assert _refused("merge-predictions", p2, p0, "--out", out) == f"missing shard 1/3 (given: 0/3 {p0}, 2/3 {p2})"
    assert _refused("merge-predictions", p0, p1, p2, p1, "--out", out) == f"shard 1/3 given twice: {p1}, {p1}"
    copy = tmp_path / "copy.csv"  # the same shard under another name
    shutil.copy(p2, copy)
    shutil.copy(p2.with_name("p2.csv.shard.json"), tmp_path / "copy.csv.shard.json")
    assert _refused("merge-predictions", p0, p1, p2, copy, "--out", out) == f"shard 2/3 given twice: {p2}, {copy}"
    kept = p1.read_bytes()
    p1.write_bytes(kept[: kept.rstrip(b"\n").rfind(b"\n") + 1])  # its last row gone: overlapping, edited or cut
    assert "does not hold exactly the files of shard 1/3" in _refused("merge-predictions", p0, p1, p2, "--out", out)
    p1.write_bytes(kept)
    record = p1.with_name("p1.csv.shard.json")
    record.write_text(record.read_text().replace('"complete": true', '"complete": false'))  # a run that was stopped
    assert _refused("merge-predictions", p0, p1, p2, "--out", out) == f"unfinished: {p1} (shard 1/3)"
    record.unlink()
    assert "has no shard record" in _refused("merge-predictions", p0, p1, p2, "--out", out)
    assert "is Parquet, but not" in _refused("merge-predictions", p0, "--out", tmp_path / "all.parquet")
    assert not out.exists()


def test_a_resumed_shard_must_be_the_same_shard_over_the_same_files(run, images, tmp_path):
    out = tmp_path / "p.csv"
    assert _predict(images, run, out, "--shard", "0/2").exit_code == 1  # d1/broken.jpg is in block 0
    assert _refused("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--resume", "--shard", "1/2") == \
        f"--resume: {out} is shard 0/2, not 1/2"
    assert _refused("predict-dir", images, "--checkpoint", run / "best", "--out", out, "--resume") == f"--resume: {out} is shard 0/2"
    grown = tmp_path / "grown"
    shutil.copytree(images, grown)
    write_image(grown / "d0" / "img_00a.png", (1, 2, 3), size=8)  # a new file in block 0
    assert "the files of shard 0/2 changed" in _refused("predict-dir", grown, "--checkpoint", run / "best", "--out", out,
                                                         "--resume", "--shard", "0/2")
    plain = tmp_path / "plain.csv"
    assert _predict(images, run, plain).exit_code == 1
    assert _refused("predict-dir", images, "--checkpoint", run / "best", "--out", plain, "--resume", "--shard", "0/2") == \
        f"--resume: {plain} was not started with --shard"


def test_shard_argument_errors(images, tmp_path):
    for value, message in [("4/4", "K must be below N"), ("0/0", "N must be at least 1"), ("x", "is not K/N"),
                           ("1/2/3", "is not K/N"), ("-1/3", "is not K/N"), ("auto", "not in a SLURM array job")]:
        text = _refused("predict-dir", images, "--checkpoint", tmp_path / "none", "--out", tmp_path / "p.csv", "--shard", value)
        assert message in text, (value, text)  # before the model: the checkpoint does not exist
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4)
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3",
                                "SLURM_ARRAY_TASK_STEP": "2"}) == Shard(2, 3)
    assert [Shard(k, 4).block(10) for k in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]  # contiguous, each file once
    result = subprocess.run([sys.executable, "-m", "tl.predict_dir", str(images), "--checkpoint", "x", "--out",
                             str(tmp_path / "p.csv"), "--shard", "3/3"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 2 and "(K is 0-based: 0..2)" in result.stderr, result.stderr


def test_files_lists_relative_absolute_and_missing_paths(run, images, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    relative = os.path.relpath(images / "d2" / "img_05.png", lists)
    entries = [relative, str(images / "d0" / "img_00.png"), "gone/nothing.jpg", str(images / "d1" / "img_01.png")]
    (lists / "files.txt").write_text("\n".join(entries[:2]) + "\n\n" + "\n".join(entries[2:]) + "\n")
    out = tmp_path / "listed.csv"
    result = cli("predict-dir", "--files", lists / "files.txt", "--checkpoint", run / "best", "--out", out, "--num-workers", "0")
    assert result.exit_code == 1, result.output + repr(result.exception)  # the missing file: an error row, exit 1
    rows = read_rows(out)
    assert [r["path"] for r in rows] == entries  # the list's order, each path as listed
    assert rows[2]["label"] == "" and "No such file" in rows[2]["error"]
    assert all(r["label"] and not r["error"] for r in rows[:2] + rows[3:])
    folder = read_rows(tmp_path / "folder.csv") if _predict(images, run, tmp_path / "folder.csv").exit_code == 1 else []
    by_path = {r["path"]: r for r in folder}
    assert rows[1]["p_red"] == by_path["d0/img_00.png"]["p_red"]  # the same image, the same prediction
    with open(lists / "manifest.csv", "w", newline="", encoding="utf-8-sig") as handle:  # a path column among others, and a BOM
        writer = csv.writer(handle)
        writer.writerow(["id", "path"])
        writer.writerows([[n, entry] for n, entry in enumerate(entries)])
    from_csv = tmp_path / "from_csv.csv"
    assert cli("predict-dir", "--files", lists / "manifest.csv", "--checkpoint", run / "best", "--out", from_csv).exit_code == 1
    assert [(r["path"], r["label"]) for r in read_rows(from_csv)] == [(r["path"], r["label"]) for r in rows]
    (lists / "twice.txt").write_text(f"{entries[1]}\n{entries[0]}\n{entries[1]}\n")
    assert "is listed twice" in _refused("predict-dir", "--files", lists / "twice.txt", "--checkpoint", run / "best", "--out", tmp_path / "t.csv")
    assert "not both" in _refused("predict-dir", images, "--files", lists / "files.txt", "--checkpoint", run / "best", "--out", tmp_path / "b.csv")
    (lists / "no_path.csv").write_text("id,file\n1,a.jpg\n")
    assert "has no `path` column" in _refused("predict-dir", "--files", lists / "no_path.csv", "--checkpoint", run / "best", "--out", tmp_path / "n.csv")


def _slow_folder(root: Path, count: int = 40) -> Path:
    for i in range(count):
        write_image(root / f"img_{i:03d}.png", (200, 40 * (i % 5), 30), size=8, seed=i)
    return root


def _program(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tl.predict_dir", *args], env=ENV, capture_output=True, text=True, timeout=300)


def test_sigusr1_finishes_the_batch_exits_75_and_resume_completes_it(run, tmp_path):
    images = _slow_folder(tmp_path / "images")
    out, whole = tmp_path / "p.csv", tmp_path / "whole.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--num-workers", "0", "--batch-size", "1"]
    stopped = stop_predict_dir(signal.SIGUSR1, [*args, "--out", str(out)], out)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    message = [line for line in stopped.stderr.splitlines() if "--resume" in line]
    assert len(message) == 1 and "stopped after the batch in flight" in message[0], stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr and out.read_bytes().endswith(b"\n")  # whole rows only
    written = rows_so_far(out)
    assert 3 <= written < 40 and not out.with_name("p.csv.inflight").exists()
    resumed = _program(*args, "--out", str(out), "--resume")  # programs alike: one thread each, the same sums
    assert resumed.returncode == 0 and f"already written │ {written}" in resumed.stdout, resumed.stderr[-2000:]
    assert _program(*args, "--out", str(whole)).returncode == 0
    assert out.read_bytes() == whole.read_bytes()  # every file once, in order, with the same probabilities


def test_sigterm_to_the_whole_group_with_workers_is_a_stop_not_a_decoder_crash(run, tmp_path):
    """SLURM signals every process of a step, the loader workers too: a worker that dies of the SIGTERM that asked
    for the stop must not be reported as a decoder crash (exit 2, an in-flight marker left) but as the stop (75)."""
    images = tmp_path / "images"
    for i in range(400):  # workers still decoding when the signal comes (without the fix: exit 2 in 2 runs of 3)
        write_image(images / f"d{i % 5}" / f"img_{i:04d}.png", (200, 40 * (i % 5), 30), size=16, seed=i)
    out = tmp_path / "p.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--num-workers", "2", "--batch-size", "4", "--out", str(out)]
    stopped = stop_predict_dir(signal.SIGTERM, args, out, whole_group=True)
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert "decoder crashed" not in stopped.stderr and not out.with_name("p.csv.inflight").exists()
    resumed = _program(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert rows_so_far(out) == 400


def test_a_killed_parquet_run_keeps_its_rows_and_resumes(run, tmp_path):
    images = _slow_folder(tmp_path / "images")
    out, whole = tmp_path / "p.parquet", tmp_path / "whole.parquet"
    journal = tmp_path / "p.parquet.partial.csv"
    args = [str(images), "--checkpoint", str(run / "best"), "--num-workers", "0", "--batch-size", "1"]
    killed = stop_predict_dir(signal.SIGKILL, [*args, "--out", str(out)], journal)
    assert killed.returncode == -signal.SIGKILL and not out.exists() and 3 <= rows_so_far(journal) < 40
    with open(journal, "a") as handle:
        handle.write("img_039.png,red,0.9")  # a row cut off by the kill
    assert "holds the rows of an unfinished run" in _refused("predict-dir", *args, "--out", out)  # not without --resume
    resumed = _program(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0 and not journal.exists(), resumed.stderr[-2000:]
    assert _program(*args, "--out", str(whole)).returncode == 0
    assert out.read_bytes() == whole.read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("path").to_pylist() == [f"img_{i:03d}.png" for i in range(40)]
    write_image(images / "img_100.png", (1, 2, 3), size=8)  # a file added later: a finished Parquet takes its row
    assert cli("predict-dir", *args, "--out", out, "--resume").exit_code == 0
    assert pq.read_table(out).column("path").to_pylist()[-1] == "img_100.png" and pq.read_table(out).num_rows == 41


def test_the_python_api_takes_shards_and_lists(run, images, tmp_path):
    import tl

    clf = tl.load(run / "best")
    (tmp_path / "list.txt").write_text("\n".join(str(p) for p in sorted(images.rglob("img_0*.png"))[:4]) + "\n")
    summary = clf.predict_dir(None, tmp_path / "l.parquet", files=tmp_path / "list.txt", shard="1/2", progress=False, num_workers=0)
    assert (summary.total, summary.predicted, summary.shard) == (2, 2, "1/2")
    with pytest.raises(TLError, match="K must be below N"):
        clf.predict_dir(images, tmp_path / "x.csv", shard="2/2", progress=False)


@pytest.mark.slow
def test_two_processes_write_a_shard_of_a_list_as_one_does(run, images, tmp_path):
    listed = sorted(images.rglob("*.png"))
    (tmp_path / "list.txt").write_text("\n".join(os.path.relpath(p, tmp_path) for p in listed) + "\nmissing.png\n")
    common = ["--files", str(tmp_path / "list.txt"), "--checkpoint", str(run / "best"), "--batch-size", "2", "--shard", "1/2"]
    single, double = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert cli("predict-dir", *common, "--out", single).exit_code == 1
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "tl.predict_dir", *common, "--out", str(double)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=ENV)
    assert result.returncode != 0 and "tl/predict" not in result.stderr, result.stderr[-3000:]  # exit 1: missing.png
    import pyarrow.parquet as pq

    one, two = pq.read_table(single).to_pylist(), pq.read_table(double).to_pylist()
    assert [r["path"] for r in two] == [r["path"] for r in one] and len(one) == 12 and one[-1]["path"] == "missing.png"
    for a, b in zip(one, two):
        assert a["label"] == b["label"] and a["error"] == b["error"]
        assert (a["p_red"] or 0) == pytest.approx(b["p_red"] or 0, abs=1e-4)
    assert (tmp_path / "two.parquet.shard.json").read_text() == (tmp_path / "one.parquet.shard.json").read_text()
