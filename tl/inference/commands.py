"""``tl predict-dir`` (a folder or list to a streaming CSV or Parquet) and ``tl predict`` (a few images to a table
or JSON): the CLI layer.

Exit codes: 0 every file was predicted, 1 some files could not be read (their rows carry an ``error``),
2 bad input (TLError), 75 stopped on SIGTERM/SIGUSR1 after writing the batch in flight (``--resume`` continues).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tl.errors import TLError
from tl.inference.file_list import check_inputs
from tl.inference.folder import CPU_BATCH, GPU_BATCH, Summary, check_counts, check_output, predict_dir
from tl.inference.predictions_csv import check_unknown_label
from tl.inference.predictor import Precision, autocast_dtype, load_predictor, probabilities


def print_summary(summary: Summary, out: Path) -> None:
    from rich.table import Table

    from tl.progress import console, out_console

    table = Table(title="tl predict-dir: done", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rate = summary.predicted / summary.seconds if summary.seconds else 0.0
    rows = {"images": summary.total, "predicted now": f"{summary.predicted} ({rate:.1f} img/s)",
            "already written": summary.resumed, "unreadable": summary.failed, "out": out}
    if summary.shard:
        rows = {"shard": summary.shard, **rows}
    for key, value in rows.items():
        table.add_row(key, str(value))
    out_console().print(table)
    if summary.failed:  # a warning, so stderr: stdout keeps the summary alone
        console.print(f"{summary.failed} file(s) could not be read: see the error column of {out} (exit code 1)",
                      highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------------
# CLI signatures (shared options defined once)
# ------------------------------------------------------------------------------------------------------
MODEL, INPUT, OUTPUT, RUN = "Model", "Input", "Output", "Run"
CheckpointOpt = Annotated[Optional[Path], typer.Option(help="A tl checkpoint folder (RUN/best) or its model.safetensors.", rich_help_panel=MODEL)]
ArchOpt = Annotated[Optional[str], typer.Option(help="Instead of --checkpoint: an ImageNet classifier (`tl archs`), predicting the 1,000 ImageNet classes.", rich_help_panel=MODEL)]
WeightsOpt = Annotated[str, typer.Option(help="With --arch: DEFAULT, a torchvision weights name, or PATH to a local ImageNet weights file.", rich_help_panel=MODEL)]
CalibrationOpt = Annotated[bool, typer.Option(help="Apply the temperature stored in the checkpoint (calibrated probabilities).", rich_help_panel=MODEL)]
TtaOpt = Annotated[bool, typer.Option(help="Average each prediction with that of the mirrored image.", rich_help_panel=MODEL)]
LabelNamesOpt = Annotated[Optional[Path], typer.Option(help="JSON ({class: name}) or CSV (class,name) of display names.", rich_help_panel=OUTPUT)]
PrecisionOpt = Annotated[Precision, typer.Option(help="auto: bf16/fp16 on a GPU, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.", rich_help_panel=RUN)]
ThresholdOpt = Annotated[Optional[float], typer.Option(help="Multi-label checkpoints: call a class present at this probability for every class, instead of each class's threshold fit on val.", rich_help_panel=OUTPUT)]
MinConfidenceOpt = Annotated[float, typer.Option(help="Below this top (calibrated) probability the label is --unknown-label; probabilities are still given. `tl eval --target-accuracy A` prints the value that reaches accuracy A on a split.", rich_help_panel=OUTPUT)]
UnknownLabelOpt = Annotated[str, typer.Option(help="The label of an image under --min-confidence.", rich_help_panel=OUTPUT)]


def predict_dir_command(
    images: Annotated[Optional[Path], typer.Argument(help="Folder of images, searched recursively (or give --files instead).", show_default=False, rich_help_panel=INPUT)] = None,
    out: Annotated[Path, typer.Option(help="File to write, .csv or .parquet (same columns; probabilities as floats): path, label, confidence, p_<class>..., error.", rich_help_panel=OUTPUT)] = ...,
    files: Annotated[Optional[Path], typer.Option(help="Instead of IMAGES: a text file of image paths, one a line, or a .csv with a `path` column; relative paths are relative to the list's folder. Rows follow the list's order and repeat its paths; a missing file gets an error row.", rich_help_panel=INPUT)] = None,
    shard: Annotated[Optional[str], typer.Option(help="K/N: predict only the K-th of N contiguous blocks of the (sorted) files, K from 0 to N-1; each shard writes its own --out and resumes on its own, `tl merge-predictions` joins them. auto: K and N of this SLURM array task.", rich_help_panel=INPUT)] = None,
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    top_k: Annotated[Optional[int], typer.Option(help="Write the K best label/probability pairs instead of one column per class (0: every class; default: every class up to 20, else 5).", rich_help_panel=OUTPUT)] = None,
    label_names: LabelNamesOpt = None,
    resume: Annotated[bool, typer.Option(help="Keep the rows already in --out and predict only the missing files (after a kill, or exit 75 on SIGTERM/SIGUSR1).", rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.", rich_help_panel=OUTPUT)] = False,
    tta: TtaOpt = False,
    calibration: CalibrationOpt = True,
    batch_size: Annotated[int, typer.Option(help=f"Images per forward pass per process; 0: {CPU_BATCH} on the CPU, {GPU_BATCH} on a GPU.", rich_help_panel=RUN)] = 0,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per process; -1: automatic (on the CPU: decoding threads that take turns with the model; on a GPU: worker processes).", rich_help_panel=RUN)] = -1,
    precision: PrecisionOpt = Precision.auto,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model: pays off on large folders (compiling takes ~30 s on a small CPU).", rich_help_panel=RUN)] = False,
    min_confidence: MinConfidenceOpt = 0.0,
    unknown_label: UnknownLabelOpt = "unknown",
    threshold: ThresholdOpt = None,
) -> None:
    """Predict every image in a folder or list into a CSV or Parquet, streaming (exit 0: all read; 1: some
    unreadable; 2: bad input; 75: stopped by SIGTERM/SIGUSR1 after the batch in flight, continue with --resume).

    Examples:

      tl predict-dir photos/ --checkpoint runs/r18/best --out preds.csv

      tl predict-dir --files manifest.txt --checkpoint runs/r18/best --out preds.parquet

      tl predict-dir photos/ --checkpoint runs/r18/best --shard 0/4 --out preds-0.csv  # then 1/4, 2/4, 3/4

      tl merge-predictions preds-0.csv preds-1.csv preds-2.csv preds-3.csv --out preds.csv

      tl predict-dir photos/ --checkpoint runs/r18/best --shard auto --out preds-$SLURM_ARRAY_TASK_ID.csv --resume  # in sbatch --array=0-3

      tl predict-dir photos/ --arch squeezenet1_0 --weights squeezenet.safetensors --out imagenet.csv

      accelerate launch -m tl.predict_dir photos/ --checkpoint runs/r18/best --out preds.csv
    """
    from tl.entry import stop_codes
    from tl.inference.shards import parse_shard

    check_counts(batch_size=batch_size, top_k=top_k, num_workers=num_workers)
    check_inputs(images, files)
    parse_shard(shard)  # a bad --shard costs nothing either
    check_output(out, resume=resume, overwrite=overwrite)  # before the model loads: a bad --out costs nothing
    predictor = load_predictor(checkpoint, arch, weights, calibrated=calibration, label_names=label_names, threshold=threshold)
    with stop_codes("continue with the same command and --resume"):
        summary = predict_dir(predictor, images, out, files=files, shard=shard, batch_size=batch_size,
                              num_workers=num_workers, top_k=top_k, tta=tta, precision=precision, resume=resume,
                              overwrite=overwrite, compile=compile, min_confidence=min_confidence,
                              unknown_label=unknown_label)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files.", rich_help_panel=INPUT)],
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    top_k: Annotated[int, typer.Option(help="Classes shown per image.", rich_help_panel=OUTPUT)] = 5,
    label_names: LabelNamesOpt = None,
    tta: TtaOpt = False,
    calibration: CalibrationOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of tables, one object per file: path, label, top (label, probability), error (null, or why it could not be read).", rich_help_panel=OUTPUT)] = False,
    min_confidence: MinConfidenceOpt = 0.0,
    unknown_label: UnknownLabelOpt = "unknown",
    threshold: ThresholdOpt = None,
) -> None:
    """Show the top classes of a few images (exit 1 when one could not be read).

    Examples:

      tl predict cat.jpg dog.png --checkpoint runs/r18/best

      tl predict *.jpg --checkpoint runs/r18/best --json > predictions.json
    """
    import torch
    from rich.table import Table

    from tl.data.decode import read_image
    from tl.data.transforms import decode_short_side
    from tl.progress import console, out_console

    if top_k < 1:
        raise TLError("--top-k: must be at least 1", "the number of classes shown per image")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise TLError(f"no such file: {', '.join(missing[:3])}", "pass image files; for a folder use `tl predict-dir`")
    predictor = load_predictor(checkpoint, arch, weights, calibrated=calibration, label_names=label_names, threshold=threshold)
    check_unknown_label(min_confidence, unknown_label, predictor.class_names)
    transform, answers, out = predictor.transform(), [], out_console()
    for path in images:
        try:
            image = transform(read_image(path, decode_short_side(transform)))  # decoded as predict-dir decodes
        except Exception as exc:  # a TLError from the decoder, or a transform failing on a degenerate image
            reason = exc.message if isinstance(exc, TLError) else f"cannot use image {path}: {type(exc).__name__}: {exc}"
            console.print(f"{path}: {reason}", style="red", highlight=False, markup=False, soft_wrap=True)  # stderr, also with --json
            answers.append({"path": str(path), "label": None, "top": [], "error": reason})
            continue
        with torch.inference_mode():
            probs = probabilities(predictor, image.unsqueeze(0), tta=tta, dtype=autocast_dtype(Precision.auto, image.device))[0]
        if predictor.thresholds is not None:  # multi-label: every class over its threshold, and every probability
            from tl.inference.multilabel import answer, table_of

            answers.append(answer(str(path), probs.tolist(), predictor.class_names, predictor.thresholds))
            if not as_json:
                out.print(f"{path}: {'; '.join(answers[-1]['labels']) or '(no class)'}", style="bold", highlight=False, markup=False)
                out.print(table_of(answers[-1], predictor.thresholds))
            continue
        values, indices = probs.topk(min(top_k, len(probs)))
        top = [{"label": predictor.class_names[i], "probability": v} for v, i in zip(values.tolist(), indices.tolist())]
        unsure = top[0]["probability"] < min_confidence
        answers.append({"path": str(path), "label": unknown_label if unsure else top[0]["label"], "top": top, "error": None})
        if as_json:
            continue
        out.print(f"{path}: {unknown_label} (top probability under --min-confidence {min_confidence:g})" if unsure else str(path),
                  style="bold", highlight=False, markup=False)
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for rank, entry in enumerate(top, start=1):
            table.add_row(str(rank), entry["label"], f"{entry['probability']:.4f}")
        out.print(table)
    if as_json:
        print(json.dumps(answers, indent=2))
    if any(answer["error"] for answer in answers):
        raise typer.Exit(1)
