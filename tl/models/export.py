"""``tl export CKPT --to DIR``: a clean inference bundle (weights + metadata, no optimizer state), optionally ONNX."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tl.errors import TLError


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    onnx = "onnx"


def _source(path: Path) -> tuple[Path, dict]:
    """(weights file, metadata) for a best/last checkpoint folder, its model file, or a training state folder."""
    from tl.models.checkpoint import read_meta
    from tl.models.files import MODEL_FILE, PROGRESS_FILE

    if (path / PROGRESS_FILE).is_file():  # OUT/state/step-N: weights from accelerate, metadata from the run's checkpoints
        run = path.parent.parent
        meta_source = next((run / name for name in ("last", "best") if (run / name / MODEL_FILE).is_file()), None)
        if meta_source is None or not (path / MODEL_FILE).is_file():
            raise TLError(f"{path} is a training state without a finished checkpoint beside it",
                          "export RUN/best or RUN/last, or let the run finish one epoch first")
        meta = read_meta(meta_source)
        meta["epoch"] = json.loads((path / PROGRESS_FILE).read_text())["epoch"]
        return path / MODEL_FILE, meta
    meta = read_meta(path)
    return (path if path.is_file() else path / MODEL_FILE), meta


def export(checkpoint: Path, to: Path, fmt: ExportFormat = ExportFormat.safetensors) -> Path:
    """Write the bundle to ``to``: a new folder, an empty one or an earlier bundle (replaced); anything else is refused."""
    from tl.models.checkpoint import check_target, rebuild, save_checkpoint
    from tl.models.files import ONNX_FILE

    check_target(to, "--to")  # before the model is built: a refusal costs nothing
    weights, meta = _source(checkpoint)
    model = rebuild(meta, weights)
    save_checkpoint(to, model, meta)
    if fmt == ExportFormat.onnx:
        export_onnx(model.eval(), to / ONNX_FILE, meta["input_size"])
    return to


def export_onnx(model, path: Path, size: int, atol: float = 1e-4) -> float:
    """Write ``path`` and check ONNX Runtime's outputs against PyTorch's on random inputs; returns the max difference."""
    import torch

    try:
        import onnxruntime
    except ImportError:
        raise TLError("--format onnx needs onnx and onnxruntime", "pip install 'tl[onnx]' (onnx, onnxruntime, onnxscript)")
    sample = torch.randn(2, 3, size, size)
    torch.onnx.export(model, (sample,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(check).numpy()
    got = session.run(["logits"], {"images": check.numpy()})[0]
    difference = float(abs(got - expected).max())
    if difference > atol:
        raise TLError(f"the ONNX model's outputs differ from PyTorch's by {difference:.2e}", "keep the safetensors export")
    return difference


def command(
    checkpoint: Annotated[Path, typer.Argument(help="RUN/best, RUN/last, a model.safetensors, or a state folder RUN/state/step-N.")],
    to: Annotated[Path, typer.Option(help="Folder to write the bundle to: a new or empty one, or an earlier bundle to replace.")],
    format: Annotated[ExportFormat, typer.Option(help="safetensors only, or also model.onnx (checked against PyTorch).")] = ExportFormat.safetensors,
) -> None:
    """Write a clean inference bundle: model.safetensors + tl.json (no optimizer state), and optionally ONNX."""
    if not checkpoint.exists():
        raise TLError(f"no checkpoint at {checkpoint}", "pass RUN/best, RUN/last or RUN/state/step-N")
    out = export(checkpoint, to, format)
    from tl.progress import out_console

    onnx = " (+ model.onnx, outputs checked)" if format == ExportFormat.onnx else ""
    out_console().print(f"exported {checkpoint} -> {out}{onnx}")
