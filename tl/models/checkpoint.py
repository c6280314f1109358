"""Self-describing checkpoints: ``DIR/model.safetensors`` + ``DIR/tl.json``.

The same JSON is also stored in the safetensors header (key ``tl``), so the weight file alone is enough to
rebuild the model and its preprocessing (timm's ``save_for_hf`` idea). Writes go to a temporary folder that
is renamed into place, so a crash mid-save leaves the previous checkpoint whole; a failed write (a full disk, a
read-only folder) removes the half-written copy and raises a TLError naming the folder and the OS's reason.
Only a folder that holds nothing but a checkpoint is ever replaced: a file, a run folder or a folder of the user's
own files is refused. Loading is strict: every tensor the metadata's model has, each of its shape.
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
from tl.models.files import CHECKPOINT_FILES, META_FILE, MODEL_FILE, ONNX_FILE, PROGRESS_FILE, model_file  # noqa: F401  (part of this module's interface)

# Also replaceable: Finder's folder litter, and what a killed update_meta left (only the OS or tl wrote these).
_LITTER = re.compile(r"\.DS_Store|\.(model\.safetensors|tl\.json)\.tmp-\d+")
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

    directory = Path(os.path.abspath(directory))  # "." and ".." have no name to put the temporary folder beside
    check_target(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta_json = json.dumps(meta, sort_keys=True)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / MODEL_FILE), metadata={"tl": meta_json, "format": "pt"})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if directory.is_dir() and (not any(directory.iterdir()) or directory.resolve() == Path.cwd()):
            # An empty folder, or the current one (moving it would leave the user's shell in a deleted folder), is filled
            # in place, one file at a time: the weights file carries its metadata, so it is whole at each step.
            (directory / ONNX_FILE).unlink(missing_ok=True)  # an earlier export's, which would no longer match
            for name in (MODEL_FILE, META_FILE):
                os.replace(tmp / name, directory / name)
            tmp.rmdir()
        else:
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


def check_target(directory: str | Path, flag: str = "") -> None:
    """Refuse to write a checkpoint over anything but an empty folder or an earlier checkpoint (only its own files):
    the write replaces the whole folder. ``flag`` (e.g. "--to") starts the message."""
    directory, prefix = Path(os.path.abspath(directory)), f"{flag}: " if flag else ""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise TLError(f"{prefix}{directory} is a file, not a checkpoint folder", "write it to a new or empty folder; the file was left as it is")
    others = sorted(p.name for p in directory.iterdir() if p.name not in CHECKPOINT_FILES and not _LITTER.fullmatch(p.name))
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise TLError(f"{prefix}{directory} holds more than a checkpoint ({shown}): writing one there would replace the whole folder",
                      "write it to a new or empty folder; nothing was changed")


def unreadable(weights_file: Path, error: BaseException) -> TLError:
    reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return TLError(f"{weights_file} is not a readable safetensors file ({reason})",
                   "it is damaged or cut short: export the checkpoint again, or use RUN/last or another checkpoint")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint folder, run folder or model.safetensors file."""
    from safetensors import safe_open

    weights_file = model_file(Path(path))
    try:
        with safe_open(str(weights_file), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("tl")
    except (SafetensorError, OSError) as error:
        raise unreadable(weights_file, error) from error
    source = weights_file
    if raw is None:
        source = weights_file.parent / META_FILE
        if not source.is_file():
            raise TLError(f"{weights_file} carries no tl metadata", "it is a plain weight file: use it with --weights PATH")
        raw = source.read_text()
    try:
        meta = json.loads(raw)
    except ValueError as error:
        raise TLError(f"{source}: its tl metadata is not valid JSON ({error})", "export the checkpoint again, or use RUN/last or another checkpoint")
    missing = [key for key in ("arch", "num_classes", "head", "input_size") if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise TLError(f"{source}: its tl metadata lacks {', '.join(missing)}", "export the checkpoint again, or use RUN/last or another checkpoint")
    return meta


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exact model of a tl checkpoint (architecture, head, weights) from the checkpoint alone."""
    meta = read_meta(path)
    return rebuild(meta, model_file(Path(path))), meta


def rebuild(meta: dict[str, Any], weights_file: Path) -> nn.Module:
    """The model ``meta`` describes, holding the tensors of ``weights_file``: all of them, each of its shape, or a TLError.

    Unlike ``--weights`` (transfer learning: a head of another size is dropped on purpose), a head that does not fit
    here means the file and its metadata disagree: predicting with a random head would be silently wrong."""
    from tl.models.architectures import build_model
    from tl.models.heads import HeadSpec
    from tl.models.weights import describe_misfit, strip_wrapper_prefixes

    model, _ = build_model(meta["arch"], meta["num_classes"], head=HeadSpec(**meta["head"]), cut_at=meta.get("cut_at"),
                           image_size=meta["input_size"], imagenet_inputs=str(meta.get("weights", "DEFAULT")).lower() != "none")
    state, target = strip_wrapper_prefixes(checkpoint_state(weights_file)), model.state_dict()
    misfit = describe_misfit(missing=[k for k in target if k not in state], unexpected=[k for k in state if k not in target],
                             mismatched=[k for k in target if k in state and state[k].shape != target[k].shape])
    if misfit:
        raise TLError(f"{weights_file} does not fit the {meta['arch']} with {meta['num_classes']} classes its metadata "
                      f"describes: {misfit}", "its files were damaged or mixed up: export it again, or use RUN/last or another checkpoint")
    model.load_state_dict(state)
    return model


def checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights_file = model_file(Path(path))
    try:
        return load_file(str(weights_file))
    except (SafetensorError, OSError) as error:
        raise unreadable(weights_file, error) from error


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
