"""``tl plot RUN``: RUN/curves.png from RUN/metrics.jsonl: loss, accuracy and learning rate per epoch.

The learning rate gets a panel of its own (log scale) because it lives on another scale than loss and
accuracy; the best epoch (tl train's rule: highest val top-1, then lowest val loss) and every plateau
reduction are marked on all panels, so a jump in the curves can be matched with what caused it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from tl.errors import TLError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES = "curves.png"
SIZE = (9.0, 9.0)  # inches; x viz.DPI = pixels


def find_metrics(run: Path) -> Path:
    """RUN/metrics.jsonl for RUN or a checkpoint inside it (RUN/best)."""
    if not run.exists():
        raise TLError(f"{run} does not exist", "pass the --out folder of a tl train run")
    for folder in (run, run.parent):
        if (folder / "metrics.jsonl").is_file():
            return folder / "metrics.jsonl"
    raise TLError(f"no metrics.jsonl in {run}", "pass the --out folder of a tl train run")


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """One record per epoch in epoch order; a line cut short by a crash is skipped, a repeated epoch keeps its last line."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
        except (ValueError, KeyError, TypeError):
            continue
    if not by_epoch:
        raise TLError(f"{path} holds no finished epoch", "plot again once the run has finished its first epoch")
    return [by_epoch[e] for e in sorted(by_epoch)]


def marks(epochs: list[dict[str, Any]]) -> tuple[int, list[int]]:
    """(best epoch, epochs after which the learning rate was reduced)."""
    best = max(epochs, key=lambda m: (m.get("val_top1", 0.0), -m.get("val_loss", 0.0)))
    reductions, before = [], 0
    for record in epochs:
        count = record.get("lr_reductions", 0)
        if count > before:
            reductions.append(record["epoch"])
        before = count
    return best["epoch"], reductions


def plot_curves(epochs: list[dict[str, Any]], path: Path) -> Path:
    """``curves_figure`` written to ``path`` (a PNG of ``SIZE`` inches)."""
    from tl.viz import save

    return save(curves_figure(epochs), path)


def curves_figure(epochs: list[dict[str, Any]]) -> "Figure":
    """Three panels over the epochs: loss, top-1/top-5, learning rate; the best epoch and lr reductions marked."""
    from matplotlib.ticker import MaxNLocator

    from tl.viz import new_figure

    fig = new_figure(*SIZE)
    loss_ax, acc_ax, lr_ax = fig.subplots(3, 1, sharex=True, height_ratios=(3, 3, 2))
    x = [m["epoch"] for m in epochs]
    series = lambda key: [m.get(key, float("nan")) for m in epochs]
    style = dict(marker="o", markersize=3)  # a one-epoch run still shows its points
    loss_ax.plot(x, series("train_loss"), label="train", **style)
    loss_ax.plot(x, series("val_loss"), label="val", **style)
    acc_ax.plot(x, series("train_top1"), label="train top-1", **style)
    acc_ax.plot(x, series("val_top1"), label="val top-1", **style)
    if any("val_top5" in m for m in epochs):
        acc_ax.plot(x, series("val_top5"), label="val top-5", linestyle="--", **style)
    if any("ema_val_top1" in m for m in epochs):
        loss_ax.plot(x, series("ema_val_loss"), label="val (EMA)", linestyle=":", **style)
        acc_ax.plot(x, series("ema_val_top1"), label="val top-1 (EMA)", linestyle=":", **style)
    lr_ax.plot(x, series("lr"), color="tab:purple", **style)
    lr_ax.set_yscale("log")

    best, reductions = marks(epochs)
    best_record = next(m for m in epochs if m["epoch"] == best)
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.axvline(best, color="black", linestyle="--", linewidth=1)
        for epoch in reductions:
            ax.axvline(epoch, color="tab:red", linestyle=":", linewidth=1)
        ax.grid(alpha=0.3)
    acc_ax.annotate(f"best: epoch {best}, val top-1 {best_record.get('val_top1', 0):.3f}", (best, 0.02),
                    xycoords=("data", "axes fraction"), xytext=(4, 0), textcoords="offset points", fontsize=8)
    for epoch in reductions:
        lr_ax.annotate("lr reduced", (epoch, 0.95), xycoords=("data", "axes fraction"), xytext=(-4, 0),
                       textcoords="offset points", color="tab:red", fontsize=8, va="top", ha="right")
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    lr_ax.set_ylabel("lr (head, end of epoch)")
    lr_ax.set_xlabel("epoch")
    lr_ax.set_xlim(x[0] - 0.5, x[-1] + 0.5)  # a one-epoch run gets a readable axis too
    if len(x) <= 20:
        lr_ax.set_xticks(x)
    else:
        lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(loc="upper right", fontsize=8)
    acc_ax.legend(loc="lower right", fontsize=8)
    loss_ax.set_title(f"{len(epochs)} epoch(s); dashed black: best epoch" + ("; dotted red: lr reduced" if reductions else ""))
    return fig


def write_curves(run: Path, out: Path | None = None) -> Path:
    """RUN/curves.png (or ``out``) from the run's metrics."""
    metrics = find_metrics(run)
    return plot_curves(read_epochs(metrics), out or metrics.parent / CURVES)


def write_curves_if_available(run_dir: Path) -> Path | None:
    """For the end of training: curves.png when the viz extra is installed, else None without a word.

    A picture must never fail a finished run, so any other problem becomes a warning and None.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    try:
        return write_curves(Path(run_dir))
    except Exception as exc:  # matplotlib's errors have no common base class
        logging.getLogger("tl").warning(f"warning: could not draw {Path(run_dir) / CURVES}: {exc}")
        return None


def command(
    run: Annotated[Path, typer.Argument(help="Folder of a tl train run (its --out), holding metrics.jsonl.")],
    out: Annotated[Optional[Path], typer.Option(help="PNG to write; default RUN/curves.png.")] = None,
) -> None:
    """Plot a run's loss, top-1/top-5 and learning rate per epoch into RUN/curves.png.

    Example:

      tl plot runs/r18
    """
    from tl.viz import require_matplotlib

    require_matplotlib()
    print(write_curves(run, out))
