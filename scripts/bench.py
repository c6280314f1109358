"""Benchmarks of tl's hot paths against the plain PyTorch code they replace, one subcommand each.

    .venv/bin/python scripts/bench.py predict                       # quick: own images + random squeezenet1_0
    .venv/bin/python scripts/bench.py predict --images DIR --checkpoint RUN/best
    .venv/bin/python scripts/bench.py predict --whole-process ...   # also as whole programs, and start-up times

    .venv/bin/python scripts/bench.py loader --images hymenoptera_data    # a train/<class>/ tree

    .venv/bin/python scripts/bench.py train                         # quick: own images + random squeezenet1_0
    .venv/bin/python scripts/bench.py train --images hymenoptera_data --weights squeezenet1_0.safetensors
    .venv/bin/python scripts/bench.py train --strategy linear --epochs 3 ...   # the feature cache
    .venv/bin/python scripts/bench.py all                           # each of them with its defaults
    .venv/bin/python scripts/bench.py recipe --images hymenoptera_data --subsets --weights W --fastai-python PY

``recipe`` runs ``tl train``'s default recipe, fastai's ``fine_tune(2)`` (when installed) and the tutorial's loop
as whole programs on the same folders and weights: val top-1 and seconds (``scripts/benchmarks/recipe.py``).

    .venv/bin/python scripts/bench.py scale --checkpoint RUN/best   # predict-dir over 1,000,000 files (hard links)

``train`` times ``tl train``'s code path (``tl.train.run``: its default fast paths, timed by its own
``train_seconds``) against the tutorials' loop (``ImageFolder`` + PIL transforms + ``DataLoader`` + a plain
fp32 loop that reads ``loss.item()`` every step) on the same images, model, batch size, image size and
epochs (the tutorial with ``--num-workers``, tl with its own choice unless that is given), alternating them,
each run in a fresh process, with the model-bound ceiling (``full`` only); ``full`` trains everything with
augmentation, ``linear`` trains the head on a frozen backbone without augmentation (the tutorials' "fixed
feature extractor"). Peak MB is the main process's: the tutorial's loader workers are not in it.

``loader`` times one epoch of tl's training input pipeline (``ImageFiles`` + ``train_transform`` on uint8
tensors + per-sample seeding) against the tutorials' ``ImageFolder`` + PIL ``transforms`` pipeline, with the
same DataLoader settings. ``predict`` times ``tl predict-dir``'s code path (``tl.inference.folder.predict_dir``: DataLoader workers, batches,
inference mode, streaming CSV) against the plain per-image loop (open, transform, unsqueeze, forward, one file
at a time) on the same files and checkpoint, alternating the two and repeating, and reports medians;
``--whole-process`` also times both as whole programs (a tutorial's script and ``python -m tl.predict_dir``),
their start-up over one image, and ``python -m tl.train``'s over 4 images.

Each bench lives in ``scripts/benchmarks/<name>.py`` (its flags and ``run``); shared helpers in ``common.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # tl from this checkout (installed or not), and scripts/benchmarks

from benchmarks import gpu, loader, predict, recipe, scale, train

BENCHES = {"predict": predict, "loader": loader, "train": train, "gpu": gpu, "scale": scale, "recipe": recipe}


def bench_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Every bench with its defaults (quick, generated data), one after the other."""
    results = {}
    for name in ("loader", "predict", "train"):
        results[name] = BENCHES[name].run(parser.parse_args([name, "--repeats", str(args.repeats)]))
    return {"bench": "all", **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    every = sub.add_parser("all", help="loader, predict and train with their defaults")
    every.add_argument("--repeats", type=int, default=3)
    every.add_argument("--json", type=Path, default=Path("runs/bench/all.json"), help="where the results go")
    args = parser.parse_args()
    from tl.errors import TLError

    try:
        result = bench_all(args, parser) if args.bench == "all" else BENCHES[args.bench].run(args)
    except TLError as error:  # a bad --images or --checkpoint: one line, as tl's commands say it
        print(f"error: {error.message}\nhint: {error.hint}", file=sys.stderr)
        raise SystemExit(2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
