"""``bench.py recipe``: accuracy per second of ``tl train``'s default recipe (no flags but the data, the
architecture and its weights) against fastai's ``vision_learner(...).fine_tune(2)`` and the PyTorch tutorial's
fine-tuning loop, each a whole program (from the shell prompt to exit) on the same folders and weights,
interleaved set by set. Prints val top-1 and seconds for each; fastai is skipped, with a line saying so, when
``--fastai-python`` has no fastai.

``--subsets [NAME ...]`` adds the subsets the README reports, built from the first ``--images`` folder with symlinks: 20
train images per class, an unbalanced set (100 of the first class, 20 of the second) and every photo shrunk to
128 px (the small-photo case); val stays whole.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine_info, scratch_dir, train_images

HELP = "tl train's default recipe vs fastai's fine_tune and the tutorial loop (val top-1, whole-process seconds)"
HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
SUBSETS = ("20-per-class", "unbalanced", "128px")


def add_arguments(recipe: argparse.ArgumentParser) -> None:
    recipe.add_argument("--images", type=Path, nargs="+", help="folders with train/<class>/ and val/<class>/ (default: generated images)")
    recipe.add_argument("--per-class", type=int, default=24, help="generated images per class when --images is not given")
    recipe.add_argument("--subsets", nargs="*", choices=SUBSETS, help="also these subsets of the first --images (no name: all)")
    recipe.add_argument("--arch", default="squeezenet1_0", help="the architecture of all three (fastai's script: squeezenet1_0)")
    recipe.add_argument("--weights", default="none", help="an ImageNet weight file (torchvision state dict) for all three")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--fastai-epochs", type=int, default=2, help="fine_tune(N): one frozen epoch, then N")
    recipe.add_argument("--tutorial-epochs", type=int, default=3)
    recipe.add_argument("--fastai-python", default=sys.executable, help="an interpreter with fastai installed")
    recipe.add_argument("--skip", nargs="*", default=[], choices=("tl", "fastai", "tutorial"))
    recipe.add_argument("--json", type=Path, default=Path("runs/bench/recipe.json"), help="where the results go")


def make_subsets(source: Path, into: Path) -> dict[str, Path]:
    """The README's subsets of ``source``: seeded symlinks (and 128 px copies), val whole."""
    from PIL import Image

    classes = sorted(d.name for d in (source / "train").iterdir() if d.is_dir())
    files = lambda split, name: sorted(p for p in (source / split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    made = {}
    for subset, counts in (("20-per-class", {c: 20 for c in classes}), ("unbalanced", {c: 100 if i == 0 else 20 for i, c in enumerate(classes)})):
        rng = random.Random(0)
        for split in ("train", "val"):
            for name in classes:
                folder = into / subset / split / name
                folder.mkdir(parents=True)
                chosen = files(split, name)
                if split == "train":
                    chosen = sorted(rng.sample(chosen, min(counts[name], len(chosen))))
                for path in chosen:
                    (folder / path.name).symlink_to(path.resolve())
        made[subset] = into / subset
    for split in ("train", "val"):
        for name in classes:
            folder = into / "128px" / split / name
            folder.mkdir(parents=True)
            for path in files(split, name):
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    image.thumbnail((128, 128))
                    image.save(folder / f"{path.stem}.jpg", quality=90)
    made["128px"] = into / "128px"
    return made


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, done


def run_tl(data: Path, args: argparse.Namespace, out: Path) -> dict:
    """``python -m tl.train`` with the data, architecture, weights and seed: everything else is the default recipe."""
    seconds, done = timed([sys.executable, "-m", "tl.train", "--arch", args.arch, "--weights", args.weights,
                           "--data-dir", str(data), "--seed", str(args.seed), "--out", str(out)])
    if done.returncode:
        raise RuntimeError(f"tl train failed:\n{done.stderr[-3000:]}")
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(epochs, key=lambda m: (m["val_top1"], -m["val_loss"]))
    plan = next((line for line in done.stderr.splitlines() if line.startswith("recipe")), "")
    return {"val_top1": best["val_top1"], "last_val_top1": epochs[-1]["val_top1"], "seconds": seconds,
            "epochs": len(epochs), "recipe": plan}


def run_script(script: str, python: str, data: Path, args: argparse.Namespace, *extra: str) -> dict:
    seconds, done = timed([python, str(HERE / script), str(data), args.weights, *extra, "--seed", str(args.seed)],
                          env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)})
    if done.returncode:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"val_top1": result["val_top1"], "seconds": seconds}


def has_fastai(python: str) -> bool:
    return subprocess.run([python, "-c", "import fastai.vision.all"], capture_output=True).returncode == 0


def run(args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    load_before = os.getloadavg()
    scratch = scratch_dir()
    folders = args.images or [train_images(argparse.Namespace(images=None, per_class=args.per_class))]
    sets = {folder.name: folder for folder in folders}
    if args.subsets is not None:
        wanted = args.subsets or SUBSETS
        sets.update({f"{folders[0].name}/{name}": path for name, path in make_subsets(folders[0], scratch / "subsets").items()
                     if name in wanted})
    tools = [tool for tool in ("tl", "fastai", "tutorial") if tool not in args.skip]
    if "fastai" in tools and not has_fastai(args.fastai_python):
        print(f"fastai: not installed for {args.fastai_python}; skipped (pip install fastai, or --fastai-python PATH)", file=sys.stderr)
        tools.remove("fastai")
    results: dict[str, dict[str, dict]] = {}
    for name, folder in sets.items():  # interleaved: every tool on one set before the next set
        results[name] = {}
        for tool in tools:
            print(f"{name}: {tool} ...", file=sys.stderr)
            if tool == "tl":
                results[name][tool] = run_tl(folder, args, scratch / "runs" / name.replace("/", "-"))
            elif tool == "fastai":
                results[name][tool] = run_script("fastai_finetune.py", args.fastai_python, folder, args, "--epochs", str(args.fastai_epochs))
            else:
                results[name][tool] = run_script("tutorial_finetune.py", sys.executable, folder, args, args.arch,
                                                 "--epochs", str(args.tutorial_epochs))
    table = Table(title=f"bench recipe: {args.arch}, val top-1 and whole-process seconds", title_justify="left")
    for column in ("data", *tools, "tl vs fastai" if "fastai" in tools and "tl" in tools else ""):
        if column:
            table.add_column(column, justify="left" if column == "data" else "right")
    for name, by_tool in results.items():
        cells = [f"{r['val_top1']:.1%}, {r['seconds']:.0f} s" for r in by_tool.values()]
        if "fastai" in by_tool and "tl" in by_tool:
            tl_result, fa = by_tool["tl"], by_tool["fastai"]
            cells.append(f"{(tl_result['val_top1'] - fa['val_top1']) * 100:+.1f} points, {fa['seconds'] / tl_result['seconds']:.2f}x faster")
        table.add_row(name, *cells)
    Console().print(table)
    for name, by_tool in results.items():
        if "tl" in by_tool:
            print(f"{name}: {by_tool['tl']['recipe']}", file=sys.stderr)
    return {"bench": "recipe", "arch": args.arch, "weights": args.weights, "seed": args.seed, "results": results,
            "machine": machine_info(load_before)}
