"""``tl predict-dir`` (a folder to a streaming CSV) and ``tl predict`` (a few images to a table).

Everything comes from the checkpoint (architecture, class names, input size, mean/std, temperature), or
from torchvision's ImageNet metadata with ``--arch/--weights``. Heavy imports live inside functions so that
``tl --help`` stays instant. Model: timm's ``inference.py`` (filename column first, one column per class).

Exit codes: 0 every file was predicted, 1 some files could not be read (their rows carry an ``error``),
2 bad input (TLError).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tl.errors import TLError
from tl.inflight import InFlight, decoder_crash_is_an_error
from tl.predictions_csv import csv_header, csv_row, read_done

if TYPE_CHECKING:
    import torch
    from torch import nn

AUTO_TOP_K = 5  # written instead of every class when a model has more than MAX_PROB_COLUMNS classes
MAX_PROB_COLUMNS = 20


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


# ------------------------------------------------------------------------------------------------------
# The model and its preprocessing
# ------------------------------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A model in eval mode with everything needed to turn files into probabilities."""

    model: "nn.Module"
    class_names: list[str]  # display names, in the model's output order
    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    temperature: float = 1.0

    def transform(self):
        """File -> normalised float tensor, as ``tl eval`` preprocesses."""
        from tl.transforms import eval_transform

        return eval_transform(size=self.size, resize=self.resize, mean=self.mean, std=self.std)

    def pixels(self):
        """File -> uint8 tensor: ``transform``'s geometry, for loader workers; ``normalizer`` does the rest per batch."""
        from tl.transforms import eval_pixels

        return eval_pixels(size=self.size, resize=self.resize)

    def normalizer(self):
        from tl.transforms import BatchNormalize

        return BatchNormalize(self.mean, self.std)


def load_predictor(checkpoint: Path | None = None, arch: str | None = None, weights: str = "DEFAULT", *,
                   calibrated: bool = True, label_names: Path | None = None) -> Predictor:
    """From a tl checkpoint, or an ImageNet classifier (torchvision weights or a local weights file)."""
    from tl.models import IMAGENET_MEAN, IMAGENET_STD

    if checkpoint is not None and arch is not None:
        raise TLError("pass either --checkpoint or --arch/--weights, not both", "a checkpoint already names its architecture")
    if checkpoint is not None:
        from tl.checkpoint import load_checkpoint

        check_checkpoint_path(checkpoint)
        model, meta = load_checkpoint(checkpoint)
        names, size, resize = list(meta["class_names"]), meta["input_size"], meta["resize_size"]
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        temperature = float(meta.get("temperature", 1.0)) if calibrated else 1.0
    elif arch is not None:
        model, names = _imagenet_model(arch, weights)
        from tl.models import default_sizes

        (size, resize), mean, std, temperature = default_sizes(arch), IMAGENET_MEAN, IMAGENET_STD, 1.0
    else:
        raise TLError("no model given", "pass --checkpoint RUN/best, or --arch NAME --weights DEFAULT|PATH for ImageNet classes")
    if label_names is not None:
        names = read_label_names(label_names, names)
    return Predictor(model.eval(), names, size, resize, mean, std, temperature)


def check_checkpoint_path(path: Path) -> None:
    """Catch the paths that are not checkpoints before safetensors reads them as one."""
    if not path.exists():
        raise TLError(f"--checkpoint: {path} does not exist", "pass a checkpoint folder such as RUN/best")
    if path.is_file() and path.suffix != ".safetensors":
        raise TLError(f"--checkpoint: {path} is not a model.safetensors file", "pass the checkpoint folder (RUN/best)")


