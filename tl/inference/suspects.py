"""``tl suspects``: the images whose given label a trained model doubts most, and exact copies filed under two classes.

Each image is scored by a head that never saw it (cross-fitting): the checkpoint's backbone turns every image of
the chosen split(s) into its pooled feature vector once; the images are dealt into K folds, stratified by label,
and for each fold a multinomial logistic regression (L2, L-BFGS, in torch) fit on the other K-1 folds scores it.
The run's own head learned the train images with their given labels, wrong ones included, and vouches for them;
a cross-fit head has only the other images to go by. The backbone is still the checkpoint's, so with full
fine-tuning it has seen the train images: the estimate is less leaky, not leak-free.

Exact duplicates (the same bytes, hashed as ``tl check-data`` hashes them) under two classes are certain
conflicts: they are listed first, whatever their scores.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tl.errors import TLError
from tl.inference.predictor import Precision

if TYPE_CHECKING:
    import torch

COLUMNS = ["path", "split", "given", "predicted", "p_given", "p_predicted", "note"]
# L2 strengths tried on standardised features (penalty on a mean loss); the one with the lowest out-of-fold
# log-loss is kept. On bees/ants (~250 images, 512 features, 12 labels flipped) 1.0 won, and ranked the
# flipped ones higher than 0.01 did: a weakly held head overfits the other folds' wrong labels.
L2_GRID = (0.01, 0.1, 1.0)
PICTURES = 24  # the PNG shows at most this many of the top rows


class Scope(str, Enum):
    train = "train"
    val = "val"
    all = "all"


@dataclass
class Suspect:
    path: str
    split: str
    given: str
    predicted: str = ""
    p_given: float | None = None
    p_predicted: float | None = None
    note: str = ""
    index: int = -1  # in its split's dataset, for the picture

    def cells(self) -> list[str]:
        from tl.inference.predictions_csv import csv_safe

        number = lambda p: "" if p is None else f"{p:.6f}"
        return [csv_safe(self.path), self.split, csv_safe(self.given), csv_safe(self.predicted),
                number(self.p_given), number(self.p_predicted), csv_safe(self.note)]


def pooled_features(model, dataset, *, batch_size: int, num_workers: int, device: str, dtype=None):
    """(features, labels, readable) of every item: the input of the model's ClassifierHead, in float32 on the CPU."""
    import torch
    from torch.utils.data import DataLoader

    from tl.models.heads import ClassifierHead

    head = next(m for m in model.modules() if isinstance(m, ClassifierHead))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    labels, readable = [], []
    model.to(device).eval()
    try:
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for images, batch_labels, batch_readable in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
                model(images.to(device))
                labels.append(torch.as_tensor(batch_labels))
                readable.append(torch.as_tensor(batch_readable).bool())
    finally:
        hook.remove()
    return torch.cat(captured), torch.cat(labels).long(), torch.cat(readable)


