"""The ``tl`` command: registers subcommands and turns a TLError into one line + hint (exit 2). Nothing else."""

from __future__ import annotations

import os
import sys
from typing import Callable

import typer

from tl import archs, export, reproduce, train_cli
from tl.errors import TLError

app = typer.Typer(
    name="tl",
    help="Fine-tune ImageNet-pretrained torchvision classifiers on your own images.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("train")(train_cli.command)
app.command("archs")(archs.command)
app.command("reproduce")(reproduce.command)
from tl import doctor, slurm  # noqa: E402  (typer and the standard library only; torch is imported inside)
app.add_typer(slurm.app, name="slurm")
app.command("doctor", context_settings=doctor.CONTEXT)(doctor.command)
app.command("export")(export.command)
from tl import evaluate, predict  # noqa: E402  (light modules: heavy imports happen inside the commands)
app.command("predict-dir")(predict.predict_dir_command)
app.command("predict")(predict.predict_command)
app.command("eval")(evaluate.command)
from tl import datacheck, datasplit, datastats  # noqa: E402  (typer only at import; PIL and torch inside the commands)
app.command("check-data")(datacheck.command)
app.command("split")(datasplit.command)
app.command("stats")(datastats.command)
from tl.viz import curves, gradcam, grids, lrfind  # noqa: E402  (typer only at import; matplotlib and torch inside the commands)
app.command("plot")(curves.command)
app.command("show-batch")(grids.show_batch_command)
app.command("show-predictions")(grids.show_predictions_command)
app.command("gradcam")(gradcam.command)
app.command("lr-find")(lrfind.command)


def _report(error: TLError) -> None:
    if os.environ.get("TL_DEBUG"):
        raise error
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    print(f"{prefix}error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"{prefix}hint: {error.hint}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        app()
    except TLError as error:
        _report(error)


def run_single(command: Callable, context_settings: dict | None = None) -> None:
    """Run one command function as a program of its own (``python -m tl.train``), with the same error handling."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command(context_settings=context_settings)(command)
    try:
        single()
    except TLError as error:
        _report(error)


if __name__ == "__main__":
    main()
