"""``bench.py predict``: ``tl predict-dir``'s code path (``tl.inference.folder.predict_dir``: DataLoader workers,
batches, inference mode, streaming CSV) against the plain per-image loop (open, transform, unsqueeze, forward,
one file at a time) on the same files and checkpoint, alternating the two and repeating; medians.

``--whole-process`` adds the same comparison between whole programs, each an OS process of this Python: the
per-image loop as a tutorial's script (``per_image_loop.py``) and ``python -m tl.predict_dir``, timed from
start to exit over the folder and over one image (start-up: what a user waits for the first prediction),
and ``python -m tl.train`` for 1 epoch on 4 images."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine_info, predict_dir_rate, quick_checkpoint, quick_images, report_runs, scratch_dir

HELP = "tl predict-dir vs a per-image loop (images/s)"
ROOT = Path(__file__).resolve().parents[2]
LOOP_SCRIPT = Path(__file__).with_name("per_image_loop.py")
LOOP, TL = "per_image_loop", "tl_predict_dir"
TRAIN_WHAT = "tl train, 1 epoch on 4 images, whole process"


def add_arguments(predict: argparse.ArgumentParser) -> None:
    predict.add_argument("--images", type=Path, help="folder of images (default: 64 generated 400x300 JPEGs)")
    predict.add_argument("--checkpoint", type=Path, help="tl checkpoint (default: squeezenet1_0, random weights, 224 px)")
    predict.add_argument("--repeats", type=int, default=3)
    predict.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    predict.add_argument("--batch-size", type=int, default=0, help="0: predict-dir's default (8 on the CPU, 64 on a GPU)")
    predict.add_argument("--num-workers", type=int, default=-1)
    predict.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    predict.add_argument("--whole-process", action="store_true",
                         help="also time both as whole programs (separate processes, imports and model loading included), "
                              "their start-up over one image, and tl train's over 4 images")
    predict.add_argument("--json", type=Path, default=Path("runs/bench/predict.json"), help="where the results go")


def per_image_loop(checkpoint: Path, files: list[Path]) -> float:
    """The baseline: what a first script does (PIL transforms as the tutorials write them, fp32). Returns images/s."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from tl.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    model.eval()
    transform = T.Compose([T.Resize(meta["resize_size"]), T.CenterCrop(meta["input_size"]), T.ToTensor(),
                           T.Normalize(meta["mean"], meta["std"])])
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            image = Image.open(path).convert("RGB")
            model(transform(image).unsqueeze(0)).softmax(1)
    return len(files) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    import torch

    from tl.inference.folder import find_images
    from tl.models.checkpoint import read_meta

    logging.getLogger("tl").disabled = True  # progress lines would be timed too
    scratch = scratch_dir()
    if args.images is None:
        (scratch / "images").mkdir()
    images = args.images or quick_images(scratch / "images")
    checkpoint = args.checkpoint or quick_checkpoint(scratch)
    files = find_images(images)[0][: args.limit or None]
    if args.limit:  # predict_dir takes a folder: give it exactly the same files
        subset = scratch / "subset"
        for path in files:
            (subset / path.relative_to(images)).parent.mkdir(parents=True, exist_ok=True)
            (subset / path.relative_to(images)).symlink_to(path.resolve())
        images = subset
    load_before = os.getloadavg()  # other work on the machine slows the per-image loop most (see the report)
    runs: dict[str, list[float]] = {"per-image loop": [], "tl predict-dir": []}
    per_image_loop(checkpoint, files[:4])  # warm-up: first-call costs (allocator, oneDNN primitives) are not throughput
    for repeat in range(args.repeats):
        order = ["per-image loop", "tl predict-dir"][:: 1 if repeat % 2 == 0 else -1]
        for name in order:
            if name == "per-image loop":
                rate = per_image_loop(checkpoint, files)
            else:
                rate = predict_dir_rate(checkpoint, images, scratch / "preds.csv", args)
            runs[name].append(rate)
            print(f"repeat {repeat + 1}/{args.repeats}: {name} {rate:.1f} img/s", file=sys.stderr)
    medians, ratio = report_runs(f"predict: {len(files)} images, {checkpoint}", runs, baseline="per-image loop",
                                 candidate="tl predict-dir")
    meta = read_meta(checkpoint)
    whole = {"whole_process": whole_process(checkpoint, meta, images, files, scratch, args)} if args.whole_process else {}
    return {"bench": "predict", "images": str(images), "count": len(files), "checkpoint": str(checkpoint), "arch": meta["arch"],
            "input_size": meta["input_size"], "batch_size": args.batch_size, "num_workers": args.num_workers,
            "precision": args.precision, "repeats": args.repeats, "runs": runs, "median_images_per_s": medians, "ratio": ratio,
            **whole, "machine": machine_info(load_before, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())}