def stratified_folds(labels: "torch.Tensor", folds: int, seed: int = 0) -> "torch.Tensor":
    """The fold of each image: each class's images in a seeded random order, dealt round-robin."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = torch.arange(len(members)) % folds
    return fold


def fit_logistic(features: "torch.Tensor", labels: "torch.Tensor", num_classes: int, *, l2: float):
    """A multinomial logistic regression on standardised features; returns the function from features to probabilities."""
    import torch

    mean = features.mean(0)
    std = features.std(0).clamp(min=1e-6) if len(features) > 1 else torch.ones(features.shape[1])
    x = (features - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda new: (((new - mean) / std) @ weight.detach() + bias.detach()).softmax(1)


def cross_fit(features: "torch.Tensor", labels: "torch.Tensor", num_classes: int, *, folds: int = 5, seed: int = 0,
              l2_grid: tuple[float, ...] = L2_GRID) -> "torch.Tensor":
    """Probabilities of every image from a head fit on the other folds only (the L2 strength of ``l2_grid`` with
    the lowest out-of-fold log-loss)."""
    import torch

    fold = stratified_folds(labels, folds, seed)
    best, best_loss = None, float("inf")
    for l2 in l2_grid:
        probs = torch.zeros(len(labels), num_classes)
        for k in range(folds):
            held = fold == k
            if held.any():
                probs[held] = fit_logistic(features[~held], labels[~held], num_classes, l2=l2)(features[held])
        loss = -probs.gather(1, labels[:, None]).clamp(min=1e-12).log().mean().item()
        if loss < best_loss:
            best, best_loss = probs, loss
    return best


def _key(dataset, index: int, split: str) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"{split}[{index}]"


def duplicate_conflicts(parts: dict[str, object], class_names: list[str]) -> list[Suspect]:
    """Files with the same bytes under two or more classes, in any split (image files only; other data: none)."""
    import os

    from tl.data.check import hash_same_sizes  # check-data's hashing: only files whose byte counts collide are read

    items = [{"path": str(path), "nbytes": os.path.getsize(path), "split": split, "label": label, "index": i}
             for split, data in parts.items() for i, (path, label) in enumerate(getattr(data, "samples", None) or [])
             if os.path.isfile(path)]
    hash_same_sizes(items)
    groups = defaultdict(list)
    for item in items:
        if item.get("digest"):
            groups[item["digest"]].append(item)
    found = []
    for group in groups.values():
        if len({item["label"] for item in group}) > 1:
            for item in group:
                others = "; ".join(f"{o['path']} ({class_names[o['label']]})" for o in group if o is not item)
                found.append(Suspect(item["path"], item["split"], class_names[item["label"]], index=item["index"],
                                     note=f"same file as {others}: one label is wrong"))
    return found


def find_suspects(checkpoint: Path, scope: Scope = Scope.train, *, top: int = 20, folds: int = 5, data_dir: Path | None = None,
                  batch_size: int = 64, num_workers: int = -1, precision: str = "auto", seed: int = 0):
    """(suspects, datasets by split, meta): conflicting duplicates first, then the ``top`` images of ``scope`` whose
    given label the cross-fit heads find least likely."""
    import torch

    from tl.inference.evaluate import load_data
    from tl.inference.predictor import autocast_dtype
    from tl.models.checkpoint import load_checkpoint, read_meta
    from tl.runtime import num_workers as resolve_workers

    if read_meta(checkpoint).get("task") == "multilabel":  # a doubted label needs one given label per image
        raise TLError("tl suspects ranks images by their one given class: this is a multi-label checkpoint",
                      "look at `tl eval`'s per-class precision and recall, and predict-dir's rows, for its doubtful labels")
    data, meta = load_data(checkpoint, data_dir=data_dir)
    names = list(meta["class_names"])
    every = {"train": data.train, "val": data.val, **({"test": data.test} if data.test is not None else {})}
    parts = every if scope == Scope.all else {scope.value: every[scope.value]}
    model, _ = load_checkpoint(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = autocast_dtype(Precision(precision), torch.device(device))
    workers = resolve_workers(num_workers, 1)
    features, labels, where = [], [], []
    for split, dataset in parts.items():
        x, y, readable = pooled_features(model, dataset, batch_size=batch_size, num_workers=workers, device=device, dtype=dtype)
        keep = readable.nonzero().flatten().tolist()  # an unreadable file's stand-in pixels say nothing about its label
        features.append(x[keep])
        labels.append(y[keep])
        where += [(split, i) for i in keep]
    features, labels = torch.cat(features), torch.cat(labels)
    if len(labels) < 2 * folds:
        raise TLError(f"--folds {folds}: {len(labels)} readable images are too few to cross-fit", "lower --folds, or use --split all")
    probs = cross_fit(features, labels, len(names), folds=folds, seed=seed)
    p_given = probs.gather(1, labels[:, None]).flatten()
    p_best, best = probs.max(1)
    scored = {}
    for n in p_given.argsort(stable=True).tolist():
        split, index = where[n]
        scored[(split, index)] = Suspect(_key(parts[split], index, split), split, names[int(labels[n])], names[int(best[n])],
                                         float(p_given[n]), float(p_best[n]), index=index)
    duplicates = duplicate_conflicts(every, names)
    for row in duplicates:  # scores where the copy was scored too
        found = scored.get((row.split, row.index))
        if found is not None:
            row.predicted, row.p_given, row.p_predicted = found.predicted, found.p_given, found.p_predicted
    listed = {(row.split, row.index) for row in duplicates}
    ranked = [row for key, row in scored.items() if key not in listed][:top]
    return duplicates + ranked, every, meta


def write_csv(path: Path, rows: list[Suspect]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(row.cells() for row in rows)


def picture(path: Path, rows: list[Suspect], datasets: dict, meta: dict) -> Path | None:
    """The PNG grid of the first rows when matplotlib is installed (the viz extra); None without it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    from tl.viz import to_image
    from tl.viz.suspects import plot_suspects

    shown = rows[:PICTURES]
    images = [to_image(datasets[row.split][row.index][0], meta["mean"], meta["std"]) for row in shown]
    titles = [f"given {row.given}, model says {row.predicted or '?'}" + (f" ({row.p_predicted:.2f})" if row.p_predicted is not None else "")
              for row in shown]
    return plot_suspects(images, titles, path, heading=f"{len(shown)} most doubted labels",
                         disputed=[row.predicted != row.given for row in shown])


