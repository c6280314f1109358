"""The ``tl`` command: registers subcommands and turns a TLError into one line + hint (exit 2). Nothing else.

Imported by nobody. Each command is a plain typed function in the stage it belongs to; importing these modules
is cheap (typer only), heavy libraries are imported inside the commands so that ``tl --help`` stays instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tl import __version__
from tl.cluster import doctor, slurm
from tl.data import check, prepare, split_command, stats
from tl.entry import Typer, report
from tl.errors import TLError
from tl.inference import commands as predict
from tl.inference import evaluate, merge, suspects
from tl.models import archs_command, export
from tl.training import command as train
from tl.training import reproduce
from tl.viz import curves, gradcam, grids, lrfind

app = Typer(  # tl's help layout, shared with the python -m programs: see tl/entry.py
    name="tl",
    help="Fine-tune ImageNet-pretrained torchvision classifiers on your own images.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def version(show: Annotated[bool, typer.Option("--version", is_eager=True, help="Print tl's version and exit.")] = False) -> None:
    if show:
        print(f"tl {__version__}")
        raise typer.Exit()


app.command("train")(train.command)
app.command("archs")(archs_command.command)
app.command("reproduce")(reproduce.command)
app.add_typer(slurm.app, name="slurm")
app.command("doctor", context_settings=doctor.CONTEXT)(doctor.command)
app.command("export")(export.command)
app.command("predict-dir")(predict.predict_dir_command)
app.command("merge-predictions")(merge.command)
app.command("predict")(predict.predict_command)
app.command("eval")(evaluate.command)
app.command("suspects")(suspects.command)
app.command("check-data")(check.command)
app.command("split")(split_command.command)
app.command("prepare")(prepare.command)
app.command("stats")(stats.command)
app.command("plot")(curves.command)
app.command("show-batch")(grids.show_batch_command)
app.command("show-predictions")(grids.show_predictions_command)
app.command("gradcam")(gradcam.command)
app.command("lr-find")(lrfind.command)


def main() -> None:
    try:
        app()
    except TLError as error:
        report(error)


if __name__ == "__main__":
    main()