def _imagenet_model(arch: str, weights: str) -> tuple["nn.Module", list[str]]:
    """A torchvision classifier with its 1,000 ImageNet outputs and their names (no download for a local file)."""
    import torchvision

    from tl.models import torchvision_state, build_base, check_arch
    from tl.weights import is_torchvision_weights_name, read_state_dict

    check_arch(arch)
    if ":" in arch:
        raise TLError(f"--arch {arch}: ImageNet prediction needs a torchvision architecture",
                      "for your own model use --checkpoint")
    model = build_base(arch)
    enum = torchvision.models.get_model_weights(arch)
    if is_torchvision_weights_name(weights):
        state, _ = torchvision_state(arch, weights)
        categories = (enum.DEFAULT if weights.upper() == "DEFAULT" else enum[weights]).meta["categories"]
    else:
        state, categories = read_state_dict(weights), enum.DEFAULT.meta["categories"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TLError(f"--weights: {weights} does not fit {arch} ({str(exc).splitlines()[0][:160]})",
                      "pass the architecture the weights were made for; a tl checkpoint goes to --checkpoint")
    if hasattr(model, "transform_input"):
        model.transform_input = True  # inception/googlenet ImageNet weights expect torchvision's input transform
    return model, list(categories)


def read_label_names(path: Path, class_names: list[str]) -> list[str]:
    """Display names from JSON (``{"class": "name"}`` or a list in class order) or CSV rows ``class,name``."""
    if not path.is_file():
        raise TLError(f"--label-names: no such file {path}", "give a JSON object or a CSV of class,display-name rows")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(path.read_text())
            mapping = dict(zip(class_names, map(str, raw))) if isinstance(raw, list) else {str(k): str(v) for k, v in raw.items()}
        else:
            with open(path, newline="") as handle:
                mapping = {row[0]: row[1] for row in csv.reader(handle) if len(row) >= 2}
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise TLError(f"--label-names: cannot read {path} ({exc})", "give a JSON object or a CSV of class,display-name rows")
    if not set(mapping) & set(class_names):
        raise TLError(f"--label-names: {path} names none of the model's classes",
                      f"its keys must be class names such as {', '.join(class_names[:3])}")
    return [mapping.get(name, name) for name in class_names]


def autocast_dtype(precision: Precision, device: "torch.device"):
    """None for fp32. auto: half precision where the device computes it natively (bf16 on GPUs that have it, else
    fp16; bf16 on a CPU with AVX512-BF16 or AMX), fp32 elsewhere. ``tl eval`` makes the same choice, so the two agree."""
    import torch

    from tl.distributed import auto_precision
    from tl.progress import log

    if precision == Precision.auto:  # training's rule, except on mps, where inference autocast works in fp16
        if device.type not in ("cuda", "cpu"):
            return torch.float16 if device.type == "mps" else None
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision(device.type == "cuda"))
    if precision == Precision.fp16 and device.type == "cpu":
        log.warning("fp16 autocast does nothing on the CPU; using bf16 instead")
        return torch.bfloat16
    return {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[precision]


def probabilities(predictor: Predictor, images: "torch.Tensor", *, tta: bool = False, dtype=None) -> "torch.Tensor":
    """Softmax of the temperature-scaled logits, in float32; ``tta`` averages with the mirrored image."""
    import torch

    from tl.engine import split_outputs

    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        views = [images, images.flip(-1)] if tta else [images]
        probs = [(split_outputs(predictor.model(v))[0].float() / predictor.temperature).softmax(1) for v in views]
    return sum(probs) / len(probs)


# ------------------------------------------------------------------------------------------------------
# Files in, rows out
# ------------------------------------------------------------------------------------------------------


class ImagePaths:
    """Map-style dataset: (image tensor, index, error). A file that cannot be read gives zeros and the reason.

    With ``threads`` > 1 a whole batch is decoded by a thread pool (``__getitems__``, which the DataLoader
    calls when it exists; the decoders release the GIL): see ``predict_dir`` for why on the CPU."""

    def __init__(self, paths: list[Path], transform, size: int, threads: int = 1, known_errors: dict[int, str] | None = None) -> None:
        self.paths, self.transform, self.size, self.threads = paths, transform, size, threads
        self.known_errors = known_errors or {}  # index -> reason, not decoded again (a file that crashed the decoder)
        self._pool = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, indices: list[int]) -> list:
        if self.threads <= 1:
            return [self[i] for i in indices]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.threads)
        return list(self._pool.map(self.__getitem__, indices))

    def __getitem__(self, index: int):
        import torch

        from tl.decode import read_image

        if index in self.known_errors:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, self.known_errors[index]
        try:  # decoded exactly as training and `tl eval` decode, so the probabilities match theirs
            return self.transform(read_image(self.paths[index])), index, ""
        except Exception as exc:  # a TLError from PIL, or a transform failing on a degenerate image: one row, not the run
            reason = exc.__context__ if isinstance(exc, TLError) and exc.__context__ else exc
            text = f"{type(reason).__name__}: {reason}".replace(str(self.paths[index]), self.paths[index].name)
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), index, " ".join(text.split())