def command(
    run: Annotated[Path, typer.Argument(help="A tl train run (RUN, or a checkpoint such as RUN/best); its config.json rebuilds the data.")],
    split: Annotated[Scope, typer.Option(help="Whose labels to check: train | val | all (train, val and test where there is one).")] = Scope.train,
    top: Annotated[int, typer.Option(help="How many of the most doubted images to list.")] = 20,
    out: Annotated[Optional[Path], typer.Option(help="CSV to write; default RUN/suspects.csv (and suspects.png beside it with the viz extra).")] = None,
    folds: Annotated[int, typer.Option(help="K: each image is scored by a logistic-regression head (L2 picked from 0.01/0.1/1 by out-of-fold log-loss) fit on the checkpoint's pooled features of the other K-1 folds, never on itself. The backbone is the checkpoint's: train with --strategy linear for scores no training image leaked into.")] = 5,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the run's image folder is now, if it moved.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers; -1: automatic.")] = -1,
    precision: Annotated[Precision, typer.Option(help="auto: as tl eval; fp32 for exact float32 features.")] = Precision.auto,
) -> None:
    """List the images whose given label the model doubts most, most doubtful first (path, split, given,
    predicted, p_given, p_predicted, note). Each image is scored by a head cross-fit on the other images'
    pooled features (K folds), so it cannot vouch for its own label; exact duplicate files filed under two
    classes come first.

    Examples:

      tl suspects runs/r18 --top 30

      tl suspects runs/r18/best --split all --out suspects.csv
    """
    from rich.table import Table

    from tl.progress import out_console

    if top < 1:
        raise TLError("--top: must be at least 1")
    if folds < 2:
        raise TLError("--folds: must be at least 2", "5 is the usual choice")
    if not run.exists():
        raise TLError(f"{run} does not exist", "pass the --out folder of a tl train run, or its best/ checkpoint")
    checkpoint = run / "best" if (run / "best").is_dir() else run
    rows, datasets, meta = find_suspects(checkpoint, split, top=top, folds=folds, data_dir=data_dir, batch_size=batch_size,
                                         num_workers=num_workers, precision=precision.value)
    from tl.inference.evaluate import run_dir_of

    out = out or run_dir_of(checkpoint) / "suspects.csv"
    write_csv(out, rows)
    png = picture(out.with_suffix(".png"), rows, datasets, meta)
    table = Table(title=f"tl suspects: {split.value}, {folds}-fold cross-fit", title_justify="left")
    for column in ("path", "given", "predicted", "p_given", "note"):
        table.add_column(column, justify="right" if column == "p_given" else "left", overflow="fold")
    for row in rows:
        table.add_row(row.path, row.given, row.predicted, "" if row.p_given is None else f"{row.p_given:.3f}", row.note)
    console = out_console()
    console.print(table)
    console.print(f"written: {out}" + (f", {png}" if png else ""))
