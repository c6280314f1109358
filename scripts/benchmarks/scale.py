"""``bench.py scale``: predict-dir over a folder of 1,000,000 files (hard links to a few thousand small JPEGs in
1,000 folders, built under --root and removed afterwards): is it proportionate?

Measured, at --small files (20,000) and at --files (1,000,000), each in a fresh process:
  * the scan: tl's ``scan_folder`` (what predict-dir uses) and, for comparison, ``scan_images`` + a list of the
    relative names (what predict-dir did before): seconds and the process's peak RSS;
  * peak RSS of ``python -m tl.predict_dir`` predicting one small block (``--shard 0/N``, --block files), and of
    ``--resume`` over a CSV that already holds every row but the last --block (the resume path at full size);
  * the seconds ``--resume`` spends reading 900,000 rows already written and finding what is left;
  * kill -9 mid-run at full size, then ``--resume``: every file exactly once in the CSV.

    .venv/bin/python scripts/bench.py scale --checkpoint RUN/best            # ~10 minutes on 2 cores
    .venv/bin/python scripts/bench.py scale --checkpoint RUN/best --files 200000 --keep
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HELP = "predict-dir over 1,000,000 files (hard links): scan time, peak RSS, --resume, kill -9 then --resume"
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="a tl checkpoint folder (RUN/best)")
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=1_000)
    parser.add_argument("--sources", type=int, default=3_000, help="distinct small JPEGs the links point to")
    parser.add_argument("--block", type=int, default=500, help="files actually predicted per run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/tl-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the trees under --root")
    parser.add_argument("--json", type=Path, default=Path("runs/bench/scale.json"), help="where the results go")


def build_tree(root: Path, sources: list[Path], files: int, folders: int) -> Path:
    tree = root / f"tree-{files}"
    if tree.exists():
        return tree
    per_folder = -(-files // folders)
    for n in range(files):
        folder = tree / f"d{n // per_folder:04d}"
        if n % per_folder == 0:
            folder.mkdir(parents=True)
        os.link(sources[n % len(sources)], folder / f"img_{n:07d}.jpg")
    return tree


def make_sources(root: Path, count: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder = root / "sources"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        path = folder / f"s{n:05d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, quality=80)
        paths.append(path)
    return paths


def measured(command: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, peak RSS in MiB, result) of a child process: GNU time's own figure for that one child."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *command], capture_output=True, text=True, env=ENV, **kwargs)
    seconds = time.perf_counter() - start
    line = next((l for l in result.stderr.splitlines() if l.startswith("MAXRSS_KB=")), "MAXRSS_KB=0")
    return seconds, int(line.split("=")[1]) / 1024, result


SCAN_NEW = "import sys,time;from pathlib import Path;import tl.data.datasets;from tl.inference.file_list import scan_folder;t=time.perf_counter();f=scan_folder(Path(sys.argv[1]));print(len(f),time.perf_counter()-t)"
SCAN_OLD = ("import sys,time;from pathlib import Path;from tl.data.datasets import scan_images;t=time.perf_counter();root=Path(sys.argv[1]);"
            "files=list(scan_images(root));rel=[p.relative_to(root).as_posix() for p in files];print(len(rel),time.perf_counter()-t)")


def scan_figures(tree: Path) -> dict:
    out = {}
    for name, code in (("tl scan_folder", SCAN_NEW), ("scan_images + names (before)", SCAN_OLD)):
        _, rss, result = measured([sys.executable, "-c", code, str(tree)])
        count, seconds = result.stdout.split()
        out[name] = {"files": int(count), "seconds": round(float(seconds), 2), "peak_rss_mib": round(rss)}
    return out


def write_done_rows(tree: Path, out: Path, rows: int) -> None:
    """A predictions CSV holding the first ``rows`` files of ``tree`` (plausible numbers): a run stopped near the end."""
    from tl.inference.file_list import scan_folder

    files = scan_folder(tree)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "p_blue", "p_green", "p_red", "error"])
        for n in range(rows):
            writer.writerow([files.name(n), "red", "0.500000", "0.200000", "0.300000", "0.500000", ""])


def predict(tree: Path, out: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tl.predict_dir", str(tree), "--checkpoint", str(checkpoint), "--out", str(out), *extra]


def size_figures(tree: Path, files: int, args: argparse.Namespace, work: Path) -> dict:
    shards = max(1, files // args.block)
    seconds, rss, result = measured(predict(tree, work / f"shard-{files}.csv", args.checkpoint, "--shard", f"0/{shards}"))
    assert result.returncode == 0, result.stderr[-2000:]
    figures = {"shard": {"shard": f"0/{shards}", "seconds": round(seconds, 1), "peak_rss_mib": round(rss)}}
    resumed = work / f"resume-{files}.csv"
    write_done_rows(tree, resumed, files - args.block)
    seconds, rss, result = measured(predict(tree, resumed, args.checkpoint, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    figures["resume"] = {"rows_already": files - args.block, "seconds": round(seconds, 1), "peak_rss_mib": round(rss)}
    return figures


SKIP = ("import sys,time;from pathlib import Path;from tl.inference.file_list import scan_folder,NameSet;"
        "from tl.inference.predictions_csv import read_done;files=scan_folder(Path(sys.argv[1]));t=time.perf_counter();"
        "done=NameSet();read_done(Path(sys.argv[2]),['path','label','confidence','p_blue','p_green','p_red','error'],files,done);"
        "left=files.pending(0,len(files),done.array());print(done.count,len(left),time.perf_counter()-t)")


def kill_then_resume(tree: Path, files: int, args: argparse.Namespace, work: Path) -> dict:
    """kill -9 once rows are being added to a CSV 4 blocks short of complete, then --resume: each file once."""
    import numpy as np

    from tl.inference.file_list import NameSet, scan_folder

    out = work / "killed.csv"
    already = files - 4 * args.block
    write_done_rows(tree, out, already)
    process = subprocess.Popen(predict(tree, out, args.checkpoint, "--resume", "--batch-size", "4"), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    size = out.stat().st_size
    while process.poll() is None and out.stat().st_size < size + 20_000:  # ~200 new rows
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(out, "rb") as handle:
        killed_rows = sum(1 for _ in handle) - 1
    seconds, _, result = measured(predict(tree, out, args.checkpoint, "--resume"))
    assert result.returncode == 0, result.stderr[-2000:]
    names = NameSet()
    with open(out, newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            names.add(row[0])
    listed = scan_folder(tree)
    expected = NameSet()
    for name in listed:
        expected.add(name)
    once = names.count == len(listed) and len(np.unique(names.array())) == names.count and \
        bool(np.isin(expected.array(), names.array()).all())
    return {"rows_when_killed": killed_rows - already, "resume_seconds": round(seconds, 1),
            "rows_after": names.count, "every_file_exactly_once": once}


def run(args: argparse.Namespace) -> dict:
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    work = root / "work"
    work.mkdir(exist_ok=True)
    results: dict = {"bench": "scale"}
    try:
        sources = make_sources(root, args.sources)
        for files in (args.small, args.files):
            start = time.perf_counter()
            tree = build_tree(root, sources, files, max(1, args.folders * files // args.files))
            print(f"[scale] {files} files: tree built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            results[str(files)] = {"scan": scan_figures(tree), **size_figures(tree, files, args, work)}
            print(f"[scale] {files}: {results[str(files)]}", file=sys.stderr)
        big = root / f"tree-{args.files}"
        skip_csv = work / "skip.csv"
        write_done_rows(big, skip_csv, min(900_000, args.files - args.block))
        result = subprocess.run([sys.executable, "-c", SKIP, str(big), str(skip_csv)], capture_output=True, text=True, env=ENV)
        done, left, seconds = result.stdout.split()
        results["resume_skip"] = {"rows_already": int(done), "left": int(left), "seconds": round(float(seconds), 2)}
        results["kill_9"] = kill_then_resume(big, args.files, args, work)
        small, large = results[str(args.small)], results[str(args.files)]
        results["rss_ratio"] = {kind: round(large[kind]["peak_rss_mib"] / small[kind]["peak_rss_mib"], 2) for kind in ("shard", "resume")}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=2))