def whole_process(checkpoint: Path, meta: dict, images: Path, files: list[Path], scratch: Path, args: argparse.Namespace) -> dict:
    """Seconds from start to exit of each program over ``images`` and over a folder of one image, alternating
    their order each repeat after one untimed start of each (so that no program pays for a cold file cache
    alone); then ``tl train``'s. Every CSV is deleted before its run and must hold one row per image after it. The
    CSVs of the whole folder stay beside ``--json`` (the scratch folder goes when the bench exits)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    one = scratch / "one"
    one.mkdir()
    shutil.copy(files[0], one / files[0].name)
    tl_flags = [*(["--batch-size", str(args.batch_size)] if args.batch_size else []),
                *(["--num-workers", str(args.num_workers)] if args.num_workers != -1 else []),
                *(["--precision", args.precision] if args.precision != "auto" else [])]

    def programs(folder: Path, tag: str, keep: bool) -> dict[str, tuple[list[str], Path]]:
        into = args.json.parent if keep else scratch
        into.mkdir(parents=True, exist_ok=True)
        loop_csv, tl_csv = into / f"{args.json.stem}_loop_{tag}.csv", into / f"{args.json.stem}_tl_{tag}.csv"
        return {LOOP: ([sys.executable, str(LOOP_SCRIPT), str(folder), str(checkpoint), str(loop_csv)], loop_csv),
                TL: ([sys.executable, "-m", "tl.predict_dir", str(folder), "--checkpoint", str(checkpoint),
                      "--out", str(tl_csv), "--overwrite", *tl_flags], tl_csv)}

    full, single = programs(images, "all", keep=True), programs(one, "one", keep=False)
    train = [sys.executable, "-m", "tl.train", "--dataset", "imagefolder", "--data-dir", str(four_images(scratch / "train4")),
             "--arch", meta["arch"], "--image-size", str(meta["input_size"]), "--weights", "none", "--epochs", "1",
             "--out", str(scratch / "train_run"), "--overwrite"]
    for command, out in single.values():
        run_program(command, env, out, rows=1)
    seconds: dict[str, list[float]] = {LOOP: [], TL: []}
    startup: dict[str, list[float]] = {LOOP: [], TL: []}
    train_runs: list[float] = []
    for repeat in range(args.repeats):
        order = [LOOP, TL][:: 1 if repeat % 2 == 0 else -1]
        for name in order:
            command, out = single[name]
            startup[name].append(run_program(command, env, out, rows=1))
        for name in order:
            command, out = full[name]
            seconds[name].append(run_program(command, env, out, rows=len(files)))
        train_runs.append(run_program(train, env))
        print(f"repeat {repeat + 1}/{args.repeats}, whole processes: " + ", ".join(
            f"{name} {seconds[name][-1]:.1f} s (1 image: {startup[name][-1]:.1f} s)" for name in order)
            + f", tl train {train_runs[-1]:.1f} s", file=sys.stderr)
    result = {name: {"seconds": statistics.median(seconds[name]), "images_per_s": len(files) / statistics.median(seconds[name]),
                     "startup_seconds": statistics.median(startup[name]), "runs": seconds[name], "startup_runs": startup[name],
                     "command": full[name][0], "csv": str(full[name][1])} for name in (LOOP, TL)}
    result["tl_train"] = {"what": TRAIN_WHAT, "startup_seconds": statistics.median(train_runs), "runs": train_runs, "command": train}
    result |= {"count": len(files), "repeats": args.repeats, "ratio": result[LOOP]["seconds"] / result[TL]["seconds"]}
    report_whole(f"predict, whole processes: {len(files)} images, {checkpoint}, medians of {args.repeats}", result)
    return result


def four_images(root: Path) -> Path:
    """train/ and val/, each with 2 classes of 2 generated photo-sized JPEGs: the smallest tree tl train takes."""
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            quick_images(root / split / name, 2)
    return root


def run_program(command: list[str], env: dict, out: Path | None = None, rows: int = 0) -> float:
    """Wall seconds of ``command`` from start to exit; it must exit 0 and leave ``rows`` data rows in ``out``."""
    if out is not None:
        out.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=False, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}: {' '.join(command)}\n{done.stderr[-3000:]}")
    if out is not None:
        if not out.is_file():
            raise SystemExit(f"{out} was not written: {' '.join(command)}")
        with open(out, newline="") as handle:
            count = sum(1 for _ in csv.reader(handle)) - 1
        if count != rows:
            raise SystemExit(f"{out} holds {count} rows, not {rows}: {' '.join(command)}")
    return seconds


def report_whole(title: str, result: dict) -> None:
    """Print the whole-process table: median seconds, images/s and start-up per program, and the ratio of seconds."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("program", "median s", "img/s", "start-up s (1 image)", "s per run"):
        table.add_column(column, justify="left" if column == "program" else "right")
    for name, label in ((LOOP, "per-image loop (tutorial script, fp32)"), (TL, "tl predict-dir (python -m tl.predict_dir)")):
        r = result[name]
        table.add_row(label, f"{r['seconds']:.1f}", f"{r['images_per_s']:.1f}", f"{r['startup_seconds']:.1f}",
                      " ".join(f"{s:.1f}" for s in r["runs"]))
    train = result["tl_train"]
    table.add_row(TRAIN_WHAT, "", "", f"{train['startup_seconds']:.1f}", " ".join(f"{s:.1f}" for s in train["runs"]))
    table.add_row("ratio (loop s / tl s)", f"{result['ratio']:.2f}x", "", "", "")
    Console().print(table)