@dataclass
class Summary:
    total: int = 0
    predicted: int = 0
    resumed: int = 0
    failed: int = 0
    seconds: float = 0.0


def check_folder(images: Path) -> None:
    if not images.is_dir():
        raise TLError(f"{images} is not a folder", "pass a folder of images (searched recursively); for files use `tl predict`")


def find_images(images: Path) -> list[Path]:
    """Image files under ``images`` in sorted order; symlinked folders are not entered, so loops cannot hang it."""
    from tl.datasets import IMAGE_EXTENSIONS, list_images

    check_folder(images)
    files = list_images(images)
    if not files:
        raise TLError(f"no images under {images}", f"supported extensions (any case): {' '.join(IMAGE_EXTENSIONS)}")
    return files


CPU_BATCH, GPU_BATCH = 8, 64
CPU_CHUNK_BATCHES = 32  # on the CPU, images are decoded this many model batches at a time (see predict_dir)


def default_batch_size(device: "torch.device") -> int:
    """Small batches on the CPU: activations of a few images stay in cache (squeezenet1_0, bf16, this project's
    CPU: ~300 images/s at batch 4-8, ~130 at 32); large ones keep a GPU busy."""
    return CPU_BATCH if device.type == "cpu" else GPU_BATCH


def predict_dir(predictor: Predictor, images: Path, out: Path, *, batch_size: int = 0, num_workers: int = -1,
                top_k: int | None = None, tta: bool = False, precision: Precision = Precision.auto,
                resume: bool = False, overwrite: bool = False, compile: bool = False) -> Summary:
    """Predict every image under ``images`` into ``out``, streaming: each batch's rows are written and flushed
    as soon as they are computed. Under ``accelerate launch`` the processes take turns by batch and the main
    process writes the gathered rows, so the file is the same as a single process writes.

    On the CPU (``num_workers`` -1) decoding and the model take turns instead of overlapping: a chunk of
    ``CPU_CHUNK_BATCHES`` batches is decoded by a thread per core, then the model runs on it with every core.
    Loader worker processes decoding while the model's threads run oversubscribe the cores: on this project's
    2-core CPU (squeezenet1_0, bf16, bees/ants val) that ran at ~130 images/s, taking turns at ~210."""
    import torch
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader

    from tl.distributed import num_workers as resolve_workers
    from tl.progress import EpochProgress, log, setup_logging

    start = time.perf_counter()
    from tl.distributed import build_accelerator

    accelerator = build_accelerator()
    setup_logging(accelerator.is_main_process)
    names = predictor.class_names
    if top_k is None:
        top_k = AUTO_TOP_K if len(names) > MAX_PROB_COLUMNS else 0
        if top_k:
            log.info(f"{len(names)} classes: writing the top {top_k} per image (--top-k 0 writes every class)")
    top_k = min(top_k, len(names))
    header = csv_header(names, top_k)
    files = find_images(images)
    relative = [p.relative_to(images).as_posix() for p in files]

    done, failed_before, end = set(), 0, 0
    if out.exists() and not (resume or overwrite):
        raise TLError(f"--out: {out} already exists", "pass --resume to continue it, or --overwrite to replace it")
    if out.exists() and resume:
        done, failed_before, end = read_done(out, header)
    accelerator.wait_for_everyone()  # every process has read the file before the main one cuts it
    pending = [i for i, rel in enumerate(relative) if rel not in done]
    marker = InFlight(out)
    crashed = marker.culprits([files[i] for i in pending], accelerator) if resume else {}
    summary = Summary(total=len(files), resumed=len(files) - len(pending), failed=failed_before)

    handle = None
    if accelerator.is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        # surrogateescape: a file name that is not UTF-8 goes into the CSV byte for byte instead of stopping the run
        handle = open(out, "r+" if end else "w", newline="", encoding="utf-8", errors="surrogateescape")
        handle.truncate(end)  # drops a half row left by a killed run
        handle.seek(end)
        writer = csv.writer(handle, lineterminator="\n")
        if not end:
            writer.writerow(header)
        handle.flush()

    if pending:
        device = accelerator.device
        dtype = autocast_dtype(precision, device)
        model = predictor.model.to(device, memory_format=torch.channels_last)  # faster convolutions, same results
        if compile:
            from tl.fastpaths import compile_model

            compile_model(model, device)
        predictor.model = model
        batch_size = batch_size or default_batch_size(device)
        normalize = predictor.normalizer()
        take_turns = device.type == "cpu" and num_workers < 0
        workers = 0 if take_turns else resolve_workers(num_workers, accelerator.num_processes)
        threads = max(1, resolve_workers(-1, accelerator.num_processes)) if take_turns else 1
        dataset = ImagePaths([files[i] for i in pending], predictor.pixels(), predictor.size, threads=threads,
                             known_errors={k: crashed[files[i]] for k, i in enumerate(pending) if files[i] in crashed})
        loader_batch, prefetch = batch_size * (CPU_CHUNK_BATCHES if take_turns else 1), 4 if workers else None
        loader = accelerator.prepare_data_loader(DataLoader(
            dataset, batch_size=loader_batch, shuffle=False, num_workers=workers,
            pin_memory=device.type == "cuda", prefetch_factor=prefetch))
        # Files decoded but not yet written: what a crash of a decoder can have been working on.
        if accelerator.is_main_process:
            marker.write(loader_batch * (workers * (prefetch or 0) + 2) * accelerator.num_processes)
        progress = EpochProgress(description="predict", total=len(loader), enabled=accelerator.is_main_process,
                                 every=max(1, len(loader) // 10))
        with torch.inference_mode(), decoder_crash_is_an_error(out):
            for step, (batch, indices, errors) in enumerate(loader, start=1):
                batch = batch.to(device, non_blocking=True)
                probs = torch.cat([probabilities(predictor, normalize(part, channels_last=True), tta=tta, dtype=dtype)
                                   for part in batch.split(batch_size)])
                local_errors = [(int(i), e) for i, e in zip(indices, errors) if e]
                indices, probs = accelerator.gather_for_metrics((indices, probs))
                error_of = dict(gather_object(local_errors))  # every process gets every message (a padded repeat is harmless)
                summary.predicted += len(indices)
                summary.failed += sum(int(i) in error_of for i in indices)
                if handle is not None:
                    for index, row in zip(indices.tolist(), probs.cpu().tolist()):
                        writer.writerow(csv_row(relative[pending[index]], row, names, top_k, error_of.get(index, "")))
                    handle.flush()  # a killed run loses only the batch in flight
                if progress.wants_stats(step):
                    progress.update(step, f"{summary.predicted / (time.perf_counter() - start):.1f} img/s")
                else:
                    progress.update(step)
        progress.close()
        if dataset._pool is not None:
            dataset._pool.shutdown()
    if handle is not None:
        handle.close()
        marker.clear()  # finished: nothing was in flight
    summary.seconds = time.perf_counter() - start
    return summary


def print_summary(summary: Summary, out: Path) -> None:
    from rich.table import Table

    from tl.progress import console, out_console

    table = Table(title="tl predict-dir: done", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rate = summary.predicted / summary.seconds if summary.seconds else 0.0
    for key, value in {"images": summary.total, "predicted now": f"{summary.predicted} ({rate:.1f} img/s)",
                       "already in the CSV": summary.resumed, "unreadable": summary.failed, "csv": out}.items():
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


def predict_dir_command(
    images: Annotated[Path, typer.Argument(help="Folder of images, searched recursively.", rich_help_panel=INPUT)],
    out: Annotated[Path, typer.Option(help="CSV to write: path, label, confidence, p_<class>..., error.", rich_help_panel=OUTPUT)],
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    weights: WeightsOpt = "DEFAULT",
    top_k: Annotated[Optional[int], typer.Option(help="Write the K best label/probability pairs instead of one column per class (0: every class; default: every class up to 20, else 5).", rich_help_panel=OUTPUT)] = None,
    label_names: LabelNamesOpt = None,
    resume: Annotated[bool, typer.Option(help="Keep the rows already in --out and predict only the missing files.", rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out.", rich_help_panel=OUTPUT)] = False,
    tta: TtaOpt = False,
    calibration: CalibrationOpt = True,
    batch_size: Annotated[int, typer.Option(help=f"Images per forward pass per process; 0: {CPU_BATCH} on the CPU, {GPU_BATCH} on a GPU.", rich_help_panel=RUN)] = 0,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers per process; -1: automatic (on the CPU: decoding threads that take turns with the model; on a GPU: worker processes).", rich_help_panel=RUN)] = -1,
    precision: PrecisionOpt = Precision.auto,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model: pays off on large folders (compiling takes ~30 s on a small CPU).", rich_help_panel=RUN)] = False,
) -> None:
    """Predict every image in a folder into a CSV, streaming (exit 0: all read; 1: some unreadable; 2: bad input).

    Examples:

      tl predict-dir photos/ --checkpoint runs/r18/best --out preds.csv

      tl predict-dir photos/ --arch squeezenet1_0 --weights squeezenet.safetensors --out imagenet.csv

      accelerate launch -m tl.predict_dir photos/ --checkpoint runs/r18/best --out preds.csv
    """
    if batch_size < 0:
        raise TLError("--batch-size: must be at least 1 (or 0 for the automatic size)")
    if top_k is not None and top_k < 0:
        raise TLError("--top-k: must be >= 0", "0 writes one column per class")
    check_folder(images)
    predictor = load_predictor(checkpoint, arch, weights, calibrated=calibration, label_names=label_names)
    summary = predict_dir(predictor, images, out, batch_size=batch_size, num_workers=num_workers, top_k=top_k, tta=tta,
                          precision=precision, resume=resume, overwrite=overwrite, compile=compile)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of tables, one object per file: path, top (label, probability), error (null, or why it could not be read).", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Show the top classes of a few images (exit 1 when one could not be read).

    Examples:

      tl predict cat.jpg dog.png --checkpoint runs/r18/best

      tl predict *.jpg --checkpoint runs/r18/best --json > predictions.json
    """
    import torch
    from rich.table import Table

    from tl.decode import read_image
    from tl.progress import console, out_console

    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise TLError(f"no such file: {', '.join(missing[:3])}", "pass image files; for a folder use `tl predict-dir`")
    predictor = load_predictor(checkpoint, arch, weights, calibrated=calibration, label_names=label_names)
    transform, answers, out = predictor.transform(), [], out_console()
    for path in images:
        try:
            image = transform(read_image(path))
        except Exception as exc:  # a TLError from the decoder, or a transform failing on a degenerate image
            reason = exc.message if isinstance(exc, TLError) else f"cannot use image {path}: {type(exc).__name__}: {exc}"
            console.print(f"{path}: {reason}", style="red", highlight=False, markup=False, soft_wrap=True)  # stderr, also with --json
            answers.append({"path": str(path), "top": [], "error": reason})
            continue
        with torch.inference_mode():
            probs = probabilities(predictor, image.unsqueeze(0), tta=tta, dtype=autocast_dtype(Precision.auto, image.device))[0]
        values, indices = probs.topk(min(top_k, len(probs)))
        top = [{"label": predictor.class_names[i], "probability": v} for v, i in zip(values.tolist(), indices.tolist())]
        answers.append({"path": str(path), "top": top, "error": None})
        if as_json:
            continue
        out.print(str(path), style="bold")
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
