"""Self-describing checkpoints: ``DIR/model.safetensors`` + ``DIR/tl.json``.

The same JSON is also stored in the safetensors header (key ``tl``), so the weight file alone is enough to
rebuild the model and its preprocessing (timm's ``save_for_hf`` idea). Writes go to a temporary folder that
is renamed into place, so a crash mid-save leaves the previous checkpoint whole; a failed write (a full disk, a
read-only folder) removes the half-written copy and raises a TLError naming the folder and the OS's reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from tl.errors import TLError
from tl.models.files import META_FILE, MODEL_FILE, PROGRESS_FILE, model_file  # noqa: F401  (part of this module's interface)

# What a failed write raises: the OS's own error, safetensors' wrapper of it, and torch.save's (accelerate's states).
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)
FULL_DISK_BYTES = 1 << 20  # less free than this after a write failed: the disk is what is full


def write_error(path: Path, error: BaseException) -> TLError:
    """The one-line TLError for a failed write of ``path``, with the OS's reason (e.g. "No space left on device").

    Call it before removing the half-written files: torch.save's error does not say why, the free space does."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    elif match := re.search(r"os error (\d+)", str(error)):
        reason = os.strerror(int(match[1]))
    else:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and shutil.disk_usage(existing).free < FULL_DISK_BYTES:
            reason = f"No space left on device ({reason})"
    return TLError(f"could not write {path}: {reason}",
                   "free some space or choose another --out (a training run continues with --resume auto); "
                   "what was saved before is unchanged")


def save_checkpoint(directory: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights + metadata atomically; returns the checkpoint folder. On a failed write the previous
    checkpoint stays as it was and a TLError (``write_error``) says what happened."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta_json = json.dumps(meta, sort_keys=True)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / MODEL_FILE), metadata={"tl": meta_json, "format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
    except WRITE_ERRORS as error:
        failure = write_error(directory, error)
        if old.exists() and not directory.exists():
            old.rename(directory)
        shutil.rmtree(tmp, ignore_errors=True)
        raise failure from error
    shutil.rmtree(old, ignore_errors=True)
    return directory


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint folder, run folder or model.safetensors file."""
    from safetensors import safe_open

    weights_file = model_file(Path(path))
    with safe_open(str(weights_file), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("tl")
    if raw is None:
        sidecar = weights_file.parent / META_FILE
        if not sidecar.is_file():
            raise TLError(f"{weights_file} carries no tl metadata", "it is a plain weight file: use it with --weights PATH")
        raw = sidecar.read_text()
    return json.loads(raw)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exact model of a tl checkpoint (architecture, head, weights) from the checkpoint alone."""
    from tl.models.architectures import build_model
    from tl.models.heads import HeadSpec

    meta = read_meta(path)
    model, _ = build_model(
        meta["arch"],
        meta["num_classes"],
        weights=str(model_file(Path(path))),
        head=HeadSpec(**meta["head"]),
        cut_at=meta.get("cut_at"),
        image_size=meta["input_size"],
    )
    return model, meta


def checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_file(Path(path))))


def update_meta(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Add or replace metadata fields of an existing checkpoint (e.g. ``temperature``) without touching the weights.

    Both copies (the safetensors header and ``tl.json``) are rewritten through temporary files and
    ``os.replace``, so a crash leaves either the old or the new file, never half of one.
    """
    from safetensors.torch import load_file, save_file

    weights_file = model_file(Path(path))
    meta = {**read_meta(weights_file), **fields}
    weights, header = load_file(str(weights_file)), {"tl": json.dumps(meta, sort_keys=True), "format": "pt"}
    writes = {weights_file: lambda to: save_file(weights, str(to), metadata=header),
              weights_file.parent / META_FILE: lambda to: to.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")}
    for target, write in writes.items():
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            os.replace(tmp, target)
        except WRITE_ERRORS as error:
            failure = write_error(target, error)
            tmp.unlink(missing_ok=True)
            raise failure from error
    return meta
